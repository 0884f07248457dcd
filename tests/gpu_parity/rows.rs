//! One comparison of a GPU result with the CPU reference: `ParityRow` (what
//! scripts/gpu-check reads, one JSON object per row), the tolerances and the
//! element-wise test that fills a row. The ops and executors compared are
//! ops.rs's and executors.rs's.
//!
//! Tolerance: an element passes when |gpu - cpu| <= atol + rtol * |cpu|.
//! GEMM-like ops sum thousands of products in a different order than the
//! CPU, so they get atol = rtol = 1e-3 on O(1) data (f32 rounding, no TF32);
//! element-wise ops must agree to 1e-5, and dropout masks, ReLU and pooling
//! exactly.
//!
//! In fp16 / bf16 mode every op runs in 16 bits on the GPU and the CPU
//! reference gets the same inputs rounded to 16 bits (so input rounding is
//! not counted as error); what remains is the output's rounding and the
//! f32-accumulated sums' order. A 16-bit output carries a relative rounding
//! error of up to 2^-11 = 4.9e-4 (fp16) or 2^-8 = 3.9e-3 (bf16), and ops
//! chained inside one kernel (LRN, softmax) or a backward op fed a rounded
//! forward output add a few of those, so element-wise ops get
//! atol = rtol = 2e-3 (fp16) or 1.6e-2 (bf16).
//! GEMM-type ops in 16 bits are judged normwise: cuDNN's algorithms keep
//! partial sums (split reductions, transformed tiles) in the 16-bit type, so
//! an element whose sum cancels to near zero carries the rounding of the
//! partials, about one unit in the last place of the tensor's largest
//! elements (Higham, "Accuracy and Stability of Numerical Algorithms",
//! 2nd ed., ch. 3: a sum's error bound scales with the sum of |terms|, not
//! with the result). So their atol is a fraction of `scale` = max |cpu|:
//!   fp16: |d| <= 4e-3 * max(scale, 1) + 1e-2 |cpu|   (8 units of 2^-11);
//!   bf16: |d| <= 1.6e-2 * max(scale, 1) + 5e-2 |cpu| (4 units of 2^-8);
//! ReLU, max pooling forward and dropout (mask 2 for p = 0.5) stay exact; the
//! SGD step works on f32 masters and keeps the f32 tolerance. Row names end
//! in the precision ("[fp16]").
use alexnet_cuda::backend::cuda::Precision;
use alexnet_cuda::rng::Rng;

/// One op's comparison.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ParityRow {
    /// Op and shape, e.g. "conv2d_forward conv2 (grouped 5x5)".
    pub op: String,
    /// "cudnn", "cudnn per group", "fallback", or "-" for ops that are not
    /// convolutions.
    pub path: &'static str,
    pub max_abs: f32,
    /// Largest |gpu - cpu| / |cpu| over elements with |cpu| > atol.
    pub max_rel: f32,
    /// max |cpu|: the tensor's scale.
    pub scale: f32,
    /// The absolute tolerance; times max(scale, 1) when `normwise`.
    pub atol: f32,
    pub rtol: f32,
    /// Whether atol is relative to the scale (GEMM-type ops in 16 bits).
    pub normwise: bool,
    /// The cuDNN algorithm that ran, where one did.
    pub algo: String,
    pub pass: bool,
}

impl std::fmt::Display for ParityRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<48} {:<8} max_abs {:.3e} max_rel {:.3e} scale {:.2e} (atol {:.0e}{}, rtol {:.0e}) {} {}",
            self.op,
            self.path,
            self.max_abs,
            self.max_rel,
            self.scale,
            self.atol,
            if self.normwise { " x scale" } else { "" },
            self.rtol,
            self.algo,
            if self.pass { "ok" } else { "FAIL" }
        )
    }
}

pub const GEMM_TOL: (f32, f32) = (1e-3, 1e-3);
pub const ELEM_TOL: (f32, f32) = (1e-5, 1e-5);
pub const EXACT: (f32, f32) = (0.0, 0.0);
/// 16-bit GEMM-type: (atol as a fraction of the scale, rtol).
const GEMM_TOL_F16: (f32, f32) = (4e-3, 1e-2);
const ELEM_TOL_F16: (f32, f32) = (2e-3, 2e-3);
const GEMM_TOL_BF16: (f32, f32) = (1.6e-2, 5e-2);
const ELEM_TOL_BF16: (f32, f32) = (1.6e-2, 1.6e-2);

/// The tolerance of an fp32 row (GEMM_TOL, ELEM_TOL, EXACT) for precision `p`.
pub fn tol_for(p: Precision, t: (f32, f32)) -> (f32, f32) {
    match p {
        Precision::F32 => t,
        Precision::F16 if t == GEMM_TOL => GEMM_TOL_F16,
        Precision::F16 if t == ELEM_TOL => ELEM_TOL_F16,
        Precision::Bf16 if t == GEMM_TOL => GEMM_TOL_BF16,
        Precision::Bf16 if t == ELEM_TOL => ELEM_TOL_BF16,
        _ => t,
    }
}

pub fn compare(
    op: String,
    path: &'static str,
    gpu: &[f32],
    cpu: &[f32],
    tol: (f32, f32),
    normwise: bool,
) -> ParityRow {
    let (atol, rtol) = tol;
    let scale = cpu.iter().fold(0f32, |m, v| m.max(v.abs()));
    let abs_tol = if normwise {
        atol * scale.max(1.0)
    } else {
        atol
    };
    let (mut max_abs, mut max_rel, mut pass) = (0f32, 0f32, gpu.len() == cpu.len());
    for (&a, &b) in gpu.iter().zip(cpu) {
        let d = (a - b).abs();
        // A NaN anywhere fails.
        if d.is_nan() || d > abs_tol + rtol * b.abs() {
            pass = false;
        }
        if d.is_nan() {
            max_abs = f32::NAN;
            max_rel = f32::NAN;
            continue;
        }
        max_abs = max_abs.max(d);
        if b.abs() > atol {
            max_rel = max_rel.max(d / b.abs());
        }
    }
    ParityRow {
        op,
        path,
        max_abs,
        max_rel,
        scale,
        atol,
        rtol,
        normwise,
        algo: String::new(),
        pass,
    }
}

/// A row that counts mistakes (mismatched indices, wrong flags): it passes
/// at zero, and the count shows as max_abs.
pub fn count_row(op: String, wrong: usize) -> ParityRow {
    ParityRow {
        op,
        path: "-",
        max_abs: wrong as f32,
        max_rel: 0.0,
        scale: 0.0,
        atol: 0.0,
        rtol: 0.0,
        normwise: false,
        algo: String::new(),
        pass: wrong == 0,
    }
}

/// A row name, with the precision in 16-bit modes.
pub fn label(prec: Precision, s: &str) -> String {
    if prec.is_half() {
        format!("{s} [{prec}]")
    } else {
        s.to_string()
    }
}

pub fn random(rng: &mut Rng, len: usize, scale: f32) -> Vec<f32> {
    (0..len).map(|_| rng.normal() as f32 * scale).collect()
}
