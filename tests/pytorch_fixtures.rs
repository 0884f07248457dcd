//! tests/pytorch_fixtures.rs: owns the checks of the Rust network against
//! PyTorch. tests/fixtures/alexnet_narrow.safetensors (written by
//! scripts/write_fixtures.py, the source of truth for what it holds) has the
//! paper's AlexNet at widths [6, 16, 24, 24, 16, 32, 32] with 10 classes,
//! batch 2 on full 227x227 inputs: initial parameters, logits, loss, every
//! gradient, and the parameters after one and two steps of the paper's SGD.
//! The Rust net, on the CPU backend, is loaded with the same parameters and
//! input and must reproduce all of it. The LRN tests check the backend's LRN
//! against the paper's formula directly, independent of PyTorch.
//!
//! Run with
//!   cargo test --release --test integration pytorch_fixtures -- --nocapture
//! to see the per-tensor errors.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use alexnet_cuda::backend::cpu::CpuBackend;
use alexnet_cuda::backend::{Backend, LrnParams, Nchw, SgdParams};
use alexnet_cuda::model::net::{Mode, Network};
use alexnet_cuda::model::topology::Topology;
use safetensors::{Dtype, SafeTensors};

const FIXTURE: &str = "tests/fixtures/alexnet_narrow.safetensors";
const WRITER: &str = "scripts/write_fixtures.py";
const WIDTHS: [usize; 7] = [6, 16, 24, 24, 16, 32, 32];
const CLASSES: usize = 10;
const LABELS: [u32; 2] = [3, 7];
const CHANNELS: usize = 3;
const CROP: usize = 227;
const LR: f32 = 0.01;
const MOMENTUM: f32 = 0.9;
const WEIGHT_DECAY: f32 = 5e-4;

/// Per-tensor tolerance: max |ours - ref| <= rtol * max |ref| + atol.
///
/// The reference is PyTorch computed in float64 and rounded to float32, so
/// the error measured is ours: float32 arithmetic summed in a different order
/// (im2col + GEMM blocking, per-thread partial sums). Over the longest sums
/// here (conv1's weight gradient adds 2 x 55 x 55 products) that stays near
/// 1e-6 of the tensor's largest value; 1e-4 leaves margin for the order to
/// change without letting a wrong op (off by a term, a window, a factor) pass.
/// Normalising by the tensor's max rather than per element keeps tiny entries,
/// which carry only absolute rounding noise, from dominating.
#[derive(Clone, Copy)]
struct Tol {
    rtol: f64,
    atol: f64,
}

/// Logits, loss, gradients and parameters.
const TOL: Tol = Tol {
    rtol: 1e-4,
    atol: 1e-6,
};

/// The closed-form input, shared with scripts/write_fixtures.py: for the flat
/// NCHW index i, x[i] = float32(((i * 7919 + 13) % 1009) / 1009.0 * 255.0 - 127.5),
/// computed in float64 (the same IEEE operations in the same order as numpy,
/// so the result is bit-identical) and then rounded to float32.
fn fixture_input(n: usize) -> Vec<f32> {
    (0..n * CHANNELS * CROP * CROP)
        .map(|i| (((i as u64 * 7919 + 13) % 1009) as f64 / 1009.0 * 255.0 - 127.5) as f32)
        .collect()
}

fn fixture_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE)
}

fn read_fixture(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| {
        format!(
            "cannot read the PyTorch fixture {}: {e}; regenerate it with \
             `scripts/setup-python && .venv/bin/python {WRITER}`",
            path.display()
        )
    })
}

fn load_fixture() -> Vec<u8> {
    read_fixture(&fixture_path()).unwrap_or_else(|e| panic!("{e}"))
}

/// The fixture's tensors and string metadata.
struct Fixture<'a> {
    st: SafeTensors<'a>,
    meta: std::collections::HashMap<String, String>,
}

impl<'a> Fixture<'a> {
    fn parse(bytes: &'a [u8]) -> Fixture<'a> {
        let st = SafeTensors::deserialize(bytes).unwrap_or_else(|e| {
            panic!("{FIXTURE} is not a valid safetensors file ({e}); regenerate it with {WRITER}")
        });
        let (_, header) = SafeTensors::read_metadata(bytes).expect("header already parsed once");
        let meta = header
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        Fixture { st, meta }
    }

    fn meta(&self, key: &str) -> &str {
        self.meta.get(key).map(String::as_str).unwrap_or_else(|| {
            panic!("{FIXTURE} has no metadata '{key}'; regenerate it with {WRITER}")
        })
    }

    /// A float32 tensor as (shape, values).
    fn tensor(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let t = self.st.tensor(name).unwrap_or_else(|e| {
            panic!("{FIXTURE} has no tensor '{name}' ({e}); regenerate it with {WRITER}")
        });
        assert_eq!(t.dtype(), Dtype::F32, "{name}: expected float32");
        let values = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        (t.shape().to_vec(), values)
    }

    fn values(&self, name: &str) -> Vec<f32> {
        self.tensor(name).1
    }
}

/// One row of the error report.
struct Report {
    failures: Vec<String>,
}

impl Report {
    fn new() -> Report {
        println!(
            "{:<28} {:>7} {:>11} {:>11} {:>11} {:>11}  ok",
            "tensor", "len", "max|ref|", "max abs err", "rel (/max)", "tolerance"
        );
        Report {
            failures: Vec::new(),
        }
    }

    /// Compare `ours` to `want` (both as f64) under `tol`; print one line.
    fn check(&mut self, name: &str, ours: &[f64], want: &[f64], tol: Tol) {
        if ours.len() != want.len() {
            self.failures.push(format!(
                "{name}: {} values, reference has {}",
                ours.len(),
                want.len()
            ));
            println!("{name:<28} length {} != {}", ours.len(), want.len());
            return;
        }
        let max_ref = want.iter().fold(0.0f64, |m, v| max_nan(m, v.abs()));
        let (mut max_err, mut at) = (0.0f64, 0usize);
        let mut finite = true;
        for (i, (a, b)) in ours.iter().zip(want).enumerate() {
            finite &= a.is_finite();
            let e = (a - b).abs();
            // NaN never compares greater: keep it so `ok` below is false.
            if e.is_nan() || e > max_err {
                (max_err, at) = (e, i);
            }
        }
        let bound = tol.rtol * max_ref + tol.atol;
        let ok = finite && max_err <= bound;
        let rel = if max_ref > 0.0 {
            max_err / max_ref
        } else {
            max_err
        };
        println!(
            "{name:<28} {:>7} {max_ref:>11.4e} {max_err:>11.3e} {rel:>11.3e} {bound:>11.3e}  {}",
            want.len(),
            if ok { "ok" } else { "FAIL" }
        );
        if !ok {
            self.failures.push(format!(
                "{name}: max |ours - ref| = {max_err:.3e} at index {at} (ours {}, ref {}) > {bound:.3e}{}",
                ours[at],
                want[at],
                if finite { "" } else { " (non-finite values)" }
            ));
        }
    }

    fn check_f32(&mut self, name: &str, ours: &[f32], want: &[f32], tol: Tol) {
        self.check(name, &widen(ours), &widen(want), tol);
    }

    fn finish(self, what: &str) {
        assert!(
            self.failures.is_empty(),
            "{what}: {} tensor(s) disagree:\n  {}",
            self.failures.len(),
            self.failures.join("\n  ")
        );
    }
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn max_abs(v: &[f32]) -> f64 {
    v.iter().fold(0.0f64, |m, &x| max_nan(m, (x as f64).abs()))
}

/// The larger of `a` and `b`, NaN if either is (`f64::max` drops a NaN, so
/// a NaN in a tensor would shrink its scale instead of failing the check).
fn max_nan(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

#[test]
fn missing_fixture_names_the_script_that_writes_it() {
    let err = read_fixture(Path::new("tests/fixtures/does-not-exist.safetensors"))
        .expect_err("the file does not exist");
    assert!(err.contains(WRITER), "message should name {WRITER}: {err}");
}

#[test]
fn fixture_was_written_for_this_network_and_input() {
    let bytes = load_fixture();
    let fx = Fixture::parse(&bytes);
    let widths = WIDTHS.map(|w| w.to_string()).join(",");
    assert_eq!(fx.meta("widths"), widths);
    assert_eq!(fx.meta("classes"), CLASSES.to_string());
    assert_eq!(fx.meta("batch"), LABELS.len().to_string());
    assert_eq!(fx.meta("labels"), LABELS.map(|l| l.to_string()).join(","));
    assert_eq!(
        fx.meta("input_shape"),
        format!("{},{CHANNELS},{CROP},{CROP}", LABELS.len())
    );
    for (key, want) in [
        ("lr", LR),
        ("momentum", MOMENTUM),
        ("weight_decay", WEIGHT_DECAY),
    ] {
        let got: f32 = fx
            .meta(key)
            .parse()
            .unwrap_or_else(|e| panic!("metadata {key}: {e}"));
        assert_eq!(got, want, "metadata {key}");
    }
    // The fixture's LRN is the paper's, which is what the topology runs.
    assert_eq!(
        fx.meta("lrn"),
        "size=5 alpha=0.0001 (paper; torch alpha=0.0005) beta=0.75 k=2.0"
    );
    assert_eq!(
        Topology::alexnet_widths(WIDTHS, CLASSES).lrn,
        LrnParams::PAPER
    );

    // The Rust formula reproduces the input the fixture was computed from, bit for bit.
    let x = fixture_input(LABELS.len());
    let probe = fx.values("input.probe");
    let idx: Vec<usize> = fx
        .meta("input_probe_indices")
        .split(',')
        .map(|s| s.parse().expect("probe index"))
        .collect();
    assert_eq!(idx.len(), probe.len());
    for (&i, &want) in idx.iter().zip(&probe) {
        assert_eq!(
            x[i].to_bits(),
            want.to_bits(),
            "input[{i}]: ours {} vs fixture {want}",
            x[i]
        );
    }
}

/// Velocity after a step, from the reference: step 1 from init and grad
/// (v = -wd*lr*w - lr*g, exact in f64), step 2 as step2 - step1.
fn reference_velocity(fx: &Fixture, step: usize, name: &str) -> Vec<f64> {
    let wd = if name.ends_with(".weight") {
        WEIGHT_DECAY as f64
    } else {
        0.0
    };
    let lr = LR as f64;
    if step == 1 {
        let w = fx.values(&format!("init.{name}"));
        let g = fx.values(&format!("grad.{name}"));
        w.iter()
            .zip(&g)
            .map(|(&w, &g)| -wd * lr * w as f64 - lr * g as f64)
            .collect()
    } else {
        let a = fx.values(&format!("step{}.{name}", step - 1));
        let b = fx.values(&format!("step{step}.{name}"));
        a.iter()
            .zip(&b)
            .map(|(&a, &b)| b as f64 - a as f64)
            .collect()
    }
}

#[test]
fn narrow_alexnet_matches_pytorch() {
    let bytes = load_fixture();
    let fx = Fixture::parse(&bytes);
    let be = CpuBackend::new();
    let topo = Topology::alexnet_widths(WIDTHS, CLASSES).without_dropout();
    let batch = LABELS.len();
    let mut net = Network::new(&be, &topo, batch, 1).expect("build the narrow network");

    // Same parameter set, names and PyTorch shapes on both sides.
    let names = net.param_names();
    let ours: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    let theirs: BTreeSet<&str> = fx
        .st
        .names()
        .into_iter()
        .filter_map(|n| n.strip_prefix("init."))
        .collect();
    assert_eq!(
        ours, theirs,
        "parameter names differ between the net and the fixture"
    );
    for name in &names {
        let (shape, values) = fx.tensor(&format!("init.{name}"));
        assert_eq!(
            net.param_shape(name).expect("known parameter"),
            shape,
            "{name}: shape"
        );
        net.set_param(name, &values).expect("set parameter");
    }

    let x = fixture_input(batch);
    let hp = SgdParams {
        lr: LR,
        momentum: MOMENTUM,
        weight_decay: WEIGHT_DECAY,
    };
    let mut report = Report::new();

    // Forward at init. Train mode with dropout removed is what PyTorch ran.
    let loss = net.forward(&x, &LABELS, Mode::Train).expect("forward");
    report.check_f32(
        "logits",
        &net.logits().expect("logits"),
        &fx.values("logits"),
        TOL,
    );
    report.check_f32("loss", &[loss], &fx.values("loss"), TOL);

    net.backward().expect("backward");
    for name in &names {
        let g = net.grad(name).expect("gradient");
        report.check_f32(
            &format!("grad.{name}"),
            &g,
            &fx.values(&format!("grad.{name}")),
            TOL,
        );
    }

    for step in 1..=2 {
        if step == 2 {
            // Second step on the same batch: its forward is the loss at step1.*.
            let loss = net.forward(&x, &LABELS, Mode::Train).expect("forward");
            report.check_f32("step1.loss", &[loss], &fx.values("step1.loss"), TOL);
            net.backward().expect("backward");
        }
        net.sgd_step(&hp).expect("sgd step");
        for name in &names {
            let key = format!("step{step}.{name}");
            let want = fx.values(&key);
            report.check_f32(&key, &net.param(name).expect("parameter"), &want, TOL);
            // The update itself is ~1e-3 of the parameter, so the check above
            // cannot see e.g. weight decay applied to biases (5e-6 of the
            // bias). Compare the velocity v to its own scale instead; the atol
            // covers the float32 rounding of the stored step{1,2} parameters
            // (4 ulp of the largest) that the step-2 reference inherits.
            let v_ref = reference_velocity(&fx, step, name);
            let tol = Tol {
                rtol: TOL.rtol,
                atol: if step == 1 {
                    0.0
                } else {
                    4.0 * f32::EPSILON as f64 * max_abs(&want)
                },
            };
            let v = widen(&net.momentum(name).expect("momentum"));
            report.check(&format!("step{step}.velocity.{name}"), &v, &v_ref, tol);
        }
    }
    report.finish("narrow AlexNet vs PyTorch");
}

// ---- LRN against the paper's formula (section 3.3), without PyTorch -------

/// A small activation with every window position (7 channels > size 5, so
/// both clipped edges and full windows) and magnitudes at which the sum term
/// matters (alpha * sum of squares comparable to k), including zeros and
/// negatives.
fn lrn_case() -> (Nchw, Vec<f32>) {
    let s = Nchw {
        n: 2,
        c: 7,
        h: 2,
        w: 3,
    };
    let x = (0..s.len())
        .map(|i| {
            let v = ((i * 37 + 11) % 23) as f32 - 9.0; // -9 ..= 13
            if i % 5 == 0 {
                0.0
            } else {
                v * 9.5
            }
        })
        .collect();
    (s, x)
}

/// b = a / (k + alpha * sum_{c' in [c - n/2, c + n/2] clipped} a[c']^2)^beta, in f64.
/// Returns (b, k + alpha * sum).
fn lrn_paper_f64(p: &LrnParams, s: &Nchw, x: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let hw = s.h * s.w;
    let half = p.size / 2;
    let (mut y, mut scale) = (vec![0.0; x.len()], vec![0.0; x.len()]);
    for n in 0..s.n {
        for c in 0..s.c {
            for j in 0..hw {
                let lo = c.saturating_sub(half);
                let hi = (c + half).min(s.c - 1);
                let sum: f64 = (lo..=hi).map(|cc| x[(n * s.c + cc) * hw + j].powi(2)).sum();
                let i = (n * s.c + c) * hw + j;
                scale[i] = p.k as f64 + p.alpha as f64 * sum;
                y[i] = x[i] / scale[i].powf(p.beta as f64);
            }
        }
    }
    (y, scale)
}

#[test]
fn lrn_forward_matches_the_papers_formula() {
    let be = CpuBackend::new();
    let p = LrnParams::PAPER;
    assert_eq!(
        (p.size, p.alpha, p.beta, p.k),
        (5, 1e-4, 0.75, 2.0),
        "section 3.3's constants"
    );
    let (s, x) = lrn_case();
    let (want_y, want_scale) = lrn_paper_f64(&p, &s, &widen(&x));
    // The sum term must matter here, or the check could not tell alpha from alpha / size.
    let biggest = want_scale.iter().fold(0.0f64, |m, &v| max_nan(m, v)) - p.k as f64;
    assert!(
        biggest > 0.5,
        "test input too small: alpha * sum only reaches {biggest}"
    );

    let mut xb = be.alloc(s.len()).expect("alloc");
    let mut yb = be.alloc(s.len()).expect("alloc");
    let mut sb = be.alloc(s.len()).expect("alloc");
    be.upload(&x, &mut xb).expect("upload");
    be.lrn_forward(&p, &s, &xb, &mut yb, &mut sb)
        .expect("lrn_forward");
    let (mut y, mut scale) = (vec![0.0; s.len()], vec![0.0; s.len()]);
    be.download(&yb, &mut y).expect("download");
    be.download(&sb, &mut scale).expect("download");

    // One op in f32 (a short sum, one powf): a few ulp; 1e-5 leaves margin
    // and still sees alpha / 5 (a ~20% change at the largest scale here).
    let tol = Tol {
        rtol: 1e-5,
        atol: 0.0,
    };
    let mut report = Report::new();
    report.check("lrn.y", &widen(&y), &want_y, tol);
    report.check(
        "lrn.scale (k + alpha sum)",
        &widen(&scale),
        &want_scale,
        tol,
    );
    report.finish("LRN forward vs the paper's formula");
}

#[test]
fn lrn_backward_matches_the_derivative_of_the_papers_formula() {
    let be = CpuBackend::new();
    let p = LrnParams::PAPER;
    let (s, x) = lrn_case();
    let dy: Vec<f32> = (0..s.len())
        .map(|i| ((i * 13 + 5) % 17) as f32 / 8.0 - 1.0)
        .collect();

    // d/dx of sum(dy * b(x)) by central differences of the f64 formula:
    // independent of the closed form the backend implements.
    let x64 = widen(&x);
    let dy64 = widen(&dy);
    let objective = |x: &[f64]| -> f64 {
        lrn_paper_f64(&p, &s, x)
            .0
            .iter()
            .zip(&dy64)
            .map(|(b, d)| b * d)
            .sum()
    };
    let want: Vec<f64> = (0..s.len())
        .map(|i| {
            let h = 1e-4 * x64[i].abs().max(1.0);
            let (mut up, mut down) = (x64.clone(), x64.clone());
            up[i] += h;
            down[i] -= h;
            (objective(&up) - objective(&down)) / (2.0 * h)
        })
        .collect();

    let mut xb = be.alloc(s.len()).expect("alloc");
    let mut yb = be.alloc(s.len()).expect("alloc");
    let mut sb = be.alloc(s.len()).expect("alloc");
    let mut dyb = be.alloc(s.len()).expect("alloc");
    let mut dxb = be.alloc(s.len()).expect("alloc");
    be.upload(&x, &mut xb).expect("upload");
    be.upload(&dy, &mut dyb).expect("upload");
    be.lrn_forward(&p, &s, &xb, &mut yb, &mut sb)
        .expect("lrn_forward");
    be.lrn_backward(&p, &s, &xb, &yb, &sb, &dyb, &mut dxb)
        .expect("lrn_backward");
    let mut dx = vec![0.0; s.len()];
    be.download(&dxb, &mut dx).expect("download");

    // f32 op vs f64 differences (truncation error ~h^2, far below this).
    let tol = Tol {
        rtol: 1e-5,
        atol: 0.0,
    };
    let mut report = Report::new();
    report.check("lrn.dx", &widen(&dx), &want, tol);
    report.finish("LRN backward vs the derivative of the paper's formula");
}
