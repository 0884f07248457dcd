//! The training loop: epochs of the paper's SGD over a prepared store (or a
//! class-folder data set decoded into memory), validated on the store's val
//! images or a held-out split, the learning-rate schedule (divide by 10
//! when validation error stops improving, at most three times: section 5),
//! evaluation (top-1 / top-5), logs, a progress bar and a metrics CSV.
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tracing::info;

use crate::backend::{Backend, SgdParams};
use crate::data::packed::{is_store, PackedStore};
use crate::data::{
    batches, BuildOptions, ImageFolder, ImageSet, ImageSource, Lighting, LoaderConfig, Pca,
};
use crate::error::{Error, Result};
use crate::model::net::{Mode, Network};
use crate::model::summary::thousands;
use crate::model::topology::{Normalize, Topology};

/// When the learning rate drops.
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// The paper: divide by 10 when validation error has not improved for
    /// `patience` epochs, at most `max_drops` times.
    Plateau { patience: usize, max_drops: usize },
    /// Divide by 10 at the start of each listed epoch (1-based).
    Milestones(Vec<usize>),
}

#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub data: PathBuf,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub schedule: Schedule,
    /// Images held out for validation.
    pub val: usize,
    /// Use only this many images (balanced over classes).
    pub limit: Option<usize>,
    pub seed: u64,
    /// Loader threads.
    pub workers: usize,
    /// Stop after the epoch that would run past this.
    pub time_limit: Option<Duration>,
    /// Append one row per epoch here.
    pub metrics_csv: Option<PathBuf>,
    /// Side of the crops cut from the images when smaller than the network
    /// input (the paper's 224 of a 227 input): zero-padded to the input.
    pub crop: Option<usize>,
    pub progress: bool,
    /// Refuse data sets whose decoded pixels exceed this.
    pub max_memory: u64,
}

impl TrainOptions {
    /// The config's recipe with the paper's schedule.
    pub fn for_topology(t: &Topology, data: PathBuf) -> TrainOptions {
        TrainOptions {
            data,
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
            workers: 1,
            time_limit: None,
            metrics_csv: None,
            crop: None,
            progress: true,
            max_memory: 16 << 30,
        }
    }
}

/// What one epoch measured.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochStats {
    pub epoch: usize,
    pub lr: f32,
    pub train_loss: f64,
    pub train_top1: f64,
    pub val_loss: f64,
    pub val_top1: f64,
    pub val_top5: f64,
    /// Training images per second (forward, backward, update).
    pub images_per_s: f64,
    /// Wall time since training started, seconds.
    pub elapsed_s: f64,
}

#[derive(Clone, Debug)]
pub struct TrainReport {
    pub epochs: Vec<EpochStats>,
    pub classes: Vec<String>,
}

/// Top-1 and top-5 hits of one batch: for each row, the rank of the label's
/// probability (ties counted against us, so a constant output scores 0).
pub fn topk_hits(probs: &[f32], labels: &[u32], classes: usize) -> (usize, usize) {
    let mut top1 = 0;
    let mut top5 = 0;
    for (row, &label) in probs.chunks_exact(classes).zip(labels) {
        let p = row[label as usize];
        let better = row
            .iter()
            .enumerate()
            .filter(|&(j, &q)| j != label as usize && q >= p)
            .count();
        top1 += (better < 1) as usize;
        top5 += (better < 5) as usize;
    }
    (top1, top5)
}

/// Mean loss, top-1 and top-5 accuracy over `indices`, centre crops.
pub fn evaluate<B: Backend>(
    net: &mut Network<'_, B>,
    set: &Arc<dyn ImageSource>,
    indices: &[usize],
    cfg: &LoaderConfig,
) -> Result<(f64, f64, f64)> {
    let classes = net.topology().classes;
    let (mut loss, mut top1, mut top5, mut seen) = (0.0f64, 0usize, 0usize, 0usize);
    for b in batches(Arc::clone(set), indices, cfg, 0)? {
        let b = b?;
        loss += net.forward(&b.x, &b.labels, Mode::Eval)? as f64 * b.n as f64;
        let (t1, t5) = topk_hits(&net.probs()?, &b.labels, classes);
        top1 += t1;
        top5 += t5;
        seen += b.n;
    }
    if seen == 0 {
        return Ok((f64::NAN, f64::NAN, f64::NAN));
    }
    let s = seen as f64;
    Ok((loss / s, top1 as f64 / s, top5 as f64 / s))
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
            limit: opts.limit,
            max_bytes: opts.max_memory,
            progress: opts.progress,
        };
        let set = Arc::new(ImageSet::build(&folder, &build)?);
        if opts.val >= set.len() {
            return Err(Error::Config(format!(
                "--val {}: the data set has only {} images; hold out fewer",
                opts.val,
                set.len()
            )));
        }
        let (train_idx, val_idx) = set.split(opts.val, opts.seed);
        let (mean, std) = set.channel_stats(&train_idx);
        let cov = set.rgb_moments(&train_idx).map(|(_, c)| c);
        let set: Arc<dyn ImageSource> = set;
        return Ok(TrainData {
            classes: set.classes().to_vec(),
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
            if opts.val >= train.len() {
                return Err(Error::Config(format!(
                    "--val {}: {} has only {} images; hold out fewer",
                    opts.val,
                    train_dir.display(),
                    train.len()
                )));
            }
            let (t, v) = crate::data::store::split_indices(train.len(), opts.val, opts.seed);
            (t, Arc::clone(&train), v)
        }
    };
    if let Some(k) = opts.limit {
        if k == 0 {
            return Err(Error::Config(
                "--limit 0 selects no images; pass a positive limit or leave it out".into(),
            ));
        }
        crate::rng::Rng::derive(opts.seed, 0x004C_494D_4954).shuffle(&mut train_idx);
        train_idx.truncate(k);
        train_idx.sort_unstable();
    }
    let st = &meta.stats;
    Ok(TrainData {
        classes: meta.classes.clone(),
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

fn progress_bar(len: usize, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

/// Train `topo` on `backend` with `opts`.
pub fn train<B: Backend>(backend: &B, topo: &Topology, opts: &TrainOptions) -> Result<TrainReport> {
    topo.validate()?;
    if opts.batch == 0 {
        return Err(Error::Config("--batch must be at least 1".into()));
    }
    if !(opts.lr > 0.0 && opts.lr.is_finite()) {
        return Err(Error::Config(format!(
            "--lr must be a positive number, not {}",
            opts.lr
        )));
    }
    let data = load_data(opts, topo.image_size)?;
    let n_classes = data.classes.len();
    let resized;
    let topo = if n_classes != topo.classes {
        info!(
            "{} has {n_classes} classes: the last layer gets {n_classes} outputs (config {} has {})",
            opts.data.display(),
            topo.name,
            topo.classes
        );
        resized = topo.clone().with_classes(n_classes)?;
        &resized
    } else {
        topo
    };
    let TrainData {
        train: set,
        train_idx,
        val: val_set,
        val_idx,
        mean,
        std,
        mean_image,
        cov,
        classes,
    } = data;
    if let Some(c) = opts.crop {
        if c == 0 || c > topo.crop {
            return Err(Error::Config(format!(
                "--crop {c}: config {} takes {}x{} inputs; pass a crop from 1 to {} (smaller crops are zero-padded; the paper's is 224)",
                topo.name, topo.crop, topo.crop, topo.crop
            )));
        }
    }
    let cut = opts.crop.unwrap_or(topo.crop);
    if cut > set.size() {
        return Err(Error::Config(format!(
            "{}: images are stored at {}x{}, smaller than the {cut}x{cut} crops of config {}; prepare the data with --size {} or pick a config for small images (--config cifar)",
            opts.data.display(),
            set.size(),
            set.size(),
            topo.name,
            topo.image_size
        )));
    }
    if train_idx.len() < opts.batch {
        return Err(Error::Config(format!(
            "--batch {}: only {} training images; use a smaller batch",
            opts.batch,
            train_idx.len()
        )));
    }
    let lighting = match cov {
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
    let loader = LoaderConfig {
        batch: opts.batch,
        crop: opts.crop.unwrap_or(topo.crop),
        pad: topo.crop - opts.crop.unwrap_or(topo.crop).min(topo.crop),
        train: true,
        mean,
        // The paper subtracts the mean image; configs that also divide by
        // the std use per-channel statistics.
        mean_image: match topo.normalize {
            Normalize::Mean => mean_image,
            Normalize::MeanStd => None,
        },
        ten_crop: false,
        std: match topo.normalize {
            Normalize::Mean => None,
            Normalize::MeanStd => Some(std),
        },
        seed: opts.seed,
        workers: opts.workers,
        drop_last: true,
        lighting,
    };
    let eval_cfg = LoaderConfig {
        train: false,
        drop_last: false,
        ..loader.clone()
    };
    info!(
        "data: {} train / {} val images, {} classes, {}x{} stored, {}x{} crops; channel mean {:.1?}",
        train_idx.len(),
        val_idx.len(),
        classes.len(),
        set.size(),
        set.size(),
        topo.crop,
        topo.crop,
        mean
    );

    let mut net = Network::new(backend, topo, opts.batch, opts.seed)?;
    info!(
        "training {} ({} parameters) on {}: batch {}, lr {}, {} epochs",
        topo.name,
        thousands(topo.param_count()? as u64),
        backend.name(),
        opts.batch,
        opts.lr,
        opts.epochs
    );
    let mut csv = match &opts.metrics_csv {
        Some(path) => {
            let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
            writeln!(
                f,
                "epoch,lr,train_loss,train_top1,val_loss,val_top1,val_top5,images_per_s,elapsed_s"
            )
            .map_err(|e| Error::io(path, e))?;
            Some((path.clone(), f))
        }
        None => None,
    };

    let start = Instant::now();
    let mut lr = opts.lr;
    let mut best_err = f64::INFINITY;
    let mut since_best = 0usize;
    let mut drops = 0usize;
    let mut report = TrainReport {
        epochs: Vec::new(),
        classes,
    };
    for epoch in 1..=opts.epochs {
        if let Schedule::Milestones(m) = &opts.schedule {
            if m.contains(&epoch) {
                lr /= 10.0;
                info!("epoch {epoch}: learning rate milestone, lr now {lr:.1e}");
            }
        }
        let hp = SgdParams {
            lr,
            momentum: opts.momentum,
            weight_decay: opts.weight_decay,
        };
        let epoch_start = Instant::now();
        let mut iter = batches(Arc::clone(&set), &train_idx, &loader, epoch as u64)?;
        let pb = progress_bar(iter.num_batches(), opts.progress);
        pb.set_prefix(format!("epoch {epoch}/{}", opts.epochs));
        let (mut loss_sum, mut hits, mut seen) = (0.0f64, 0usize, 0usize);
        let mut compute = Duration::ZERO;
        while let Some(b) = iter.next() {
            let b = b?;
            let t0 = Instant::now();
            let loss = net.forward(&b.x, &b.labels, Mode::Train)?;
            if !loss.is_finite() {
                return Err(Error::Backend(format!(
                    "epoch {epoch}, step {}: the loss is {loss}; lower --lr (now {lr})",
                    net.steps()
                )));
            }
            let (t1, _) = topk_hits(&net.probs()?, &b.labels, topo.classes);
            net.backward()?;
            net.sgd_step(&hp)?;
            compute += t0.elapsed();
            loss_sum += loss as f64 * b.n as f64;
            hits += t1;
            seen += b.n;
            iter.recycle(b);
            pb.inc(1);
            pb.set_message(format!(
                "loss {:.3} top1 {:.1}% {:.0} img/s",
                loss_sum / seen as f64,
                100.0 * hits as f64 / seen as f64,
                seen as f64 / epoch_start.elapsed().as_secs_f64()
            ));
        }
        pb.finish_and_clear();
        let train_secs = epoch_start.elapsed().as_secs_f64();
        let (val_loss, val_top1, val_top5) = evaluate(&mut net, &val_set, &val_idx, &eval_cfg)?;
        let stats = EpochStats {
            epoch,
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_top1: hits as f64 / seen.max(1) as f64,
            val_loss,
            val_top1,
            val_top5,
            images_per_s: seen as f64 / train_secs,
            elapsed_s: start.elapsed().as_secs_f64(),
        };
        info!(
            "epoch {}/{} lr {:.0e}: train loss {:.3} top1 {:.1}% | val loss {:.3} top1 {:.1}% top5 {:.1}% | {:.0} img/s ({:.0} compute) | {:.0}s",
            epoch,
            opts.epochs,
            lr,
            stats.train_loss,
            100.0 * stats.train_top1,
            val_loss,
            100.0 * val_top1,
            100.0 * val_top5,
            stats.images_per_s,
            seen as f64 / compute.as_secs_f64().max(1e-9),
            stats.elapsed_s
        );
        if let Some((path, f)) = &mut csv {
            writeln!(
                f,
                "{},{:.3e},{:.5},{:.5},{:.5},{:.5},{:.5},{:.1},{:.1}",
                epoch,
                lr,
                stats.train_loss,
                stats.train_top1,
                val_loss,
                val_top1,
                val_top5,
                stats.images_per_s,
                stats.elapsed_s
            )
            .and_then(|_| f.flush())
            .map_err(|e| Error::io(&*path, e))?;
        }
        report.epochs.push(stats);

        if let Schedule::Plateau {
            patience,
            max_drops,
        } = opts.schedule
        {
            let err = 1.0 - val_top1;
            if err < best_err {
                best_err = err;
                since_best = 0;
            } else {
                since_best += 1;
                if since_best >= patience && drops < max_drops {
                    lr /= 10.0;
                    drops += 1;
                    since_best = 0;
                    info!("validation error has not improved for {patience} epochs: lr now {lr:.1e} (drop {drops} of {max_drops})");
                }
            }
        }
        if let Some(limit) = opts.time_limit {
            let per_epoch = start.elapsed().as_secs_f64() / epoch as f64;
            if epoch < opts.epochs
                && start.elapsed().as_secs_f64() + per_epoch > limit.as_secs_f64()
            {
                info!("stopping after epoch {epoch}: the next epoch would pass the time limit of {:.0}s", limit.as_secs_f64());
                break;
            }
        }
    }
    Ok(report)
}
