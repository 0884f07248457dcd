//! The executors on a GPU against the grouped network on the same GPU: the
//! two towers (two backends on one GPU, as `--gpus 0,0` runs them) and the
//! data-parallel replicas (two averaged through host memory, one through
//! NCCL). One training forward and backward each; rows for the logits, the
//! loss and the worst gradient, judged as rows.rs says.
use alexnet_cuda::backend::cuda::{nccl, CudaBackend, CudaOptions};
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
/// towers copied against the table's prediction (counted as f32, as the
/// table does, in every precision).
pub fn towers_vs_grouped(be: &CudaBackend) -> Result<Vec<ParityRow>> {
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

/// Another backend on `be`'s GPU with its settings (TF32 off).
fn twin(be: &CudaBackend) -> Result<CudaBackend> {
    let opts = CudaOptions {
        precision: be.precision(),
        force_fallback_conv: !be.uses_cudnn(),
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
/// on `be` (same seed): rows for the logits, the loss and the worst
/// gradient (normwise).
fn against_grouped(
    be: &CudaBackend,
    what: &str,
    other: &mut dyn Model,
    topo: &Topology,
    x: &[f32],
    labels: &[u32],
) -> Result<Vec<ParityRow>> {
    let mut one = Network::new(be, topo, labels.len(), 3)?;
    // fp16 trains with its loss scaled (`needs_loss_scaling`), and is
    // compared so: unscaled, this case's deeper gradients lie near fp16's
    // smallest normal (6e-5), where the subnormals left keep a few bits,
    // and a layout that sums the same terms in another order parts by tens
    // of percent. Both get the same static scale, which the gradients read
    // back still carry; the tolerances are relative to their size.
    if be.precision().needs_loss_scaling() {
        one.set_loss_scale(Some(LossScale::with_scale(1024.0)));
        other.set_loss_scale(Some(LossScale::with_scale(1024.0)));
    }
    let prec = be.precision();
    let mut rows = Vec::new();
    let (l1, l2) = (
        one.forward(x, labels, Mode::Train)?,
        other.forward(x, labels, Mode::Train)?,
    );
    let gemm = tol_for(prec, GEMM_TOL);
    rows.push(compare(
        label(be.precision(), &format!("{what}: logits")),
        "-",
        &other.logits()?,
        &one.logits()?,
        gemm,
        prec.is_half(),
    ));
    rows.push(compare(
        label(be.precision(), &format!("{what}: loss")),
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
            label(
                be.precision(),
                &format!("{what}: gradient of {p} (the worst)"),
            ),
            "-",
            &other.grad(&p)?,
            &one.grad(&p)?,
            gemm,
            true,
        );
        // Every tensor in the log, not only the worst: where a layout
        // parts from the grouped network says which op to look at.
        eprintln!(
            "{what}: gradient of {p}: max abs {:.2e}, max rel {:.2e}, scale {:.2e}, pass {}",
            r.max_abs, r.max_rel, r.scale, r.pass
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
