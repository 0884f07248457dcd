//! `train`: the training command. Turns the flags (or a run to resume) into
//! the library's `TrainOptions`, runs the loop on the devices asked for,
//! and prints how the run ended; SIGINT/SIGTERM end it at a checkpoint.
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use tempfile::TempDir;
use tracing::{info, warn};

use alexnet_cuda::backend::Backend;
use alexnet_cuda::checkpoint::{self, Checkpoint, Saving};
use alexnet_cuda::data::packed::is_store;
use alexnet_cuda::data::write_demo_train;
use alexnet_cuda::dist::placement::{self, OnLayout};
use alexnet_cuda::dist::world::World;
use alexnet_cuda::dist::Layout;
use alexnet_cuda::lr::tenth;
use alexnet_cuda::metrics::MetricsFormat;
use alexnet_cuda::model::spec::NetSpec;
use alexnet_cuda::model::topology::{DropoutRule, InitRecipe, Topology};
use alexnet_cuda::run_state::{Compute, EpochStats, RunOptions};
use alexnet_cuda::shell;
use alexnet_cuda::train::{
    check_run_folder, local_batch, refuse_run_inside_data, resume_arg, resume_options, schedule,
    train, Schedule, Stopped, TrainOptions, TrainReport,
};

use super::common::{
    demo_folder, existing_weights, flag_value, length_of_time, minutes_or_off, path_parser,
    positive, positive_f32, positive_number, seed_value, HostArgs, NetArgs, SAME_REQUEST,
};
use super::device::{DeviceArgs, ParallelArgs};
use super::nccl::ensure_nccl;

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    net: NetArgs,
    /// Data: a store from `prepare` (its output folder), or a folder with one sub-folder of images per class.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Generate a small synthetic data set and train on it: by default the cifar config, 8 epochs, at most 80 s (--config picks another net, whose images the set is made at)
    #[arg(long, conflicts_with = "data")]
    demo: bool,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    parallel: ParallelArgs,
    /// Epochs (default: the config's recipe).
    #[arg(long, value_parser = positive)]
    epochs: Option<u64>,
    /// Images per step (default: the config's recipe; the paper: 128).
    #[arg(long, value_parser = positive)]
    batch: Option<u64>,
    /// Initial learning rate (default: the config's recipe; the paper: 0.01). With --resume: the rate from the resumed step on, as the paper's authors lowered it by hand; the run's schedule goes on dividing it (plateau epochs count afresh from here; milestones, drops left under --max-drops: docs/runs.md).
    #[arg(long, value_parser = positive_f32)]
    lr: Option<f32>,
    /// Images held out from the training images for validation [default: 5000; a store with its own val/ validates on that].
    #[arg(long, conflicts_with = "demo")]
    val: Option<usize>,
    /// Use only this many images: from a folder, balanced over classes, before --val holds some out; from a store, this many of its training images, the same number from each class, drawn at random (--seed picks them).
    #[arg(long, value_parser = positive)]
    limit: Option<u64>,
    /// Divide the learning rate by 10 at these epochs (e.g. 10,15) instead of on plateaus.
    #[arg(long, value_delimiter = ',', value_name = "EPOCHS", conflicts_with_all = ["patience", "max_drops"])]
    lr_milestones: Option<Vec<usize>>,
    /// Raise the learning rate linearly over the first EPOCHS epochs (fractions allowed), from lr/W at the first of their W steps to the schedule's rate, as Goyal et al. (2017) do for large batches; not in the paper.
    #[arg(long, value_name = "EPOCHS", value_parser = positive_number)]
    warmup: Option<f64>,
    /// Epochs without validation improvement before the learning rate drops (paper's schedule) [default: 2; with --demo, whose schedule is a drop at epoch 7, giving it or --max-drops trains with this one].
    #[arg(long, value_parser = positive)]
    patience: Option<u64>,
    /// Stop before this long from the start, with a checkpoint, after the step where another step (or the epoch's validation) and a checkpoint would end past it, mid-epoch or not (the run resumes exactly). Seconds (4800), a number and a unit (80m, 1.5h, 2d), or Slurm's [D-]HH:MM:SS.
    #[arg(long, value_name = "TIME", value_parser = length_of_time)]
    time_limit: Option<Duration>,
    /// Crop side when smaller than the network input, zero-padded to it: 224 is the paper's text (227 inputs, the default, need no padding).
    #[arg(long, value_parser = positive)]
    crop: Option<u64>,
    /// The run folder: checkpoints, steps.csv, epochs.csv, curves.png (default: runs/<config>-N, or runs/demo-N with --demo, the first N not taken).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Continue a run: its folder (the newest checkpoint) or one checkpoint file. The run's own options apply; --epochs extends it, --lr sets the rate from here on.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["demo", "config", "no_lrn", "pool", "batch", "val", "limit", "lr_milestones", "warmup", "patience", "max_drops", "crop", "seed", "init_from", "out", "recipe", "dropout"])]
    resume: Option<PathBuf>,
    /// Starting biases: caffe (default) starts the paper's biases of 1 (conv2, conv4, conv5, fc6, fc7) at 0.1, as Caffe's AlexNet, because 1 diverges and then sits at chance on real photos (docs/training.md); paper: the literal 1.
    #[arg(long, value_enum)]
    recipe: Option<RecipeFlag>,
    /// How dropout's scale trains: inverted (default, Caffe's: kept units x2 in training) or paper (section 4.2's rule exactly: the layers after dropout, fc7 and fc8, at lr / 4, decay x 4, init std / 2, which is the paper's update in the same weights; docs/training.md).
    #[arg(long, value_enum)]
    dropout: Option<DropoutFlag>,
    /// Start from these weights: a safetensors file with PyTorch names (from `export` or a checkpoint), or a run folder for its best.safetensors.
    #[arg(long, value_name = "PATH", value_parser = path_parser(existing_weights))]
    init_from: Option<PathBuf>,
    /// With --init-from: these layers (e.g. fc8) keep the run's own initialisation instead, as in fine-tuning on other classes.
    #[arg(
        long,
        value_name = "LAYERS",
        value_delimiter = ',',
        requires = "init_from"
    )]
    fresh: Vec<String>,
    /// Write a checkpoint every N steps, besides the one at each epoch end (0: epoch ends only). Given alone, it replaces the default of every 15 minutes.
    #[arg(long, value_name = "N")]
    checkpoint_every: Option<u64>,
    /// Write a checkpoint when M minutes have passed since the last one, besides the one at each epoch end (0: off) [default: 15, unless --checkpoint-every is given].
    #[arg(long, value_name = "M", value_parser = minutes_or_off)]
    checkpoint_minutes: Option<f64>,
    /// Checkpoints to keep (the newest; best.safetensors is kept besides) [default: 3; a resumed run keeps its own].
    #[arg(long, value_parser = positive)]
    keep: Option<u64>,
    /// Metrics files: csv or jsonl [default: csv; a resumed run keeps its own].
    #[arg(long, value_enum)]
    metrics_format: Option<MetricsFlag>,
    /// The paper's schedule: at most this many drops of the learning rate [default: 3].
    #[arg(long)]
    max_drops: Option<usize>,
    /// Seed of everything random in the run: the initial weights, the held-out split, --limit's draw, the order of the images, their crops, flips and lighting, dropout, and the demo's images.
    #[arg(long, default_value_t = 1, value_parser = seed_value)]
    seed: u64,
    #[command(flatten)]
    host: HostArgs,
}

/// --dropout's values: the library's `DropoutRule`.
#[derive(Clone, Copy, ValueEnum)]
enum DropoutFlag {
    Inverted,
    Paper,
}

impl From<DropoutFlag> for DropoutRule {
    fn from(d: DropoutFlag) -> DropoutRule {
        match d {
            DropoutFlag::Inverted => DropoutRule::Inverted,
            DropoutFlag::Paper => DropoutRule::Paper,
        }
    }
}

/// --recipe's values: the library's `InitRecipe`.
#[derive(Clone, Copy, ValueEnum)]
enum RecipeFlag {
    Caffe,
    Paper,
}

impl From<RecipeFlag> for InitRecipe {
    fn from(r: RecipeFlag) -> InitRecipe {
        match r {
            RecipeFlag::Caffe => InitRecipe::Caffe,
            RecipeFlag::Paper => InitRecipe::Paper,
        }
    }
}

/// --metrics-format's values: the library's `MetricsFormat`.
#[derive(Clone, Copy, ValueEnum)]
enum MetricsFlag {
    Csv,
    Jsonl,
}

impl From<MetricsFlag> for MetricsFormat {
    fn from(m: MetricsFlag) -> MetricsFormat {
        match m {
            MetricsFlag::Csv => MetricsFormat::Csv,
            MetricsFlag::Jsonl => MetricsFormat::Jsonl,
        }
    }
}

/// Train as the flags say; a run stopped by a signal exits with 128 + its
/// number after saying how to continue.
pub fn run(args: TrainArgs) -> Result<()> {
    // The time limit counts from here: a resume's checkpoint, the data
    // and the other processes of the run are waited for within it.
    let started = Instant::now();
    let world = World::from_env()?;
    let mut request = args.device.request(&args.parallel, &world)?;
    if let Some(note) = placement::shared_gpus_note(&request, &world) {
        warn!("{note}");
    }
    // Before the demo's images are written and NCCL is looked for: a
    // missing GPU is said first.
    placement::check_devices(&request, &world)?;
    ensure_nccl(placement::nccl_use(&request, &world)?)?;
    args.host.apply_shared(world.local_size)?;
    let resume = match &args.resume {
        Some(p) => {
            refuse_folder_in_use(p)?;
            Some(Box::new(checkpoint::load_latest(p)?))
        }
        None => None,
    };
    if let Some(ck) = &resume {
        if say_if_finished(&args, ck, world.is_writer())? {
            return Ok(());
        }
    }
    let spec = match &resume {
        Some(ck) => ck.state.net.clone(),
        None => args.net.spec(if args.demo { "cifar" } else { "alexnet" }),
    };
    let topo = spec.topology()?;
    if world.is_writer() {
        // Before the data: a scan or the demo's images can take a while.
        let keep = Saving {
            keep: keep_flag(&args, resume.as_deref()),
            ..Saving::default()
        }
        .kept();
        let dir = run_folder(&args, &topo, resume.as_deref());
        if let Some(data) = images_read(&args, resume.as_deref()) {
            refuse_run_inside_data(&dir, &data, resume.is_some())?;
        }
        check_run_folder(&dir, resume.as_ref().map(|c| &c.state), &topo, keep)?;
    }
    // The demo's data lives as long as this guard.
    let (data, demo_dir) = data_folder(&args, &topo, resume.as_deref())?;
    let mut opts = options(&args, &topo, data, resume.as_deref())?;
    opts.started = started;
    let compute = args.device.compute(&args.parallel, &request, &world)?;
    if let (Some(ck), true) = (&resume, world.is_writer()) {
        warn_of_other_compute(ck, &compute);
    }
    opts.compute = Some(compute);
    if let Some(ck) = resume {
        opts = resume_options(opts, &ck);
        no_step_left_for_lr(args.lr, opts.run.epochs, &ck)?;
        opts.resume = Some(ck);
        opts.lr_from_here = args.lr;
    }
    let (stop, signal_status, told) = stop_on_signals()?;
    request.stop = Some(Arc::clone(&stop));
    opts.stop = Some(stop);
    if !world.is_writer() {
        info!(
            "process {} of {}: rank 0 writes the run folder; this one keeps nothing",
            world.rank, world.size
        );
        opts.out = None;
    }
    opts.world = world;
    // A batch that does not split over the processes and their replicas
    // fails the same way in every one of them: said now, not after they
    // have all met and read the data.
    local_batch(&opts, placement::copies_here(&request, &opts.world)?)?;
    let world = opts.world.clone();
    let report = match placement::run_on(&request, &world, TrainOn(&spec, &mut opts)) {
        // A signal while the ranks were meeting, or while one process set
        // up its run: nothing trained, nothing to keep.
        Err(alexnet_cuda::Error::Stopped(why)) => {
            let _ = told.recv();
            // The same command, not one rebuilt from the run folder: that
            // would resume its newest checkpoint, not the one named, and
            // drop this command's --lr and --epochs.
            let again = match &opts.resume {
                Some(ck) => format!(
                    "{} is as it was: run the same command again to resume it",
                    ck.path.display()
                ),
                None => "start the run again to train".into(),
            };
            let _ = outln!("{why}; {again}");
            exit_at_signal(&signal_status, demo_dir)
        }
        // A signal here, and a peer silent since: stopped by the signal
        // (every step saved, the error says where), so it exits as one
        // does, for a scheduler to requeue it, not as a failure.
        Err(e @ alexnet_cuda::Error::Peer(_)) if signal_status.load(Ordering::Relaxed) != 0 => {
            let _ = told.recv();
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            exit_at_signal(&signal_status, demo_dir)
        }
        r => r?,
    };
    let run_dir = opts.out.as_deref().unwrap_or(Path::new("."));
    if report.stopped == Some(Stopped::Signal) {
        // A process stopped with the others had no signal: nothing will be
        // logged. Otherwise this returns once its line is.
        let own = signal_status.load(Ordering::Relaxed) != 0;
        if own {
            let _ = told.recv();
        }
        // Dropout masks are drawn per tower and replica: the same layout resumes exactly.
        // The signal's exit status stands even if stdout is gone.
        let flags = args.device.flags(&args.parallel);
        let _ = print_interrupted(&report, opts.out.as_deref(), &flags, own);
        exit_at_signal(&signal_status, demo_dir)
    }
    let images = (!opts.run.demo).then_some(opts.data.as_path());
    print_finished(&report, run_dir, images)?;
    // The limit given, not the demo's own: the next job has one like it.
    let flags = args.device.flags(&args.parallel)
        + &args.time_limit.map_or(String::new(), |l| {
            format!(" --time-limit {}", l.as_secs_f64())
        });
    print_out_of_time(&report, &opts, run_dir, &flags)?;
    Ok(())
}

/// `train` on whichever devices the request resolves to.
struct TrainOn<'a>(&'a NetSpec, &'a mut TrainOptions);

impl OnLayout for TrainOn<'_> {
    type Out = TrainReport;
    type Err = alexnet_cuda::Error;
    fn run<B: Backend>(self, layout: Layout<'_, B>) -> alexnet_cuda::Result<TrainReport> {
        train(layout, self.0, self.1)
    }
}

/// The folder of images the run reads, where it is the user's (not the
/// demo's temporary one): --data, or the resumed run's.
fn images_read(args: &TrainArgs, resume: Option<&Checkpoint>) -> Option<PathBuf> {
    match (&args.data, resume) {
        (Some(d), _) => Some(d.clone()),
        (None, Some(ck)) if !ck.state.options.demo => Some(PathBuf::from(&ck.state.data)),
        _ => None,
    }
}

/// The images to train on: --data, the resumed run's, or the demo's
/// synthetic set (--demo, or resuming a demo run) written again from the
/// run's seed to a temporary folder that lives as long as the guard.
fn data_folder(
    args: &TrainArgs,
    topo: &Topology,
    resume: Option<&Checkpoint>,
) -> Result<(PathBuf, Option<TempDir>)> {
    let demo_seed = match resume {
        Some(ck) if ck.state.options.demo && args.data.is_none() => Some(ck.state.options.seed),
        None if args.demo => Some(args.seed),
        _ => None,
    };
    if let Some(seed) = demo_seed {
        let dir = demo_folder("training", |d| write_demo_train(d, topo.image_size, seed))?;
        return Ok((dir.path().to_path_buf(), Some(dir)));
    }
    match (images_read(args, resume), resume) {
        (Some(d), Some(ck)) if args.data.is_none() && !d.exists() => bail!(
            "--resume {}: the run's data {} is not there any more; pass where it is now with --data DIR",
            ck.path.display(),
            d.display()
        ),
        (Some(d), _) => Ok((d, None)),
        (None, _) => bail!("train: pass --data DIR (a store from `prepare`, or one sub-folder of images per class) or --demo"),
    }
}

/// The loop's options from the flags (a resumed run's own are applied
/// after, by `resume_options`).
fn options(
    args: &TrainArgs,
    topo: &Topology,
    data: PathBuf,
    resume: Option<&Checkpoint>,
) -> Result<TrainOptions> {
    let mut opts = TrainOptions::for_topology(topo, data);
    if args.demo {
        // Batch 64, not the config's 128: twice the updates per epoch, and
        // the synthetic set is learnt in 6 epochs instead of 12 (tests/cli.rs)
        // at about 6% fewer images per second on 2 cores.
        opts.run.batch = 64;
        opts.run.val = 500;
        opts.run.epochs = 8;
        opts.time_limit = Some(Duration::from_secs(80));
        opts.run.schedule = Schedule::Milestones(vec![7]);
        opts.run.demo = true;
    }
    check_held_out_flag(args, &opts.data)?;
    run_options(args, &mut opts.run, resume)?;
    opts.val_given = args.val.is_some() || resume.is_some();
    if let Some(t) = args.time_limit {
        opts.time_limit = Some(t);
    }
    opts.workers = args.host.workers;
    opts.progress = args.host.progress();
    opts.saving = saving(args, resume);
    (opts.checkpoint_every, opts.checkpoint_interval) = checkpoint_policy(&opts.saving);
    opts.keep = opts.saving.kept();
    if let Some(r) = args.recipe {
        opts.run.init = recipe(r, topo)?;
        recipe_has_a_layer(args, topo)?;
    }
    if let Some(d) = args.dropout {
        opts.run.dropout = d.into();
    }
    opts.init_from = args.init_from.clone();
    opts.fresh = args.fresh.clone();
    let out = run_folder(args, topo, resume);
    opts.metrics_format = metrics_format(args, &out, resume.is_some())?;
    opts.out = Some(out);
    Ok(opts)
}

/// --metrics-format (default csv); a resume keeps the run's own, which the
/// flag may not change (its rows would be split over two files).
fn metrics_format(args: &TrainArgs, out: &Path, resumed: bool) -> Result<MetricsFormat> {
    let asked = args.metrics_format.map(MetricsFormat::from);
    let kept = [MetricsFormat::Csv, MetricsFormat::Jsonl]
        .into_iter()
        .find(|f| out.join(format!("steps.{}", f.ext())).is_file());
    match (resumed, asked, kept) {
        (true, Some(a), Some(k)) if a != k => bail!(
            "--metrics-format {}: {} keeps its metrics as {}; resume without the flag",
            a.ext(),
            out.display(),
            k.ext()
        ),
        (true, None, Some(k)) => Ok(k),
        _ => Ok(asked.unwrap_or(MetricsFormat::Csv)),
    }
}

/// --keep, --checkpoint-every and --checkpoint-minutes: those given, else
/// the resumed run's (a resume without --keep must not prune what the run
/// was told to keep), else none (the defaults).
fn saving(args: &TrainArgs, resume: Option<&Checkpoint>) -> Saving {
    let kept = resume.map(|ck| ck.state.saving.clone()).unwrap_or_default();
    // The two checkpoint flags go together: either given replaces both.
    let (every, minutes) = match (args.checkpoint_every, args.checkpoint_minutes) {
        (None, None) => (kept.checkpoint_every, kept.checkpoint_minutes),
        given => {
            warn_replaced(given, &kept);
            given
        }
    };
    Saving {
        keep: keep_flag(args, resume),
        checkpoint_every: every,
        checkpoint_minutes: minutes,
    }
}

/// --keep, else the resumed run's (None: the default).
fn keep_flag(args: &TrainArgs, resume: Option<&Checkpoint>) -> Option<usize> {
    let kept = resume.and_then(|ck| ck.state.saving.keep);
    args.keep.map(|k| k as usize).or(kept)
}

/// A resume given one checkpoint flag drops the run's other (`kept`):
/// say so, with the flag that keeps it.
fn warn_replaced(given: (Option<u64>, Option<f64>), kept: &Saving) {
    match (given, kept.checkpoint_every, kept.checkpoint_minutes) {
        ((Some(_), None), _, Some(m)) => warn!(
            "--checkpoint-every replaces the run's checkpoint every {m} minutes; pass --checkpoint-minutes {m} as well to keep it"
        ),
        ((None, Some(_)), Some(n), _) => warn!(
            "--checkpoint-minutes replaces the run's checkpoint every {n} steps; pass --checkpoint-every {n} as well to keep it"
        ),
        _ => {}
    }
}

/// Checkpoints every N steps and every M minutes: by default every 15
/// minutes (on an H200, 1000 steps of `alexnet` take 8 to 12 s, on two CPU
/// cores about an hour); `--checkpoint-every` alone replaces the default.
fn checkpoint_policy(s: &Saving) -> (u64, Option<Duration>) {
    let minutes = match (s.checkpoint_every, s.checkpoint_minutes) {
        (None, None) => DEFAULT_CHECKPOINT_MINUTES,
        (Some(_), None) => 0.0,
        (_, Some(m)) => m,
    };
    let interval = (minutes > 0.0).then(|| Duration::from_secs_f64(minutes * 60.0));
    (s.checkpoint_every.unwrap_or(0), interval)
}

const DEFAULT_CHECKPOINT_MINUTES: f64 = 15.0;

/// What defines the run: epochs, batch, learning rate and its schedule,
/// the split, the crop and the seed.
fn run_options(args: &TrainArgs, run: &mut RunOptions, resume: Option<&Checkpoint>) -> Result<()> {
    if let Some(ck) = resume {
        check_resumed_epochs(args.epochs, ck)?;
        run.epochs = ck.state.options.epochs;
    }
    if let Some(e) = args.epochs {
        run.epochs = e as usize;
    }
    if let Some(b) = args.batch {
        run.batch = b as usize;
    }
    if let Some(lr) = args.lr {
        run.lr = lr;
    }
    if let Some(v) = args.val {
        run.val = v;
    }
    run.limit = args.limit.map(|l| l as usize);
    if let Some(m) = &args.lr_milestones {
        check_milestones(m, run.epochs)?;
        run.schedule = Schedule::Milestones(m.clone());
    } else if !args.demo || args.patience.is_some() || args.max_drops.is_some() {
        let max_drops = args.max_drops.unwrap_or(schedule::MAX_DROPS);
        // Given only to a fresh run (a resume keeps the run's schedule).
        if args.max_drops.is_some() {
            check_max_drops(max_drops, run.lr)?;
        }
        run.schedule = Schedule::Plateau {
            patience: args.patience.map_or(schedule::PATIENCE, |p| p as usize),
            max_drops,
        };
    }
    if let Some(w) = args.warmup {
        check_warmup(w, run)?;
        run.warmup = w;
    }
    run.crop = args.crop.map(|c| c as usize);
    run.seed = args.seed;
    Ok(())
}

/// A drop past the one that leaves the rate 0 in f32 trains nothing: the
/// epochs after it would change no weight (an f32 rate of 0.01 reaches 0
/// after 44 tenths).
fn check_max_drops(drops: usize, lr: f32) -> Result<()> {
    let mut rate = lr;
    for n in 1..=drops {
        rate = tenth(rate);
        if rate == 0.0 {
            bail!("--max-drops {drops}: after {n} drops the learning rate {lr} is 0 in f32, and every epoch after trains nothing; pass at most {} (the paper divided three times)", n - 1);
        }
    }
    Ok(())
}

/// A warm-up as long as the run would never train at the rate asked for.
fn check_warmup(w: f64, run: &RunOptions) -> Result<()> {
    if w >= run.epochs as f64 {
        bail!(
            "--warmup {w}: the run has {} epochs, so its rate would never reach {}; pass a warm-up shorter than the run (Goyal et al. warm up for 5 of 90 epochs)",
            run.epochs,
            run.lr
        );
    }
    Ok(())
}

/// `--epochs` on a resume may extend the run or end it where it stands, not
/// fall short of the epochs already trained: the run would stop at once, or
/// part way through an epoch, as if finished; nor end it within its
/// warm-up, which would never reach its rate.
fn check_resumed_epochs(epochs: Option<u64>, ck: &Checkpoint) -> Result<()> {
    let p = &ck.state.progress;
    let done = p.epoch - usize::from(!p.epoch_done);
    let midway = !p.epoch_done && p.batches_done > 0;
    match epochs.map(|e| e as usize) {
        Some(e) if e < done || (e == done && midway) => {
            let part = match midway {
                true => format!(" and part of epoch {}", done + 1),
                false => String::new(),
            };
            bail!(
                "--epochs {e}: {} has trained {done} epochs{part} already; pass --epochs {} or more to go on",
                ck.path.display(),
                done + 1
            )
        }
        Some(e) if ck.state.options.warmup >= e as f64 => bail!(
            "--epochs {e}: {} warms up over {} epochs, so its rate would never reach {}; pass --epochs above {}",
            ck.path.display(),
            ck.state.options.warmup,
            ck.state.options.lr,
            ck.state.options.warmup
        ),
        _ => Ok(()),
    }
}

/// --val holds images out of the training ones; a store that has its own
/// val/ validates on that instead, so the flag would do nothing.
fn check_held_out_flag(args: &TrainArgs, data: &Path) -> Result<()> {
    let val = data.join("val");
    if let (Some(n), true) = (args.val, is_store(&data.join("train")) && is_store(&val)) {
        bail!(
            "--val {n}: {} has its own validation images ({}), which the run validates on; drop --val, or pass --data {} to hold images out of the training ones",
            data.display(),
            val.display(),
            shell::word(&data.join("train"))
        );
    }
    Ok(())
}

/// A run folder another process trains in is said to be in use, also
/// before that run's first checkpoint (which would otherwise read as a
/// folder without one) and when the run is finished as of the checkpoint
/// named. The lock file is only looked at where it is.
fn refuse_folder_in_use(resume: &Path) -> Result<()> {
    if !resume.join(".lock").is_file() {
        return Ok(());
    }
    let fix = alexnet_cuda::train::lock_fix(true);
    match alexnet_cuda::fsutil::check_not_locked(resume, "another training process", fix) {
        Err(e @ alexnet_cuda::Error::Config(_)) => Err(e.into()),
        _ => Ok(()),
    }
}

/// A resume of a run that has trained all its epochs, with no --epochs
/// past them, takes no step: said at once (by the writing process), before
/// the data is read or the demo's images written and with the run folder
/// left as it is, with how to extend the run or score it. Whether it is so.
fn say_if_finished(args: &TrainArgs, ck: &Checkpoint, writer: bool) -> Result<bool> {
    check_resumed_epochs(args.epochs, ck)?;
    let epochs = args.epochs.map_or(ck.state.options.epochs, |e| e as usize);
    no_step_left_for_lr(args.lr, epochs, ck)?;
    if !ck.state.progress.finished(epochs) || !writer {
        return Ok(ck.state.progress.finished(epochs));
    }
    // A process extending the run holds its folder: say that instead (a
    // folder that cannot be locked, read-only, still reads as finished).
    let run_dir = alexnet_cuda::fsutil::folder_of(&ck.path);
    refuse_folder_in_use(run_dir)?;
    let history = &ck.state.history;
    if !history.is_empty() {
        outln!(
            "validation top-1: {} (chance {:.1}%)",
            val_course(history),
            100.0 / ck.state.classes.len() as f64
        )?;
    }
    let images = images_read(args, Some(ck)).filter(|_| !ck.state.options.demo);
    let flags = ck.state.compute.as_ref().map_or("", |c| c.flags.as_str());
    outln!(
        "{} has finished its {epochs} epochs: nothing to train; extend it with: alexnet-cuda train --resume {} --epochs {}{flags}{}{}",
        ck.path.display(),
        resume_arg(run_dir, &ck.path),
        epochs + 1,
        data_moved(&ck.path, images.as_deref()),
        match history.is_empty() {
            true => String::new(),
            false => eval_with(run_dir, &ck.path, images.as_deref()),
        }
    )?;
    Ok(true)
}

/// `--lr` on a resume sets the rate of the steps to come: refuse it for a
/// run that has trained every step of its `epochs` (only the last one's
/// validation may be left), which takes no step.
fn no_step_left_for_lr(lr: Option<f32>, epochs: usize, ck: &Checkpoint) -> Result<()> {
    let p = &ck.state.progress;
    let done = match p.finished(epochs) {
        true => format!("has finished its {epochs} epochs"),
        false => format!("has trained every step of its {epochs} epochs (only the last one's validation is left)"),
    };
    match lr {
        Some(lr) if p.all_steps_done(epochs) => bail!(
            "--lr {lr:e}: {} {done}, so no step would train at it; add --epochs {} or more",
            ck.path.display(),
            epochs + 1
        ),
        _ => Ok(()),
    }
}

/// Milestones count epochs from 1 (0 would never apply); one past the
/// last epoch applies only if the run is extended with --resume --epochs.
fn check_milestones(m: &[usize], epochs: usize) -> Result<()> {
    if m.contains(&0) {
        bail!("--lr-milestones: epochs count from 1, so 0 never applies; list the epochs that start at the lower rate, e.g. 30,60,80");
    }
    if let Some(twice) = m
        .iter()
        .enumerate()
        .find_map(|(i, e)| m[..i].contains(e).then_some(e))
    {
        bail!("--lr-milestones: epoch {twice} is listed twice; the rate is divided once at each epoch listed, so list it once");
    }
    if m.contains(&1) {
        warn!("--lr-milestones: epoch 1 is listed, so the run starts at a tenth of --lr and never trains at --lr itself (milestones are the epochs that start at the lower rate); pass a tenth of the rate and the later epochs instead, to say so");
    }
    if let Some(late) = m.iter().filter(|&&e| e > epochs).min() {
        warn!("--lr-milestones: epoch {late} is after the last epoch ({epochs}); it applies only if the run is extended (train --resume RUN --epochs N)");
    }
    Ok(())
}

/// --recipe sets the starting biases of `topo`'s layers the paper starts
/// at 1; with --init-from, only those that --fresh starts afresh: refuse it
/// where it would set none (the checkpoint would record a recipe nothing
/// used).
fn recipe_has_a_layer(args: &TrainArgs, topo: &Topology) -> Result<()> {
    let set = topo.one_bias_layers();
    if args.init_from.is_none() || args.fresh.iter().any(|l| set.contains(&l.as_str())) {
        return Ok(());
    }
    bail!(
        "--recipe: --init-from loads the biases it sets ({}), so it would set none; drop --recipe, or start some of those layers afresh with --fresh",
        set.join(", ")
    )
}

/// --recipe, refused for configs without the paper's biases of 1.
fn recipe(r: RecipeFlag, topo: &Topology) -> Result<InitRecipe> {
    if !topo.has_one_biases() {
        bail!(
            "--recipe {}: config {} has no biases of 1 (it starts from He init and zero biases), so the recipes are the same; leave --recipe out",
            flag_value(&r),
            topo.name
        );
    }
    Ok(r.into())
}

/// A resume goes on with the device flags given, not the run's: said
/// where they compute otherwise (checkpoints from before the run's flags
/// were kept say nothing).
fn warn_of_other_compute(ck: &Checkpoint, now: &Compute) {
    let Some(was) = ck.state.compute.as_ref().filter(|c| c.setup != now.setup) else {
        return;
    };
    let flags = |c: &Compute| match c.flags.is_empty() {
        true => " no device flags".to_string(),
        false => c.flags.clone(),
    };
    warn!(
        "{}: the run trained with{} ({}), and this resume runs with{} ({}): it goes on otherwise (precision and loss scale, dropout masks per replica, speed and memory, the bits); to go on as it did, resume with{}",
        ck.path.display(),
        flags(was),
        was.setup,
        flags(now),
        now.setup,
        flags(was)
    );
}

/// The run folder: the resumed checkpoint's, --out, or the first free
/// runs/<config>-N.
fn run_folder(args: &TrainArgs, topo: &Topology, resume: Option<&Checkpoint>) -> PathBuf {
    match (resume, &args.out) {
        // A bare file name's parent is "", which names no folder to scan.
        (Some(ck), _) => alexnet_cuda::fsutil::folder_of(&ck.path).to_path_buf(),
        (None, Some(o)) => o.clone(),
        (None, None) => default_run_dir(if args.demo { "demo" } else { &topo.name }),
    }
}

/// `runs/<name>-N` for the first N not taken.
fn default_run_dir(name: &str) -> PathBuf {
    (1..)
        .map(|n| PathBuf::from("runs").join(format!("{name}-{n}")))
        .find(|p| !p.exists())
        .unwrap_or_else(|| PathBuf::from("runs").join(name))
}

/// SIGINT, SIGTERM, SIGHUP and SIGUSR1 set `stop` (training finishes its
/// step, writes a checkpoint and returns); the same one again, or a
/// Ctrl-C, a moment later ends the process at once (`say_when_stopping`).
/// SIGHUP is left alone when it is ignored as the run starts: `nohup`
/// asked for a run that outlives its terminal.
/// Returns the flag, the exit status the signal asks for (128 + signo),
/// and word once the first signal's line is logged.
fn stop_on_signals() -> Result<(Arc<AtomicBool>, Arc<AtomicUsize>, Receiver<()>)> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
    use signal_hook::flag;
    let stop = Arc::new(AtomicBool::new(false));
    let status = Arc::new(AtomicUsize::new(0));
    // SIGHUP: the terminal closed (an ssh session lost); SIGUSR1: a
    // scheduler's warning ahead of its limit (Slurm's --signal).
    let mut signals = vec![SIGINT, SIGTERM, SIGUSR1];
    match ignored(SIGHUP) {
        true => {
            tracing::info!("SIGHUP is ignored (nohup): the run goes on when its terminal closes")
        }
        false => signals.push(SIGHUP),
    }
    for &sig in &signals {
        flag::register(sig, Arc::clone(&stop)).context("could not install signal handlers")?;
        flag::register_usize(sig, Arc::clone(&status), 128 + sig as usize)
            .context("could not install signal handlers")?;
    }
    let told = say_when_stopping(signals)?;
    Ok((stop, status, told))
}

/// Whether `sig` is ignored (SIG_IGN), as `nohup` leaves SIGHUP.
fn ignored(sig: i32) -> bool {
    // SAFETY: sigaction with a null new action only reads the current one
    // into `old`, a plain C struct for which all zeroes is a valid value.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) };
    rc == 0 && old.sa_sigaction == libc::SIG_IGN
}

/// Log at the first signal what happens next: the step or the epoch's
/// validation in progress may take a minute on a CPU, and a silent wait
/// invites the second Ctrl-C that quits without a checkpoint. The first
/// signal again, or a SIGINT (a person at the terminal), past
/// `SAME_REQUEST`, ends the process at once with its status, as the line
/// says. Another kind is a scheduler going on from its warning (Slurm's
/// SIGUSR1, then SIGTERM at the limit, 30 s before its kill), or a
/// terminal closed and then the machine shutting down: the stop and its
/// checkpoint go on.
fn say_when_stopping(signals: Vec<i32>) -> Result<Receiver<()>> {
    let mut incoming = signal_hook::iterator::Signals::new(signals)
        .context("could not install signal handlers")?;
    let (logged, told) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut first = None;
            for sig in incoming.forever() {
                match first {
                    None => {
                        tracing::warn!(
                            "stopping: the step in progress finishes (a single process's validation stops at its next batch), then a checkpoint is written (while a single process loads its data and builds its network, nothing is); Ctrl-C again quits at once without one"
                        );
                        first = Some((Instant::now(), sig));
                        let _ = logged.send(());
                    }
                    Some((t, was)) if t.elapsed() >= SAME_REQUEST => {
                        if sig == was || sig == signal_hook::consts::SIGINT {
                            std::process::exit(128 + sig)
                        }
                        tracing::warn!(
                            "{} after {}: still stopping, the checkpoint first; Ctrl-C quits at once without one",
                            signal_name(sig),
                            signal_name(was)
                        );
                    }
                    Some(_) => {}
                }
            }
        })
        .context("could not start the signal thread")?;
    Ok(told)
}

/// The name of one of the signals that stop a run.
fn signal_name(sig: i32) -> &'static str {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
    match sig {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        SIGUSR1 => "SIGUSR1",
        _ => "a signal",
    }
}

/// Exit with the status the signal asks for (128 + signo; 130, as for
/// SIGINT, in a process stopped with the others of its run without one of
/// its own). `exit` runs no destructors: the demo's images are removed first.
fn exit_at_signal(status: &AtomicUsize, demo_dir: Option<TempDir>) -> ! {
    let code = status.load(Ordering::Relaxed);
    drop(demo_dir);
    std::process::exit(if code == 0 { 130 } else { code as i32 });
}

/// A run stopped at a signal (`own`: this process's, not another rank's):
/// where its checkpoint is and how to go on.
fn print_interrupted(
    report: &TrainReport,
    run_dir: Option<&Path>,
    device_flags: &str,
    own: bool,
) -> Result<()> {
    let whose = if own {
        ""
    } else {
        " to another process of the run"
    };
    // A process other than rank 0 keeps no folder: rank 0 wrote the checkpoint.
    let Some(run_dir) = run_dir else {
        outln!(
            "stopped at a signal{whose}; rank 0 wrote the run's checkpoint in its run folder; continue by starting every process again with --resume RUN_FOLDER{device_flags}"
        )?;
        return Ok(());
    };
    outln!(
        "stopped at a signal{whose}; {}; {}",
        match &report.checkpoint {
            Some(p) => format!("checkpoint {}", p.display()),
            None => "no checkpoint written".into(),
        },
        continue_with(run_dir, device_flags, &report.go_on),
    )?;
    Ok(())
}

/// The command that continues a stopped run in `run_dir` (`go_on`: what
/// its newest checkpoint does not hold, `TrainReport::go_on`).
fn continue_with(run_dir: &Path, device_flags: &str, go_on: &str) -> String {
    format!(
        "continue with: alexnet-cuda train --resume {}{device_flags}{go_on}",
        shell::word(run_dir)
    )
}

/// A run stopped at its time limit (this process's or another's of the
/// run): where, and how to go on (`flags`: the devices', and the limit
/// given, which the resume does not keep); nothing for a run that was not.
fn print_out_of_time(
    report: &TrainReport,
    opts: &TrainOptions,
    run_dir: &Path,
    device_flags: &str,
) -> Result<()> {
    let Some(Stopped::TimeLimit { epoch, step, own }) = report.stopped else {
        return Ok(());
    };
    let at = format!("at step {step}, in epoch {epoch}");
    let whose = match (own, opts.time_limit) {
        (true, Some(l)) => format!("the time limit ({l:?})"),
        _ => "another process's time limit".into(),
    };
    let go_on = match opts.out {
        Some(_) => format!("; {}", continue_with(run_dir, device_flags, &report.go_on)),
        None => String::new(),
    };
    outln!("stopped {at} of {} at {whose}{go_on}", opts.run.epochs)?;
    Ok(())
}

/// How `eval` finds images the run did not train on: the demo's new ones
/// (`images` None), the store's val/, or the images the run held out of
/// its data, found where the checkpoint `ck` says or where they are now.
fn eval_data_flag(images: Option<&Path>, ck: &Path) -> String {
    match images {
        None => "--demo".into(),
        Some(data) if is_store(&data.join("val")) => format!("--data {}", shell::word(data)),
        Some(data) => format!("--held-out{}", data_moved(ck, Some(data))),
    }
}

/// " --data DIR" when the checkpoint `ck` records other images than
/// `data` (the run was resumed with its data moved): a command that names
/// `ck` says where they are now. Empty for the demo's (`data` None).
fn data_moved(ck: &Path, data: Option<&Path>) -> String {
    let Some(data) = data else {
        return String::new();
    };
    let now = std::path::absolute(data).unwrap_or_else(|_| data.to_path_buf());
    match alexnet_cuda::checkpoint::checked_state_of(ck) {
        Some(st) if Path::new(&st.data) != now => format!(" --data {}", shell::word(data)),
        _ => String::new(),
    }
}

/// Validation top-1 after the first and the last epoch, and the best
/// epoch's (the one `best.safetensors` holds: the first with the highest)
/// when it is neither.
fn val_course(epochs: &[EpochStats]) -> String {
    let at = |e: &EpochStats| format!("{:.1}% after epoch {}", 100.0 * e.val_top1, e.epoch);
    let (Some(first), Some(last)) = (epochs.first(), epochs.last()) else {
        return String::new();
    };
    let best = epochs
        .iter()
        .fold(first, |b, e| if e.val_top1 > b.val_top1 { e } else { b });
    let mut s = at(first);
    if last.epoch != first.epoch {
        s += &format!(", {}", at(last));
    }
    if best.epoch != first.epoch && best.epoch != last.epoch {
        s += &format!(", best {}", at(best));
    }
    s
}

/// A finished run: validation accuracy first and last, speed, and where
/// its checkpoints are.
fn print_finished(report: &TrainReport, run_dir: &Path, images: Option<&Path>) -> Result<()> {
    if let Some(last) = report.epochs.last() {
        outln!(
            "validation top-1: {} (chance {:.1}%); {:.0} img/s; {:.0}s",
            val_course(&report.epochs),
            100.0 / report.classes.len() as f64,
            last.images_per_s,
            last.elapsed_s
        )?;
    }
    let Some(p) = &report.checkpoint else {
        return Ok(());
    };
    // best.safetensors comes with the first validated epoch.
    let eval = match report.epochs.is_empty() {
        true => String::new(),
        false => eval_with(run_dir, p, images),
    };
    outln!(
        "run folder {}: last checkpoint {}{eval}",
        run_dir.display(),
        p.display(),
    )?;
    Ok(())
}

/// The eval command for a finished run: its best epoch's checkpoint, or
/// the `last` where the folder has no best.safetensors (a resume from
/// before a best epoch that `--keep` pruned, and no later epoch beat it);
/// `images` as [`eval_data_flag`] takes them.
fn eval_with(run_dir: &Path, last: &Path, images: Option<&Path>) -> String {
    let best = run_dir.join("best.safetensors");
    let ck = if best.is_file() { &best } else { last };
    format!(
        "; evaluate with: alexnet-cuda eval --checkpoint {} {}",
        shell::word(ck),
        eval_data_flag(images, ck)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_is_offered_only_a_checkpoint_that_is_there() {
        let t = tempfile::tempdir().unwrap();
        let last = t.path().join("ckpt-0000000040.safetensors");
        let best = t.path().join("best.safetensors");
        let offered = |want: &Path| format!("--checkpoint {} --held-out", want.display());
        let said = eval_with(t.path(), &last, Some(Path::new("d")));
        assert!(said.contains(&offered(&last)), "{said}");
        std::fs::write(&best, b"x").unwrap();
        let said = eval_with(t.path(), &last, Some(Path::new("d")));
        assert!(said.contains(&offered(&best)), "{said}");
    }

    fn epochs(top1: &[f64]) -> Vec<EpochStats> {
        let row = |(i, &val_top1)| EpochStats {
            epoch: i + 1,
            lr: 0.01,
            train_loss: 0.0,
            train_top1: 0.0,
            val_loss: 0.0,
            val_top1,
            val_top5: 0.0,
            images_per_s: 0.0,
            elapsed_s: 0.0,
            data_wait: 0.0,
        };
        top1.iter().enumerate().map(row).collect()
    }

    #[test]
    fn val_course_names_first_last_and_a_best_between() {
        assert_eq!(val_course(&[]), "");
        assert_eq!(val_course(&epochs(&[0.1])), "10.0% after epoch 1");
        assert_eq!(
            val_course(&epochs(&[0.1, 0.5, 0.3])),
            "10.0% after epoch 1, 30.0% after epoch 3, best 50.0% after epoch 2"
        );
        // The first of equal bests, as best.safetensors; none when it is the last.
        assert_eq!(
            val_course(&epochs(&[0.1, 0.5, 0.5, 0.2])),
            "10.0% after epoch 1, 20.0% after epoch 4, best 50.0% after epoch 2"
        );
        assert_eq!(
            val_course(&epochs(&[0.1, 0.4, 0.6])),
            "10.0% after epoch 1, 60.0% after epoch 3"
        );
    }
}
