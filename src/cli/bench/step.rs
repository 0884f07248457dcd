//! `bench-step` (hidden): time training steps on one fixed random batch,
//! on one device or several (scripts/bench-cpu, scripts/bench-train,
//! scripts/gpu-check), and print one JSON line.
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use tracing::info;

use alexnet_cuda::backend::Backend;
use alexnet_cuda::device::Device;
use alexnet_cuda::model::loss_scale::LossScale;
use alexnet_cuda::model::net::{Mode, Network};
use alexnet_cuda::model::topology::Topology;
use alexnet_cuda::model::trainable::Layout;
use alexnet_cuda::parallel::{self, OnLayout};
use alexnet_cuda::world::World;

use super::timing::{bench_batch, bench_hp, timed_steps};
use crate::cli::common::{positive, set_threads, NetArgs};
use crate::cli::device::{on_device, DeviceArgs, ParallelArgs};
use crate::cli::nccl::ensure_nccl;

#[derive(Args)]
pub struct BenchStepArgs {
    #[command(flatten)]
    net: NetArgs,
    #[command(flatten)]
    device: DeviceArgs,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Outputs of the last layer (default: the config's); scripts/bench-train matches a data set's.
    #[arg(long, value_parser = positive)]
    classes: Option<u64>,
    #[arg(long, default_value_t = 5)]
    steps: usize,
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Learning rate of the SGD step (the batch is fixed, so a real rate makes the loss fall).
    #[arg(long, default_value_t = 1e-4)]
    lr: f32,
    /// Extra steps, after the timed ones, with a wait after each phase: the
    /// JSON's "phases" (median ms of upload, forward, backward, SGD).
    #[arg(long, default_value_t = 3)]
    phase_steps: usize,
    #[command(flatten)]
    parallel: ParallelArgs,
    #[arg(long)]
    threads: Option<usize>,
}

/// One device: `bench_steps`; several (a GPU list or --parallel): `bench_layout`.
pub fn run(args: BenchStepArgs) -> Result<()> {
    set_threads(args.threads)?;
    let mut topo = args.net.topology("alexnet")?;
    if let Some(c) = args.classes {
        topo = topo.with_classes(c as usize)?;
    }
    let several = args.device.gpus.as_deref().is_some_and(|g| g.contains(','));
    if args.parallel.parallel.is_some() || several {
        let world = World::single();
        let request = args.device.request(&args.parallel, &world)?;
        ensure_nccl(parallel::nccl_use(&request, &world)?)?;
        return Ok(parallel::run_on(&request, &world, BenchOn(&topo, &args))?);
    }
    let device = args.device.resolve()?;
    let cpu = device == Device::Cpu;
    on_device!(&device, args.device, |be| bench_steps(
        &be, &topo, &args, cpu
    ))
}

/// `bench_layout` on whichever devices the request resolves to.
struct BenchOn<'a>(&'a Topology, &'a BenchStepArgs);

impl OnLayout for BenchOn<'_> {
    type Out = ();
    fn run<B: Backend>(self, layout: Layout<'_, B>) -> alexnet_cuda::Result<()> {
        bench_layout(layout, self.0, self.1)
            .map_err(|e| alexnet_cuda::Error::Backend(format!("{e:#}")))
    }
}

/// `bench_steps` for several devices (towers, replicas or both): step time
/// (median on CPUs; on GPUs the mean, ended by a download that waits for
/// the queued work), the losses, and the bytes exchanged between towers per
/// step beside the table's prediction.
fn bench_layout<B: Backend>(
    layout: Layout<'_, B>,
    topo: &Topology,
    args: &BenchStepArgs,
) -> Result<()> {
    let (batch, steps) = (args.batch.max(1), args.steps.max(1));
    let first = layout.first();
    let pairs = match &layout {
        Layout::Towers(_) => 1,
        Layout::Hybrid(p, _) => p.len(),
        _ => 0,
    };
    let replicas = match &layout {
        Layout::Data(d, _) => d.len(),
        Layout::Hybrid(p, _) => p.len(),
        _ => 1,
    };
    let devices = layout.describe();
    let mut model = layout.build(topo, batch, 1)?;
    if first.needs_loss_scaling() {
        model.set_loss_scale(Some(LossScale::dynamic()));
    }
    let (x, labels) = bench_batch(first, topo, batch)?;
    let hp = bench_hp(args.lr)?;
    let t = timed_steps(&mut *model, &x, &labels, &hp, args.warmup, steps)?;
    let (losses, mean, median) = (t.losses, t.mean, t.median);
    let on_cpu = first.host_alloc().is_none();
    let step = if on_cpu { median } else { mean };
    let predicted = pairs as u64 * topo.exchange_bytes_per_step(batch / replicas)?;
    info!(
        "between towers: {} bytes per step (the table predicts {predicted})",
        model.exchanged_bytes()
    );
    println!(
        "{{\"impl\":\"alexnet-cuda\",\"device\":\"{}\",\"config\":\"{}\",\"batch\":{batch},\"steps\":{steps},\"mean_s\":{mean:.6},\"median_s\":{median:.6},\"images_per_s\":{:.2},\"loss_first\":{},\"loss_last\":{},\"exchanged_bytes_per_step\":{},\"predicted_bytes_per_step\":{predicted}}}",
        devices.replace('"', "'"),
        topo.name,
        batch as f64 / step,
        json_f32(losses.first().copied().unwrap_or(f32::NAN)),
        json_f32(losses.last().copied().unwrap_or(f32::NAN)),
        model.exchanged_bytes()
    );
    Ok(())
}

/// Train `warmup + steps` steps on one fixed random batch. images/s comes
/// from the median step on the CPU and from the mean over the timed steps,
/// ended by a download that waits for queued work, on a GPU. The first and
/// last losses show the net learning the batch.
fn bench_steps<B: Backend>(be: &B, topo: &Topology, args: &BenchStepArgs, cpu: bool) -> Result<()> {
    let batch = args.batch.max(1);
    let steps = args.steps.max(1);
    let mut model = Network::new(be, topo, batch, 1)?;
    if be.needs_loss_scaling() {
        model.set_loss_scale(Some(LossScale::dynamic()));
    }
    let (x, labels) = bench_batch(be, topo, batch)?;
    let hp = bench_hp(args.lr)?;
    let t = timed_steps(&mut model, &x, &labels, &hp, args.warmup, steps)?;
    let (losses, mean, median) = (t.losses, t.mean, t.median);
    // Where a step's time goes: a few more steps with a wait after each
    // phase (forward includes the upload and the loss read-back), and the
    // upload alone. Medians, in milliseconds.
    let mut phases = [const { Vec::new() }; 4];
    let mut probe = be.alloc(x.len())?;
    for _ in 0..args.phase_steps {
        let t = Instant::now();
        be.upload(&x, &mut probe)?;
        be.synchronize()?;
        phases[0].push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        model.forward(&x, &labels, Mode::Train)?;
        be.synchronize()?;
        phases[1].push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        model.backward()?;
        be.synchronize()?;
        phases[2].push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        model.sgd_step(&hp)?;
        be.synchronize()?;
        phases[3].push(t.elapsed().as_secs_f64());
    }
    let ms = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2)
            .map_or("null".to_string(), |m| format!("{:.3}", m * 1e3))
    };
    let phase_json = format!(
        "{{\"upload_ms\":{},\"forward_ms\":{},\"backward_ms\":{},\"sgd_ms\":{}}}",
        ms(&mut phases[0]),
        ms(&mut phases[1]),
        ms(&mut phases[2]),
        ms(&mut phases[3])
    );
    let first = losses.first().copied().unwrap_or(f32::NAN);
    let last = losses.last().copied().unwrap_or(f32::NAN);
    println!(
        "{{\"impl\":\"alexnet-cuda\",\"device\":\"{}\",\"config\":\"{}\",\"batch\":{batch},\"steps\":{steps},\"mean_s\":{mean:.6},\"median_s\":{median:.6},\"images_per_s\":{:.2},\"loss_first\":{},\"loss_last\":{},\"phases\":{phase_json}}}",
        be.name(),
        topo.name,
        batch as f64 / if cpu { median } else { mean },
        json_f32(first),
        json_f32(last)
    );
    Ok(())
}

/// A float as JSON (NaN and infinities have no JSON form: null).
fn json_f32(v: f32) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "null".into()
    }
}
