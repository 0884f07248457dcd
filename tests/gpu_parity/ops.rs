//! Every `Backend` op on a `CudaBackend` against the CPU reference, on
//! random data: one row per op (rows.rs says how rows are judged).
//! Convolutions run twice, through cuDNN (when present) and through the
//! im2col + cuBLAS fallback. Shapes are AlexNet's (conv1 11x11/4 on 227x227
//! images, grouped 5x5 pad 2, 3x3 pad 1, LRN, 3/2 pooling, fc, softmax).
//! In fp16 / bf16 mode every op runs in 16 bits on the GPU and the CPU
//! reference gets the same inputs rounded to 16 bits.
use alexnet_cuda::backend::cpu::CpuBackend;
use alexnet_cuda::backend::cuda::cudnn::Dir;
use alexnet_cuda::backend::cuda::storage16::{narrow_host, widen_host};
use alexnet_cuda::backend::cuda::{CudaBackend, CudaBuf, Precision};
use alexnet_cuda::backend::{Backend, ConvGeom, LinearGeom, LrnParams, Nchw, PoolGeom, SgdParams};
use alexnet_cuda::data::hostmem::HostBuf;
use alexnet_cuda::rng::Rng;
use alexnet_cuda::Result;

use crate::rows::{compare, count_row, label, random, tol_for, ParityRow};
use crate::rows::{ELEM_TOL, EXACT, GEMM_TOL};

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
        label(self.prec, &op)
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
        if !path.starts_with("cudnn") {
            return Ok(());
        }
        let algo = self.gpu.cudnn_algo(g, dir)?;
        if let (Some(row), Some(algo)) = (self.rows.last_mut(), algo) {
            row.algo = algo;
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
    // cuDNN whole, cuDNN one group at a time (grouped shapes only), the fallback.
    let had_cudnn = be.uses_cudnn();
    let paths: &[(&'static str, bool, Option<bool>)] = if be.has_cudnn() {
        &[
            ("cudnn", false, Some(false)),
            ("cudnn per group", false, Some(true)),
            ("fallback", true, None),
        ]
    } else {
        &[("fallback", true, None)]
    };
    for &(path, force, split) in paths {
        be.set_force_fallback(force);
        be.force_split_groups(split)?;
        for (name, g) in convs(n) {
            if split == Some(true) && g.groups == 1 {
                continue;
            }
            let r = p.conv(&mut rng, name, &g, path);
            if let Err(e) = r {
                be.set_force_fallback(!had_cudnn);
                be.force_split_groups(None)?;
                return Err(e);
            }
        }
    }
    be.set_force_fallback(!had_cudnn);
    be.force_split_groups(None)?;

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
