//! `bench-step` (hidden): time training steps on one fixed random batch,
//! on one device or several (scripts/bench-cpu, scripts/bench-train,
//! scripts/gpu-check), and print one JSON line.
use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;
use tracing::{info, warn};

use alexnet_cuda::backend::Backend;
use alexnet_cuda::dist::placement::{self, OnDevice, OnLayout};
use alexnet_cuda::dist::world::World;
use alexnet_cuda::dist::Layout;
use alexnet_cuda::memory::MemoryNeed;
use alexnet_cuda::model::loss_scale::LossScale;
use alexnet_cuda::model::net::Network;
use alexnet_cuda::model::profile::Row;
use alexnet_cuda::model::topology::Topology;

use super::per_layer::{per_layer, print as print_per_layer, PerLayerArgs};
use super::timing::{bench_batch, bench_hp, phase_times, timed_steps, Phases, Timed};
use crate::cli::common::{at_least_one, positive, set_threads, thread_count, NetArgs};
use crate::cli::device::{DeviceArgs, ParallelArgs};
use crate::cli::nccl::ensure_nccl;

#[derive(Args)]
pub struct BenchStepArgs {
    #[command(flatten)]
    net: NetArgs,
    #[command(flatten)]
    device: DeviceArgs,
    #[arg(long, default_value_t = 16, value_parser = at_least_one)]
    batch: usize,
    /// Outputs of the last layer (default: the config's); scripts/bench-train matches a data set's.
    #[arg(long, value_parser = positive)]
    classes: Option<u64>,
    #[arg(long, default_value_t = 5, value_parser = at_least_one)]
    steps: usize,
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Learning rate of the SGD step (the batch is fixed, so a real rate makes the loss fall).
    #[arg(long, default_value_t = 1e-4)]
    lr: f32,
    /// Extra steps on one device, after the timed ones, with a wait after
    /// each phase: the JSON's "phases" (median ms of the upload alone,
    /// forward with its upload and loss, backward, SGD) [default: 3].
    #[arg(long)]
    phase_steps: Option<usize>,
    #[command(flatten)]
    parallel: ParallelArgs,
    #[arg(long, value_parser = thread_count)]
    threads: Option<usize>,
    #[command(flatten)]
    per_layer: PerLayerArgs,
}

impl BenchStepArgs {
    /// --phase-steps, or its default when not given (which the flag's
    /// Option still tells apart).
    fn phase_steps(&self) -> usize {
        self.phase_steps.unwrap_or(3)
    }
}

/// Most warm-up and timed steps one bench-step runs: hours at any batch,
/// and far from the counters' overflow.
const MAX_BENCH_STEPS: usize = 1_000_000;

/// bench-step's JSON line. scripts/bench-cpu and bench-train read
/// images_per_s; scripts/gpu-check the rest (a loss that is not finite is
/// null). One device adds `phases`; several add the exchanged bytes.
#[derive(Serialize)]
struct StepReport {
    #[serde(rename = "impl")]
    implementation: &'static str,
    device: String,
    config: String,
    batch: usize,
    steps: usize,
    mean_s: f64,
    /// null on a GPU, whose per-step times are the host's queueing of work.
    median_s: Option<f64>,
    images_per_s: f64,
    loss_first: Option<f32>,
    loss_last: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    phases: Option<Phases>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exchanged_bytes_per_step: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    predicted_bytes_per_step: Option<u64>,
    /// --per-layer's rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    per_layer: Option<Vec<Row>>,
    /// On a GPU: the device memory the network took (free before it less
    /// free after its steps), beside the memory check's plan of it (the
    /// network alone: the phases' upload probe is freed by then).
    #[serde(skip_serializing_if = "Option::is_none")]
    device_bytes_used: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    device_bytes_planned: Option<u64>,
}

impl StepReport {
    /// The common part of the line; `cpu`: whether each step's own time is
    /// known (images/s is from the median then, else from the mean).
    fn new(device: String, topo: &Topology, batch: usize, t: &Timed, cpu: bool) -> StepReport {
        let finite = |v: Option<&f32>| v.copied().filter(|v| v.is_finite());
        let step = t.step_s(cpu);
        StepReport {
            implementation: "alexnet-cuda",
            device,
            config: topo.name.clone(),
            batch,
            steps: t.steps,
            mean_s: t.mean,
            median_s: cpu.then_some(t.median),
            images_per_s: batch as f64 / step,
            loss_first: finite(t.losses.first()),
            loss_last: finite(t.losses.last()),
            phases: None,
            exchanged_bytes_per_step: None,
            predicted_bytes_per_step: None,
            device_bytes_used: None,
            device_bytes_planned: None,
            per_layer: None,
        }
    }

    fn print(&self) -> Result<()> {
        outln!("{}", serde_json::to_string(self)?)?;
        Ok(())
    }
}

/// One device: `bench_steps`; several (a GPU list or --parallel): `bench_layout`.
pub fn run(args: BenchStepArgs) -> Result<()> {
    // Before any device is opened: a bad rate would fail only after the run.
    bench_hp(args.lr)?;
    let phase_steps = args.phase_steps();
    if args
        .warmup
        .checked_add(args.steps)
        .and_then(|n| n.checked_add(phase_steps))
        .is_none_or(|n| n > MAX_BENCH_STEPS)
    {
        bail!(
            "--warmup {}, --steps {} and --phase-steps {phase_steps}: at most {MAX_BENCH_STEPS} steps in all",
            args.warmup,
            args.steps
        );
    }
    set_threads(args.threads)?;
    let mut topo = args.net.topology("alexnet")?;
    if let Some(c) = args.classes {
        topo = topo.with_classes(c as usize)?;
    }
    if args.per_layer.per_layer && args.phase_steps == Some(0) {
        bail!("--per-layer times every op of --phase-steps more steps, and --phase-steps 0 leaves none: pass 1 or more, or leave it out (3)");
    }
    let several = args.device.gpus.as_deref().is_some_and(|g| g.contains(','));
    if args.parallel.parallel.is_some() || several {
        if args.per_layer.per_layer {
            bail!("--per-layer times the ops of one device: pass one GPU (--gpus 0) or --cpu, without --parallel");
        }
        if let Some(n @ 1..) = args.phase_steps {
            bail!("--phase-steps {n} times the phases of one device: pass one GPU (--gpus 0) or --cpu, without --parallel, or drop --phase-steps");
        }
        let world = World::single();
        let request = args.device.request(&args.parallel, &world)?;
        warn_of_no_warmup(&args, request.cpu);
        ensure_nccl(placement::nccl_use(&request, &world)?)?;
        return placement::run_on(&request, &world, BenchOn(&topo, &args));
    }
    let request = args.device.request_one()?;
    let cpu = request.cpu;
    warn_of_no_warmup(&args, cpu);
    placement::run_on_one(&request, StepsOn(&topo, &args, cpu))
}

/// With no warm-up the first steps' setup is timed: on a GPU cuDNN's
/// search for algorithms and the first allocations (in the mean of the
/// steps); on the CPU the first allocations' page faults, which slow the
/// first steps enough to move the median of a few.
fn warn_of_no_warmup(args: &BenchStepArgs, cpu: bool) {
    if args.warmup > 0 {
        return;
    }
    let setup = match cpu {
        true => "the first allocations",
        false => "cuDNN's choice of algorithms, the first allocations",
    };
    warn!("--warmup 0: the first step's setup ({setup}) is timed, so images_per_s reads low; pass --warmup 1 or more to time steps alone");
}

/// `bench_steps` on the one requested device.
struct StepsOn<'a>(&'a Topology, &'a BenchStepArgs, bool);

impl OnDevice for StepsOn<'_> {
    type Out = ();
    type Err = anyhow::Error;
    fn run<B: Backend>(self, be: &B) -> Result<()> {
        bench_steps(be, self.0, self.1, self.2)
    }
}

/// `bench_layout` on whichever devices the request resolves to.
struct BenchOn<'a>(&'a Topology, &'a BenchStepArgs);

impl OnLayout for BenchOn<'_> {
    type Out = ();
    type Err = anyhow::Error;
    fn run<B: Backend>(self, layout: Layout<'_, B>) -> Result<()> {
        bench_layout(layout, self.0, self.1)
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
    let (pairs, replicas) = match &layout {
        Layout::Towers(_) => (1, 1),
        Layout::Hybrid(p, _) => (p.len(), p.len()),
        Layout::Data(d, _) => (0, d.len()),
        _ => (0, 1),
    };
    let devices = layout.describe();
    let (host, device) = layout.memory_needs(topo)?;
    host.check_now(batch, 0)?;
    device.check_devices(&layout.devices(), batch)?;
    let mut model = layout.build(topo, batch, 1)?;
    if first.needs_loss_scaling() {
        model.set_loss_scale(Some(LossScale::dynamic()));
    }
    let (x, labels) = bench_batch(first, topo, batch)?;
    let hp = bench_hp(args.lr)?;
    let t = timed_steps(&mut *model, &x, &labels, &hp, args.warmup, steps)?;
    let on_cpu = first.host_alloc().is_none();
    // The table counts f32; 16-bit activations move half as many bytes.
    let predicted =
        pairs as u64 * topo.exchange_bytes_per_step(batch / replicas)? * first.activation_bytes()
            / 4;
    info!(
        "between towers: {} bytes per step (the table predicts {predicted})",
        model.exchanged_bytes()
    );
    let mut report = StepReport::new(devices, topo, batch, &t, on_cpu);
    report.exchanged_bytes_per_step = Some(model.exchanged_bytes());
    report.predicted_bytes_per_step = Some(predicted);
    report.print()
}

/// Train `warmup + steps` steps on one fixed random batch, then time each
/// phase of a few more. images/s comes from the median step on the CPU and
/// from the mean over the timed steps, ended by a download that waits for
/// queued work, on a GPU. The first and last losses show the net learning
/// the batch.
fn bench_steps<B: Backend>(be: &B, topo: &Topology, args: &BenchStepArgs, cpu: bool) -> Result<()> {
    let batch = args.batch.max(1);
    let steps = args.steps.max(1);
    let (mut host, mut on_device) = (
        MemoryNeed::network(be, topo, 1)?.with_compute_threads(
            be,
            topo,
            rayon::current_num_threads(),
        )?,
        MemoryNeed::on_device(be, topo, 1)?,
    );
    let phase_steps = args.phase_steps();
    // The network's plan, beside the memory it is seen to take: measured
    // after phase_times has freed its probe.
    let planned = on_device.bytes(batch, 0);
    // phase_times's upload probe: one more input, where phases are timed,
    // in the backend's activation size (`Backend::alloc`).
    if phase_steps > 0 {
        let input = be.activation_bytes() * (topo.channels * topo.crop * topo.crop) as u64;
        host.per_row += if be.in_host_memory() { input } else { 0 };
        on_device.per_row += input;
    }
    host.check_now(batch, 0)?;
    on_device.check_devices(&[be], batch)?;
    let free_before = be.device_memory().map(|m| m.free);
    let mut model = Network::new(be, topo, batch, 1)?;
    if be.needs_loss_scaling() {
        model.set_loss_scale(Some(LossScale::dynamic()));
    }
    let (x, labels) = bench_batch(be, topo, batch)?;
    let hp = bench_hp(args.lr)?;
    let t = timed_steps(&mut model, &x, &labels, &hp, args.warmup, steps)?;
    let phases = phase_times(be, &mut model, &x, &labels, &hp, phase_steps)?;
    let mut report = StepReport::new(be.name(), topo, batch, &t, cpu);
    report.phases = Some(phases);
    // The probe's free is queued on the stream: the pool takes it back
    // at a synchronize, before which it would count as used.
    be.synchronize()?;
    if let (Some(before), Some(after)) = (free_before, be.device_memory()) {
        report.device_bytes_used = Some(before.saturating_sub(after.free));
        report.device_bytes_planned = Some(planned);
    }
    if args.per_layer.per_layer {
        let flags = (&args.per_layer, &args.device);
        let steps = phase_steps;
        let p = per_layer(&mut model, (&x, &labels), &hp, steps, flags, &be.name())?;
        print_per_layer(&p, t.step_s(cpu))?;
        report.per_layer = Some(p.rows);
    }
    report.print()
}
