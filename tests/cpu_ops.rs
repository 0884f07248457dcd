//! Forward checks of the CPU backend against independent, deliberately naive
//! references written here (direct 7-loop convolution, LRN summing each window
//! explicitly from the paper's formula, naive pooling and linear), hand-computed
//! examples for SGD and softmax cross-entropy, dropout mask statistics, and
//! the shape errors callers get instead of panics.
use alexnet_cuda::backend::cpu::CpuBackend;
use alexnet_cuda::backend::{Backend, ConvGeom, LinearGeom, LrnParams, Nchw, PoolGeom, SgdParams};
use alexnet_cuda::rng::Rng;
use alexnet_cuda::Error;

fn normal(rng: &mut Rng, len: usize, scale: f32) -> Vec<f32> {
    (0..len).map(|_| rng.normal() as f32 * scale).collect()
}

/// max |a - b| / max(|b|, 1), asserted below `tol`.
fn assert_close(what: &str, a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let mut worst = (0.0f32, 0usize);
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        let err = (x - y).abs() / y.abs().max(1.0);
        // NaN never compares greater, so check it explicitly
        if err.is_nan() || err > worst.0 {
            worst = (err, i);
        }
    }
    println!("{what}: max err {:.1e}", worst.0);
    assert!(
        worst.0 <= tol,
        "{what}: err {} at {} ({} vs reference {})",
        worst.0,
        worst.1,
        a[worst.1],
        b[worst.1]
    );
}

fn is_shape_err<T: std::fmt::Debug>(r: alexnet_cuda::Result<T>) -> bool {
    matches!(r, Err(Error::Shape { .. }))
}

// -- convolution -------------------------------------------------------------

/// Direct grouped convolution: y[n, o, oy, ox] = b[o] +
/// sum_{c, i, j} w[o, c, i, j] * x[n, grp(o) * C + c, oy*s - pad + i, ox*s - pad + j].
fn naive_conv(g: &ConvGeom, x: &[f32], w: &[f32], b: &[f32]) -> Vec<f32> {
    let (ho, wo) = (g.h_out(), g.w_out());
    let (cg, mg) = (g.c_in / g.groups, g.c_out / g.groups);
    let mut y = vec![0.0f32; g.y_len()];
    for n in 0..g.n {
        for o in 0..g.c_out {
            let grp = o / mg;
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = b[o] as f64;
                    for c in 0..cg {
                        for i in 0..g.k {
                            for j in 0..g.k {
                                let iy = (oy * g.stride + i) as isize - g.pad as isize;
                                let ix = (ox * g.stride + j) as isize - g.pad as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                let xv = x[((n * g.c_in + grp * cg + c) * g.h + iy as usize) * g.w
                                    + ix as usize];
                                let wv = w[((o * cg + c) * g.k + i) * g.k + j];
                                acc += xv as f64 * wv as f64;
                            }
                        }
                    }
                    y[((n * g.c_out + o) * ho + oy) * wo + ox] = acc as f32;
                }
            }
        }
    }
    y
}

/// (n, c_in, h, w, c_out, k, stride, pad, groups)
const CONV_CASES: [[usize; 9]; 8] = [
    [2, 4, 9, 9, 6, 3, 1, 0, 1],
    [2, 4, 9, 9, 6, 3, 1, 1, 2],
    [3, 6, 11, 13, 4, 5, 1, 2, 2],
    [2, 3, 23, 23, 8, 11, 4, 2, 1], // conv1-like: k 11, stride 4
    [2, 4, 17, 17, 6, 5, 4, 0, 2],
    [1, 2, 5, 5, 3, 1, 2, 0, 1], // 1x1, stride 2
    [2, 4, 3, 3, 2, 5, 1, 2, 2], // kernel larger than the image
    [1, 6, 7, 7, 6, 3, 2, 1, 3],
];

/// A CONV_CASES row as geometry.
fn conv_geom([n, c_in, h, w, c_out, k, stride, pad, groups]: [usize; 9]) -> ConvGeom {
    ConvGeom {
        n,
        c_in,
        h,
        w,
        c_out,
        k,
        stride,
        pad,
        groups,
    }
}

#[test]
fn conv2d_forward_matches_naive() {
    let be = CpuBackend::new();
    for (ci, g) in CONV_CASES.iter().map(|&case| conv_geom(case)).enumerate() {
        let mut rng = Rng::new(ci as u64);
        let x = normal(&mut rng, g.x_len(), 1.0);
        let wt = normal(&mut rng, g.w_len(), 0.3);
        let b = normal(&mut rng, g.c_out, 0.3);
        let mut y = vec![f32::NAN; g.y_len()];
        be.conv2d_forward(&g, &x, &wt, &b, &mut y).unwrap();
        assert_close(
            &format!("conv2d_forward {g:?}"),
            &y,
            &naive_conv(&g, &x, &wt, &b),
            1e-5,
        );
    }
}

/// The adjoints of `naive_conv`, by the same loops: for every (n, o, oy, ox, c, i, j)
/// in range, dx[x index] += w * dy, dw[w index] += x * dy; db[o] += dy.
fn naive_conv_backward(g: &ConvGeom, x: &[f32], w: &[f32], dy: &[f32]) -> [Vec<f32>; 3] {
    let (ho, wo) = (g.h_out(), g.w_out());
    let (cg, mg) = (g.c_in / g.groups, g.c_out / g.groups);
    let mut dx = vec![0.0f64; g.x_len()];
    let mut dw = vec![0.0f64; g.w_len()];
    let mut db = vec![0.0f64; g.c_out];
    for n in 0..g.n {
        for o in 0..g.c_out {
            let grp = o / mg;
            for oy in 0..ho {
                for ox in 0..wo {
                    let d = dy[((n * g.c_out + o) * ho + oy) * wo + ox] as f64;
                    db[o] += d;
                    for c in 0..cg {
                        for i in 0..g.k {
                            for j in 0..g.k {
                                let iy = (oy * g.stride + i) as isize - g.pad as isize;
                                let ix = (ox * g.stride + j) as isize - g.pad as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                let xi = ((n * g.c_in + grp * cg + c) * g.h + iy as usize) * g.w
                                    + ix as usize;
                                let wi = ((o * cg + c) * g.k + i) * g.k + j;
                                dx[xi] += w[wi] as f64 * d;
                                dw[wi] += x[xi] as f64 * d;
                            }
                        }
                    }
                }
            }
        }
    }
    let f = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect::<Vec<f32>>();
    [f(dx), f(dw), f(db)]
}

#[test]
fn conv2d_backward_matches_naive() {
    let be = CpuBackend::new();
    for (ci, g) in CONV_CASES.iter().map(|&case| conv_geom(case)).enumerate() {
        let mut rng = Rng::new(ci as u64 + 1000);
        let x = normal(&mut rng, g.x_len(), 1.0);
        let wt = normal(&mut rng, g.w_len(), 0.3);
        let dy = normal(&mut rng, g.y_len(), 1.0);
        let (mut dx, mut dw, mut db) = (
            vec![f32::NAN; g.x_len()],
            vec![f32::NAN; g.w_len()],
            vec![f32::NAN; g.c_out],
        );
        be.conv2d_backward_data(&g, &wt, &dy, &mut dx).unwrap();
        be.conv2d_backward_filter(&g, &x, &dy, &mut dw).unwrap();
        be.conv2d_backward_bias(&g, &dy, &mut db).unwrap();
        let [wdx, wdw, wdb] = naive_conv_backward(&g, &x, &wt, &dy);
        assert_close(&format!("conv2d_backward_data {g:?}"), &dx, &wdx, 1e-5);
        assert_close(&format!("conv2d_backward_filter {g:?}"), &dw, &wdw, 1e-5);
        assert_close(&format!("conv2d_backward_bias {g:?}"), &db, &wdb, 1e-5);
    }
}

/// A batch larger than the filter gradient's chunks (37 images: 12 chunks
/// of 3 and one of 1), so a chunk sums several images, computed twice
/// in one thread: the second call's sums start from neither the NaNs in
/// dw nor the partial sums the first call left in the buffers it keeps.
#[test]
fn conv2d_backward_filter_sums_chunks_of_many_images() {
    let be = CpuBackend::new();
    let g = conv_geom([37, 4, 9, 9, 6, 3, 1, 1, 2]);
    let mut rng = Rng::new(2024);
    let x = normal(&mut rng, g.x_len(), 1.0);
    let wt = normal(&mut rng, g.w_len(), 0.3);
    for scale in [1.0, 0.5] {
        let dy = normal(&mut rng, g.y_len(), scale);
        let mut dw = vec![f32::NAN; g.w_len()];
        be.conv2d_backward_filter(&g, &x, &dy, &mut dw).unwrap();
        let [_, want, _] = naive_conv_backward(&g, &x, &wt, &dy);
        assert_close(
            &format!("conv2d_backward_filter x{scale} {g:?}"),
            &dw,
            &want,
            1e-5,
        );
    }
}

#[test]
fn conv2d_rejects_bad_geometry() {
    let be = CpuBackend::new();
    let g = ConvGeom {
        n: 1,
        c_in: 4,
        h: 5,
        w: 5,
        c_out: 6,
        k: 3,
        stride: 1,
        pad: 0,
        groups: 4, // does not divide c_out
    };
    let (x, w, b) = (vec![0.0; 100], vec![0.0; 54], vec![0.0; 6]);
    let mut y = vec![0.0; 54];
    assert!(is_shape_err(be.conv2d_forward(&g, &x, &w, &b, &mut y)));
    let g = ConvGeom {
        groups: 1,
        k: 7,
        ..g
    }; // kernel larger than the padded image
    assert!(is_shape_err(be.conv2d_forward(&g, &x, &w, &b, &mut y)));
    let g = ConvGeom {
        groups: 1,
        stride: 0,
        ..g
    };
    assert!(is_shape_err(be.conv2d_forward(&g, &x, &w, &b, &mut y)));
    let g = ConvGeom { groups: 1, ..g };
    let g = ConvGeom {
        stride: 1,
        k: 3,
        ..g
    };
    // right geometry, wrong buffer lengths
    assert!(is_shape_err(be.conv2d_forward(&g, &x, &w, &b, &mut y)));
    let mut dx = vec![0.0; 99];
    assert!(is_shape_err(be.conv2d_backward_data(
        &g,
        &vec![0.0; g.w_len()],
        &vec![0.0; g.y_len()],
        &mut dx
    )));
    let mut db = vec![0.0; 5];
    assert!(is_shape_err(be.conv2d_backward_bias(
        &g,
        &vec![0.0; g.y_len()],
        &mut db
    )));
}

// -- local response normalisation --------------------------------------------

/// Straight from the paper: b[c] = a[c] / (k + alpha * sum_{c'=max(0,c-n/2)}^{min(C-1,c+n/2)} a[c']^2)^beta.
fn naive_lrn(p: &LrnParams, s: &Nchw, x: &[f32]) -> Vec<f32> {
    let hw = s.h * s.w;
    let mut y = vec![0.0f32; s.len()];
    for n in 0..s.n {
        for c in 0..s.c {
            for i in 0..hw {
                let lo = c.saturating_sub(p.size / 2);
                let hi = (c + p.size / 2).min(s.c - 1);
                let mut sum = 0.0f64;
                for cc in lo..=hi {
                    let v = x[(n * s.c + cc) * hw + i] as f64;
                    sum += v * v;
                }
                let a = x[(n * s.c + c) * hw + i] as f64;
                let scale = p.k as f64 + p.alpha as f64 * sum;
                y[(n * s.c + c) * hw + i] = (a / scale.powf(p.beta as f64)) as f32;
            }
        }
    }
    y
}

/// LRN settings both LRN tests run: the paper's, a large alpha, other
/// sizes and betas, an even size and a one-channel window.
fn lrn_cases() -> Vec<LrnParams> {
    vec![
        LrnParams::PAPER,
        LrnParams {
            alpha: 1e-2,
            ..LrnParams::PAPER
        },
        LrnParams {
            size: 3,
            alpha: 0.1,
            beta: 0.5,
            k: 1.0,
        },
        LrnParams {
            size: 1,
            alpha: 0.1,
            beta: 0.75,
            k: 2.0,
        }, // window of one channel
    ]
}

/// Shapes with clipped windows at both channel edges, and a single channel.
fn lrn_shapes() -> Vec<Nchw> {
    vec![
        Nchw {
            n: 2,
            c: 3,
            h: 4,
            w: 5,
        },
        Nchw {
            n: 3,
            c: 16,
            h: 6,
            w: 6,
        },
        Nchw {
            n: 1,
            c: 1,
            h: 2,
            w: 3,
        },
    ]
}

#[test]
fn lrn_forward_matches_naive() {
    let be = CpuBackend::new();
    let params = lrn_cases();
    let shapes = lrn_shapes();
    for p in &params {
        for s in &shapes {
            let mut rng = Rng::new(s.c as u64);
            let x = normal(&mut rng, s.len(), 3.0);
            let mut y = vec![0.0; s.len()];
            let mut scale = vec![0.0; s.len()];
            be.lrn_forward(p, s, &x, &mut y, &mut scale).unwrap();
            assert_close(
                &format!("lrn_forward {p:?} {s:?}"),
                &y,
                &naive_lrn(p, s, &x),
                1e-5,
            );
        }
    }
}

/// An even window has no centre channel: refused by name, forward and
/// backward, not widened to the next odd size.
#[test]
fn lrn_refuses_an_even_window() {
    let be = CpuBackend::new();
    let s = lrn_shapes()[0];
    let p = LrnParams {
        size: 4,
        ..LrnParams::PAPER
    };
    let (x, mut y, mut scale) = (vec![1.0; s.len()], vec![0.0; s.len()], vec![0.0; s.len()]);
    let e = be.lrn_forward(&p, &s, &x, &mut y, &mut scale).unwrap_err();
    assert!(e.to_string().contains("window size 4 must be odd"), "{e}");
    let mut dx = vec![0.0; s.len()];
    let e = be
        .lrn_backward(&p, &s, &x, &y, &scale, &x, &mut dx)
        .unwrap_err();
    assert!(e.to_string().contains("window size 4 must be odd"), "{e}");
}

/// The backward formula evaluated directly in f64, summing each window explicitly:
/// dx[c] = dy[c] s[c]^-beta - 2 alpha beta x[c] sum_{c': |c - c'| <= size/2} dy[c'] y[c'] / s[c'].
fn naive_lrn_backward(p: &LrnParams, s: &Nchw, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let hw = s.h * s.w;
    let half = p.size / 2;
    let at = |n: usize, c: usize, i: usize| (n * s.c + c) * hw + i;
    let (alpha, beta, k) = (p.alpha as f64, p.beta as f64, p.k as f64);
    let scale = |n: usize, c: usize, i: usize| {
        let (lo, hi) = (c.saturating_sub(half), (c + half).min(s.c - 1));
        k + alpha
            * (lo..=hi)
                .map(|cc| (x[at(n, cc, i)] as f64).powi(2))
                .sum::<f64>()
    };
    let mut dx = vec![0.0f32; s.len()];
    for n in 0..s.n {
        for c in 0..s.c {
            for i in 0..hw {
                let (lo, hi) = (c.saturating_sub(half), (c + half).min(s.c - 1));
                let mut cross = 0.0f64;
                for cc in lo..=hi {
                    let sc = scale(n, cc, i);
                    let ycc = x[at(n, cc, i)] as f64 * sc.powf(-beta);
                    cross += dy[at(n, cc, i)] as f64 * ycc / sc;
                }
                let own = dy[at(n, c, i)] as f64 * scale(n, c, i).powf(-beta);
                dx[at(n, c, i)] = (own - 2.0 * alpha * beta * x[at(n, c, i)] as f64 * cross) as f32;
            }
        }
    }
    dx
}

#[test]
fn lrn_backward_matches_naive() {
    let be = CpuBackend::new();
    let params = lrn_cases();
    let shapes = lrn_shapes();
    for p in &params {
        for s in &shapes {
            let mut rng = Rng::new(s.c as u64 + 99);
            let x = normal(&mut rng, s.len(), 3.0);
            let dy = normal(&mut rng, s.len(), 1.0);
            let (mut y, mut scale, mut dx) =
                (vec![0.0; s.len()], vec![0.0; s.len()], vec![0.0; s.len()]);
            be.lrn_forward(p, s, &x, &mut y, &mut scale).unwrap();
            be.lrn_backward(p, s, &x, &y, &scale, &dy, &mut dx).unwrap();
            assert_close(
                &format!("lrn_backward {p:?} {s:?}"),
                &dx,
                &naive_lrn_backward(p, s, &x, &dy),
                1e-5,
            );
        }
    }
}

// -- max pooling ----------------------------------------------------------------

#[test]
fn max_pool_forward_matches_naive() {
    let be = CpuBackend::new();
    let geoms = [
        (3, 2, 13, 13),
        (3, 2, 12, 9),
        (2, 2, 8, 7),
        (3, 3, 3, 3),
        (2, 4, 3, 3), // a stride longer than the rows
        (3, 2, 55, 55),
    ];
    // Normal values, then ReLU-like ones rounded to whole numbers, where
    // most windows hold ties: the first in row-major order must win.
    for ((size, stride, h, w), ties) in geoms.into_iter().flat_map(|g| [(g, false), (g, true)]) {
        let g = PoolGeom {
            n: 2,
            c: 3,
            h,
            w,
            size,
            stride,
        };
        let mut rng = Rng::new(size as u64 * 100 + h as u64);
        let mut x = normal(&mut rng, g.x_len(), 1.0);
        if ties {
            x.iter_mut().for_each(|v| *v = v.round().max(0.0));
        }
        let mut y = vec![0.0; g.y_len()];
        let mut am = vec![0u32; g.y_len()];
        be.max_pool_forward(&g, &x, &mut y, &mut am).unwrap();
        let (ho, wo) = (g.h_out(), g.w_out());
        for plane in 0..g.n * g.c {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut best = (f32::NEG_INFINITY, 0usize);
                    for i in 0..size {
                        for j in 0..size {
                            let idx = (oy * stride + i) * w + ox * stride + j;
                            let v = x[plane * h * w + idx];
                            if v > best.0 {
                                best = (v, idx);
                            }
                        }
                    }
                    let o = (plane * ho + oy) * wo + ox;
                    assert_eq!(y[o], best.0, "pool value at {o}");
                    assert_eq!(am[o] as usize, best.1, "pool argmax at {o}");
                }
            }
        }
        // backward: with dy = 1, dx counts how many windows each pixel won
        let mut dx = vec![0.0; g.x_len()];
        be.max_pool_backward(&g, &vec![1.0; g.y_len()], &am, &mut dx)
            .unwrap();
        let mut want = vec![0.0f32; g.x_len()];
        for (o, &a) in am.iter().enumerate() {
            want[(o / (ho * wo)) * h * w + a as usize] += 1.0;
        }
        assert_eq!(dx, want);
    }
}

/// A NaN in a window is its maximum, as in PyTorch's max_pool2d (and
/// numpy.max): the first NaN wins, and a window without one is unchanged.
/// A NaN that pooling dropped would hide a diverged layer from the loss.
#[test]
fn max_pool_passes_a_nan_on() {
    let be = CpuBackend::new();
    let g = PoolGeom {
        n: 1,
        c: 1,
        h: 3,
        w: 5,
        size: 3,
        stride: 2,
    };
    // Windows: columns 0-2 and 2-4. A NaN in the middle of the first (not
    // its first element), two in the second, at (0, 3) and (2, 4).
    let nan = f32::NAN;
    #[rustfmt::skip]
    let x = vec![
        1.0, 9.0, 0.0, nan, 4.0,
        2.0, nan, 3.0, 8.0, 5.0,
        0.0, 7.0, 1.0, 6.0, nan,
    ];
    let (mut y, mut am) = (vec![0.0; g.y_len()], vec![0u32; g.y_len()]);
    be.max_pool_forward(&g, &x, &mut y, &mut am).unwrap();
    assert!(y.iter().all(|v| v.is_nan()), "{y:?}");
    assert_eq!(am, [6, 3]);
    // Without NaN the rule is the window's first largest value.
    let x: Vec<f32> = x
        .iter()
        .map(|v| if v.is_nan() { -1.0 } else { *v })
        .collect();
    be.max_pool_forward(&g, &x, &mut y, &mut am).unwrap();
    assert_eq!((y, am), (vec![9.0, 8.0], vec![1, 8]));
}

#[test]
fn max_pool_rejects_bad_input() {
    let be = CpuBackend::new();
    let g = PoolGeom {
        n: 1,
        c: 1,
        h: 4,
        w: 4,
        size: 2,
        stride: 2,
    };
    let mut dx = vec![0.0; 16];
    // an argmax outside the plane is an error, not a panic
    assert!(is_shape_err(be.max_pool_backward(
        &g,
        &vec![1.0; 4],
        &vec![0, 1, 2, 16],
        &mut dx
    )));
    let g = PoolGeom { size: 5, ..g }; // window larger than the image
    let (mut y, mut am) = (vec![0.0; 1], vec![0u32; 1]);
    assert!(is_shape_err(be.max_pool_forward(
        &g,
        &vec![0.0; 16],
        &mut y,
        &mut am
    )));
}

// -- linear -------------------------------------------------------------------------

#[test]
fn linear_matches_naive() {
    let be = CpuBackend::new();
    for (n, inp, out) in [(1, 1, 1), (3, 37, 11), (16, 300, 70), (5, 9216, 8)] {
        let g = LinearGeom { n, inp, out };
        let mut rng = Rng::new((n * inp * out) as u64);
        let x = normal(&mut rng, n * inp, 1.0);
        let w = normal(&mut rng, out * inp, 0.1);
        let b = normal(&mut rng, out, 0.1);
        let dy = normal(&mut rng, n * out, 1.0);
        let mut y = vec![0.0; n * out];
        be.linear_forward(&g, &x, &w, &b, &mut y).unwrap();
        let mut want = vec![0.0f32; n * out];
        for r in 0..n {
            for o in 0..out {
                let mut acc = b[o] as f64;
                for i in 0..inp {
                    acc += x[r * inp + i] as f64 * w[o * inp + i] as f64;
                }
                want[r * out + o] = acc as f32;
            }
        }
        assert_close(&format!("linear_forward {g:?}"), &y, &want, 1e-5);

        // backward against the same plain loops
        let mut dx = vec![0.0; n * inp];
        let mut dw = vec![0.0; out * inp];
        let mut db = vec![0.0; out];
        be.linear_backward_data(&g, &w, &dy, &mut dx).unwrap();
        be.linear_backward_weight(&g, &x, &dy, &mut dw).unwrap();
        be.linear_backward_bias(&g, &dy, &mut db).unwrap();
        let (mut wdx, mut wdw, mut wdb) = (
            vec![0.0f64; n * inp],
            vec![0.0f64; out * inp],
            vec![0.0f64; out],
        );
        for r in 0..n {
            for o in 0..out {
                let d = dy[r * out + o] as f64;
                wdb[o] += d;
                for i in 0..inp {
                    wdx[r * inp + i] += d * w[o * inp + i] as f64;
                    wdw[o * inp + i] += d * x[r * inp + i] as f64;
                }
            }
        }
        let f = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect::<Vec<f32>>();
        assert_close(&format!("linear_backward_data {g:?}"), &dx, &f(wdx), 1e-5);
        assert_close(&format!("linear_backward_weight {g:?}"), &dw, &f(wdw), 1e-5);
        assert_close(&format!("linear_backward_bias {g:?}"), &db, &f(wdb), 1e-5);
    }
}

// -- element-wise -------------------------------------------------------------

#[test]
fn sgd_update_hand_computed() {
    let be = CpuBackend::new();
    let p = SgdParams {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 0.01,
    };
    let mut w = vec![1.0f32, -2.0, 0.5];
    let g = vec![0.5f32, 1.0, -4.0];
    let mut v = vec![0.2f32, 0.0, -1.0];
    be.sgd_update(&p, &mut w, &g, &mut v).unwrap();
    // v = 0.9 v - 0.001 w - 0.1 g:
    //   0.18 - 0.001 - 0.05   =  0.129
    //   0    + 0.002 - 0.1    = -0.098
    //  -0.9  - 0.0005 + 0.4   = -0.5005
    // w += v: 1.129, -2.098, -0.0005
    let want_v = [0.129f32, -0.098, -0.5005];
    let want_w = [1.129f32, -2.098, -0.0005];
    for i in 0..3 {
        assert!((v[i] - want_v[i]).abs() < 1e-6, "v[{i}] = {}", v[i]);
        assert!((w[i] - want_w[i]).abs() < 1e-6, "w[{i}] = {}", w[i]);
    }
    assert!(is_shape_err(be.sgd_update(
        &p,
        &mut w,
        &vec![0.0; 2],
        &mut v
    )));
}

#[test]
fn softmax_xent_hand_computed() {
    let be = CpuBackend::new();
    // row 0: logits (0, ln 2, ln 5) -> probs (1/8, 2/8, 5/8), label 2: -ln(5/8)
    // row 1: logits (1000, 1000, 1000) (overflows exp without the max shift)
    //        -> probs 1/3 each, label 0: ln 3
    let logits = vec![0.0, 2f32.ln(), 5f32.ln(), 1000.0, 1000.0, 1000.0];
    let labels = vec![2u32, 0];
    let mut probs = vec![0.0; 6];
    let loss = be
        .softmax_xent_forward(2, 3, &logits, &labels, &mut probs)
        .unwrap();
    let want_loss = (-(5.0f64 / 8.0).ln() + 3.0f64.ln()) / 2.0;
    assert!(
        (loss as f64 - want_loss).abs() < 1e-6,
        "loss {loss} vs {want_loss}"
    );
    let third = 1.0 / 3.0;
    let want_p = [0.125, 0.25, 0.625, third, third, third];
    for i in 0..6 {
        assert!(
            (probs[i] - want_p[i]).abs() < 1e-6,
            "probs[{i}] = {}",
            probs[i]
        );
    }
    let mut d = vec![0.0; 6];
    be.softmax_xent_backward(2, 3, &probs, &labels, &mut d)
        .unwrap();
    // (p - onehot) / 2
    let want_d = [
        0.0625,
        0.125,
        -0.1875,
        (third - 1.0) / 2.0,
        third / 2.0,
        third / 2.0,
    ];
    for i in 0..6 {
        assert!((d[i] - want_d[i]).abs() < 1e-6, "dlogits[{i}] = {}", d[i]);
    }
    // a label outside [0, classes) is a shape error, not a panic
    let bad = vec![2u32, 3];
    assert!(is_shape_err(
        be.softmax_xent_forward(2, 3, &logits, &bad, &mut probs)
    ));
    assert!(is_shape_err(
        be.softmax_xent_backward(2, 3, &probs, &bad, &mut d)
    ));
}

/// Top-1 hits the naive way: the label is the unique largest entry of its
/// row (finite rows only; NaNs are checked by hand below).
fn naive_hits(probs: &[f32], labels: &[u32], classes: usize) -> usize {
    let mut hits = 0;
    for (r, &label) in labels.iter().enumerate() {
        let row = &probs[r * classes..(r + 1) * classes];
        let mut max = f32::NEG_INFINITY;
        for &v in row {
            if v > max {
                max = v;
            }
        }
        let at_max = row.iter().filter(|&&v| v == max).count();
        if row[label as usize] == max && at_max == 1 {
            hits += 1;
        }
    }
    hits
}

/// softmax_xent_forward_into leaves exactly softmax_xent_forward's loss in
/// its buffer; record_step_metrics writes (that loss, the naive hit count)
/// into its slot and nothing else, counts ties as misses, follows
/// topk_hits on NaNs (a NaN label is a miss), and refuses slots past the buffer.
#[test]
fn step_metrics_against_naive() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(91);
    let (n, classes) = (64, 10);
    let logits = normal(&mut rng, n * classes, 2.0);
    let mut labels: Vec<u32> = (0..n).map(|_| rng.below(classes) as u32).collect();
    let (mut probs, mut probs2) = (vec![0.0; n * classes], vec![0.0; n * classes]);
    let loss = be
        .softmax_xent_forward(n, classes, &logits, &labels, &mut probs)
        .unwrap();
    let mut loss_buf = be.alloc_f32(1).unwrap();
    be.softmax_xent_forward_into(n, classes, &logits, &labels, &mut probs2, &mut loss_buf)
        .unwrap();
    assert_eq!(
        loss_buf[0].to_bits(),
        loss.to_bits(),
        "the loss left in the buffer"
    );
    assert_eq!(probs2, probs);
    // Row 0: every class tied; row 1: the label tied with another class.
    probs[..classes].fill(0.1);
    probs[classes..2 * classes].fill(0.0);
    (probs[classes + 4], probs[classes + 6], labels[1]) = (0.5, 0.5, 4);
    let mut m = vec![7.0f32; 8];
    be.record_step_metrics(n, classes, &probs, &labels, &loss_buf, 2, &mut m)
        .unwrap();
    let want = naive_hits(&probs, &labels, classes);
    println!("record_step_metrics: {want} hits of {n} (naive), loss {loss}");
    assert_eq!(m, [7.0, 7.0, 7.0, 7.0, loss, want as f32, 7.0, 7.0]);

    // NaNs, by hand: a NaN label probability (outputs that overflowed) is
    // never a hit; a NaN elsewhere beats nothing.
    let probs = [f32::NAN, 0.5, 0.5, 0.2, f32::NAN, 0.7, 0.9, 0.05, 0.05];
    let mut m = vec![0.0f32; 2];
    be.record_step_metrics(
        3,
        3,
        &probs.to_vec(),
        &vec![0, 2, 0],
        &vec![f32::NAN],
        0,
        &mut m,
    )
    .unwrap();
    assert!(m[0].is_nan(), "a NaN loss is recorded as NaN");
    assert_eq!(
        m[1], 2.0,
        "rows 1 (0.7 over 0.2, NaN) and 2 (0.9 on top) hit, not row 0 (label NaN)"
    );
    let (t1, t5) = alexnet_cuda::eval::topk_hits(&probs, &[0, 2, 0], 3);
    assert_eq!(
        (t1, t5),
        (2, 2),
        "a NaN label misses top-5 too, of 3 classes"
    );

    let mut small = vec![0.0f32; 3];
    assert!(is_shape_err(be.record_step_metrics(
        3,
        3,
        &probs.to_vec(),
        &vec![0, 2, 0],
        &vec![1.0],
        1,
        &mut small
    )));
    assert!(is_shape_err(be.record_step_metrics(
        3,
        3,
        &probs.to_vec(),
        &vec![0, 3, 0],
        &vec![1.0],
        0,
        &mut m
    )));
}

#[test]
fn dropout_mask() {
    let be = CpuBackend::new();
    let len = 100_000;
    for p in [0.5f32, 0.2] {
        let mut x = vec![1.0f32; len];
        let mut mask = vec![0.0; len];
        be.dropout_forward(p, 42, &mut x, &mut mask).unwrap();
        let keep = 1.0 / (1.0 - p);
        assert!(mask.iter().all(|&m| m == 0.0 || m == keep), "mask values");
        assert_eq!(x, mask, "x *= mask with x = 1");
        let kept = mask.iter().filter(|&&m| m != 0.0).count() as f64 / len as f64;
        // binomial std of the kept fraction is sqrt(p(1-p)/len) <= 1.6e-3
        println!("dropout p={p}: kept fraction {kept:.4}");
        assert!(
            (kept - (1.0 - p as f64)).abs() < 1e-2,
            "kept {kept} for p {p}"
        );

        let mut again = vec![0.0; len];
        be.dropout_forward(p, 42, &mut vec![1.0; len], &mut again)
            .unwrap();
        assert_eq!(mask, again, "same seed, same mask");
        let mut other = vec![0.0; len];
        be.dropout_forward(p, 43, &mut vec![1.0; len], &mut other)
            .unwrap();
        let differ = mask.iter().zip(&other).filter(|(a, b)| a != b).count();
        assert!(
            differ > len / 10,
            "different seed should give a different mask"
        );

        // the mask is a pure function of (seed, index), as every backend draws it
        for i in [0usize, 1, 12345, len - 1] {
            let u = alexnet_cuda::rng::hash_uniform(42, i as u64);
            assert_eq!(mask[i], if u >= p { keep } else { 0.0 });
        }
    }
    // p = 0: everything kept, unscaled
    let mut x = vec![3.0f32; 1000];
    let mut mask = vec![0.0; 1000];
    be.dropout_forward(0.0, 1, &mut x, &mut mask).unwrap();
    assert!(mask.iter().all(|&m| m == 1.0) && x.iter().all(|&v| v == 3.0));
    assert!(is_shape_err(be.dropout_forward(1.0, 1, &mut x, &mut mask)));
}

#[test]
fn relu_and_memory() {
    let be = CpuBackend::new();
    let mut x = be.alloc(5).unwrap();
    be.upload(&[-1.0, 0.0, 2.0, -0.5, 3.0], &mut x).unwrap();
    be.relu_forward(&mut x).unwrap();
    let mut out = [0.0f32; 5];
    be.download(&x, &mut out).unwrap();
    assert_eq!(out, [0.0, 0.0, 2.0, 0.0, 3.0]);
    let mut dy = vec![1.0f32; 5];
    be.relu_backward(&x, &mut dy).unwrap();
    assert_eq!(dy, vec![0.0, 0.0, 1.0, 0.0, 1.0]);
    assert_eq!(be.buf_len(&x), 5);
    assert!(is_shape_err(be.upload(&[1.0; 4], &mut x)));
    assert!(is_shape_err(be.download(&x, &mut [0.0; 6])));
}

/// ReLU keeps a NaN a NaN, as torch.relu does: were it made 0, a network
/// whose weights went NaN would go on with finite losses.
#[test]
fn relu_passes_a_nan_on() {
    let be = CpuBackend::new();
    let mut x = vec![f32::NAN, -1.0, f32::INFINITY, f32::NEG_INFINITY, -f32::NAN];
    be.relu_forward(&mut x).unwrap();
    assert!(x[0].is_nan() && x[4].is_nan(), "{x:?}");
    assert_eq!(&x[1..4], &[0.0, f32::INFINITY, 0.0]);
}
