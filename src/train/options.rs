//! What a training run is asked to do (`TrainOptions`: the run-defining
//! `RunOptions`, plus where its data and run folder are and how it runs),
//! what it reports back (`TrainReport`), and how a resume takes back the
//! checkpoint's options.
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::checkpoint::{Checkpoint, RunOptions};
use crate::dist::world::World;
use crate::metrics::MetricsFormat;
use crate::model::topology::{DropoutRule, InitRecipe, Topology};
use crate::run_state::{Compute, EpochStats, Saving, Schedule};

#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub data: PathBuf,
    /// What defines the run: recipe, schedule, split, seed, crop. A
    /// checkpoint keeps it, and a resume takes it back (except `epochs`).
    pub run: RunOptions,
    /// Loader threads; None: sized from the machine (`default_workers`).
    pub workers: Option<usize>,
    /// Stop before this much time has passed since `started`, with a
    /// checkpoint, after the step where another step (or the epoch's
    /// validation) and a checkpoint would end past it.
    pub time_limit: Option<Duration>,
    /// When the time limit starts counting: the process's start, so that
    /// loading the data and meeting the other processes count too.
    pub started: Instant,
    /// The run folder: checkpoints, metrics, the plot. None: keep nothing.
    pub out: Option<PathBuf>,
    /// Checkpoint every this many steps (0: not by steps).
    pub checkpoint_every: u64,
    /// Checkpoint when this long has passed since the last checkpoint
    /// (None: not by time). Epoch ends always checkpoint.
    pub checkpoint_interval: Option<Duration>,
    /// Checkpoints kept (the newest; `best.safetensors` is kept besides).
    pub keep: usize,
    /// The flags behind `keep` and the checkpoint policy, as the run keeps them.
    pub saving: Saving,
    /// The device flags, as the run's checkpoints keep them.
    pub compute: Option<Compute>,
    pub metrics_format: MetricsFormat,
    /// Continue this checkpoint's run (with `resume_options`).
    pub resume: Option<Box<Checkpoint>>,
    /// With `resume`: the learning rate from the resumed step on (--lr),
    /// in place of the one the run had reached; its schedule goes on
    /// dividing it.
    pub lr_from_here: Option<f32>,
    /// Start from these weights (a safetensors file with PyTorch names).
    pub init_from: Option<PathBuf>,
    /// With `init_from`: layers that keep the run's own initialisation.
    pub fresh: Vec<String>,
    /// Set from outside (SIGINT/SIGTERM): finish the step, checkpoint, stop.
    pub stop: Option<Arc<AtomicBool>>,
    pub progress: bool,
    /// How often the progress bar refreshes, and so how often the loop
    /// reads the steps' metrics back from the device (also when its buffer
    /// fills, at checkpoints, at a stop and at the epoch's end).
    pub refresh: Duration,
    /// Refuse data sets whose decoded pixels exceed this.
    pub max_memory: u64,
    /// This process among the run's processes (torchrun's variables).
    pub world: World,
    /// Whether `run.val` was asked for (--val, or the resumed run's), not
    /// the default; errors about it say which.
    pub val_given: bool,
}

impl TrainOptions {
    /// `stop` where this process may act on it alone: in a run of one
    /// process. The processes of a run stop together, at the steps where
    /// they agree.
    pub fn stop_alone(&self) -> Option<Arc<AtomicBool>> {
        self.stop.clone().filter(|_| self.world.size == 1)
    }

    /// The config's recipe with the paper's schedule.
    pub fn for_topology(t: &Topology, data: PathBuf) -> TrainOptions {
        TrainOptions {
            data,
            run: RunOptions {
                epochs: t.recipe.epochs,
                batch: t.recipe.batch,
                lr: t.recipe.lr,
                momentum: t.recipe.momentum,
                weight_decay: t.recipe.weight_decay,
                schedule: Schedule::Plateau {
                    patience: super::schedule::PATIENCE,
                    max_drops: super::schedule::MAX_DROPS,
                },
                val: 5000,
                limit: None,
                seed: 1,
                crop: None,
                init: InitRecipe::default(),
                demo: false,
                warmup: 0.0,
                dropout: DropoutRule::default(),
                limit_by_class: true,
            },
            workers: None,
            time_limit: None,
            started: Instant::now(),
            out: None,
            checkpoint_every: 0,
            checkpoint_interval: Some(Duration::from_secs(15 * 60)),
            keep: 3,
            saving: Saving::default(),
            compute: None,
            val_given: false,
            metrics_format: MetricsFormat::Csv,
            resume: None,
            lr_from_here: None,
            init_from: None,
            fresh: Vec::new(),
            stop: None,
            progress: true,
            refresh: Duration::from_secs(1),
            max_memory: 16 << 30,
            world: World::single(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct TrainReport {
    /// Every finished epoch of the run, including those before a resume.
    pub epochs: Vec<EpochStats>,
    pub classes: Vec<String>,
    /// Why the run stopped before its last epoch, if it did.
    pub stopped: Option<Stopped>,
    /// The newest checkpoint written, if any.
    pub checkpoint: Option<PathBuf>,
    /// What the command that continues the run adds after `--resume RUN`
    /// and the device flags: what this run changed that the newest
    /// checkpoint does not hold (`--epochs`, `--lr`, `--data`).
    pub go_on: String,
}

/// What stopped a run before its last epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// `stop` was set (a signal, to this process or another of the run).
    Signal,
    /// The time limit: in the epoch `epoch`, after step `step`; `own`
    /// when this process's limit, not another process's of the run.
    TimeLimit { epoch: usize, step: u64, own: bool },
}

/// `opts` with the run-defining options of a checkpoint; `epochs` stays,
/// so a resume can extend the run.
pub fn resume_options(mut opts: TrainOptions, ck: &Checkpoint) -> TrainOptions {
    let epochs = opts.run.epochs;
    opts.run = RunOptions {
        epochs,
        ..ck.state.options.clone()
    };
    opts
}
