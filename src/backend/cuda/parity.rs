//! GPU vs CPU parity: runs every `Backend` op on random data on a
//! `CudaBackend` and on the CPU reference, and reports per op the largest
//! absolute and relative difference and whether it is within tolerance.
//! Convolutions run twice, through cuDNN (when present) and through the
//! im2col + cuBLAS fallback. Shapes are AlexNet's (conv1 11x11/4 on 227x227
//! images, grouped 5x5 pad 2, 3x3 pad 1, LRN, 3/2 pooling, fc, softmax).
//! A GPU check script calls `run_all` and prints the table; this file owns
//! nothing else.
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
use super::cudnn::Dir;
use super::storage16::{narrow_host, widen_host};
use super::{lock, CudaBackend, CudaBuf, Precision};
use crate::backend::cpu::CpuBackend;
use crate::backend::{Backend, ConvGeom, LinearGeom, LrnParams, Nchw, PoolGeom, SgdParams};
use crate::data::hostmem::HostBuf;
use crate::error::Result;
use crate::rng::Rng;

/// One op's comparison.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ParityRow {
    /// Op and shape, e.g. "conv2d_forward conv2 (grouped 5x5)".
    pub op: String,
    /// "cudnn", "fallback", or "-" for ops that are not convolutions.
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

const GEMM_TOL: (f32, f32) = (1e-3, 1e-3);
const ELEM_TOL: (f32, f32) = (1e-5, 1e-5);
const EXACT: (f32, f32) = (0.0, 0.0);
/// 16-bit GEMM-type: (atol as a fraction of the scale, rtol).
const GEMM_TOL_F16: (f32, f32) = (4e-3, 1e-2);
const ELEM_TOL_F16: (f32, f32) = (2e-3, 2e-3);
const GEMM_TOL_BF16: (f32, f32) = (1.6e-2, 5e-2);
const ELEM_TOL_BF16: (f32, f32) = (1.6e-2, 1.6e-2);

/// The tolerance of an fp32 row (GEMM_TOL, ELEM_TOL, EXACT) for precision `p`.
fn tol_for(p: Precision, t: (f32, f32)) -> (f32, f32) {
    match p {
        Precision::F32 => t,
        Precision::F16 if t == GEMM_TOL => GEMM_TOL_F16,
        Precision::F16 if t == ELEM_TOL => ELEM_TOL_F16,
        Precision::Bf16 if t == GEMM_TOL => GEMM_TOL_BF16,
        Precision::Bf16 if t == ELEM_TOL => ELEM_TOL_BF16,
        _ => t,
    }
}

fn compare(
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
fn count_row(op: String, wrong: usize) -> ParityRow {
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

fn random(rng: &mut Rng, len: usize, scale: f32) -> Vec<f32> {
    (0..len).map(|_| rng.normal() as f32 * scale).collect()
}

/// Both backends, and the helpers to move data into and out of the GPU.
struct Pair<'a> {
    gpu: &'a CudaBackend,
    cpu: CpuBackend,
    rows: Vec<ParityRow>,
    prec: Precision,
}

impl Pair<'_> {
    /// Random data as the GPU will hold it: rounded to 16 bits in 16-bit
    /// mode, so the CPU reference sees the same values.
    fn random(&self, rng: &mut Rng, len: usize, scale: f32) -> Vec<f32> {
        let mut v = random(rng, len, scale);
        if self.prec.is_half() {
            let mut bits = vec![0u16; len];
            narrow_host(self.prec, &v, &mut bits);
            widen_host(self.prec, &bits, &mut v);
        }
        v
    }
    /// An activation-type buffer (16-bit in 16-bit mode) holding `v`.
    fn up(&self, v: &[f32]) -> Result<CudaBuf<f32>> {
        let mut b = self.gpu.alloc(v.len())?;
        self.gpu.upload(v, &mut b)?;
        Ok(b)
    }
    /// A parameter-type buffer (f32 master) holding `v`: biases, SGD state.
    fn up_param(&self, v: &[f32]) -> Result<CudaBuf<f32>> {
        let mut b = self.gpu.alloc_param(v.len())?;
        self.gpu.upload(v, &mut b)?;
        Ok(b)
    }
    fn zeros(&self, len: usize) -> Result<CudaBuf<f32>> {
        self.gpu.alloc(len)
    }
    /// A gradient output (dw, db): f32 masters in every mode.
    fn zeros_param(&self, len: usize) -> Result<CudaBuf<f32>> {
        self.gpu.alloc_param(len)
    }
    /// The row name with the precision in 16-bit mode.
    fn name(&self, op: String) -> String {
        if self.prec.is_half() {
            format!("{op} [{}]", self.prec)
        } else {
            op
        }
    }
    fn tol(&self, t: (f32, f32)) -> (f32, f32) {
        tol_for(self.prec, t)
    }
    fn down(&self, b: &CudaBuf<f32>) -> Result<Vec<f32>> {
        let mut v = vec![0.0; b.len()];
        self.gpu.download(b, &mut v)?;
        Ok(v)
    }
    fn check(
        &mut self,
        op: String,
        path: &'static str,
        gpu: &CudaBuf<f32>,
        cpu: &[f32],
        tol: (f32, f32),
    ) -> Result<()> {
        let g = self.down(gpu)?;
        let normwise = self.prec.is_half() && tol == GEMM_TOL;
        let (op, tol) = (self.name(op), self.tol(tol));
        self.rows.push(compare(op, path, &g, cpu, tol, normwise));
        Ok(())
    }
    /// As `check` with the tolerance as given (f32 masters in every mode).
    fn check_f32(
        &mut self,
        op: String,
        gpu: &CudaBuf<f32>,
        cpu: &[f32],
        tol: (f32, f32),
    ) -> Result<()> {
        let g = self.down(gpu)?;
        let op = self.name(op);
        self.rows.push(compare(op, "-", &g, cpu, tol, false));
        Ok(())
    }

    /// Name the cuDNN algorithm that ran on the last row, when cuDNN ran it.
    fn note_algo(&mut self, g: &ConvGeom, path: &str, dir: Dir) -> Result<()> {
        if path != "cudnn" {
            return Ok(());
        }
        let Some(dnn) = self.gpu.dnn.as_ref() else {
            return Ok(());
        };
        let id = lock("parity", dnn)?.chosen(g, self.prec, dir);
        if let (Some(row), Some(id)) = (self.rows.last_mut(), id) {
            row.algo = id.short_name();
        }
        Ok(())
    }

    /// Forward, backward data, filter and bias of one convolution.
    fn conv(&mut self, rng: &mut Rng, name: &str, g: &ConvGeom, path: &'static str) -> Result<()> {
        let fan_in = (g.c_in / g.groups * g.k * g.k) as f32;
        let x = self.random(rng, g.x_len(), 1.0);
        let w = self.random(rng, g.w_len(), 1.0 / fan_in.sqrt());
        let b = self.random(rng, g.c_out, 0.1);
        let dy = self.random(rng, g.y_len(), 1.0);
        let (xg, wg, bg, dyg) = (
            self.up(&x)?,
            self.up(&w)?,
            self.up_param(&b)?,
            self.up(&dy)?,
        );

        let mut y = vec![0.0; g.y_len()];
        self.cpu.conv2d_forward(g, &x, &w, &b, &mut y)?;
        let mut yg = self.zeros(g.y_len())?;
        self.gpu.conv2d_forward(g, &xg, &wg, &bg, &mut yg)?;
        self.check(format!("conv2d_forward {name}"), path, &yg, &y, GEMM_TOL)?;
        self.note_algo(g, path, Dir::Forward)?;

        // The fused bias + ReLU forward against the CPU's two ops.
        let mut yr = vec![0.0; g.y_len()];
        self.cpu.conv2d_bias_relu_forward(g, &x, &w, &b, &mut yr)?;
        let mut yrg = self.zeros(g.y_len())?;
        self.gpu
            .conv2d_bias_relu_forward(g, &xg, &wg, &bg, &mut yrg)?;
        self.check(
            format!("conv2d_bias_relu_forward {name}"),
            path,
            &yrg,
            &yr,
            GEMM_TOL,
        )?;
        self.note_algo(g, path, Dir::Forward)?;

        let mut dx = vec![0.0; g.x_len()];
        self.cpu.conv2d_backward_data(g, &w, &dy, &mut dx)?;
        let mut dxg = self.zeros(g.x_len())?;
        self.gpu.conv2d_backward_data(g, &wg, &dyg, &mut dxg)?;
        self.check(
            format!("conv2d_backward_data {name}"),
            path,
            &dxg,
            &dx,
            GEMM_TOL,
        )?;
        self.note_algo(g, path, Dir::Data)?;

        let mut dw = vec![0.0; g.w_len()];
        self.cpu.conv2d_backward_filter(g, &x, &dy, &mut dw)?;
        let mut dwg = self.zeros_param(g.w_len())?;
        self.gpu.conv2d_backward_filter(g, &xg, &dyg, &mut dwg)?;
        self.check(
            format!("conv2d_backward_filter {name}"),
            path,
            &dwg,
            &dw,
            GEMM_TOL,
        )?;
        self.note_algo(g, path, Dir::Filter)?;

        let mut db = vec![0.0; g.c_out];
        self.cpu.conv2d_backward_bias(g, &dy, &mut db)?;
        let mut dbg = self.zeros_param(g.c_out)?;
        self.gpu.conv2d_backward_bias(g, &dyg, &mut dbg)?;
        self.check(
            format!("conv2d_backward_bias {name}"),
            path,
            &dbg,
            &db,
            GEMM_TOL,
        )
    }
}

/// AlexNet's convolutions on a batch of `n` images (conv1 on 227x227 input).
fn convs(n: usize) -> Vec<(&'static str, ConvGeom)> {
    let cg = |c_in, h, c_out, k, stride, pad, groups| ConvGeom {
        n,
        c_in,
        h,
        w: h,
        c_out,
        k,
        stride,
        pad,
        groups,
    };
    vec![
        ("conv1 (11x11/4)", cg(3, 227, 96, 11, 4, 0, 1)),
        ("conv2 (grouped 5x5 pad 2)", cg(96, 27, 256, 5, 1, 2, 2)),
        ("conv3 (3x3 pad 1)", cg(256, 13, 384, 3, 1, 1, 1)),
        ("conv4 (grouped 3x3 pad 1)", cg(384, 13, 384, 3, 1, 1, 2)),
    ]
}

/// Run every op on `be` and on the CPU; one row per op (and per convolution path).
pub fn run_all(be: &CudaBackend) -> Result<Vec<ParityRow>> {
    let mut p = Pair {
        gpu: be,
        cpu: CpuBackend::new(),
        rows: Vec::new(),
        prec: be.precision(),
    };
    let mut rng = Rng::new(0x5eed_a1e7);
    let n = 2;

    // -- convolutions, through each available path ---------------------------------
    let had_cudnn = be.uses_cudnn();
    let paths: &[(&'static str, bool)] = if be.dnn.is_some() {
        &[("cudnn", false), ("fallback", true)]
    } else {
        &[("fallback", true)]
    };
    for &(path, force) in paths {
        be.set_force_fallback(force);
        for (name, g) in convs(n) {
            let r = p.conv(&mut rng, name, &g, path);
            if let Err(e) = r {
                be.set_force_fallback(!had_cudnn);
                return Err(e);
            }
        }
    }
    be.set_force_fallback(!had_cudnn);

    // -- ReLU ------------------------------------------------------------------------
    let x = p.random(&mut rng, 4096 * 3 + 7, 1.0);
    let mut xc = x.clone();
    p.cpu.relu_forward(&mut xc)?;
    let mut xg = p.up(&x)?;
    p.gpu.relu_forward(&mut xg)?;
    p.check("relu_forward".into(), "-", &xg, &xc, EXACT)?;
    let dy = p.random(&mut rng, x.len(), 1.0);
    let mut dyc = dy.clone();
    p.cpu.relu_backward(&xc, &mut dyc)?;
    let mut dyg = p.up(&dy)?;
    p.gpu.relu_backward(&xg, &mut dyg)?;
    p.check("relu_backward".into(), "-", &dyg, &dyc, EXACT)?;

    // -- LRN on conv1's output ----------------------------------------------------------
    let s = Nchw {
        n,
        c: 96,
        h: 55,
        w: 55,
    };
    let lp = LrnParams::PAPER;
    let x: Vec<f32> = p.random(&mut rng, s.len(), 3.0);
    let (mut y, mut scale) = (vec![0.0; s.len()], vec![0.0; s.len()]);
    p.cpu.lrn_forward(&lp, &s, &x, &mut y, &mut scale)?;
    let xg = p.up(&x)?;
    let (mut yg, mut scaleg) = (p.zeros(s.len())?, p.zeros(s.len())?);
    p.gpu.lrn_forward(&lp, &s, &xg, &mut yg, &mut scaleg)?;
    p.check("lrn_forward y".into(), "-", &yg, &y, ELEM_TOL)?;
    p.check("lrn_forward scale".into(), "-", &scaleg, &scale, ELEM_TOL)?;
    let dy = p.random(&mut rng, s.len(), 1.0);
    let mut dx = vec![0.0; s.len()];
    p.cpu.lrn_backward(&lp, &s, &x, &y, &scale, &dy, &mut dx)?;
    let dyg = p.up(&dy)?;
    let mut dxg = p.zeros(s.len())?;
    // The GPU's own forward results feed its backward, as in training.
    p.gpu
        .lrn_backward(&lp, &s, &xg, &yg, &scaleg, &dyg, &mut dxg)?;
    p.check("lrn_backward".into(), "-", &dxg, &dx, ELEM_TOL)?;

    // -- max pooling 3/2: 55 -> 27 ---------------------------------------------------------
    let g = PoolGeom {
        n,
        c: 96,
        h: 55,
        w: 55,
        size: 3,
        stride: 2,
    };
    let x = p.random(&mut rng, g.x_len(), 1.0);
    let (mut y, mut am) = (vec![0.0; g.y_len()], vec![0u32; g.y_len()]);
    p.cpu.max_pool_forward(&g, &x, &mut y, &mut am)?;
    let xg = p.up(&x)?;
    let mut yg = p.zeros(g.y_len())?;
    let mut amg = p.gpu.alloc_idx(g.y_len())?;
    p.gpu.max_pool_forward(&g, &xg, &mut yg, &mut amg)?;
    p.check("max_pool_forward".into(), "-", &yg, &y, EXACT)?;
    let mut am_gpu = vec![0u32; g.y_len()];
    p.gpu.download_idx(&amg, &mut am_gpu)?;
    let mismatched = am_gpu.iter().zip(&am).filter(|(a, b)| a != b).count();
    p.rows.push(count_row(
        "max_pool_forward argmax (mismatches)".into(),
        mismatched,
    ));
    let dy = p.random(&mut rng, g.y_len(), 1.0);
    let mut dx = vec![0.0; g.x_len()];
    p.cpu.max_pool_backward(&g, &dy, &am, &mut dx)?;
    let dyg = p.up(&dy)?;
    let mut dxg = p.zeros(g.x_len())?;
    p.gpu.max_pool_backward(&g, &dyg, &amg, &mut dxg)?;
    // Overlapping windows sum up to 4 values in either order.
    p.check("max_pool_backward".into(), "-", &dxg, &dx, ELEM_TOL)?;

    // -- dropout: the same counter hash on both sides --------------------------------------
    let x = p.random(&mut rng, n * 4096, 1.0);
    let (mut xc, mut mask) = (x.clone(), vec![0.0; x.len()]);
    p.cpu.dropout_forward(0.5, 1234, &mut xc, &mut mask)?;
    let mut xg = p.up(&x)?;
    let mut maskg = p.zeros(x.len())?;
    p.gpu.dropout_forward(0.5, 1234, &mut xg, &mut maskg)?;
    p.check("dropout_forward mask".into(), "-", &maskg, &mask, EXACT)?;
    p.check("dropout_forward x".into(), "-", &xg, &xc, EXACT)?;
    let dy = p.random(&mut rng, x.len(), 1.0);
    let mut dyc = dy.clone();
    p.cpu.dropout_backward(&mask, &mut dyc)?;
    let mut dyg = p.up(&dy)?;
    p.gpu.dropout_backward(&maskg, &mut dyg)?;
    p.check("dropout_backward".into(), "-", &dyg, &dyc, EXACT)?;

    // -- fc6: 9216 -> 4096 on a batch of 8 ------------------------------------------------------
    let g = LinearGeom {
        n: 8,
        inp: 9216,
        out: 4096,
    };
    let x = p.random(&mut rng, g.n * g.inp, 1.0);
    let w = p.random(&mut rng, g.out * g.inp, 1.0 / (g.inp as f32).sqrt());
    let b = p.random(&mut rng, g.out, 0.1);
    let dy = p.random(&mut rng, g.n * g.out, 1.0);
    let (xg, wg, bg, dyg) = (p.up(&x)?, p.up(&w)?, p.up_param(&b)?, p.up(&dy)?);
    let mut y = vec![0.0; g.n * g.out];
    p.cpu.linear_forward(&g, &x, &w, &b, &mut y)?;
    let mut yg = p.zeros(y.len())?;
    p.gpu.linear_forward(&g, &xg, &wg, &bg, &mut yg)?;
    p.check("linear_forward fc6".into(), "-", &yg, &y, GEMM_TOL)?;
    let mut yr = vec![0.0; g.n * g.out];
    p.cpu.linear_bias_relu_forward(&g, &x, &w, &b, &mut yr)?;
    let mut yrg = p.zeros(yr.len())?;
    p.gpu
        .linear_bias_relu_forward(&g, &xg, &wg, &bg, &mut yrg)?;
    p.check(
        "linear_bias_relu_forward fc6".into(),
        "-",
        &yrg,
        &yr,
        GEMM_TOL,
    )?;
    let mut dx = vec![0.0; g.n * g.inp];
    p.cpu.linear_backward_data(&g, &w, &dy, &mut dx)?;
    let mut dxg = p.zeros(dx.len())?;
    p.gpu.linear_backward_data(&g, &wg, &dyg, &mut dxg)?;
    p.check("linear_backward_data fc6".into(), "-", &dxg, &dx, GEMM_TOL)?;
    let mut dw = vec![0.0; g.out * g.inp];
    p.cpu.linear_backward_weight(&g, &x, &dy, &mut dw)?;
    let mut dwg = p.zeros_param(dw.len())?;
    p.gpu.linear_backward_weight(&g, &xg, &dyg, &mut dwg)?;
    p.check(
        "linear_backward_weight fc6".into(),
        "-",
        &dwg,
        &dw,
        GEMM_TOL,
    )?;
    let mut db = vec![0.0; g.out];
    p.cpu.linear_backward_bias(&g, &dy, &mut db)?;
    let mut dbg = p.zeros_param(g.out)?;
    p.gpu.linear_backward_bias(&g, &dyg, &mut dbg)?;
    p.check("linear_backward_bias fc6".into(), "-", &dbg, &db, ELEM_TOL)?;

    // -- softmax cross-entropy: 8 rows of 1000 classes -------------------------------------------
    let (rows, classes) = (8, 1000);
    let logits = p.random(&mut rng, rows * classes, 3.0);
    let labels: Vec<u32> = (0..rows).map(|_| rng.below(classes) as u32).collect();
    let mut probs = vec![0.0; logits.len()];
    let loss = p
        .cpu
        .softmax_xent_forward(rows, classes, &logits, &labels, &mut probs)?;
    let lg = p.up(&logits)?;
    let mut lab = p.gpu.alloc_idx(rows)?;
    p.gpu.upload_idx(&labels, &mut lab)?;
    let mut probsg = p.zeros(logits.len())?;
    let loss_g = p
        .gpu
        .softmax_xent_forward(rows, classes, &lg, &lab, &mut probsg)?;
    let (op, tol) = (p.name("softmax_xent_forward loss".into()), p.tol(ELEM_TOL));
    p.rows
        .push(compare(op, "-", &[loss_g], &[loss], tol, false));
    p.check(
        "softmax_xent_forward probs".into(),
        "-",
        &probsg,
        &probs,
        ELEM_TOL,
    )?;
    let mut dl = vec![0.0; logits.len()];
    p.cpu
        .softmax_xent_backward(rows, classes, &probs, &labels, &mut dl)?;
    let mut dlg = p.zeros(logits.len())?;
    p.gpu
        .softmax_xent_backward(rows, classes, &probsg, &lab, &mut dlg)?;
    p.check("softmax_xent_backward".into(), "-", &dlg, &dl, ELEM_TOL)?;
    // The loss-scaled gradient (one pass in 16-bit mode); a power-of-two
    // scale is exact, so the reference is the CPU's gradient times it.
    let s = 1024.0f32;
    let dls: Vec<f32> = dl.iter().map(|v| v * s).collect();
    let mut dlsg = p.zeros(logits.len())?;
    p.gpu
        .softmax_xent_backward_scaled(rows, classes, &probsg, &lab, s, &mut dlsg)?;
    p.check(
        "softmax_xent_backward_scaled (scale 1024)".into(),
        "-",
        &dlsg,
        &dls,
        ELEM_TOL,
    )?;

    // -- a training step's metrics, kept on the device -------------------------------------------
    step_metrics(&mut p, &mut rng, rows, classes)?;

    // -- the paper's SGD step ---------------------------------------------------------------------
    let sp = SgdParams {
        lr: 0.01,
        momentum: 0.9,
        weight_decay: 5e-4,
    };
    let len = 100_003;
    let (w, gr, v) = (
        p.random(&mut rng, len, 1.0),
        p.random(&mut rng, len, 1.0),
        p.random(&mut rng, len, 0.1),
    );
    let (mut wc, mut vc) = (w.clone(), v.clone());
    p.cpu.sgd_update(&sp, &mut wc, &gr, &mut vc)?;
    let (mut wg, grg, mut vg) = (p.up_param(&w)?, p.up_param(&gr)?, p.up_param(&v)?);
    p.gpu.sgd_update(&sp, &mut wg, &grg, &mut vg)?;
    p.check_f32("sgd_update w".into(), &wg, &wc, ELEM_TOL)?;
    p.check_f32("sgd_update v".into(), &vg, &vc, ELEM_TOL)?;

    // -- loss-scale unscaling: a power of two is exact; one flag for all --------------------
    let inv = 1.0 / 1024.0f32;
    let (a, mut b) = (p.random(&mut rng, 1000, 1.0), p.random(&mut rng, 77, 1.0));
    let (mut ag, mut bg) = (p.up_param(&a)?, p.up_param(&b)?);
    let finite = p.gpu.unscale_check_all(inv, &mut [&mut ag, &mut bg])?;
    let scaled: Vec<f32> = a.iter().map(|v| v * inv).collect();
    p.check_f32("unscale_check_all values".into(), &ag, &scaled, EXACT)?;
    b[40] = f32::INFINITY;
    let mut bg = p.up_param(&b)?;
    let overflow_seen = !p.gpu.unscale_check_all(inv, &mut [&mut ag, &mut bg])?;
    let flags_wrong = usize::from(!finite) + usize::from(!overflow_seen);
    let op = p.name("unscale_check_all flags (finite, then one inf)".into());
    p.rows.push(count_row(op, flags_wrong));

    // -- the towers' gradient sum ----------------------------------------------------------
    let (d, src) = (
        p.random(&mut rng, 50_001, 1.0),
        p.random(&mut rng, 50_001, 1.0),
    );
    let mut dc = d.clone();
    p.cpu.add_assign(&mut dc, &src)?;
    let (mut dg, sg) = (p.up(&d)?, p.up(&src)?);
    p.gpu.add_assign(&mut dg, &sg)?;
    p.check("add_assign".into(), "-", &dg, &dc, ELEM_TOL)?;

    // -- an upload from the loader's pinned memory (DMA; narrowed on the GPU in 16 bits) -----
    let v = p.random(&mut rng, 3 * 227 * 227 + 5, 1.0);
    let mut host = HostBuf::default();
    host.resize(v.len(), p.gpu.host_alloc().as_ref())?;
    host.copy_from_slice(&v);
    let mut vg = p.zeros(v.len())?;
    p.gpu.upload(&host, &mut vg)?;
    p.check("upload from pinned memory".into(), "-", &vg, &v, EXACT)?;

    Ok(p.rows)
}

/// `softmax_xent_forward_into` and `record_step_metrics` (slot 3 of 5) on
/// `rows` rows of which row 0 ties every class, row 1 ties its label with
/// another class (both misses under `eval::topk_hits`' rule) and row 2's
/// label wins outright. The loss must equal the CPU's to ELEM_TOL and, bit
/// for bit, what `softmax_xent_forward` returns on the GPU; the hits
/// must equal the CPU op's on the GPU's own probabilities (so 16-bit
/// rounding cannot move a tie), and the other slots stay zero.
fn step_metrics(p: &mut Pair, rng: &mut Rng, rows: usize, classes: usize) -> Result<()> {
    let mut logits = p.random(rng, rows * classes, 3.0);
    let mut labels: Vec<u32> = (0..rows).map(|_| rng.below(classes) as u32).collect();
    logits[..classes].fill(0.0);
    (logits[classes + 7], logits[classes + 9], labels[1]) = (5.0, 5.0, 7);
    (logits[2 * classes + 3], labels[2]) = (9.0, 3);
    let mut probs = vec![0.0; logits.len()];
    let loss = p
        .cpu
        .softmax_xent_forward(rows, classes, &logits, &labels, &mut probs)?;
    let lg = p.up(&logits)?;
    let mut lab = p.gpu.alloc_idx(rows)?;
    p.gpu.upload_idx(&labels, &mut lab)?;
    let mut probsg = p.zeros(logits.len())?;
    let host_loss = p
        .gpu
        .softmax_xent_forward(rows, classes, &lg, &lab, &mut probsg)?;
    let mut lossg = p.gpu.alloc_f32(1)?;
    p.gpu
        .softmax_xent_forward_into(rows, classes, &lg, &lab, &mut probsg, &mut lossg)?;
    let (slot, slots) = (3, 5);
    let mut mg = p.gpu.alloc_f32(2 * slots)?;
    p.gpu
        .record_step_metrics(rows, classes, &probsg, &lab, &lossg, slot, &mut mg)?;
    let got = p.down(&mg)?;
    let (op, tol) = (
        p.name("record_step_metrics loss vs cpu".into()),
        p.tol(ELEM_TOL),
    );
    p.rows.push(compare(
        op,
        "-",
        &got[2 * slot..2 * slot + 1],
        &[loss],
        tol,
        false,
    ));
    let mut want = vec![0.0; 2 * slots];
    let gp = p.down(&probsg)?;
    p.cpu.record_step_metrics(
        rows,
        classes,
        &gp,
        &labels,
        &vec![host_loss],
        slot,
        &mut want,
    )?;
    let wrong = got
        .iter()
        .zip(&want)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    let op = p.name(format!(
        "record_step_metrics (loss as softmax_xent_forward's, {} hits of {rows}, other slots 0)",
        want[2 * slot + 1]
    ));
    p.rows.push(count_row(op, wrong));
    Ok(())
}

/// Train `steps` (>= 2) steps of `topo` on random data with batch `batch`;
/// returns the backend's allocation count after the first step and after the
/// last. Equal counts mean the steady state allocates nothing per step
/// (buffers, workspaces, scratch and the pinned staging are all sized once).
pub fn steady_state_allocations(
    be: &CudaBackend,
    topo: &crate::model::topology::Topology,
    batch: usize,
    steps: usize,
) -> Result<(u64, u64)> {
    use crate::model::net::{Mode, Network};
    let input = topo
        .shapes()?
        .first()
        .map(|s| s.input.len())
        .ok_or_else(|| crate::error::Error::Config("empty topology".into()))?;
    let classes = topo.layers.last().map(|l| l.out_channels()).unwrap_or(1);
    let mut rng = Rng::new(7);
    let x = random(&mut rng, batch * input, 1.0);
    let labels: Vec<u32> = (0..batch).map(|_| rng.below(classes) as u32).collect();
    let hp = SgdParams {
        lr: 0.01,
        momentum: 0.9,
        weight_decay: 5e-4,
    };
    let mut net = Network::new(be, topo, batch, 1)?;
    let mut after_first = 0;
    for step in 0..steps.max(2) {
        net.forward(&x, &labels, Mode::Train)?;
        net.backward()?;
        net.sgd_step(&hp)?;
        if step == 0 {
            be.synchronize()?;
            after_first = be.allocations();
        }
    }
    be.synchronize()?;
    Ok((after_first, be.allocations()))
}

/// The two-tower executor on two backends of `be`'s GPU (two streams, as
/// `--gpus 0,0` runs it) against the grouped network on `be`: `cifar`
/// without dropout, batch 8, one forward and backward. Rows for the logits,
/// the loss, the gradients (the worst tensor, normwise), and the bytes the
/// towers copied against the table's prediction (counted as f32, as the
/// table does, in every precision).
pub fn towers_vs_grouped(be: &CudaBackend) -> Result<Vec<ParityRow>> {
    use crate::model::towers::TowerNetwork;
    let (a, b) = (twin(be)?, twin(be)?);
    let (topo, x, labels) = split_case();
    let mut two = TowerNetwork::new([&a, &b], &topo, labels.len(), 3)?;
    let mut rows = against_grouped(be, "towers vs grouped", &mut two, &topo, &x, &labels)?;
    let (got, want) = (
        two.exchanged_bytes(),
        topo.exchange_bytes_per_step(labels.len())?,
    );
    rows.push(count_row(
        label(
            be,
            &format!("towers: bytes copied {got} vs the table's {want}"),
        ),
        got.abs_diff(want) as usize,
    ));
    Ok(rows)
}

/// Data parallelism on the GPU against the grouped network at the whole
/// batch (the same case as `towers_vs_grouped`): two replicas on `be`'s GPU
/// averaged through host memory, and, where NCCL is installed, one replica
/// averaged by NCCL (a communicator of one rank: one GPU cannot hold two
/// NCCL ranks), which must leave the gradients as they were. Rows for the
/// logits, the loss and the worst gradient after the reduction; without
/// NCCL, a failing row that says so.
pub fn replicas_vs_grouped(be: &CudaBackend) -> Result<Vec<ParityRow>> {
    use crate::dist::layout::BUCKET_BYTES;
    use crate::dist::HostAllReduce;
    use crate::model::replicas::DataParallel;
    let (topo, x, labels) = split_case();
    let (a, b) = (twin(be)?, twin(be)?);
    let mut two = DataParallel::grouped(
        vec![&a, &b],
        &topo,
        labels.len(),
        3,
        BUCKET_BYTES,
        Box::new(HostAllReduce::default()),
    )?;
    let mut rows = against_grouped(be, "2 replicas vs grouped", &mut two, &topo, &x, &labels)?;
    if !super::nccl::nccl_present() {
        rows.push(count_row(label(be, super::nccl::NO_NCCL), 1));
        return Ok(rows);
    }
    let c = twin(be)?;
    let reduce =
        super::nccl::NcclAllReduce::new(&[vec![&c]], &crate::dist::world::World::single())?;
    let mut one = DataParallel::grouped(
        vec![&c],
        &topo,
        labels.len(),
        3,
        BUCKET_BYTES,
        Box::new(reduce),
    )?;
    rows.extend(against_grouped(
        be,
        "NCCL replica vs grouped",
        &mut one,
        &topo,
        &x,
        &labels,
    )?);
    Ok(rows)
}

/// Another backend on `be`'s GPU with its settings (TF32 off).
fn twin(be: &CudaBackend) -> Result<CudaBackend> {
    let opts = super::CudaOptions {
        precision: be.precision(),
        force_fallback_conv: !be.uses_cudnn(),
        allow_tf32: false,
    };
    CudaBackend::new(be.info().ordinal, opts)
}

/// `cifar` without dropout, batch 8, random inputs and labels.
fn split_case() -> (crate::model::topology::Topology, Vec<f32>, Vec<u32>) {
    let topo = crate::model::topology::Topology::cifar().without_dropout();
    let n = 8;
    let mut rng = Rng::new(0x70_3e25);
    let x = random(&mut rng, n * topo.channels * topo.crop * topo.crop, 1.0);
    let labels: Vec<u32> = (0..n).map(|_| rng.below(topo.classes) as u32).collect();
    (topo, x, labels)
}

/// A row name, with the precision in 16-bit modes.
fn label(be: &CudaBackend, s: &str) -> String {
    let prec = be.precision();
    if prec.is_half() {
        format!("{s} [{prec}]")
    } else {
        s.to_string()
    }
}

/// One training forward and backward of `other` and of the grouped network
/// on `be` (same seed): rows for the logits, the loss and the worst
/// gradient (normwise).
fn against_grouped(
    be: &CudaBackend,
    what: &str,
    other: &mut dyn crate::model::trainable::Model,
    topo: &crate::model::topology::Topology,
    x: &[f32],
    labels: &[u32],
) -> Result<Vec<ParityRow>> {
    use crate::model::net::{Mode, Network};
    let mut one = Network::new(be, topo, labels.len(), 3)?;
    let prec = be.precision();
    let mut rows = Vec::new();
    let (l1, l2) = (
        one.forward(x, labels, Mode::Train)?,
        other.forward(x, labels, Mode::Train)?,
    );
    let gemm = tol_for(prec, GEMM_TOL);
    rows.push(compare(
        label(be, &format!("{what}: logits")),
        "-",
        &other.logits()?,
        &one.logits()?,
        gemm,
        prec.is_half(),
    ));
    rows.push(compare(
        label(be, &format!("{what}: loss")),
        "-",
        &[l2],
        &[l1],
        tol_for(prec, ELEM_TOL),
        false,
    ));
    one.backward()?;
    other.backward()?;
    let mut worst: Option<ParityRow> = None;
    for p in one.param_names() {
        let r = compare(
            label(be, &format!("{what}: gradient of {p} (the worst)")),
            "-",
            &other.grad(&p)?,
            &one.grad(&p)?,
            gemm,
            true,
        );
        let bad = |r: &ParityRow| r.max_abs / r.scale.max(1.0);
        if worst
            .as_ref()
            .is_none_or(|w| !r.pass || (w.pass && bad(&r) > bad(w)))
        {
            worst = Some(r);
        }
    }
    rows.extend(worst);
    Ok(rows)
}
