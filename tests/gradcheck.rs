//! Gradient checks for every backward op of the CPU backend: the analytic
//! gradient of a scalar loss L = sum(r * y) (r a fixed random tensor, so
//! dL/dy = r is what each backward op is fed) against central finite
//! differences (L(v + eps) - L(v - eps)) / ((v + eps) - (v - eps)), with L
//! summed in f64 and the actual f32 step used as the denominator.
//!
//! Error per element: |analytic - numeric| / max(|analytic|, |numeric|, FLOOR),
//! FLOOR = 1e-2 (gradients are O(0.1..10) here, so the floor only keeps
//! elements whose true gradient is ~0 from dividing rounding noise by ~0).
//! Every element is checked for tensors up to 2000 elements, otherwise 200
//! random ones. Run with `-- --nocapture` to see the errors.
use alexnet_cuda::backend::cpu::CpuBackend;
use alexnet_cuda::backend::{Backend, ConvGeom, LinearGeom, LrnParams, Nchw, PoolGeom};
use alexnet_cuda::rng::Rng;

const FLOOR: f64 = 1e-2;

/// Conv and linear are linear in each of their inputs, so central differences
/// have no truncation error at any step: a large step keeps f32 rounding of
/// y(v + eps) - y(v - eps) small relative to the difference itself.
const LIN_EPS: f32 = 1e-1;
const LIN_TOL: f64 = 5e-3;

fn normal(rng: &mut Rng, len: usize, scale: f32) -> Vec<f32> {
    (0..len).map(|_| rng.normal() as f32 * scale).collect()
}

/// sum(r * y) in f64.
fn dot(r: &[f32], y: &[f32]) -> f64 {
    assert_eq!(r.len(), y.len());
    r.iter().zip(y).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// Compares `analytic` (the gradient of `loss` at `v`) with central
/// differences of step `eps`, asserts the max relative error is below `tol`
/// and returns it.
fn gradcheck(
    name: &str,
    v: &[f32],
    analytic: &[f32],
    eps: f32,
    tol: f64,
    mut loss: impl FnMut(&[f32]) -> f64,
) -> f64 {
    assert_eq!(v.len(), analytic.len(), "{name}: gradient length");
    let idx: Vec<usize> = if v.len() <= 2000 {
        (0..v.len()).collect()
    } else {
        let mut rng = Rng::new(v.len() as u64);
        (0..200).map(|_| rng.below(v.len())).collect()
    };
    let mut p = v.to_vec();
    let mut worst = (0.0f64, 0usize, 0.0f64, 0.0f64);
    for &i in &idx {
        let (plus, minus) = (v[i] + eps, v[i] - eps);
        p[i] = plus;
        let lp = loss(&p);
        p[i] = minus;
        let lm = loss(&p);
        p[i] = v[i];
        let numeric = (lp - lm) / (plus as f64 - minus as f64);
        let a = analytic[i] as f64;
        let err = (a - numeric).abs() / a.abs().max(numeric.abs()).max(FLOOR);
        // NaN never compares greater: keep it explicitly so the assert fails.
        if err.is_nan() || err > worst.0 {
            worst = (err, i, a, numeric);
        }
    }
    println!(
        "gradcheck {name}: max rel err {:.1e} ({} elements checked)",
        worst.0,
        idx.len()
    );
    assert!(
        worst.0 < tol,
        "{name}: rel err {:.2e} at {} (analytic {}, numeric {}) exceeds {tol:.0e}",
        worst.0,
        worst.1,
        worst.2,
        worst.3
    );
    worst.0
}

fn conv_case(groups: usize, stride: usize, pad: usize) {
    let be = CpuBackend::new();
    // stride 4 uses a larger kernel so windows still overlap, as in conv1
    let (k, hw) = if stride == 1 { (3, 7) } else { (5, 13) };
    let g = ConvGeom {
        n: 2,
        c_in: 4,
        h: hw,
        w: hw,
        c_out: 6,
        k,
        stride,
        pad,
        groups,
    };
    let mut rng = Rng::new((groups * 100 + stride * 10 + pad) as u64);
    let x = normal(&mut rng, g.x_len(), 1.0);
    let w = normal(&mut rng, g.w_len(), 0.5);
    let b = normal(&mut rng, g.c_out, 0.5);
    let r = normal(&mut rng, g.y_len(), 1.0);
    let fwd = |x: &[f32], w: &[f32], b: &[f32]| -> f64 {
        let mut y = vec![0.0; g.y_len()];
        be.conv2d_forward(&g, &x.to_vec(), &w.to_vec(), &b.to_vec(), &mut y)
            .unwrap();
        dot(&r, &y)
    };
    let tag = format!("groups={groups} stride={stride} pad={pad}");

    let mut dx = vec![0.0; g.x_len()];
    be.conv2d_backward_data(&g, &w, &r, &mut dx).unwrap();
    gradcheck(
        &format!("conv2d_backward_data {tag}"),
        &x,
        &dx,
        LIN_EPS,
        LIN_TOL,
        |x| fwd(x, &w, &b),
    );

    let mut dw = vec![0.0; g.w_len()];
    be.conv2d_backward_filter(&g, &x, &r, &mut dw).unwrap();
    gradcheck(
        &format!("conv2d_backward_filter {tag}"),
        &w,
        &dw,
        LIN_EPS,
        LIN_TOL,
        |w| fwd(&x, w, &b),
    );

    let mut db = vec![0.0; g.c_out];
    be.conv2d_backward_bias(&g, &r, &mut db).unwrap();
    gradcheck(
        &format!("conv2d_backward_bias {tag}"),
        &b,
        &db,
        LIN_EPS,
        LIN_TOL,
        |b| fwd(&x, &w, b),
    );
}

#[test]
fn conv2d() {
    for groups in [1, 2] {
        for stride in [1, 4] {
            for pad in [0, 2] {
                conv_case(groups, stride, pad);
            }
        }
    }
}

#[test]
fn linear() {
    let be = CpuBackend::new();
    let g = LinearGeom {
        n: 3,
        inp: 37,
        out: 11,
    };
    let mut rng = Rng::new(7);
    let x = normal(&mut rng, g.n * g.inp, 1.0);
    let w = normal(&mut rng, g.out * g.inp, 0.3);
    let b = normal(&mut rng, g.out, 0.3);
    let r = normal(&mut rng, g.n * g.out, 1.0);
    let fwd = |x: &[f32], w: &[f32], b: &[f32]| -> f64 {
        let mut y = vec![0.0; g.n * g.out];
        be.linear_forward(&g, &x.to_vec(), &w.to_vec(), &b.to_vec(), &mut y)
            .unwrap();
        dot(&r, &y)
    };
    let mut dx = vec![0.0; x.len()];
    be.linear_backward_data(&g, &w, &r, &mut dx).unwrap();
    gradcheck("linear_backward_data", &x, &dx, 1e-2, 1e-2, |x| {
        fwd(x, &w, &b)
    });
    let mut dw = vec![0.0; w.len()];
    be.linear_backward_weight(&g, &x, &r, &mut dw).unwrap();
    gradcheck("linear_backward_weight", &w, &dw, LIN_EPS, LIN_TOL, |w| {
        fwd(&x, w, &b)
    });
    let mut db = vec![0.0; b.len()];
    be.linear_backward_bias(&g, &r, &mut db).unwrap();
    gradcheck("linear_backward_bias", &b, &db, 1e-2, 1e-2, |b| {
        fwd(&x, &w, b)
    });
}

#[test]
fn relu() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(3);
    // keep inputs at least 0.1 from the kink so +-eps never crosses it
    let x: Vec<f32> = normal(&mut rng, 500, 1.0)
        .into_iter()
        .map(|v| {
            if v.abs() < 0.1 {
                v.signum() * 0.1 + v
            } else {
                v
            }
        })
        .collect();
    let r = normal(&mut rng, x.len(), 1.0);
    let mut y = x.clone();
    be.relu_forward(&mut y).unwrap();
    let mut dx = r.clone();
    be.relu_backward(&y, &mut dx).unwrap();
    gradcheck("relu_backward", &x, &dx, 1e-2, 1e-3, |x| {
        let mut y = x.to_vec();
        be.relu_forward(&mut y).unwrap();
        dot(&r, &y)
    });
}

fn lrn_case(name: &str, p: LrnParams, s: Nchw, x_scale: f32, tol: f64) {
    let be = CpuBackend::new();
    let mut rng = Rng::new(s.c as u64 * 31 + p.size as u64);
    let x = normal(&mut rng, s.len(), x_scale);
    let r = normal(&mut rng, s.len(), 1.0);
    let mut y = vec![0.0; s.len()];
    let mut scale = vec![0.0; s.len()];
    be.lrn_forward(&p, &s, &x, &mut y, &mut scale).unwrap();
    let mut dx = vec![0.0; s.len()];
    be.lrn_backward(&p, &s, &x, &y, &scale, &r, &mut dx)
        .unwrap();
    gradcheck(name, &x, &dx, 1e-2, tol, |x| {
        let mut y = vec![0.0; s.len()];
        let mut scale = vec![0.0; s.len()];
        be.lrn_forward(&p, &s, &x.to_vec(), &mut y, &mut scale)
            .unwrap();
        dot(&r, &y)
    });
}

#[test]
fn lrn() {
    let paper = LrnParams::PAPER;
    // c = 3 < size: every window is clipped at both edges.
    let tiny = Nchw {
        n: 2,
        c: 3,
        h: 3,
        w: 4,
    };
    // c = 9: clipped windows at both ends plus full ones in the middle.
    let mid = Nchw {
        n: 2,
        c: 9,
        h: 4,
        w: 5,
    };
    lrn_case("lrn_backward paper c=3", paper, tiny, 1.0, 1e-2);
    lrn_case("lrn_backward paper c=9", paper, mid, 1.0, 1e-2);
    // alpha large and inputs ~3, so alpha * window sum is comparable to k and
    // the cross-channel term of the gradient matters.
    let strong = LrnParams {
        alpha: 1e-2,
        ..paper
    };
    lrn_case("lrn_backward alpha=1e-2 c=3", strong, tiny, 3.0, 1e-2);
    lrn_case("lrn_backward alpha=1e-2 c=9", strong, mid, 3.0, 1e-2);
    let stronger = LrnParams {
        size: 3,
        alpha: 0.1,
        beta: 0.75,
        k: 1.0,
    };
    lrn_case(
        "lrn_backward size=3 alpha=0.1 k=1 c=9",
        stronger,
        mid,
        2.0,
        1e-2,
    );
}

fn pool_case(size: usize, stride: usize, hw: usize) {
    let be = CpuBackend::new();
    let g = PoolGeom {
        n: 2,
        c: 3,
        h: hw,
        w: hw,
        size,
        stride,
    };
    // a random permutation of 0.1 * (0..len): distinct values 0.1 apart, so
    // the argmax cannot change under a +-1e-2 perturbation
    let mut rng = Rng::new(size as u64 * 10 + stride as u64);
    let mut x: Vec<f32> = (0..g.x_len()).map(|i| i as f32 * 0.1).collect();
    rng.shuffle(&mut x);
    let r = normal(&mut rng, g.y_len(), 1.0);
    let mut y = vec![0.0; g.y_len()];
    let mut am = vec![0u32; g.y_len()];
    be.max_pool_forward(&g, &x, &mut y, &mut am).unwrap();
    let mut dx = vec![0.0; g.x_len()];
    be.max_pool_backward(&g, &r, &am, &mut dx).unwrap();
    gradcheck(
        &format!("max_pool_backward size={size} stride={stride}"),
        &x,
        &dx,
        1e-2,
        1e-2,
        |x| {
            let mut y = vec![0.0; g.y_len()];
            let mut am = vec![0u32; g.y_len()];
            be.max_pool_forward(&g, &x.to_vec(), &mut y, &mut am)
                .unwrap();
            dot(&r, &y)
        },
    );
}

#[test]
fn max_pool() {
    pool_case(3, 2, 9); // overlapping, as the paper
    pool_case(2, 2, 8);
}

#[test]
fn dropout() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(11);
    let x = normal(&mut rng, 1000, 1.0);
    let r = normal(&mut rng, x.len(), 1.0);
    let (p, seed) = (0.5, 1234);
    let mut y = x.clone();
    let mut mask = vec![0.0; x.len()];
    be.dropout_forward(p, seed, &mut y, &mut mask).unwrap();
    let mut dx = r.clone();
    be.dropout_backward(&mask, &mut dx).unwrap();
    gradcheck("dropout_backward p=0.5", &x, &dx, 1e-2, 1e-3, |x| {
        let mut y = x.to_vec();
        let mut mask = vec![0.0; x.len()];
        be.dropout_forward(p, seed, &mut y, &mut mask).unwrap();
        dot(&r, &y)
    });
}

#[test]
fn softmax_xent() {
    let be = CpuBackend::new();
    let (n, classes) = (4, 7);
    let mut rng = Rng::new(5);
    let logits = normal(&mut rng, n * classes, 2.0);
    let labels: Vec<u32> = vec![0, 6, 3, 3];
    let mut probs = vec![0.0; n * classes];
    be.softmax_xent_forward(n, classes, &logits, &labels, &mut probs)
        .unwrap();
    let mut dl = vec![0.0; n * classes];
    be.softmax_xent_backward(n, classes, &probs, &labels, &mut dl)
        .unwrap();
    // here L is the loss itself (the op's only scalar output)
    gradcheck("softmax_xent_backward", &logits, &dl, 1e-2, 1e-2, |z| {
        let mut probs = vec![0.0; n * classes];
        be.softmax_xent_forward(n, classes, &z.to_vec(), &labels, &mut probs)
            .unwrap() as f64
    });
}
