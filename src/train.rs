//! The training loop: epochs of the paper's SGD over a prepared store (or a
//! class-folder data set decoded into memory), validated on the store's val
//! images or a held-out split, the learning-rate schedule (divide by 10
//! when validation error stops improving, at most three times: section 5),
//! checkpoints every N steps and at each epoch end, exact resume, a clean
//! stop on SIGINT/SIGTERM, per-step and per-epoch metrics and their plot.
//! A step waits for nothing on the device (fp16's overflow flag aside): its
//! loss and top-1 stay there until the loop reads a group of steps back
//! (`step_log`).
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use tracing::{debug, info, warn};

use crate::backend::{Backend, SgdParams};
use crate::checkpoint::{self, Checkpoint, Preprocess, Progress, RunOptions, RunState};
use crate::data::packed::{is_store, PackedStore};
use crate::data::{
    batches_from, workers_for, Batch, BuildOptions, ImageFolder, ImageSet, ImageSource, Lighting,
    LoaderConfig, Pca,
};
use crate::dist::layout::Layout;
use crate::dist::world::World;
use crate::error::{Error, Result};
use crate::eval::evaluate;
use crate::export::Tensor;
use crate::metrics::{MetricsFormat, MetricsWriter, StepRow};
use crate::model::loss_scale::LossScale;
use crate::model::net::Mode;
use crate::model::spec::NetSpec;
use crate::model::summary::thousands;
use crate::model::topology::{InitRecipe, Normalize, Topology};
use crate::model::trainable::Model;
use crate::plot::{render_png, EpochPoint, StepPoint};
use crate::step_log::{EpochClock, StepLog, StepSink};
use crate::tensorboard::EventWriter;

pub use crate::run_state::{EpochStats, Schedule};

#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub data: PathBuf,
    /// What defines the run: recipe, schedule, split, seed, crop. A
    /// checkpoint keeps it, and a resume takes it back (except `epochs`).
    pub run: RunOptions,
    /// Loader threads; None: sized from the machine (`default_workers`).
    pub workers: Option<usize>,
    /// Stop after the epoch that would run past this.
    pub time_limit: Option<Duration>,
    /// The run folder: checkpoints, metrics, the plot. None: keep nothing.
    pub out: Option<PathBuf>,
    /// Checkpoint every this many steps (0: at epoch ends only).
    pub checkpoint_every: u64,
    /// Checkpoints kept (the newest; `best.safetensors` is kept besides).
    pub keep: usize,
    pub metrics_format: MetricsFormat,
    /// Continue this checkpoint's run (with `resume_options`).
    pub resume: Option<Box<Checkpoint>>,
    /// Start from these weights (a safetensors file with PyTorch names).
    pub init_from: Option<PathBuf>,
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
}

impl TrainOptions {
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
                    patience: 2,
                    max_drops: 3,
                },
                val: 5000,
                limit: None,
                seed: 1,
                crop: None,
                init: InitRecipe::default(),
            },
            workers: None,
            time_limit: None,
            out: None,
            checkpoint_every: 1000,
            keep: 3,
            metrics_format: MetricsFormat::Csv,
            resume: None,
            init_from: None,
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
    /// Stopped by `stop` (a signal) before the last epoch.
    pub interrupted: bool,
    /// The newest checkpoint written, if any.
    pub checkpoint: Option<PathBuf>,
}

/// The images a run trains and validates on, and the statistics the loader
/// normalises with: of the training split for a raw folder; a store's own
/// (all its images, including any held out by `--val`).
pub struct TrainData {
    pub train: Arc<dyn ImageSource>,
    pub train_idx: Vec<usize>,
    pub val: Arc<dyn ImageSource>,
    pub val_idx: Vec<usize>,
    pub classes: Vec<String>,
    /// Readable class names (empty when the data has none).
    pub names: Vec<String>,
    /// Per-channel mean and std, 0..255.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// The mean image, when the data came from a store.
    pub mean_image: Option<Arc<Vec<f32>>>,
    /// RGB covariance of the training pixels, 0..255 units.
    pub cov: Option<[[f64; 3]; 3]>,
}

/// Open `opts.data`: a store written by `prepare` (its root with `train/`
/// and optionally `val/`, or one store folder), or a raw class-folder tree,
/// decoded into memory (slow to start and bounded by `max_memory`).
pub fn load_data(opts: &TrainOptions, image_size: usize) -> Result<TrainData> {
    let root = &opts.data;
    let (train_dir, val_dir) = if is_store(root) {
        (Some(root.clone()), None)
    } else if is_store(&root.join("train")) {
        let v = root.join("val");
        (Some(root.join("train")), is_store(&v).then_some(v))
    } else {
        (None, None)
    };
    let Some(train_dir) = train_dir else {
        let folder = ImageFolder::scan(root)?;
        // Small sets (CIFAR, the demo) load in seconds; past that, say how
        // to stop paying the decode on every run.
        let hint = format!(
            "{} is a raw image folder: its {} images are decoded into memory before training; run `alexnet-cuda prepare --train {} --out STORE` once and pass --data STORE to skip this",
            root.display(),
            folder.len(),
            root.display()
        );
        if folder.len() > 60_000 {
            tracing::warn!("{hint}");
        } else {
            info!("{hint}");
        }
        let build = BuildOptions {
            size: image_size,
            limit: opts.run.limit,
            max_bytes: opts.max_memory,
            progress: opts.progress,
        };
        let set = Arc::new(ImageSet::build(&folder, &build)?);
        if opts.run.val >= set.len() {
            return Err(Error::Config(format!(
                "--val {}: the data set has only {} images; hold out fewer",
                opts.run.val,
                set.len()
            )));
        }
        let (train_idx, val_idx) = set.split(opts.run.val, opts.run.seed);
        let (mean, std) = set.channel_stats(&train_idx);
        let cov = set.rgb_moments(&train_idx).map(|(_, c)| c);
        let set: Arc<dyn ImageSource> = set;
        return Ok(TrainData {
            classes: set.classes().to_vec(),
            names: Vec::new(),
            train: Arc::clone(&set),
            val: set,
            train_idx,
            val_idx,
            mean,
            std,
            mean_image: None,
            cov,
        });
    };
    let store = PackedStore::open(&train_dir)?;
    let meta = store.meta().clone();
    if meta.size != image_size {
        info!(
            "{}: images stored at {}x{} (the config expects {image_size}); crops are taken from the stored size",
            train_dir.display(),
            meta.size,
            meta.size
        );
    }
    let mean_image = Some(Arc::new(store.mean_image().to_vec()));
    let train: Arc<dyn ImageSource> = Arc::new(store);
    let (mut train_idx, val, val_idx) = match val_dir {
        Some(v) => {
            let vs = PackedStore::open(&v)?;
            if vs.meta().classes != meta.classes {
                return Err(Error::Data(format!(
                    "{} and {} list different classes; prepare them together with `alexnet-cuda prepare --train ... --val ...`",
                    train_dir.display(),
                    v.display()
                )));
            }
            info!(
                "validating on the {} images of {}",
                vs.meta().count,
                v.display()
            );
            let n = vs.meta().count;
            let vs: Arc<dyn ImageSource> = Arc::new(vs);
            ((0..train.len()).collect(), vs, (0..n).collect())
        }
        None => {
            if opts.run.val >= train.len() {
                return Err(Error::Config(format!(
                    "--val {}: {} has only {} images; hold out fewer",
                    opts.run.val,
                    train_dir.display(),
                    train.len()
                )));
            }
            let (t, v) =
                crate::data::store::split_indices(train.len(), opts.run.val, opts.run.seed);
            (t, Arc::clone(&train), v)
        }
    };
    if let Some(k) = opts.run.limit {
        if k == 0 {
            return Err(Error::Config(
                "--limit 0 selects no images; pass a positive limit or leave it out".into(),
            ));
        }
        crate::rng::Rng::derive(opts.run.seed, 0x004C_494D_4954).shuffle(&mut train_idx);
        train_idx.truncate(k);
        train_idx.sort_unstable();
    }
    let st = &meta.stats;
    Ok(TrainData {
        classes: meta.classes.clone(),
        names: meta.names.clone(),
        train,
        train_idx,
        val,
        val_idx,
        mean: st.channel_mean.map(|v| v as f32),
        std: st.channel_std.map(|v| v as f32),
        mean_image,
        cov: Some(st.rgb_cov),
    })
}

/// The loader settings of a run, shared by training and evaluation.
pub fn loader_config(
    topo: &Topology,
    opts: &TrainOptions,
    data: &TrainData,
    lighting: Option<Lighting>,
) -> LoaderConfig {
    let crop = opts.run.crop.unwrap_or(topo.crop);
    LoaderConfig {
        batch: opts.run.batch,
        crop,
        pad: topo.crop - crop.min(topo.crop),
        train: true,
        mean: data.mean,
        // The paper subtracts the mean image; configs that also divide by
        // the std use per-channel statistics.
        mean_image: match topo.normalize {
            Normalize::Mean => data.mean_image.clone(),
            Normalize::MeanStd => None,
        },
        ten_crop: false,
        std: match topo.normalize {
            Normalize::Mean => None,
            Normalize::MeanStd => Some(data.std),
        },
        seed: opts.run.seed,
        // `train` sizes it from the machine when not given (workers_for).
        workers: opts.workers.unwrap_or(1),
        drop_last: true,
        lighting,
        host_alloc: None,
        shard: (0, 1),
    }
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

/// Writes checkpoints into the run folder and keeps the folder tidy.
struct Saver {
    dir: PathBuf,
    keep: usize,
    last: Option<PathBuf>,
}

impl Saver {
    fn save(&mut self, state: &RunState, tensors: &[Tensor], best: bool) -> Result<PathBuf> {
        let path = self
            .dir
            .join(checkpoint::checkpoint_name(state.progress.step));
        let t0 = Instant::now();
        if let Err(e) = checkpoint::save(&path, state, tensors) {
            let prev = match &self.last {
                Some(p) => format!("the previous checkpoint {} is intact", p.display()),
                None => "no checkpoint of this run was written yet".into(),
            };
            return Err(Error::Data(format!(
                "could not write checkpoint {} ({e}); {prev}: free disk space and continue with `alexnet-cuda train --resume {}`",
                path.display(),
                self.dir.display()
            )));
        }
        let mb = tensors.iter().map(|t| t.data.len()).sum::<usize>() as f64 * 4e-6;
        info!(
            "checkpoint {} ({mb:.0} MB) written in {:.2} s",
            path.display(),
            t0.elapsed().as_secs_f64()
        );
        if best {
            checkpoint::mark_best(&self.dir, &path)?;
        }
        checkpoint::prune(&self.dir, self.keep)?;
        self.last = Some(path.clone());
        Ok(path)
    }
}

/// Train the network `spec` names, laid over devices as `layout` says,
/// with `opts`; with `opts.resume`, continue that checkpoint's run exactly.
/// Checkpoints hold whole tensors whatever the layout, so any layout
/// resumes any run (bit for bit with the same one: dropout masks are drawn
/// per tower and per replica). In a multi-process run (`opts.world`) the
/// batch is the global one: each process takes its share of every batch.
pub fn train<B: Backend>(
    layout: Layout<'_, B>,
    spec: &NetSpec,
    opts: &TrainOptions,
) -> Result<TrainReport> {
    let backend = layout.first();
    let world = &opts.world;
    if !opts.run.batch.is_multiple_of(world.size) {
        return Err(Error::Config(format!(
            "--batch {} does not split over WORLD_SIZE={} processes; use a multiple of {}",
            opts.run.batch, world.size, world.size
        )));
    }
    let local_batch = opts.run.batch / world.size;
    if opts.run.batch == 0 {
        return Err(Error::Config("--batch must be at least 1".into()));
    }
    if !(opts.run.lr > 0.0 && opts.run.lr.is_finite()) {
        return Err(Error::Config(format!(
            "--lr must be a positive number, not {}",
            opts.run.lr
        )));
    }
    let base = spec.topology()?;
    base.validate()?;
    let data = load_data(opts, base.image_size)?;
    let n_classes = data.classes.len();
    let mut spec = spec.clone();
    if n_classes != base.classes {
        info!(
            "{} has {n_classes} classes: the last layer gets {n_classes} outputs (config {} has {})",
            opts.data.display(),
            base.name,
            base.classes
        );
        spec.classes = Some(n_classes);
    }
    let topo = spec.topology()?;
    let topo = &topo;
    if let Some(ck) = &opts.resume {
        let st = &ck.state;
        if st.classes != data.classes || st.train_images != data.train_idx.len() {
            return Err(Error::Config(format!(
                "--resume {}: the run trained on {} ({} images, {} classes) but {} has {} images, {} classes; pass the run's data with --data",
                ck.path.display(),
                st.data,
                st.train_images,
                st.classes.len(),
                opts.data.display(),
                data.train_idx.len(),
                data.classes.len()
            )));
        }
        if st.net != spec {
            return Err(Error::Config(format!(
                "--resume {}: the checkpoint's network is {:?}, not {:?}",
                ck.path.display(),
                st.net,
                spec
            )));
        }
    }
    if let Some(c) = opts.run.crop {
        if c == 0 || c > topo.crop {
            return Err(Error::Config(format!(
                "--crop {c}: config {} takes {}x{} inputs; pass a crop from 1 to {} (smaller crops are zero-padded; the paper's is 224)",
                topo.name, topo.crop, topo.crop, topo.crop
            )));
        }
    }
    let cut = opts.run.crop.unwrap_or(topo.crop);
    if cut > data.train.size() {
        return Err(Error::Config(format!(
            "{}: images are stored at {}x{}, smaller than the {cut}x{cut} crops of config {}; prepare the data with --size {} or pick a config for small images (--config cifar)",
            opts.data.display(),
            data.train.size(),
            data.train.size(),
            topo.name,
            topo.image_size
        )));
    }
    if data.train_idx.len() < opts.run.batch {
        return Err(Error::Config(format!(
            "--batch {}: only {} training images; use a smaller batch",
            opts.run.batch,
            data.train_idx.len()
        )));
    }
    let lighting = match data.cov {
        Some(cov) if topo.lighting > 0.0 => {
            let pca = Pca::from_covariance(cov);
            info!(
                "PCA lighting: eigenvalues {:.4?} of the RGB covariance (pixels in [0, 1]), coefficients ~ N(0, {})",
                pca.eigvals, topo.lighting
            );
            Some(Lighting {
                pca,
                sigma: topo.lighting,
            })
        }
        _ => None,
    };
    let mut loader = loader_config(topo, opts, &data, lighting);
    loader.batch = local_batch;
    loader.shard = (world.rank, world.size);
    // Batches in the backend's pinned memory where it has some (a GPU).
    loader.host_alloc = backend.host_alloc();
    // Only a GPU backend has pinned memory: then one core drives the device.
    loader.workers = workers_for(opts.workers, loader.host_alloc.is_some());
    let eval_cfg = LoaderConfig {
        train: false,
        drop_last: false,
        lighting: None,
        shard: (0, 1),
        ..loader.clone()
    };
    let set = Arc::clone(&data.train);
    info!(
        "data: {} train / {} val images, {} classes, {}x{} stored, {}x{} crops; channel mean {:.1?}",
        data.train_idx.len(),
        data.val_idx.len(),
        data.classes.len(),
        set.size(),
        set.size(),
        topo.crop,
        topo.crop,
        data.mean
    );

    if let Layout::Towers(_) | Layout::Hybrid(..) = &layout {
        info!(
            "two towers: {} bytes cross between them per step",
            topo.exchange_bytes_per_step(local_batch)?
        );
    }
    if !world.is_single() {
        info!(
            "process {} of {}: {} images of every batch of {}",
            world.rank, world.size, local_batch, opts.run.batch
        );
    }
    let devices = layout.describe();
    if topo.has_one_biases() && opts.resume.is_none() && opts.init_from.is_none() {
        info!(
            "recipe {}: the biases the paper sets to 1 start at {}{}",
            opts.run.init.name(),
            opts.run.init.one_bias(),
            match opts.run.init {
                InitRecipe::Caffe => " (as Caffe's AlexNet; --recipe paper for 1)",
                InitRecipe::Paper => " (section 5)",
            }
        );
    }
    let mut net = layout.build(
        &topo.clone().with_init(opts.run.init),
        local_batch,
        opts.run.seed,
    )?;
    if let Some(path) = &opts.init_from {
        let tensors = crate::export::read_safetensors(path)?;
        let map = tensors.into_iter().map(|t| (t.name.clone(), t)).collect();
        checkpoint::load_weights(&mut *net, &map, path)?;
        info!("initial weights from {}", path.display());
    }
    let epoch_batches = data.train_idx.len() / opts.run.batch;
    let (mut state, resumed) = match &opts.resume {
        Some(ck) => {
            ck.restore(&mut *net, true)?;
            let mut st = ck.state.clone();
            st.options.epochs = opts.run.epochs;
            st.data = opts.data.display().to_string();
            info!(
                "resuming {} at epoch {}, batch {}/{}, step {}, lr {:.1e}",
                ck.path.display(),
                st.progress.epoch,
                st.progress.batches_done,
                st.progress.epoch_batches,
                st.progress.step,
                st.progress.lr
            );
            (st, true)
        }
        None => (
            RunState {
                format: checkpoint::FORMAT.into(),
                version: checkpoint::VERSION,
                net: spec.clone(),
                classes: data.classes.clone(),
                names: data.names.clone(),
                data: opts.data.display().to_string(),
                train_images: data.train_idx.len(),
                val_images: data.val_idx.len(),
                options: opts.run.clone(),
                preprocess: Preprocess {
                    image_size: set.size(),
                    crop: loader.crop,
                    pad: loader.pad,
                    mean: loader.mean,
                    std: loader.std,
                    mean_image: loader.mean_image.is_some(),
                },
                progress: Progress::start(opts.run.lr, epoch_batches),
                history: Vec::new(),
            },
            false,
        ),
    };
    let mean_tensor = loader.mean_image.as_ref().map(|m| Tensor {
        name: checkpoint::MEAN_IMAGE.into(),
        shape: vec![set.size(), set.size(), 3],
        data: m.to_vec(),
    });

    // The run folder: refuse to mix two runs in one.
    let mut saver = None;
    let mut metrics = None;
    let mut events = None;
    let mut step_rows = Vec::new();
    if let Some(dir) = &opts.out {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        checkpoint::remove_stale_temps(dir)?;
        if !resumed {
            if let Some((_, p)) = checkpoint::list(dir)?.last() {
                return Err(Error::Config(format!(
                    "{} already holds a run ({}); continue it with --resume {} or pass another --out",
                    dir.display(),
                    p.display(),
                    dir.display()
                )));
            }
        }
        let (w, kept) = MetricsWriter::open(
            dir,
            opts.metrics_format,
            resumed.then_some(state.progress.step),
            &state.history,
        )?;
        metrics = Some(w);
        events = Some(EventWriter::create(
            dir,
            state.progress.elapsed_s,
            resumed.then_some(state.progress.step),
        )?);
        step_rows = kept;
        saver = Some(Saver {
            dir: dir.clone(),
            keep: opts.keep,
            last: opts.resume.as_ref().map(|c| c.path.clone()),
        });
    }
    info!(
        "training {} ({} parameters) on {}: batch {}, lr {}, {} epochs{}",
        topo.name,
        thousands(topo.param_count()? as u64),
        devices,
        opts.run.batch,
        opts.run.lr,
        opts.run.epochs,
        match &opts.out {
            Some(d) => format!("; run folder {}", d.display()),
            None => String::new(),
        }
    );

    let start = Instant::now();
    if backend.needs_loss_scaling() {
        let ls = state
            .progress
            .loss_scale
            .clone()
            .unwrap_or_else(LossScale::dynamic);
        info!(
            "{}: dynamic loss scaling from {} (halved on overflow, doubled after {} clean steps)",
            backend.name(),
            ls.scale,
            ls.growth_interval
        );
        net.set_loss_scale(Some(ls));
    }
    if state.progress.epoch_done {
        state.progress.next_epoch();
    }
    if let (Some(ck), true) = (&opts.resume, state.progress.epoch > opts.run.epochs) {
        info!(
            "{}: the run has finished its {} epochs; pass --epochs N to extend it",
            ck.path.display(),
            opts.run.epochs
        );
    }
    let run = Run {
        opts,
        topo,
        local_batch,
        elapsed0: state.progress.elapsed_s,
        report: TrainReport {
            epochs: state.history.clone(),
            classes: data.classes.clone(),
            interrupted: false,
            checkpoint: None,
        },
        state,
        saver,
        metrics,
        events,
        step_rows,
        mean_tensor,
        log: StepLog::new(opts.refresh),
        start,
        bytes_told: false,
        workers: loader.workers,
    };
    let feed = Feed {
        set,
        data: &data,
        loader: &loader,
        eval: &eval_cfg,
    };
    run.epochs(&mut *net, &feed)
}

/// Where a run's batches come from: the training images and the loader
/// settings, and the validation set with its own.
struct Feed<'a> {
    set: Arc<dyn ImageSource>,
    data: &'a TrainData,
    loader: &'a LoaderConfig,
    eval: &'a LoaderConfig,
}

/// A run in progress: its state (checkpointed), its outputs, and what the
/// step loop keeps between steps.
struct Run<'a> {
    opts: &'a TrainOptions,
    topo: &'a Topology,
    local_batch: usize,
    state: RunState,
    report: TrainReport,
    saver: Option<Saver>,
    metrics: Option<MetricsWriter>,
    /// TensorBoard's copy of the metrics, and conv1's kernels each epoch.
    events: Option<EventWriter>,
    /// Every step row of the run, for the plot.
    step_rows: Vec<StepRow>,
    mean_tensor: Option<Tensor>,
    /// Steps whose metrics are still on the device.
    log: StepLog,
    /// When training started, and the seconds trained before (a resume).
    start: Instant,
    elapsed0: f64,
    /// Towers: the bytes the first step moved were logged beside the table's count.
    bytes_told: bool,
    /// Loader threads, for the advice when the loop waits for data.
    workers: usize,
}

impl Run<'_> {
    fn elapsed(&self) -> f64 {
        self.elapsed0 + self.start.elapsed().as_secs_f64()
    }

    /// Set from outside (a signal): finish the step, checkpoint, stop.
    fn stopping(&self) -> bool {
        self.opts
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
    }

    /// The checkpoint's tensors: the network's and the mean image.
    fn snapshot(&self, net: &dyn Model) -> Result<Vec<Tensor>> {
        let mut t = checkpoint::network_tensors(net, true)?;
        t.extend(self.mean_tensor.clone());
        Ok(t)
    }

    /// Every epoch left, each followed by validation and a checkpoint.
    fn epochs(mut self, net: &mut dyn Model, feed: &Feed) -> Result<TrainReport> {
        let mut epochs_run = 0usize;
        while self.state.progress.epoch <= self.opts.run.epochs {
            let epoch = self.state.progress.epoch;
            let epoch_start = Instant::now();
            let Some(clock) = self.train_epoch(net, feed)? else {
                self.report.interrupted = true;
                return Ok(self.report);
            };
            self.end_epoch(net, feed, &clock, epoch_start.elapsed().as_secs_f64())?;
            epochs_run += 1;
            self.state.progress.next_epoch();
            if self.stopping() {
                info!("stopping after epoch {epoch} as asked");
                self.report.interrupted = epoch < self.opts.run.epochs;
                return Ok(self.report);
            }
            if let Some(limit) = self.opts.time_limit {
                let per_epoch = self.start.elapsed().as_secs_f64() / epochs_run as f64;
                if epoch < self.opts.run.epochs
                    && self.start.elapsed().as_secs_f64() + per_epoch > limit.as_secs_f64()
                {
                    info!(
                        "stopping after epoch {epoch}: the next epoch would pass the time limit of {:.0}s",
                        limit.as_secs_f64()
                    );
                    break;
                }
            }
        }
        Ok(self.report)
    }

    /// The epoch's remaining steps (a milestone drops the lr first); None
    /// when a stop was asked (after its checkpoint).
    fn train_epoch(&mut self, net: &mut dyn Model, feed: &Feed) -> Result<Option<EpochClock>> {
        let epoch = self.state.progress.epoch;
        let first = self.state.progress.batches_done;
        if let (0, Schedule::Milestones(m)) = (first, &self.opts.run.schedule) {
            if m.contains(&epoch) {
                self.state.progress.lr /= 10.0;
                info!(
                    "epoch {epoch}: learning rate milestone, lr now {:.1e}",
                    self.state.progress.lr
                );
            }
        }
        let hp = SgdParams {
            lr: self.state.progress.lr,
            momentum: self.opts.run.momentum,
            weight_decay: self.opts.run.weight_decay,
        };
        let mut iter = batches_from(
            Arc::clone(&feed.set),
            &feed.data.train_idx,
            feed.loader,
            epoch as u64,
            first,
        )?;
        let prefix = format!("epoch {epoch}/{}", self.opts.run.epochs);
        let pb = crate::progress::bar(iter.num_batches(), &prefix, self.opts.progress);
        pb.set_position(first as u64);
        let mut clock = EpochClock::default();
        let epoch_start = Instant::now();
        loop {
            let t0 = Instant::now();
            let Some(b) = iter.next() else { break };
            let waited = t0.elapsed();
            let b = b?;
            self.step(net, &b, &hp, &mut clock)?;
            iter.recycle(b);
            pb.inc(1);
            if self.log.due(net.step_slots()) {
                self.read_steps(net)?;
                self.show(&pb, &clock, epoch_start);
            }
            clock.wait += waited;
            clock.steps += t0.elapsed();
            if !self.after_step(net)? {
                pb.finish_and_clear();
                return Ok(None);
            }
        }
        self.read_steps(net)?;
        pb.finish_and_clear();
        Ok(Some(clock))
    }

    /// One training step, queued: nothing here waits for the device but
    /// fp16's overflow check (`sgd_step` reads one flag per step to decide
    /// whether to skip the update). The loss and top-1 hits are recorded
    /// on the device and read back by `read_steps`.
    fn step(
        &mut self,
        net: &mut dyn Model,
        b: &Batch,
        hp: &SgdParams,
        clock: &mut EpochClock,
    ) -> Result<()> {
        let t0 = Instant::now();
        net.forward_queued(&b.x, &b.labels, Mode::Train)?;
        net.record_step(self.log.next_slot())?;
        net.backward()?;
        net.sgd_step(hp)?;
        clock.compute += t0.elapsed();
        if !self.bytes_told && net.exchanged_bytes() > 0 {
            info!(
                "between towers: {} bytes this step; the table predicts {}",
                net.exchanged_bytes(),
                self.topo.exchange_bytes_per_step(self.local_batch)?
            );
            self.bytes_told = true;
        }
        let elapsed = self.elapsed();
        let p = &mut self.state.progress;
        if let Some(ls) = net.loss_scale() {
            if net.last_step_skipped() {
                debug!(
                    "step {}: a gradient overflowed; update skipped, loss scale now {}",
                    net.steps(),
                    ls.scale
                );
            }
            p.loss_scale = Some(ls.clone());
        }
        p.batches_done += 1;
        p.step = net.steps();
        // The processes of a run step together (each step ends in the
        // all-reduce), so the run's images are this shard times their number.
        clock.images += b.n * self.opts.world.size;
        self.log.push(p, b.n, elapsed);
        Ok(())
    }

    /// The queued steps' metrics from the device into the epoch's sums,
    /// the metrics files and the plot's rows.
    fn read_steps(&mut self, net: &mut dyn Model) -> Result<()> {
        let sink = StepSink {
            metrics: self.metrics.as_mut(),
            events: self.events.as_mut(),
            rows: &mut self.step_rows,
        };
        self.log.flush(net, &mut self.state.progress, sink)
    }

    /// The progress bar's numbers, as of the last read.
    fn show(&self, pb: &ProgressBar, clock: &EpochClock, epoch_start: Instant) {
        let p = &self.state.progress;
        if p.seen == 0 {
            return;
        }
        pb.set_message(format!(
            "loss {:.3} top1 {:.1}% {:.0} img/s",
            p.loss_sum / p.seen as f64,
            100.0 * p.hits as f64 / p.seen as f64,
            clock.images as f64 / epoch_start.elapsed().as_secs_f64()
        ));
    }

    /// A checkpoint when one is due or a stop was asked; Ok(false) to stop.
    fn after_step(&mut self, net: &mut dyn Model) -> Result<bool> {
        let stop = self.stopping();
        let every = self.opts.checkpoint_every;
        let due = every > 0 && self.state.progress.step.is_multiple_of(every);
        if !(stop || due) {
            return Ok(true);
        }
        // The checkpoint holds the epoch's sums: every step is read first.
        self.read_steps(net)?;
        if self.saver.is_some() {
            self.state.progress.elapsed_s = self.elapsed();
            let tensors = self.snapshot(net)?;
            if let Some(sv) = &mut self.saver {
                self.report.checkpoint = Some(sv.save(&self.state, &tensors, false)?);
            }
            render_plot(self.opts, self.topo, &self.step_rows, &self.state.history);
        }
        if stop {
            info!(
                "stopping at epoch {}, step {} as asked{}",
                self.state.progress.epoch,
                self.state.progress.step,
                match &self.report.checkpoint {
                    Some(p) => format!("; checkpoint {}", p.display()),
                    None => String::new(),
                }
            );
        }
        Ok(!stop)
    }

    /// Validation, the epoch's row and log line, the schedule, and the
    /// epoch-end checkpoint.
    fn end_epoch(
        &mut self,
        net: &mut dyn Model,
        feed: &Feed,
        clock: &EpochClock,
        train_secs: f64,
    ) -> Result<()> {
        let val_bar =
            crate::progress::bar(feed.data.val_idx.len(), "validation", self.opts.progress);
        let v = evaluate(net, &feed.data.val, &feed.data.val_idx, feed.eval, |n| {
            val_bar.set_position(n as u64)
        })?;
        val_bar.finish_and_clear();
        let elapsed = self.elapsed();
        let p = &mut self.state.progress;
        let stats = EpochStats {
            epoch: p.epoch,
            lr: p.lr,
            train_loss: p.loss_sum / p.seen.max(1) as f64,
            train_top1: p.hits as f64 / p.seen.max(1) as f64,
            val_loss: v.loss,
            val_top1: v.top1,
            val_top5: v.top5,
            images_per_s: clock.images as f64 / train_secs,
            elapsed_s: elapsed,
            data_wait: clock.wait_share(),
        };
        log_epoch(self.opts, &stats, clock, self.workers);
        if let Some(ls) = net.loss_scale() {
            info!(
                "epoch {}: loss scale {}, {} steps skipped for overflow so far",
                stats.epoch, ls.scale, ls.skipped
            );
        }
        if let Some(m) = &mut self.metrics {
            m.epoch(&stats)?;
        }
        if let Some(ev) = &mut self.events {
            ev.epoch(p.step, &stats)?;
            ev.filters(p.step, &*net)?;
            ev.flush()?;
        }
        let best = after_validation(p, &self.opts.run.schedule, 1.0 - v.top1);
        p.epoch_done = true;
        p.elapsed_s = elapsed;
        self.state.history.push(stats.clone());
        self.report.epochs.push(stats);
        if self.saver.is_some() {
            let tensors = self.snapshot(net)?;
            if let Some(sv) = &mut self.saver {
                self.report.checkpoint = Some(sv.save(&self.state, &tensors, best)?);
            }
        }
        render_plot(self.opts, self.topo, &self.step_rows, &self.state.history);
        Ok(())
    }
}

/// Past this share of step time spent waiting for batches, the log says
/// how to feed the loop faster.
const WAIT_WARN: f64 = 0.05;

/// The epoch's log line, and advice when the loader held training back.
fn log_epoch(opts: &TrainOptions, s: &EpochStats, clock: &EpochClock, workers: usize) {
    info!(
        "epoch {}/{} lr {:.0e}: train loss {:.3} top1 {:.1}% | val loss {:.3} top1 {:.1}% top5 {:.1}% | {:.0} img/s ({:.0} compute), data wait {:.1}% | {:.0}s",
        s.epoch,
        opts.run.epochs,
        s.lr,
        s.train_loss,
        100.0 * s.train_top1,
        s.val_loss,
        100.0 * s.val_top1,
        100.0 * s.val_top5,
        s.images_per_s,
        clock.images as f64 / clock.compute.as_secs_f64().max(1e-9),
        100.0 * s.data_wait,
        s.elapsed_s
    );
    if s.data_wait > WAIT_WARN {
        warn!(
            "epoch {}: training waited for batches {:.1}% of the time; feed it faster with more --workers (now {workers}), a lower-quality store (`alexnet-cuda prepare --quality 75`), or raw pixels (`alexnet-cuda prepare --format raw`)",
            s.epoch,
            100.0 * s.data_wait
        );
    }
}

/// Record an epoch's validation error in the schedule state: returns
/// whether it is the best so far. The paper's schedule (section 5): divide
/// the learning rate by 10 when the error has not improved for `patience`
/// epochs, at most `max_drops` times; the count restarts after each drop.
pub fn after_validation(p: &mut Progress, schedule: &Schedule, err: f64) -> bool {
    let best = p.best_err.is_none_or(|b| err < b);
    if best {
        p.best_err = Some(err);
        p.since_best = 0;
    } else {
        p.since_best += 1;
    }
    if let Schedule::Plateau {
        patience,
        max_drops,
    } = *schedule
    {
        if !best && p.since_best >= patience && p.drops < max_drops {
            p.lr /= 10.0;
            p.drops += 1;
            p.since_best = 0;
            info!(
                "validation error has not improved for {patience} epochs: lr now {:.1e} (drop {} of {max_drops})",
                p.lr, p.drops
            );
        }
    }
    best
}

/// Redraw `curves.png` in the run folder. A failed plot is logged, never
/// fatal: the numbers are in the metrics files.
fn render_plot(opts: &TrainOptions, topo: &Topology, steps: &[StepRow], epochs: &[EpochStats]) {
    let Some(dir) = &opts.out else { return };
    let steps: Vec<StepPoint> = steps
        .iter()
        .map(|r| StepPoint {
            step: r.step,
            epoch: r.epoch,
            loss: r.loss,
            lr: r.lr,
        })
        .collect();
    let epochs: Vec<EpochPoint> = epochs
        .iter()
        .map(|e| EpochPoint {
            epoch: e.epoch,
            train_loss: e.train_loss,
            train_err: 1.0 - e.train_top1,
            val_loss: e.val_loss,
            val_top1_err: 1.0 - e.val_top1,
            val_top5_err: 1.0 - e.val_top5,
            lr: e.lr as f64,
        })
        .collect();
    let title = format!("{} on {}", topo.name, opts.data.display());
    if let Err(e) = render_png(&dir.join("curves.png"), &title, &steps, &epochs) {
        warn!("could not draw the training curves: {e}");
    }
}
