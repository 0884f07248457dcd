//! The CUDA kernels (kernels/*.cu), compiled for the host through
//! kernels/host/shim.h, against the CPU reference (`backend::cpu`) on
//! AlexNet-like shapes; this checks the kernels' arithmetic on machines
//! without a GPU. Each test prints its max error (`-- --nocapture`).
//!
//! Error measure: max over i of |kernel_i - reference_i| / max(|reference_i|,
//! 1e-3 * max_j |reference_j|), i.e. relative, with a floor at a thousandth of
//! the tensor's scale so that entries that cancel to near zero do not divide
//! by ~0. Where the kernel does the same f32 operations in the same order as
//! the reference (dropout, ReLU, pooling, SGD, softmax backward, conversions),
//! results must be bit-identical; LRN and softmax forward are held to 1e-6
//! (they too come out identical on the host, but need not on a GPU, where
//! nvcc contracts a*b+c into fused multiply-adds); im2col and col2im must
//! equal their definitions bit for bit, and are also checked through a
//! convolution (im2col or col2im plus a plain GEMM) against the CPU conv's
//! forward, backward-data and backward-filter, to 1e-3 (a different GEMM
//! summation order; see `CONV_TOL`).
#[path = "kernels_host/host_kernels.rs"]
mod host_kernels;

use alexnet_cuda::backend::cpu::{conv, elementwise, lrn, pool, CpuBackend};
use alexnet_cuda::backend::{Backend, ConvGeom, LrnParams, Nchw, PoolGeom, SgdParams};
use alexnet_cuda::rng::Rng;
use alexnet_cuda::Error;
use alexnet_kernels::{launch_1d, MODULES};
use host_kernels as hk;

fn normal(rng: &mut Rng, len: usize, scale: f32) -> Vec<f32> {
    (0..len).map(|_| rng.normal() as f32 * scale).collect()
}

/// The error measure in the file's header comment.
fn max_rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let scale = b.iter().fold(0.0f64, |m, &v| m.max((v as f64).abs()));
    let floor = (1e-3 * scale).max(f64::MIN_POSITIVE);
    a.iter().zip(b).fold(0.0f64, |worst, (&x, &y)| {
        let err = (x as f64 - y as f64).abs() / (y as f64).abs().max(floor);
        if err.is_nan() {
            f64::INFINITY
        } else {
            worst.max(err)
        }
    })
}

/// Prints and asserts the max relative error of `a` against reference `b`.
fn check_close(what: &str, a: &[f32], b: &[f32], tol: f64) {
    let err = max_rel_err(a, b);
    let identical = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
    println!("{what}: max rel err {err:.2e} (tolerance {tol:.0e}; bit-identical: {identical})");
    assert!(err <= tol, "{what}: max rel err {err:e} > {tol:e}");
}

/// Prints and asserts that `a` and reference `b` are bit-identical.
fn check_identical<T: PartialEq + std::fmt::Debug + Copy>(what: &str, a: &[T], b: &[T]) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    let diff = a.iter().zip(b).position(|(x, y)| x != y);
    println!(
        "{what}: max rel err 0 (bit-identical over {} values: {})",
        a.len(),
        diff.is_none()
    );
    if let Some(i) = diff {
        panic!("{what}: differs at {i}: {:?} vs reference {:?}", a[i], b[i]);
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

// -- the contract ------------------------------------------------------------------

/// kernels/README.md's table names exactly the kernels the .cu files define.
#[test]
fn readme_table_lists_every_kernel() {
    let readme = include_str!("../kernels/README.md");
    let mut listed: Vec<String> = Vec::new();
    for line in readme
        .lines()
        .filter(|l| l.starts_with("| ") && l.contains(".cu |"))
    {
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        let (file, names) = (cols[1], cols[2]);
        for name in names.split(',').map(|n| n.trim().trim_matches('`')) {
            let module = file.trim_end_matches(".cu");
            let m = MODULES.iter().find(|m| m.name == module);
            assert!(
                m.is_some_and(|m| m.kernels.contains(&name)),
                "README lists {name} in {file}, which does not define it"
            );
            listed.push(name.to_string());
        }
    }
    for m in MODULES {
        for k in m.kernels {
            assert!(
                listed.iter().any(|l| l == k),
                "{k} ({}.cu) is missing from README",
                m.name
            );
        }
        assert!(
            !m.source.contains("#include"),
            "{}.cu has an #include",
            m.name
        );
    }
    println!(
        "README table: {} kernels in {} files",
        listed.len(),
        MODULES.len()
    );
}

// -- index math -------------------------------------------------------------------

/// Pooling and LRN split their flat index in int only when every index the
/// grid-stride loop forms fits (the tests above run both instantiations).
#[test]
fn index_math_is_int_only_while_every_index_fits() {
    let max = i32::MAX as i64;
    let (grid, block) = launch_1d(1 << 31);
    let threads = grid as i64 * block as i64;
    assert!(hk::index_fits_int(0, threads));
    assert!(hk::index_fits_int(max - threads, threads));
    assert!(!hk::index_fits_int(max - threads + 1, threads));
    assert!(!hk::index_fits_int(1 << 31, threads));
    assert!(!hk::index_fits_int(1 << 40, 1));
    // conv1's pool at batch 128 (the profiled case): 37M inputs, int
    let len = 128 * 96 * 55 * 55;
    let (grid, block) = launch_1d(len);
    assert!(hk::index_fits_int(len as i64, grid as i64 * block as i64));
}

// -- LRN ---------------------------------------------------------------------------

/// x large enough that alpha * window sum of x^2 is comparable to k (so the
/// normalisation, not just the constant k, is exercised).
fn lrn_input(rng: &mut Rng, s: &Nchw) -> Vec<f32> {
    normal(rng, s.len(), 60.0)
}

const LRN_SHAPES: &[Nchw] = &[
    Nchw {
        n: 2,
        c: 96,
        h: 13,
        w: 11,
    },
    Nchw {
        n: 1,
        c: 256,
        h: 7,
        w: 9,
    },
    Nchw {
        n: 3,
        c: 3,
        h: 4,
        w: 5,
    }, // fewer channels than the window
];

#[test]
fn lrn_forward_matches_cpu() {
    let mut rng = Rng::new(11);
    let odd_beta = LrnParams {
        size: 3,
        alpha: 2e-4,
        beta: 0.6,
        k: 1.0,
    };
    for p in [LrnParams::PAPER, odd_beta] {
        for s in LRN_SHAPES {
            let x = lrn_input(&mut rng, s);
            let (mut y, mut scale) = (vec![0.0; s.len()], vec![0.0; s.len()]);
            let (mut y_ref, mut scale_ref) = (vec![0.0; s.len()], vec![0.0; s.len()]);
            hk::lrn_forward(&p, s, &x, &mut y, &mut scale).unwrap();
            lrn::lrn_forward(&p, s, &x, &mut y_ref, &mut scale_ref).unwrap();
            let what = format!("lrn_forward_f32 {s:?} beta {}", p.beta);
            check_close(&format!("{what} y"), &y, &y_ref, 1e-6);
            check_close(&format!("{what} scale"), &scale, &scale_ref, 1e-6);
            // the long long index body computes the same, bit for bit
            let (mut y64, mut scale64) = (vec![0.0; s.len()], vec![0.0; s.len()]);
            hk::lrn_forward_long(&p, s, &x, &mut y64, &mut scale64).unwrap();
            check_identical(&format!("{what} y, long index"), &bits(&y64), &bits(&y));
            check_identical(
                &format!("{what} scale, long index"),
                &bits(&scale64),
                &bits(&scale),
            );
        }
    }
}

#[test]
fn lrn_backward_matches_cpu() {
    let mut rng = Rng::new(12);
    let odd_beta = LrnParams {
        size: 3,
        alpha: 2e-4,
        beta: 0.6,
        k: 1.0,
    };
    for p in [LrnParams::PAPER, odd_beta] {
        for s in LRN_SHAPES {
            let x = lrn_input(&mut rng, s);
            let dy = normal(&mut rng, s.len(), 1.0);
            let (mut y, mut scale) = (vec![0.0; s.len()], vec![0.0; s.len()]);
            lrn::lrn_forward(&p, s, &x, &mut y, &mut scale).unwrap();
            let (mut dx, mut dx_ref) = (vec![0.0; s.len()], vec![0.0; s.len()]);
            hk::lrn_backward(&p, s, &x, &y, &scale, &dy, &mut dx).unwrap();
            lrn::lrn_backward(&p, s, &x, &y, &scale, &dy, &mut dx_ref).unwrap();
            let what = format!("lrn_backward_f32 {s:?} beta {}", p.beta);
            check_close(&what, &dx, &dx_ref, 1e-6);
            let mut dx64 = vec![0.0; s.len()];
            hk::lrn_backward_long(&p, s, &x, &y, &scale, &dy, &mut dx64).unwrap();
            check_identical(&format!("{what}, long index"), &bits(&dx64), &bits(&dx));
        }
    }
}

/// An independent check of the backward kernel: central differences of
/// L(x) = sum(dy * y(x)) through the host forward kernel.
#[test]
fn lrn_backward_matches_finite_differences() {
    let mut rng = Rng::new(13);
    let p = LrnParams::PAPER;
    let s = Nchw {
        n: 2,
        c: 12,
        h: 2,
        w: 3,
    };
    let x = lrn_input(&mut rng, &s);
    let dy = normal(&mut rng, s.len(), 1.0);
    let forward = |x: &[f32]| {
        let (mut y, mut scale) = (vec![0.0; s.len()], vec![0.0; s.len()]);
        hk::lrn_forward(&p, &s, x, &mut y, &mut scale).unwrap();
        (y, scale)
    };
    let loss = |x: &[f32]| -> f64 {
        let (y, _) = forward(x);
        y.iter().zip(&dy).map(|(&y, &d)| y as f64 * d as f64).sum()
    };
    let (y, scale) = forward(&x);
    let mut dx = vec![0.0; s.len()];
    hk::lrn_backward(&p, &s, &x, &y, &scale, &dy, &mut dx).unwrap();
    let h = 0.5f32; // x is ~60: a step of 1% of it
    let numeric: Vec<f32> = (0..s.len())
        .map(|i| {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[i] += h;
            xm[i] -= h;
            ((loss(&xp) - loss(&xm)) / (xp[i] - xm[i]) as f64) as f32
        })
        .collect();
    // The cross-channel term must matter here, or this would only test dy * scale^-beta.
    let direct: Vec<f32> = (0..s.len())
        .map(|i| dy[i] * scale[i].powf(-p.beta))
        .collect();
    assert!(
        max_rel_err(&direct, &numeric) > 1e-2,
        "cross-channel term too small to test"
    );
    // The forward runs in f32, so the differences carry its rounding (about 2e-3
    // here at the best step; smaller steps are noisier, larger ones less
    // accurate); a wrong or missing cross-channel term is off by more than 1e-2.
    check_close(
        "lrn_backward_f32 vs finite differences",
        &dx,
        &numeric,
        5e-3,
    );
}

// -- dropout --------------------------------------------------------------------------

#[test]
fn dropout_matches_cpu_bit_for_bit() {
    let mut rng = Rng::new(21);
    // fc6/fc7 activations of a batch of 4, plus an odd length
    for (len, p, seed) in [
        (4 * 4096, 0.5f32, 7u64),
        (12_345, 0.3, u64::MAX),
        (1000, 0.0, 3),
    ] {
        let x = normal(&mut rng, len, 1.0);
        let (mut xk, mut mk) = (x.clone(), vec![0.0; len]);
        let (mut xr, mut mr) = (x.clone(), vec![0.0; len]);
        hk::dropout_forward(p, seed, &mut xk, &mut mk).unwrap();
        elementwise::dropout_forward(p, seed, &mut xr, &mut mr).unwrap();
        check_identical(
            &format!("dropout_forward_f32 mask len {len} p {p}"),
            &bits(&mk),
            &bits(&mr),
        );
        check_identical(
            &format!("dropout_forward_f32 x len {len} p {p}"),
            &bits(&xk),
            &bits(&xr),
        );
        let dy = normal(&mut rng, len, 1.0);
        let (mut dk, mut dr) = (dy.clone(), dy);
        hk::dropout_backward(&mk, &mut dk).unwrap();
        elementwise::dropout_backward(&mr, &mut dr).unwrap();
        check_identical(
            &format!("dropout_backward_f32 len {len}"),
            &bits(&dk),
            &bits(&dr),
        );
    }
    let (mut x, mut m) = (vec![1.0; 4], vec![0.0; 4]);
    assert!(matches!(
        hk::dropout_forward(1.0, 0, &mut x, &mut m),
        Err(Error::Shape { .. })
    ));
}

// -- softmax cross-entropy -------------------------------------------------------------------

#[test]
fn softmax_xent_matches_cpu() {
    let mut rng = Rng::new(31);
    for (n, classes, spread) in [(32usize, 1000usize, 4.0f32), (5, 10, 30.0), (3, 1, 1.0)] {
        let logits = normal(&mut rng, n * classes, spread);
        let labels: Vec<u32> = (0..n).map(|_| rng.below(classes) as u32).collect();
        let (mut probs, mut row_loss) = (vec![0.0; n * classes], vec![0.0; n]);
        let mut probs_ref = vec![0.0; n * classes];
        let loss =
            hk::softmax_xent_forward(n, classes, &logits, &labels, &mut probs, &mut row_loss)
                .unwrap();
        let loss_ref =
            elementwise::softmax_xent_forward(n, classes, &logits, &labels, &mut probs_ref)
                .unwrap();
        check_close(
            &format!("softmax_xent_forward_f32 {n}x{classes} probs"),
            &probs,
            &probs_ref,
            1e-6,
        );
        check_close(
            &format!("softmax_xent_forward_f32 {n}x{classes} mean loss"),
            &[loss],
            &[loss_ref],
            1e-6,
        );

        let (mut d, mut d_ref) = (vec![0.0; n * classes], vec![0.0; n * classes]);
        hk::softmax_xent_backward(n, classes, &probs_ref, &labels, &mut d).unwrap();
        elementwise::softmax_xent_backward(n, classes, &probs_ref, &labels, &mut d_ref).unwrap();
        check_identical(
            &format!("softmax_xent_backward_f32 {n}x{classes}"),
            &bits(&d),
            &bits(&d_ref),
        );
    }
    let (mut probs, mut row_loss) = (vec![0.0; 4], vec![0.0; 2]);
    let bad = hk::softmax_xent_forward(2, 2, &[0.0; 4], &[0, 2], &mut probs, &mut row_loss);
    assert!(
        matches!(bad, Err(Error::Shape { .. })),
        "label out of range must be refused"
    );
}

/// The device-side mean of the row losses is the host's average (f64 sum in
/// row order, divided by n, rounded once) bit for bit, so the loss the
/// trainer reads back is the one `softmax_xent_forward` returned; a NaN row
/// makes the mean NaN, and no rows give 0.
#[test]
fn softmax_xent_mean_is_the_host_average() {
    let mut rng = Rng::new(37);
    for n in [1usize, 5, 128, 1000] {
        let rows: Vec<f32> = (0..n).map(|_| (rng.normal() as f32).abs() * 3.0).collect();
        let want = (rows.iter().map(|&v| v as f64).fold(0.0, |a, v| a + v) / n as f64) as f32;
        let got = hk::softmax_xent_mean(&rows).unwrap();
        check_identical(
            &format!("softmax_xent_mean_f32 n={n}"),
            &[got.to_bits()],
            &[want.to_bits()],
        );
    }
    // The same rows as softmax_xent_forward_f32 wrote them, against the mean it returns.
    let (n, classes) = (32, 1000);
    let logits = normal(&mut rng, n * classes, 4.0);
    let labels: Vec<u32> = (0..n).map(|_| rng.below(classes) as u32).collect();
    let (mut probs, mut row_loss) = (vec![0.0; n * classes], vec![0.0; n]);
    let loss =
        hk::softmax_xent_forward(n, classes, &logits, &labels, &mut probs, &mut row_loss).unwrap();
    let mean = hk::softmax_xent_mean(&row_loss).unwrap();
    check_identical(
        "softmax_xent_mean_f32 vs softmax_xent_forward's mean",
        &[mean.to_bits()],
        &[loss.to_bits()],
    );
    let nan = hk::softmax_xent_mean(&[1.0, f32::NAN, 2.0]).unwrap();
    assert!(
        nan.is_nan(),
        "a NaN row loss must give a NaN mean, not {nan}"
    );
    assert_eq!(
        hk::softmax_xent_mean(&[]).unwrap().to_bits(),
        0.0f32.to_bits()
    );
    println!("softmax_xent_mean_f32: NaN row gives NaN, no rows give 0");
}

/// [n, classes] softmax rows with hand-made cases in front of random ones:
/// all classes tied; the label tied with another class; the label alone on
/// top; the label's probability NaN; another class's NaN (so the label wins
/// among the numbers); and labels at the first and last class.
fn step_metrics_case(rng: &mut Rng, n: usize, classes: usize) -> (Vec<f32>, Vec<u32>) {
    assert!(n >= 6 && classes >= 4);
    let mut probs = vec![0.0; n * classes];
    let mut probs_tmp = vec![0.0; n * classes];
    let logits = normal(rng, n * classes, 3.0);
    let mut labels: Vec<u32> = (0..n).map(|_| rng.below(classes) as u32).collect();
    elementwise::softmax_xent_forward(n, classes, &logits, &labels, &mut probs_tmp).unwrap();
    probs.copy_from_slice(&probs_tmp);
    let row = |r: usize| r * classes..(r + 1) * classes;
    probs[row(0)].fill(1.0 / classes as f32);
    probs[row(1)].fill(0.0);
    (probs[classes + 1], probs[classes + 2], labels[1]) = (0.5, 0.5, 2);
    probs[row(2)].fill(0.01);
    (probs[2 * classes + classes - 1], labels[2]) = (0.9, (classes - 1) as u32);
    (probs[3 * classes], labels[3]) = (f32::NAN, 0);
    probs[row(4)].fill(0.1);
    (probs[4 * classes + 1], probs[4 * classes + 3], labels[4]) = (f32::NAN, 0.7, 3);
    labels[5] = 0;
    (probs, labels)
}

/// step_hits + step_record against the CPU op, bit for bit, on ties, NaNs
/// and random rows; the hits also against `eval::topk_hits`; a NaN loss is
/// recorded as NaN; the other slots are left alone.
#[test]
fn step_metrics_match_cpu() {
    let mut rng = Rng::new(43);
    for (n, classes) in [(6usize, 4usize), (40, 10), (128, 1000)] {
        let (probs, labels) = step_metrics_case(&mut rng, n, classes);
        let (top1, _) = alexnet_cuda::eval::topk_hits(&probs, &labels, classes);
        for (loss, slot) in [
            (std::f32::consts::LN_10, 0usize),
            (f32::NAN, 3),
            (f32::INFINITY, 4),
        ] {
            let (mut got, mut want) = (vec![-1.0f32; 10], vec![-1.0f32; 10]);
            hk::record_step_metrics(n, classes, &probs, &labels, loss, slot, &mut got).unwrap();
            elementwise::record_step_metrics(n, classes, &probs, &labels, &[loss], slot, &mut want)
                .unwrap();
            check_identical(
                &format!("step_hits_f32 + step_record_f32 {n}x{classes} slot {slot} loss {loss}"),
                &bits(&got),
                &bits(&want),
            );
            assert_eq!(
                got[2 * slot + 1],
                top1 as f32,
                "hits against eval::topk_hits"
            );
            assert_eq!(got[2 * slot].to_bits(), loss.to_bits(), "the loss as given");
        }
    }
    let mut m = vec![0.0; 4];
    let bad_label = hk::record_step_metrics(2, 2, &[0.5; 4], &[0, 2], 1.0, 0, &mut m);
    assert!(
        matches!(bad_label, Err(Error::Shape { .. })),
        "label out of range"
    );
    let bad_slot = hk::record_step_metrics(2, 2, &[0.5; 4], &[0, 1], 1.0, 2, &mut m);
    assert!(
        matches!(bad_slot, Err(Error::Shape { .. })),
        "slot past the buffer"
    );
}

// -- SGD -------------------------------------------------------------------------------

#[test]
fn sgd_matches_cpu_bit_for_bit() {
    let mut rng = Rng::new(41);
    let p = SgdParams {
        lr: 0.01,
        momentum: 0.9,
        weight_decay: 5e-4,
    };
    let len = 96 * 3 * 11 * 11 + 7; // conv1's weights, and a ragged tail
    let w = normal(&mut rng, len, 0.01);
    let g = normal(&mut rng, len, 0.1);
    let v = normal(&mut rng, len, 0.001);
    let (mut wk, mut vk) = (w.clone(), v.clone());
    let (mut wr, mut vr) = (w, v);
    for _ in 0..3 {
        hk::sgd_update(&p, &mut wk, &g, &mut vk).unwrap();
        elementwise::sgd_update(&p, &mut wr, &g, &mut vr).unwrap();
    }
    check_identical("sgd_update_f32 w (3 steps)", &bits(&wk), &bits(&wr));
    check_identical("sgd_update_f32 v (3 steps)", &bits(&vk), &bits(&vr));
}

// -- bias and ReLU ---------------------------------------------------------------------

#[test]
fn bias_relu_matches_cpu() {
    let mut rng = Rng::new(51);
    let s = Nchw {
        n: 2,
        c: 96,
        h: 27,
        w: 27,
    };
    let mut y = normal(&mut rng, s.len(), 1.0);
    // Some NaNs, which the ReLU must pass on as the CPU's does.
    y.iter_mut().step_by(97).for_each(|v| *v = f32::NAN);
    let b = normal(&mut rng, s.c, 0.5);
    for relu in [false, true] {
        let mut yk = y.clone();
        hk::bias_relu_forward(&s, &mut yk, &b, relu).unwrap();
        let mut yr: Vec<f32> = y
            .iter()
            .enumerate()
            .map(|(i, &v)| v + b[(i / (s.h * s.w)) % s.c])
            .collect();
        if relu {
            elementwise::relu_forward(&mut yr);
        }
        check_identical(
            &format!("bias_relu_forward_f32 relu={relu}"),
            &bits(&yk),
            &bits(&yr),
        );
    }

    let (mut xk, mut xr) = (y.clone(), y.clone());
    hk::relu_forward(&mut xk);
    elementwise::relu_forward(&mut xr);
    check_identical("relu_forward_f32", &bits(&xk), &bits(&xr));

    let dy = normal(&mut rng, s.len(), 1.0);
    let (mut dk, mut dr) = (dy.clone(), dy.clone());
    hk::relu_backward(&xr, &mut dk).unwrap();
    elementwise::relu_backward(&xr, &mut dr).unwrap();
    check_identical("relu_backward_f32", &bits(&dk), &bits(&dr));

    // add: the towers' two partial input gradients, against the CPU backend's.
    let src = normal(&mut rng, s.len(), 1.0);
    let (mut ak, mut ar) = (dy.clone(), dy.clone());
    hk::add(&mut ak, &src).unwrap();
    CpuBackend::new().add_assign(&mut ar, &src).unwrap();
    check_identical("add_f32", &bits(&ak), &bits(&ar));

    // db as conv2d_backward_bias computes it for a conv with this output shape
    let g = ConvGeom {
        n: s.n,
        c_in: 1,
        h: s.h,
        w: s.w,
        c_out: s.c,
        k: 1,
        stride: 1,
        pad: 0,
        groups: 1,
    };
    let (mut db, mut db_ref) = (vec![0.0; s.c], vec![0.0; s.c]);
    hk::bias_backward(&s, &dy, &mut db).unwrap();
    conv::conv2d_backward_bias(&g, &dy, &mut db_ref).unwrap();
    check_close(
        "bias_backward_partial_f32 + bias_backward_reduce_f32",
        &db,
        &db_ref,
        1e-6,
    );
}

// -- max pooling ------------------------------------------------------------------------

#[test]
fn max_pool_matches_cpu_bit_for_bit() {
    let mut rng = Rng::new(61);
    let shapes = [
        PoolGeom {
            n: 2,
            c: 96,
            h: 55,
            w: 55,
            size: 3,
            stride: 2,
        },
        PoolGeom {
            n: 2,
            c: 256,
            h: 13,
            w: 13,
            size: 3,
            stride: 2,
        },
        PoolGeom {
            n: 1,
            c: 8,
            h: 12,
            w: 10,
            size: 2,
            stride: 2,
        }, // the non-overlapping ablation
    ];
    for g in shapes {
        for (ties, nans) in [(false, false), (true, false), (false, true)] {
            // with ties, values are small integers, so most windows hold equal maxima
            let mut x: Vec<f32> = if ties {
                (0..g.x_len()).map(|_| rng.below(3) as f32).collect()
            } else {
                normal(&mut rng, g.x_len(), 1.0)
            };
            // NaNs, some windows' first value and some not, win as on the CPU
            if nans {
                x.iter_mut().step_by(7).for_each(|v| *v = f32::NAN);
            }
            let (mut y, mut am) = (vec![0.0; g.y_len()], vec![0u32; g.y_len()]);
            let (mut y_ref, mut am_ref) = (vec![0.0; g.y_len()], vec![0u32; g.y_len()]);
            hk::max_pool_forward(&g, &x, &mut y, &mut am).unwrap();
            pool::max_pool_forward(&g, &x, &mut y_ref, &mut am_ref).unwrap();
            let what = format!(
                "{}x{}x{}x{} size {} stride {} ties={ties} nans={nans}",
                g.n, g.c, g.h, g.w, g.size, g.stride
            );
            check_identical(
                &format!("max_pool_forward_f32 {what} y"),
                &bits(&y),
                &bits(&y_ref),
            );
            check_identical(&format!("max_pool_forward_f32 {what} argmax"), &am, &am_ref);
            // the long long index body computes the same, bit for bit
            let (mut y64, mut am64) = (vec![0.0; g.y_len()], vec![0u32; g.y_len()]);
            hk::max_pool_forward_long(&g, &x, &mut y64, &mut am64).unwrap();
            check_identical(
                &format!("max_pool_forward_f32 {what} y, long index"),
                &bits(&y64),
                &bits(&y),
            );
            check_identical(
                &format!("max_pool_forward_f32 {what} argmax, long index"),
                &am64,
                &am,
            );

            let dy = normal(&mut rng, g.y_len(), 1.0);
            let (mut dx, mut dx_ref) = (vec![0.0; g.x_len()], vec![0.0; g.x_len()]);
            hk::max_pool_backward(&g, &dy, &am, &mut dx).unwrap();
            pool::max_pool_backward(&g, &dy, &am_ref, &mut dx_ref).unwrap();
            check_identical(
                &format!("max_pool_backward_f32 {what}"),
                &bits(&dx),
                &bits(&dx_ref),
            );
            let mut dx64 = vec![0.0; g.x_len()];
            hk::max_pool_backward_long(&g, &dy, &am, &mut dx64).unwrap();
            check_identical(
                &format!("max_pool_backward_f32 {what}, long index"),
                &bits(&dx64),
                &bits(&dx),
            );
        }
    }
    // a winner outside its window is refused, not silently dropped
    let g = PoolGeom {
        n: 1,
        c: 1,
        h: 4,
        w: 4,
        size: 2,
        stride: 2,
    };
    let mut dx = vec![0.0; 16];
    let bad = hk::max_pool_backward(&g, &[1.0; 4], &[0, 0, 10, 15], &mut dx);
    assert!(matches!(bad, Err(Error::Shape { .. })));
}

// -- im2col / col2im, through a convolution ------------------------------------------------

/// Per (image, group) block t: y_t[M, P] = w_g[M, K] . col_t[K, P] (+ b), in f64.
fn gemm_conv_forward(g: &ConvGeom, col: &[f32], w: &[f32], b: &[f32]) -> Vec<f32> {
    let (m, kk, p) = (
        g.c_out / g.groups,
        g.c_in / g.groups * g.k * g.k,
        g.h_out() * g.w_out(),
    );
    let mut y = vec![0.0f32; g.y_len()];
    for t in 0..g.n * g.groups {
        let grp = t % g.groups;
        let col_t = &col[t * kk * p..(t + 1) * kk * p];
        for o in 0..m {
            let w_row = &w[(grp * m + o) * kk..(grp * m + o + 1) * kk];
            let mut acc = vec![b[grp * m + o] as f64; p];
            for (r, &wv) in w_row.iter().enumerate() {
                for (a, &cv) in acc.iter_mut().zip(&col_t[r * p..(r + 1) * p]) {
                    *a += wv as f64 * cv as f64;
                }
            }
            // block t = image * groups + grp, and y's channels are grp * m + o
            for (dst, a) in y[(t * m + o) * p..(t * m + o + 1) * p].iter_mut().zip(acc) {
                *dst = a as f32;
            }
        }
    }
    y
}

/// dcol_t[K, P] = w_g^T[K, M] . dy_t[M, P], in f64.
fn gemm_conv_dcol(g: &ConvGeom, w: &[f32], dy: &[f32]) -> Vec<f32> {
    let (m, kk, p) = (
        g.c_out / g.groups,
        g.c_in / g.groups * g.k * g.k,
        g.h_out() * g.w_out(),
    );
    let mut dcol = vec![0.0f32; g.n * g.groups * kk * p];
    for t in 0..g.n * g.groups {
        let grp = t % g.groups;
        for r in 0..kk {
            let mut acc = vec![0.0f64; p];
            for o in 0..m {
                let wv = w[(grp * m + o) * kk + r] as f64;
                for (a, &d) in acc
                    .iter_mut()
                    .zip(&dy[(t * m + o) * p..(t * m + o + 1) * p])
                {
                    *a += wv * d as f64;
                }
            }
            for (dst, a) in dcol[(t * kk + r) * p..(t * kk + r + 1) * p]
                .iter_mut()
                .zip(acc)
            {
                *dst = a as f32;
            }
        }
    }
    dcol
}

/// dw_g[M, K] = sum over images of dy_t[M, P] . col_t^T, in f64.
fn gemm_conv_dw(g: &ConvGeom, col: &[f32], dy: &[f32]) -> Vec<f32> {
    let (m, kk, p) = (
        g.c_out / g.groups,
        g.c_in / g.groups * g.k * g.k,
        g.h_out() * g.w_out(),
    );
    let mut dw = vec![0.0f64; g.w_len()];
    for t in 0..g.n * g.groups {
        let grp = t % g.groups;
        for o in 0..m {
            let d = &dy[(t * m + o) * p..(t * m + o + 1) * p];
            for r in 0..kk {
                let c = &col[(t * kk + r) * p..(t * kk + r + 1) * p];
                dw[(grp * m + o) * kk + r] += d
                    .iter()
                    .zip(c)
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum::<f64>();
            }
        }
    }
    dw.into_iter().map(|v| v as f32).collect()
}

/// im2col straight from its definition, per (image, group) block t:
/// col[t][(c*k + i)*k + j][oy*wo + ox] = x[t][c][oy*s - pad + i][ox*s - pad + j], 0 outside.
fn naive_im2col(g: &ConvGeom, x: &[f32]) -> Vec<f32> {
    let (cg, ho, wo) = (g.c_in / g.groups, g.h_out(), g.w_out());
    let mut col = Vec::with_capacity(g.n * g.groups * cg * g.k * g.k * ho * wo);
    for t in 0..g.n * g.groups {
        for c in 0..cg {
            for i in 0..g.k {
                for j in 0..g.k {
                    for oy in 0..ho {
                        for ox in 0..wo {
                            let iy = (oy * g.stride + i) as isize - g.pad as isize;
                            let ix = (ox * g.stride + j) as isize - g.pad as isize;
                            let inside =
                                iy >= 0 && ix >= 0 && iy < g.h as isize && ix < g.w as isize;
                            col.push(if inside {
                                x[((t * cg + c) * g.h + iy as usize) * g.w + ix as usize]
                            } else {
                                0.0
                            });
                        }
                    }
                }
            }
        }
    }
    col
}

/// col2im as the CPU reference does it: zero, then scatter-add every column
/// entry to its pixel, rows (c, i, j) in order.
fn naive_col2im(g: &ConvGeom, col: &[f32]) -> Vec<f32> {
    let (cg, ho, wo) = (g.c_in / g.groups, g.h_out(), g.w_out());
    let mut x = vec![0.0f32; g.x_len()];
    let mut it = col.iter();
    for t in 0..g.n * g.groups {
        for c in 0..cg {
            for i in 0..g.k {
                for j in 0..g.k {
                    for oy in 0..ho {
                        for ox in 0..wo {
                            let v = *it.next().unwrap();
                            let iy = (oy * g.stride + i) as isize - g.pad as isize;
                            let ix = (ox * g.stride + j) as isize - g.pad as isize;
                            if iy >= 0 && ix >= 0 && iy < g.h as isize && ix < g.w as isize {
                                x[((t * cg + c) * g.h + iy as usize) * g.w + ix as usize] += v;
                            }
                        }
                    }
                }
            }
        }
    }
    x
}

/// The CPU conv sums K = c*k*k products in f32 (363 for conv1, 1200 for
/// conv2's towers); the GEMMs here sum in f64. Rounding differences of a few
/// f32 ulps of the largest terms show up where an output nearly cancels, up
/// to ~2e-4 of the floor (1e-3 of the tensor's scale); a wrong index in
/// im2col or col2im gives errors of order 1.
const CONV_TOL: f64 = 1e-3;

#[test]
fn im2col_col2im_match_cpu_conv() {
    let mut rng = Rng::new(71);
    let shapes = [
        // conv1: 11x11 stride 4 on 227x227 (fewer filters, to keep the test quick)
        ConvGeom {
            n: 2,
            c_in: 3,
            h: 227,
            w: 227,
            c_out: 8,
            k: 11,
            stride: 4,
            pad: 0,
            groups: 1,
        },
        // conv2: 5x5 pad 2 on 27x27, two towers
        ConvGeom {
            n: 2,
            c_in: 48,
            h: 27,
            w: 27,
            c_out: 32,
            k: 5,
            stride: 1,
            pad: 2,
            groups: 2,
        },
        // conv3-5: 3x3 pad 1 on 13x13
        ConvGeom {
            n: 2,
            c_in: 64,
            h: 13,
            w: 13,
            c_out: 48,
            k: 3,
            stride: 1,
            pad: 1,
            groups: 2,
        },
        ConvGeom {
            n: 1,
            c_in: 32,
            h: 13,
            w: 13,
            c_out: 16,
            k: 3,
            stride: 1,
            pad: 1,
            groups: 1,
        },
        // stride 2 with padding: taps that skip rows
        ConvGeom {
            n: 1,
            c_in: 4,
            h: 9,
            w: 8,
            c_out: 6,
            k: 4,
            stride: 2,
            pad: 3,
            groups: 2,
        },
    ];
    for g in shapes {
        let x = normal(&mut rng, g.x_len(), 1.0);
        let w = normal(&mut rng, g.w_len(), 0.1);
        let b = normal(&mut rng, g.c_out, 0.1);
        let what = format!(
            "c_in {} {}x{} k {} stride {} pad {} groups {}",
            g.c_in, g.h, g.w, g.k, g.stride, g.pad, g.groups
        );

        let mut col = vec![0.0; hk::im2col_len(&g).unwrap()];
        hk::im2col(&g, &x, &mut col).unwrap();
        check_identical(
            &format!("im2col_f32 vs its definition, {what}"),
            &bits(&col),
            &bits(&naive_im2col(&g, &x)),
        );
        let y = gemm_conv_forward(&g, &col, &w, &b);
        let mut y_ref = vec![0.0; g.y_len()];
        conv::conv2d_forward(&g, &x, &w, &b, &mut y_ref).unwrap();
        check_close(
            &format!("im2col_f32 + GEMM vs conv2d_forward, {what}"),
            &y,
            &y_ref,
            CONV_TOL,
        );

        let dy = normal(&mut rng, g.y_len(), 1.0);
        let dw = gemm_conv_dw(&g, &col, &dy);
        let mut dw_ref = vec![0.0; g.w_len()];
        conv::conv2d_backward_filter(&g, &x, &dy, &mut dw_ref).unwrap();
        check_close(
            &format!("im2col_f32 + GEMM vs conv2d_backward_filter, {what}"),
            &dw,
            &dw_ref,
            CONV_TOL,
        );

        let dcol = gemm_conv_dcol(&g, &w, &dy);
        let mut dx = vec![f32::NAN; g.x_len()]; // col2im overwrites
        hk::col2im(&g, &dcol, &mut dx).unwrap();
        check_identical(
            &format!("col2im_f32 vs a scatter-add, {what}"),
            &bits(&dx),
            &bits(&naive_col2im(&g, &dcol)),
        );
        let mut dx_ref = vec![0.0; g.x_len()];
        conv::conv2d_backward_data(&g, &w, &dy, &mut dx_ref).unwrap();
        check_close(
            &format!("GEMM + col2im_f32 vs conv2d_backward_data, {what}"),
            &dx,
            &dx_ref,
            CONV_TOL,
        );
    }
}

// -- precision conversion ----------------------------------------------------------------

/// f32 values around every 16-bit value: the value itself, the midpoints to
/// its neighbours (the ties) and one f32 ulp either side of each, for 16-bit
/// formats whose value of `bits` is `to_f32(bits)`.
fn around_every_16_bit_value(to_f32: impl Fn(u16) -> f32) -> Vec<f32> {
    let mut v = Vec::new();
    for h in 0..=u16::MAX {
        let a = to_f32(h);
        v.push(a);
        if !a.is_finite() {
            continue;
        }
        let next = to_f32(h.wrapping_add(1));
        if next.is_finite() && next.abs() > a.abs() && next.signum() == a.signum() {
            let mid = ((a as f64 + next as f64) / 2.0) as f32; // exact: one more bit
            for m in [
                mid,
                f32::from_bits(mid.to_bits() - 1),
                f32::from_bits(mid.to_bits() + 1),
            ] {
                v.push(m);
            }
        }
    }
    v
}

/// Edge cases shared by both formats: zeros, infinities, NaNs with payloads,
/// the f32 extremes and subnormals, and values near each format's overflow.
fn special_f32() -> Vec<f32> {
    let mut v = vec![
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7f80_0001), // signalling NaN
        f32::from_bits(0xffc1_2345),
        f32::from_bits(0x7fbf_ffff),
        f32::MAX,
        f32::MIN,
        f32::MIN_POSITIVE,
        f32::from_bits(1),
        f32::from_bits(0x8000_0001),
        65504.0,
        65519.0,
        f32::from_bits(65520.0f32.to_bits() - 1), // just below f16's overflow tie
        65520.0,                                  // the tie: rounds to infinity
        65536.0,
        -65520.0,
        2f32.powi(-24),                               // smallest f16 subnormal
        2f32.powi(-25),                               // half of it: a tie, to zero
        f32::from_bits(2f32.powi(-25).to_bits() + 1), // just above: up
        3.0 * 2f32.powi(-25),                         // tie between 1 and 2 units: to 2
        1023.0 * 2f32.powi(-24),                      // largest f16 subnormal
        2f32.powi(-14),                               // smallest f16 normal
        1.0 + 1.0 / 2048.0,
        1.0 + 3.0 / 2048.0,
        1.0 + 1.0 / 256.0,
        1.0 + 3.0 / 256.0,
    ];
    let mut rng = Rng::new(81);
    v.extend((0..200_000).map(|_| f32::from_bits(rng.next_u64() as u32)));
    v
}

/// Compares bits, but any NaN with any NaN only when `nan_bits_too` is false.
fn conv_check(what: &str, got: &[u32], want: &[u32], is_nan: impl Fn(u32) -> bool) {
    let mut nan_payload_diffs = 0usize;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if g != w {
            assert!(
                is_nan(g) && is_nan(w),
                "{what}: value {i}: {g:#x} vs reference {w:#x}"
            );
            nan_payload_diffs += 1;
        }
    }
    println!(
        "{what}: max rel err 0 (bit-identical to the half crate over {} values, {} NaNs with other payload bits)",
        got.len(),
        nan_payload_diffs
    );
}

/// `f32_to_<name>` over special values and the neighbours of every 16-bit
/// value, and `<name>_to_f32` over all 65536 bit patterns, against the half
/// crate's `to_f32` / `from_f32` (`is_nan16`: a NaN's 16 bits).
fn conversions_match_half_crate(
    name: &str,
    to_f32: fn(u16) -> f32,
    from_f32: fn(f32) -> u16,
    is_nan16: fn(u32) -> bool,
    narrow: fn(&[f32], &mut [u16]) -> alexnet_cuda::Result<()>,
    widen: fn(&[u16], &mut [f32]) -> alexnet_cuda::Result<()>,
) {
    let mut src = special_f32();
    src.extend(around_every_16_bit_value(to_f32));
    let mut dst = vec![0u16; src.len()];
    narrow(&src, &mut dst).unwrap();
    let want: Vec<u32> = src.iter().map(|&v| from_f32(v) as u32).collect();
    let got: Vec<u32> = dst.iter().map(|&h| h as u32).collect();
    conv_check(&format!("f32_to_{name}"), &got, &want, is_nan16);

    let all: Vec<u16> = (0..=u16::MAX).collect();
    let mut back = vec![0.0f32; all.len()];
    widen(&all, &mut back).unwrap();
    let want: Vec<u32> = all.iter().map(|&h| to_f32(h).to_bits()).collect();
    conv_check(
        &format!("{name}_to_f32 (all 65536)"),
        &bits(&back),
        &want,
        |b| f32::from_bits(b).is_nan(),
    );
}

#[test]
fn f16_conversions_match_half_crate() {
    conversions_match_half_crate(
        "f16",
        |h| half::f16::from_bits(h).to_f32(),
        |v| half::f16::from_f32(v).to_bits(),
        |h| h & 0x7c00 == 0x7c00 && h & 0x3ff != 0,
        hk::f32_to_f16,
        hk::f16_to_f32,
    );
}

#[test]
fn bf16_conversions_match_half_crate() {
    conversions_match_half_crate(
        "bf16",
        |h| half::bf16::from_bits(h).to_f32(),
        |v| half::bf16::from_f32(v).to_bits(),
        |h| h & 0x7f80 == 0x7f80 && h & 0x7f != 0,
        hk::f32_to_bf16,
        hk::bf16_to_f32,
    );
}

#[test]
fn unscale_check_scales_and_flags_non_finite() {
    let mut rng = Rng::new(91);
    let g = normal(&mut rng, 100_003, 1000.0);
    let inv = 1.0 / 1024.0;
    let mut gk = g.clone();
    assert!(!hk::unscale_check(&mut gk, inv));
    let want: Vec<f32> = g.iter().map(|&v| v * inv).collect();
    check_identical("unscale_check_f32 g", &bits(&gk), &bits(&want));
    for bad in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
        let mut gb = g.clone();
        gb[77_777] = bad;
        assert!(hk::unscale_check(&mut gb, inv), "{bad} not flagged");
    }
    // finite values that overflow once scaled up are flagged too
    assert!(hk::unscale_check(&mut [f32::MAX, 1.0], 2.0));
    println!("unscale_check_f32: overflow flagged for inf, -inf, NaN and scaled overflow");
}

// -- launch shape ------------------------------------------------------------------------

/// Kernels are grid-stride loops: a capped grid (more elements than
/// 65535 * 256 threads) must still cover every element.
#[test]
fn capped_grid_covers_every_element() {
    let len = 65535 * 256 + 1000;
    assert_eq!(launch_1d(len).0, 65535);
    let mut x: Vec<f32> = (0..len)
        .map(|i| if i % 2 == 0 { -1.0 } else { 1.0 })
        .collect();
    hk::relu_forward(&mut x);
    let wrong = x
        .iter()
        .enumerate()
        .filter(|&(i, &v)| v != if i % 2 == 0 { 0.0 } else { 1.0 })
        .count();
    println!("relu_forward_f32 over {len} elements with a capped grid: {wrong} wrong");
    assert_eq!(wrong, 0);
}

// -- 16-bit storage ------------------------------------------------------------------------
//
// Each `_f16` / `_bf16` kernel gets inputs already rounded to 16 bits; the
// reference is the CPU (or, where stated, the f32 kernel) on those inputs
// widened to f32, and the kernel's 16-bit output is widened and compared with
// the same measure as above. The kernels compute in f32 and round each output
// once, to nearest even, so an output is off the f32 result by at most half
// an ulp: a relative 2^-11 (4.9e-4) for f16 and 2^-8 (3.9e-3) for bf16 (11
// and 8 significant bits). The bounds, `tol16`, are about twice that: 1e-3
// and 8e-3. Where two roundings stand between the kernel and the reference
// (dropout's forward, whose mask is 1/(1-p) rounded), the bound is doubled.
// f16 subnormals (below 6.1e-5) have a fixed absolute error of at most 2^-25,
// so the tests keep the tensor's scale well above the floor's reach (the
// floor is 1e-3 of it). What is exact stays exact: dropout masks and which
// elements drop, pool argmax and values, im2col, the f32 master weights.

use hk::Half;

const HALVES: [Half; 2] = [Half::F16, Half::Bf16];

/// The bound for one rounding to `t` (see above).
fn tol16(t: Half) -> f64 {
    match t {
        Half::F16 => 1e-3,
        Half::Bf16 => 8e-3,
    }
}

fn name16(t: Half) -> &'static str {
    match t {
        Half::F16 => "f16",
        Half::Bf16 => "bf16",
    }
}

/// f32 -> 16-bit bits, round to nearest even (the half crate).
fn narrow(t: Half, v: &[f32]) -> Vec<u16> {
    v.iter()
        .map(|&x| match t {
            Half::F16 => half::f16::from_f32(x).to_bits(),
            Half::Bf16 => half::bf16::from_f32(x).to_bits(),
        })
        .collect()
}

/// 16-bit bits -> f32, exact.
fn widen(t: Half, v: &[u16]) -> Vec<f32> {
    v.iter()
        .map(|&h| match t {
            Half::F16 => half::f16::from_bits(h).to_f32(),
            Half::Bf16 => half::bf16::from_bits(h).to_f32(),
        })
        .collect()
}

/// Normal values with the given scale, rounded to `t`.
fn normal16(t: Half, rng: &mut Rng, len: usize, scale: f32) -> Vec<u16> {
    narrow(t, &normal(rng, len, scale))
}

/// Prints and asserts the 16-bit output `got` against the f32 reference
/// within `tol`; also prints whether `got` is exactly the reference rounded
/// once (it is wherever the kernel's f32 arithmetic is the reference's).
fn check16(what: &str, t: Half, got: &[u16], reference: &[f32], tol: f64) {
    let rounded = narrow(t, reference);
    let same = got.iter().zip(&rounded).filter(|(a, b)| a == b).count();
    let err = max_rel_err(&widen(t, got), reference);
    println!(
        "{what}: max rel err {err:.2e} (tolerance {tol:.0e}); {same} of {} equal the reference rounded once",
        got.len()
    );
    assert!(err <= tol, "{what}: max rel err {err:e} > {tol:e}");
}

#[test]
fn lrn_16_matches_cpu() {
    let mut rng = Rng::new(111);
    for t in HALVES {
        for s in LRN_SHAPES {
            let p = LrnParams::PAPER;
            let x = narrow(t, &lrn_input(&mut rng, s));
            let xw = widen(t, &x);
            let (mut y, mut scale) = (vec![0u16; s.len()], vec![0u16; s.len()]);
            hk::lrn_forward_16(t, &p, s, &x, &mut y, &mut scale).unwrap();
            let (mut y_ref, mut scale_ref) = (vec![0.0; s.len()], vec![0.0; s.len()]);
            lrn::lrn_forward(&p, s, &xw, &mut y_ref, &mut scale_ref).unwrap();
            let what = format!("lrn_forward_{} {s:?}", name16(t));
            check16(&format!("{what} y"), t, &y, &y_ref, tol16(t));
            check16(&format!("{what} scale"), t, &scale, &scale_ref, tol16(t));

            // backward from the 16-bit forward's outputs, as training runs it
            let dy = normal16(t, &mut rng, s.len(), 1.0);
            let mut dx = vec![0u16; s.len()];
            hk::lrn_backward_16(t, &p, s, &x, &y, &scale, &dy, &mut dx).unwrap();
            let mut dx_ref = vec![0.0; s.len()];
            let (yw, sw, dyw) = (widen(t, &y), widen(t, &scale), widen(t, &dy));
            lrn::lrn_backward(&p, s, &xw, &yw, &sw, &dyw, &mut dx_ref).unwrap();
            check16(
                &format!("lrn_backward_{} {s:?}", name16(t)),
                t,
                &dx,
                &dx_ref,
                tol16(t),
            );
        }
    }
}

#[test]
fn dropout_16_matches_f32_masks() {
    let mut rng = Rng::new(121);
    for t in HALVES {
        for (len, p, seed) in [
            (4 * 4096, 0.5f32, 7u64),
            (12_345, 0.3, u64::MAX),
            (1000, 0.0, 3),
        ] {
            let x = normal16(t, &mut rng, len, 1.0);
            let xw = widen(t, &x);
            let (mut xk, mut mk) = (x.clone(), vec![0u16; len]);
            hk::dropout_forward_16(t, p, seed, &mut xk, &mut mk).unwrap();
            // the f32 kernel's mask on the same seed, rounded: the same drops
            let (mut x32, mut m32) = (xw.clone(), vec![0.0; len]);
            hk::dropout_forward(p, seed, &mut x32, &mut m32).unwrap();
            let what = format!("dropout_forward_{} len {len} p {p}", name16(t));
            check_identical(&format!("{what} mask"), &mk, &narrow(t, &m32));
            // x = x * (the rounded mask), rounded once
            let mw = widen(t, &mk);
            let want: Vec<f32> = xw.iter().zip(&mw).map(|(&a, &m)| a * m).collect();
            check_identical(&format!("{what} x (x * mask16)"), &xk, &narrow(t, &want));
            // against the CPU reference (f32 mask): two roundings
            let (mut xr, mut mr) = (xw, vec![0.0; len]);
            elementwise::dropout_forward(p, seed, &mut xr, &mut mr).unwrap();
            check16(&format!("{what} x vs CPU"), t, &xk, &xr, 2.0 * tol16(t));

            let dy = normal16(t, &mut rng, len, 1.0);
            let mut dk = dy.clone();
            hk::dropout_backward_16(t, &mk, &mut dk).unwrap();
            let mut dr = widen(t, &dy);
            elementwise::dropout_backward(&mw, &mut dr).unwrap();
            check16(
                &format!("dropout_backward_{} len {len}", name16(t)),
                t,
                &dk,
                &dr,
                tol16(t),
            );
        }
    }
}

#[test]
fn softmax_xent_16_matches_cpu() {
    let mut rng = Rng::new(131);
    for t in HALVES {
        for (n, classes, spread) in [(32usize, 1000usize, 4.0f32), (5, 10, 30.0), (3, 1, 1.0)] {
            let logits = normal16(t, &mut rng, n * classes, spread);
            let lw = widen(t, &logits);
            let labels: Vec<u32> = (0..n).map(|_| rng.below(classes) as u32).collect();
            let (mut probs, mut row_loss) = (vec![0u16; n * classes], vec![0.0; n]);
            let loss = hk::softmax_xent_forward_16(
                t,
                n,
                classes,
                &logits,
                &labels,
                &mut probs,
                &mut row_loss,
            )
            .unwrap();
            let mut probs_ref = vec![0.0; n * classes];
            let loss_ref =
                elementwise::softmax_xent_forward(n, classes, &lw, &labels, &mut probs_ref)
                    .unwrap();
            let what = format!("softmax_xent_forward_{} {n}x{classes}", name16(t));
            check16(&format!("{what} probs"), t, &probs, &probs_ref, tol16(t));
            // the row losses are the f32 kernel's on the widened logits, bit for bit
            let (mut p32, mut row32) = (vec![0.0; n * classes], vec![0.0; n]);
            hk::softmax_xent_forward(n, classes, &lw, &labels, &mut p32, &mut row32).unwrap();
            check_identical(
                &format!("{what} row_loss vs softmax_xent_forward_f32"),
                &bits(&row_loss),
                &bits(&row32),
            );
            check_close(&format!("{what} mean loss"), &[loss], &[loss_ref], 1e-6);

            // realistic loss scales (2^10, and GradScaler's initial 2^16)
            for scale in [1024.0f32, 65536.0] {
                let mut d = vec![0u16; n * classes];
                hk::softmax_xent_backward_16(t, n, classes, &probs, &labels, scale, &mut d)
                    .unwrap();
                let d_ref = xent_gradient_f64(n, classes, &lw, &labels, scale);
                check16(
                    &format!(
                        "softmax_xent_backward_{} {n}x{classes} scale {scale}",
                        name16(t)
                    ),
                    t,
                    &d,
                    &d_ref,
                    tol16(t),
                );
            }
        }
    }
}

/// (softmax(logits) - onehot(labels)) / n * scale, worked in f64 from the
/// logits: the gradient a 16-bit backward approximates.
fn xent_gradient_f64(
    n: usize,
    classes: usize,
    logits: &[f32],
    labels: &[u32],
    scale: f32,
) -> Vec<f32> {
    let mut d = Vec::with_capacity(n * classes);
    for (row, &label) in logits.chunks_exact(classes).zip(labels) {
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &z| m.max(z as f64));
        let e: Vec<f64> = row.iter().map(|&z| (z as f64 - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        for (j, &ej) in e.iter().enumerate() {
            let onehot = if j == label as usize { 1.0 } else { 0.0 };
            d.push(((ej / sum - onehot) / n as f64 * scale as f64) as f32);
        }
    }
    d
}

/// Confident rows, the label's logit 10 above the rest of 1000 classes (p
/// about 0.957) or 8 above the rest of 10 (p about 0.997): the 16-bit
/// backward's label term is still the true gradient's to 16-bit rounding.
/// Taken as p - 1 from the 16-bit p, as the CPU op takes it from f32, it is
/// not: bf16 holds p to 1/256 or 1/512 there, a third of 1 - p at 0.997,
/// which the last check shows. (The margins keep the other probabilities
/// above f16's smallest normal, whose own rounding is not at issue here.)
#[test]
fn softmax_xent_backward_16_holds_for_confident_rows() {
    let mut rng = Rng::new(137);
    for t in HALVES {
        for (n, classes, margin) in [(32usize, 1000usize, 10.0f32), (16, 10, 8.0)] {
            let labels: Vec<u32> = (0..n).map(|_| rng.below(classes) as u32).collect();
            let mut z = normal(&mut rng, n * classes, 0.1);
            for (row, &l) in labels.iter().enumerate() {
                z[row * classes + l as usize] += margin;
            }
            let logits = narrow(t, &z);
            let lw = widen(t, &logits);
            let (mut probs, mut row_loss) = (vec![0u16; n * classes], vec![0.0; n]);
            hk::softmax_xent_forward_16(t, n, classes, &logits, &labels, &mut probs, &mut row_loss)
                .unwrap();
            let scale = 1024.0;
            let mut d = vec![0u16; n * classes];
            hk::softmax_xent_backward_16(t, n, classes, &probs, &labels, scale, &mut d).unwrap();
            let d_ref = xent_gradient_f64(n, classes, &lw, &labels, scale);
            let what = format!(
                "softmax_xent_backward_{} {n}x{classes}, confident",
                name16(t)
            );
            check16(&what, t, &d, &d_ref, tol16(t));
            // p - 1 from the rounded p misses the true label term by more.
            let mut old = vec![0.0; n * classes];
            let pw = widen(t, &probs);
            elementwise::softmax_xent_backward(n, classes, &pw, &labels, &mut old).unwrap();
            old.iter_mut().for_each(|v| *v *= scale);
            let err = max_rel_err(&old, &d_ref);
            assert!(err > tol16(t), "{what}: p - 1 is off by only {err:e}");
        }
    }
}

/// Logits for the softmax kernels: random rows of `spread`, and where the
/// shape allows, rows of special values in front: a NaN logit; +inf; all
/// -inf; signed zeros as the max (+0 and -0 both present); one logit far
/// below the rest (its exp underflows to 0); all equal; the label at the max.
fn xent_case(rng: &mut Rng, n: usize, classes: usize, spread: f32) -> (Vec<f32>, Vec<u32>) {
    let mut z = normal(rng, n * classes, spread);
    let mut labels: Vec<u32> = (0..n).map(|_| rng.below(classes) as u32).collect();
    if n >= 7 && classes >= 4 {
        let c = classes;
        z[3] = f32::NAN;
        z[c] = f32::INFINITY;
        z[2 * c..3 * c].fill(f32::NEG_INFINITY);
        for (j, v) in z[3 * c..4 * c].iter_mut().enumerate() {
            *v = match j % 3 {
                0 => 0.0,
                1 => -0.0,
                _ => -1.5,
            };
        }
        z[4 * c..5 * c].fill(1.0);
        z[4 * c + 1] = -200.0;
        z[5 * c..6 * c].fill(0.25);
        z[6 * c + c / 2] = 9.0;
        (labels[0], labels[3], labels[6]) = (3, 1, (c / 2) as u32);
    }
    (z, labels)
}

/// The kernels on `xent_case`'s rows, in f32, f16 and bf16, against the
/// softmax formula in f64 written here, p_j = exp(z_j - m) / sum_k exp(z_k -
/// m) with m the row's max and the row loss ln(sum) - (z_label - m); a row
/// with a NaN or +inf logit, or all -inf, is NaN throughout (the run's
/// divergence check reads the loss); and, in f32, the CPU op's
/// probabilities. The special rows by hand: a logit 200 below the rest has
/// p = 0 exactly, an all-equal row p = 1/c and loss ln c.
#[test]
fn softmax_xent_kernels_on_special_rows_match_the_formula_and_cpu() {
    let mut rng = Rng::new(149);
    for (n, c, spread) in [(7usize, 10usize, 30.0f32), (9, 33, 3.0), (8, 70, 50.0)] {
        let (z, labels) = xent_case(&mut rng, n, c, spread);
        let (mut probs, mut row_loss) = (vec![0.0; n * c], vec![0.0; n]);
        hk::softmax_xent_forward(n, c, &z, &labels, &mut probs, &mut row_loss).unwrap();
        let what = format!("f32 {n}x{c}");
        check_xent_rows(&what, (&z, &labels), (&probs, &row_loss), 1e-6);
        let mut cpu = vec![0.0; n * c];
        elementwise::softmax_xent_forward(n, c, &z, &labels, &mut cpu).unwrap();
        let nan_as = |v: &[f32]| -> Vec<f32> {
            v.iter()
                .map(|p| if p.is_nan() { -1.0 } else { *p })
                .collect()
        };
        check_close(
            &format!("{what} probs vs CPU"),
            &nan_as(&probs),
            &nan_as(&cpu),
            1e-6,
        );
        for t in HALVES {
            let z16 = narrow(t, &z);
            let (mut p16, mut row_loss) = (vec![0u16; n * c], vec![0.0; n]);
            hk::softmax_xent_forward_16(t, n, c, &z16, &labels, &mut p16, &mut row_loss).unwrap();
            let what = format!("{} {n}x{c}", name16(t));
            let zw = widen(t, &z16);
            check_xent_rows(
                &what,
                (&zw, &labels),
                (&widen(t, &p16), &row_loss),
                tol16(t),
            );
        }
    }
}

/// `xent_case`'s rows `z` (labels) against the formula and by hand (above):
/// the kernels' `probs` and row losses, within `tol`.
fn check_xent_rows(
    what: &str,
    (z, labels): (&[f32], &[u32]),
    (probs, row_loss): (&[f32], &[f32]),
    tol: f64,
) {
    let c = z.len() / labels.len();
    for (i, (zr, pr)) in z.chunks_exact(c).zip(probs.chunks_exact(c)).enumerate() {
        let what = format!("{what} row {i}");
        let no_number = zr.iter().any(|v| v.is_nan() || *v == f32::INFINITY)
            || zr.iter().all(|&v| v == f32::NEG_INFINITY);
        if no_number {
            assert!(
                pr.iter().all(|p| p.is_nan()) && row_loss[i].is_nan(),
                "{what}: {pr:?} {}",
                row_loss[i]
            );
            continue;
        }
        let m = zr.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let sum: f64 = zr.iter().map(|&v| (v as f64 - m).exp()).sum();
        let want: Vec<f32> = zr
            .iter()
            .map(|&v| ((v as f64 - m).exp() / sum) as f32)
            .collect();
        check_close(&format!("{what} probs vs formula"), pr, &want, tol);
        let loss = sum.ln() - (zr[labels[i] as usize] as f64 - m);
        check_close(
            &format!("{what} loss vs formula"),
            &[row_loss[i]],
            &[loss as f32],
            tol,
        );
    }
    // Row 4: 1.0 but one -200.0; row 5: all 0.25 (xent_case).
    assert_eq!(
        probs[4 * c + 1],
        0.0,
        "{what}: exp(-201) is below the least value"
    );
    let equal = vec![1.0 / c as f32; c];
    check_close(
        &format!("{what} equal row"),
        &probs[5 * c..6 * c],
        &equal,
        tol,
    );
    check_close(
        &format!("{what} equal row loss"),
        &[row_loss[5]],
        &[(c as f32).ln()],
        tol,
    );
}

/// softmax_xent_max, _exp, _sum and _probs in turn give the one-thread-per-row
/// forward's probs and row losses bit for bit, in f32, f16 and bf16, at the
/// shape training uses (128 x 1000), with fewer classes than the 32 parts of
/// a row's max, classes not a multiple of them, and special values
/// (`xent_case`).
#[test]
fn softmax_xent_kernels_match_the_rowwise_forward() {
    let mut rng = Rng::new(137);
    let shapes = [
        (128usize, 1000usize, 4.0f32),
        (7, 10, 30.0),
        (3, 1, 1.0),
        (9, 33, 3.0),
        (8, 70, 50.0),
    ];
    for (n, classes, spread) in shapes {
        let (logits, labels) = xent_case(&mut rng, n, classes, spread);
        let what = format!("softmax_xent f32 {n}x{classes}");
        let (mut probs, mut row_loss) = (vec![0.0; n * classes], vec![0.0; n]);
        hk::softmax_xent_forward(n, classes, &logits, &labels, &mut probs, &mut row_loss).unwrap();
        let (mut probs_old, mut row_old) = (vec![0.0; n * classes], vec![0.0; n]);
        hk::softmax_xent_rowwise(n, classes, &logits, &labels, &mut probs_old, &mut row_old)
            .unwrap();
        check_identical(
            &format!("{what} probs vs rowwise"),
            &bits(&probs),
            &bits(&probs_old),
        );
        check_identical(
            &format!("{what} row_loss vs rowwise"),
            &bits(&row_loss),
            &bits(&row_old),
        );
        for t in HALVES {
            let what = format!("softmax_xent {} {n}x{classes}", name16(t));
            let logits16 = narrow(t, &logits);
            let (mut probs, mut row_loss) = (vec![0u16; n * classes], vec![0.0; n]);
            hk::softmax_xent_forward_16(
                t,
                n,
                classes,
                &logits16,
                &labels,
                &mut probs,
                &mut row_loss,
            )
            .unwrap();
            let (mut probs_old, mut row_old) = (vec![0u16; n * classes], vec![0.0; n]);
            hk::softmax_xent_rowwise_16(
                t,
                n,
                classes,
                &logits16,
                &labels,
                &mut probs_old,
                &mut row_old,
            )
            .unwrap();
            check_identical(&format!("{what} probs vs rowwise"), &probs, &probs_old);
            check_identical(
                &format!("{what} row_loss vs rowwise"),
                &bits(&row_loss),
                &bits(&row_old),
            );
        }
    }
}

/// step_hits_{f16,bf16}: the hits of the 16-bit probabilities equal the
/// CPU op's on those probabilities widened (what a download gives), ties
/// made by the rounding included.
#[test]
fn step_metrics_16_match_cpu_on_widened_probs() {
    let mut rng = Rng::new(139);
    for t in HALVES {
        for (n, classes) in [(6usize, 4usize), (128, 1000)] {
            let (probs, labels) = step_metrics_case(&mut rng, n, classes);
            let p16 = narrow(t, &probs);
            let pw = widen(t, &p16);
            let (mut got, mut want) = (vec![-1.0f32; 6], vec![-1.0f32; 6]);
            hk::record_step_metrics_16(t, n, classes, &p16, &labels, 1.5, 1, &mut got).unwrap();
            elementwise::record_step_metrics(n, classes, &pw, &labels, &[1.5], 1, &mut want)
                .unwrap();
            check_identical(
                &format!("step_hits_{} + step_record_f32 {n}x{classes}", name16(t)),
                &bits(&got),
                &bits(&want),
            );
        }
    }
}

#[test]
fn sgd_store_16_matches_cpu() {
    let mut rng = Rng::new(141);
    let p = SgdParams {
        lr: 0.01,
        momentum: 0.9,
        weight_decay: 5e-4,
    };
    let len = 96 * 3 * 11 * 11 + 7;
    for t in HALVES {
        let w = normal(&mut rng, len, 0.01);
        let g = normal(&mut rng, len, 0.1);
        let v = normal(&mut rng, len, 0.001);
        let (mut wk, mut vk, mut w16) = (w.clone(), v.clone(), vec![0u16; len]);
        let (mut wr, mut vr) = (w, v);
        for _ in 0..3 {
            hk::sgd_update_store_16(t, &p, &mut wk, &g, &mut vk, &mut w16).unwrap();
            elementwise::sgd_update(&p, &mut wr, &g, &mut vr).unwrap();
        }
        let what = format!("sgd_update_f32_store_{} (3 steps)", name16(t));
        check_identical(&format!("{what} w"), &bits(&wk), &bits(&wr));
        check_identical(&format!("{what} v"), &bits(&vk), &bits(&vr));
        check_identical(&format!("{what} w16 = w rounded"), &w16, &narrow(t, &wr));
        check16(&format!("{what} w16 vs w"), t, &w16, &wr, tol16(t));
    }
}

#[test]
fn bias_relu_16_matches_cpu() {
    let mut rng = Rng::new(151);
    let s = Nchw {
        n: 2,
        c: 96,
        h: 27,
        w: 27,
    };
    for t in HALVES {
        let y = normal16(t, &mut rng, s.len(), 1.0);
        let yw = widen(t, &y);
        let b = normal(&mut rng, s.c, 0.5);
        for relu in [false, true] {
            let mut yk = y.clone();
            hk::bias_relu_forward_16(t, &s, &mut yk, &b, relu).unwrap();
            let mut yr: Vec<f32> = yw
                .iter()
                .enumerate()
                .map(|(i, &v)| v + b[(i / (s.h * s.w)) % s.c])
                .collect();
            if relu {
                elementwise::relu_forward(&mut yr);
            }
            check16(
                &format!("bias_relu_forward_{} relu={relu}", name16(t)),
                t,
                &yk,
                &yr,
                tol16(t),
            );
        }

        let mut xk = y.clone();
        hk::relu_forward_16(t, &mut xk);
        let mut xr = yw.clone();
        elementwise::relu_forward(&mut xr);
        check16(
            &format!("relu_forward_{}", name16(t)),
            t,
            &xk,
            &xr,
            tol16(t),
        );

        let dy = normal16(t, &mut rng, s.len(), 1.0);
        let mut dk = dy.clone();
        hk::relu_backward_16(t, &xk, &mut dk).unwrap();
        let mut dr = widen(t, &dy);
        elementwise::relu_backward(&widen(t, &xk), &mut dr).unwrap();
        check16(
            &format!("relu_backward_{}", name16(t)),
            t,
            &dk,
            &dr,
            tol16(t),
        );

        let src = normal16(t, &mut rng, s.len(), 1.0);
        let mut ak = dy.clone();
        hk::add_16(t, &mut ak, &src).unwrap();
        let mut ar = widen(t, &dy);
        CpuBackend::new()
            .add_assign(&mut ar, &widen(t, &src))
            .unwrap();
        check16(&format!("add_{}", name16(t)), t, &ak, &ar, tol16(t));

        // db is f32: each (n, c) plane's sum is rounded to f32 before the channel
        // sum, where the CPU rounds once, so a channel whose two planes nearly
        // cancel carries 2^-24 of the planes' size relative to the 1e-3 floor:
        // up to ~1e-4 here (whatever the input format; the f32 test's seed
        // happens to stay under 1e-6).
        let g = ConvGeom {
            n: s.n,
            c_in: 1,
            h: s.h,
            w: s.w,
            c_out: s.c,
            k: 1,
            stride: 1,
            pad: 0,
            groups: 1,
        };
        let (mut db, mut db_ref) = (vec![0.0; s.c], vec![0.0; s.c]);
        hk::bias_backward_16(t, &s, &dy, &mut db).unwrap();
        conv::conv2d_backward_bias(&g, &widen(t, &dy), &mut db_ref).unwrap();
        check_close(
            &format!(
                "bias_backward_partial_{} + bias_backward_reduce_f32",
                name16(t)
            ),
            &db,
            &db_ref,
            1e-4,
        );
    }
}

#[test]
fn max_pool_16_matches_f32() {
    let mut rng = Rng::new(161);
    let shapes = [
        PoolGeom {
            n: 2,
            c: 96,
            h: 55,
            w: 55,
            size: 3,
            stride: 2,
        },
        PoolGeom {
            n: 1,
            c: 8,
            h: 12,
            w: 10,
            size: 2,
            stride: 2,
        },
    ];
    for t in HALVES {
        for g in shapes {
            for ties in [false, true] {
                let x: Vec<u16> = if ties {
                    let v: Vec<f32> = (0..g.x_len()).map(|_| rng.below(3) as f32).collect();
                    narrow(t, &v)
                } else {
                    normal16(t, &mut rng, g.x_len(), 1.0)
                };
                let xw = widen(t, &x);
                let (mut y, mut am) = (vec![0u16; g.y_len()], vec![0u32; g.y_len()]);
                hk::max_pool_forward_16(t, &g, &x, &mut y, &mut am).unwrap();
                let (mut y32, mut am32) = (vec![0.0; g.y_len()], vec![0u32; g.y_len()]);
                hk::max_pool_forward(&g, &xw, &mut y32, &mut am32).unwrap();
                let what = format!(
                    "max_pool_forward_{} {}x{}x{}x{} size {} stride {} ties={ties}",
                    name16(t),
                    g.n,
                    g.c,
                    g.h,
                    g.w,
                    g.size,
                    g.stride
                );
                check_identical(&format!("{what} argmax vs f32"), &am, &am32);
                check_identical(
                    &format!("{what} y vs f32"),
                    &bits(&widen(t, &y)),
                    &bits(&y32),
                );

                let dy = normal16(t, &mut rng, g.y_len(), 1.0);
                let mut dx = vec![0u16; g.x_len()];
                hk::max_pool_backward_16(t, &g, &dy, &am, &mut dx).unwrap();
                let mut dx_ref = vec![0.0; g.x_len()];
                pool::max_pool_backward(&g, &widen(t, &dy), &am32, &mut dx_ref).unwrap();
                check16(
                    &format!("max_pool_backward_{} ties={ties}", name16(t)),
                    t,
                    &dx,
                    &dx_ref,
                    tol16(t),
                );
            }
        }
    }
}

#[test]
fn im2col_col2im_16_match_definitions() {
    let mut rng = Rng::new(171);
    let shapes = [
        ConvGeom {
            n: 2,
            c_in: 48,
            h: 27,
            w: 27,
            c_out: 32,
            k: 5,
            stride: 1,
            pad: 2,
            groups: 2,
        },
        ConvGeom {
            n: 1,
            c_in: 4,
            h: 9,
            w: 8,
            c_out: 6,
            k: 4,
            stride: 2,
            pad: 3,
            groups: 2,
        },
    ];
    for t in HALVES {
        for g in shapes {
            let what = format!(
                "c_in {} {}x{} k {} stride {} pad {} groups {}",
                g.c_in, g.h, g.w, g.k, g.stride, g.pad, g.groups
            );
            let x = normal16(t, &mut rng, g.x_len(), 1.0);
            let mut col = vec![0u16; hk::im2col_len(&g).unwrap()];
            hk::im2col_16(t, &g, &x, &mut col).unwrap();
            check_identical(
                &format!("im2col_{} vs its definition, {what}", name16(t)),
                &col,
                &narrow(t, &naive_im2col(&g, &widen(t, &x))),
            );

            let w = normal(&mut rng, g.w_len(), 0.1);
            let dy = normal(&mut rng, g.y_len(), 1.0);
            let dcol = narrow(t, &gemm_conv_dcol(&g, &w, &dy));
            let mut dx = vec![0u16; g.x_len()];
            hk::col2im_16(t, &g, &dcol, &mut dx).unwrap();
            check16(
                &format!("col2im_{} vs a scatter-add, {what}", name16(t)),
                t,
                &dx,
                &naive_col2im(&g, &widen(t, &dcol)),
                tol16(t),
            );
        }
    }
}

#[test]
fn unscale_check_16_widens_scales_and_flags() {
    let mut rng = Rng::new(181);
    let inv = 1.0 / 1024.0;
    for t in HALVES {
        let g = normal16(t, &mut rng, 100_003, 1000.0);
        let mut dst = vec![f32::NAN; g.len()];
        assert!(!hk::unscale_check_16(t, &g, &mut dst, inv).unwrap());
        let want: Vec<f32> = widen(t, &g).iter().map(|&v| v * inv).collect();
        let what = format!("{}_to_f32_unscale_check", name16(t));
        check_identical(&format!("{what} dst"), &bits(&dst), &bits(&want));
        let (inf, nan) = match t {
            Half::F16 => (0x7c00u16, 0x7e00u16),
            Half::Bf16 => (0x7f80, 0x7fc0),
        };
        for bad in [inf, inf | 0x8000, nan] {
            let mut gb = g.clone();
            gb[77_777] = bad;
            assert!(
                hk::unscale_check_16(t, &gb, &mut dst, inv).unwrap(),
                "{what}: {bad:#x} not flagged"
            );
        }
        // finite values that overflow f32 once scaled are flagged too
        let big = narrow(t, &[60000.0, 1.0]);
        assert!(hk::unscale_check_16(t, &big, &mut [0.0; 2], f32::MAX).unwrap());
        println!("{what}: overflow flagged for inf, -inf, NaN and scaled overflow");
    }
}
