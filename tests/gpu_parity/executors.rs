//! The executors on a GPU against the grouped network on the same GPU: the
//! two towers (two backends on one GPU, as `--gpus 0,0` runs them) and the
//! data-parallel replicas (two averaged through host memory, one through
//! NCCL). One training forward and backward each; rows for the logits, the
//! loss and the worst gradient. Every network here gets its own backend
//! with cuDNN's deterministic algorithms, so each picks the same algorithm
//! for the same shape and the layouts differ only in how they split the
//! work.
//!
//! Logits and loss are judged as rows.rs says. Gradients in fp32 too; in
//! fp16 and bf16 a layout sums the same products in other groups (the
//! towers add two tower's partial sums, each rounded to 16 bits), so where
//! a gradient cancels its error follows the partial sums, not the result.
//! There each gradient is judged by its error against the grouped network
//! in fp32: within 3x the 16-bit grouped network's own error against it,
//! plus one unit of 16-bit rounding of the tensor's largest value. A copy
//! or fence gone wrong leaves errors of the gradient's own size.
use alexnet_cuda::backend::cuda::{nccl, CudaBackend, CudaOptions, Precision};
use alexnet_cuda::dist::layout::BUCKET_BYTES;
use alexnet_cuda::dist::world::World;
use alexnet_cuda::dist::HostAllReduce;
use alexnet_cuda::model::loss_scale::LossScale;
use alexnet_cuda::model::net::{Mode, Network};
use alexnet_cuda::model::replicas::DataParallel;
use alexnet_cuda::model::topology::Topology;
use alexnet_cuda::model::towers::TowerNetwork;
use alexnet_cuda::model::trainable::Model;
use alexnet_cuda::rng::Rng;
use alexnet_cuda::Result;

use crate::rows::{compare, count_row, label, random, tol_for, ParityRow};
use crate::rows::{ELEM_TOL, GEMM_TOL};

/// The two-tower executor on two backends of `be`'s GPU (two streams, as
/// `--gpus 0,0` runs it) against the grouped network on `be`: `cifar`
/// without dropout, batch 8, one forward and backward. Rows for the logits,
/// the loss, the gradients (the worst tensor, normwise), and the bytes the
/// towers copied against the table's prediction (the table counts f32;
/// 16-bit activations move 2 bytes an element).
pub fn towers_vs_grouped(be: &CudaBackend) -> Result<Vec<ParityRow>> {
    let (a, b) = (twin(be)?, twin(be)?);
    let (topo, x, labels) = split_case();
    let mut two = TowerNetwork::new([&a, &b], &topo, labels.len(), 3)?;
    let mut rows = against_grouped(be, "towers vs grouped", &mut two, &topo, &x, &labels)?;
    let (got, want) = (
        two.exchanged_bytes(),
        topo.exchange_bytes_per_step(labels.len())?
            * alexnet_cuda::backend::Backend::activation_bytes(be)
            / 4,
    );
    rows.push(count_row(
        label(
            be.precision(),
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
    if !nccl::nccl_present() {
        rows.push(count_row(label(be.precision(), nccl::NO_NCCL), 1));
        return Ok(rows);
    }
    let c = twin(be)?;
    let reduce = nccl::NcclAllReduce::new(&[vec![&c]], &World::single())?;
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

/// Another backend on `be`'s GPU with its settings (TF32 off), with only
/// cuDNN's deterministic algorithms.
fn twin(be: &CudaBackend) -> Result<CudaBackend> {
    twin_in(be, be.precision())
}

/// `twin` in precision `p`.
fn twin_in(be: &CudaBackend, precision: Precision) -> Result<CudaBackend> {
    let opts = CudaOptions {
        precision,
        force_fallback_conv: !be.uses_cudnn(),
        deterministic: true,
        ..CudaOptions::default()
    };
    CudaBackend::new(be.info().ordinal, opts)
}

/// `cifar` without dropout, batch 8, random inputs and labels.
fn split_case() -> (Topology, Vec<f32>, Vec<u32>) {
    let topo = Topology::cifar().without_dropout();
    let n = 8;
    let mut rng = Rng::new(0x70_3e25);
    let x = random(&mut rng, n * topo.channels * topo.crop * topo.crop, 1.0);
    let labels: Vec<u32> = (0..n).map(|_| rng.below(topo.classes) as u32).collect();
    (topo, x, labels)
}

/// One training forward and backward of `other` and of the grouped network
/// on a twin of `be` (same seed): rows for the logits, the loss and the
/// worst gradient (see the module note).
fn against_grouped(
    be: &CudaBackend,
    what: &str,
    other: &mut dyn Model,
    topo: &Topology,
    x: &[f32],
    labels: &[u32],
) -> Result<Vec<ParityRow>> {
    let g = twin(be)?;
    let mut one = Network::new(&g, topo, labels.len(), 3)?;
    // fp16 trains with its loss scaled (`needs_loss_scaling`), and is
    // compared so: unscaled, this case's deeper gradients lie near fp16's
    // smallest normal (6e-5), where the subnormals left keep a few bits.
    // Both get the same static scale, which the gradients read back still
    // carry; the fp32 reference is multiplied by it (a power of two: exact).
    let scale = if be.precision().needs_loss_scaling() {
        one.set_loss_scale(Some(LossScale::with_scale(LOSS_SCALE)));
        other.set_loss_scale(Some(LossScale::with_scale(LOSS_SCALE)));
        LOSS_SCALE
    } else {
        1.0
    };
    let prec = be.precision();
    let mut rows = Vec::new();
    let (l1, l2) = (
        one.forward(x, labels, Mode::Train)?,
        other.forward(x, labels, Mode::Train)?,
    );
    let gemm = tol_for(prec, GEMM_TOL);
    rows.push(compare(
        label(prec, &format!("{what}: logits")),
        "-",
        &other.logits()?,
        &one.logits()?,
        gemm,
        prec.is_half(),
    ));
    rows.push(compare(
        label(prec, &format!("{what}: loss")),
        "-",
        &[l2],
        &[l1],
        tol_for(prec, ELEM_TOL),
        false,
    ));
    one.backward()?;
    other.backward()?;
    let exact = if prec.is_half() {
        Some(fp32_grads(be, topo, x, labels, &one.param_names(), scale)?)
    } else {
        None
    };
    let mut worst: Option<ParityRow> = None;
    for (k, p) in one.param_names().iter().enumerate() {
        let (mine, grouped) = (other.grad(p)?, one.grad(p)?);
        let r = match &exact {
            None => compare(
                label(prec, &format!("{what}: gradient of {p} (the worst)")),
                "-",
                &mine,
                &grouped,
                gemm,
                true,
            ),
            Some(exact) => against_fp32(prec, what, p, &mine, &grouped, &exact[k]),
        };
        // Every tensor in the log, not only the worst: where a layout
        // parts from the grouped network says which op to look at.
        eprintln!(
            "{what}: gradient of {p}: max abs {:.2e}, max rel {:.2e}, scale {:.2e}, atol {:.2e}, pass {}",
            r.max_abs, r.max_rel, r.scale, r.atol, r.pass
        );
        let bad = |r: &ParityRow| r.max_abs / (r.atol * r.scale.max(1.0)).max(f32::MIN_POSITIVE);
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

/// fp16's static loss scale in these cases.
const LOSS_SCALE: f32 = 1024.0;

/// The grouped network's gradients in fp32 on a twin of `be`, times `scale`.
fn fp32_grads(
    be: &CudaBackend,
    topo: &Topology,
    x: &[f32],
    labels: &[u32],
    names: &[String],
    scale: f32,
) -> Result<Vec<Vec<f32>>> {
    let f = twin_in(be, Precision::F32)?;
    let mut net = Network::new(&f, topo, labels.len(), 3)?;
    net.forward(x, labels, Mode::Train)?;
    net.backward()?;
    names
        .iter()
        .map(|p| Ok(net.grad(p)?.iter().map(|v| v * scale).collect()))
        .collect()
}

/// A 16-bit layout's gradient `mine` against the fp32 one: within 3x the
/// 16-bit grouped network's largest error, plus one unit of 16-bit rounding,
/// both as fractions of the tensor's largest value (normwise, no rtol).
fn against_fp32(
    prec: Precision,
    what: &str,
    p: &str,
    mine: &[f32],
    grouped: &[f32],
    exact: &[f32],
) -> ParityRow {
    let top = exact
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    let err = |g: &[f32]| {
        g.iter()
            .zip(exact)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
            / top
    };
    let unit = if prec == Precision::Bf16 {
        2f32.powi(-8)
    } else {
        2f32.powi(-11)
    };
    let bound = 3.0 * err(grouped) + unit;
    // compare's normwise atol is a fraction of max(scale, 1): give it the
    // bound as a fraction of the tensor's own largest value.
    let atol = bound * top / top.max(1.0);
    compare(
        label(
            prec,
            &format!("{what}: gradient of {p} against fp32, within 3x the grouped network's error (the worst)"),
        ),
        "-",
        mine,
        exact,
        (atol, 0.0),
        true,
    )
}
