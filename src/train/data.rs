//! A run's images: a store written by `prepare` or a class-folder tree
//! decoded into memory, split into training and validation images, with
//! the statistics the loader normalises with; and the loader settings
//! that turn them into batches (the paper's crops, flips and PCA lighting,
//! section 4.1).
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::info;

use crate::checkpoint::Checkpoint;
use crate::data::duplicates::{self, pixel_hash, warn_in_folder};
use crate::data::packed::{is_store, refuse_unfinished_store, PackedStore, StoreMeta, Unfit};
use crate::data::store::{draw_by_class, limited, LIMIT_STREAM};
use crate::data::{
    folder_digest, held_out_files, limit_covers_classes, limited_len, store_digest,
    warn_of_a_limit_above, workers_for, BuildOptions, HostAlloc, ImageFolder, ImageSet,
    ImageSource, Lighting, LoaderConfig, Pca,
};
use crate::error::{Error, Result};
use crate::memory::Room;
use crate::model::topology::{Normalize, Topology};
use crate::shell;

use super::options::TrainOptions;

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
    /// How a store keeps the training images (`StoreMeta::stored`).
    pub stored: Option<String>,
    /// Whether `--limit` left training images out (it bounds their count,
    /// not the data).
    pub limit_cut: bool,
    /// `names_digest` of the validation images, kept so `eval --held-out`
    /// finds the same ones and a resume validates on them
    /// (`setup::check_resume`); None for a store without a source list.
    pub val_digest: Option<u32>,
}

/// Open `opts.data`: a store written by `prepare` (its root with `train/`
/// and optionally `val/`, or one store folder), or a raw class-folder tree,
/// decoded into memory (slow to start and bounded by `max_memory`).
pub fn load_data(opts: &TrainOptions, image_size: usize) -> Result<TrainData> {
    let root = &opts.data;
    let mut data = if is_store(root) {
        load_store(opts, root, None)
    } else if is_store(&root.join("train")) {
        // Not passed over for a held-out split: a prepare to run again.
        let v = root.join("val");
        refuse_unfinished_store(&v)?;
        let train = root.join("train");
        match is_store(&v) {
            true => load_store(opts, &train, Some(v)),
            false => {
                refuse_unread_val(opts, &train, &v)?;
                load_store(opts, &train, None)
            }
        }
    } else {
        load_folder(opts, image_size)
    }?;
    data.std = usable_std(data.std, root);
    Ok(data)
}

/// A class whose images `--val` (or `--limit`'s draw after it) took every
/// one of is never trained, its output only ever pushed down, and its
/// validation error is counted all the same: said. Not refused, as
/// `--limit` below the class count is: the draw decides it, and a short
/// run on a few images (a smoke test) may not mind.
pub fn warn_of_untrained_classes(opts: &TrainOptions, data: &TrainData) {
    let mut count = vec![0usize; data.classes.len()];
    for &i in &data.train_idx {
        if let Some(c) = count.get_mut(data.train.label(i) as usize) {
            *c += 1;
        }
    }
    let empty: Vec<&str> = (data.classes.iter().zip(&count))
        .filter(|&(_, &c)| c == 0)
        .map(|(name, _)| name.as_str())
        .collect();
    let Some(first) = empty.first() else {
        return;
    };
    let (more, them, their) = match empty.len() {
        1 => (String::new(), "it", "its"),
        n => (format!(" and {} more", n - 1), "them", "their"),
    };
    let (limit, raise) = match opts.run.limit {
        Some(k) if data.limit_cut => (format!(" and --limit {k}"), ", raise --limit"),
        _ => (String::new(), ""),
    };
    tracing::warn!(
        "no training image is left in class {first}{more} after --val {}{limit}: the network never learns {them}, and {their} validation images count as errors; hold out fewer images{raise}, or add images to {them}",
        opts.run.val
    );
}

/// A `val/` beside a training store that holds files but is no store (raw
/// images, say): the run would validate on images held out of the training
/// store and never read it. Refused, unless `--val` asks for that split.
fn refuse_unread_val(opts: &TrainOptions, train: &Path, v: &Path) -> Result<()> {
    let visible = |e: std::fs::DirEntry| !e.file_name().to_string_lossy().starts_with('.');
    let holds_files = std::fs::read_dir(v).is_ok_and(|mut d| d.any(|e| e.is_ok_and(visible)));
    if !holds_files {
        return Ok(());
    }
    if opts.val_given {
        tracing::warn!(
            "{} is not a store, so the run does not read it; validating on the --val {} images held out of {}",
            v.display(),
            opts.run.val,
            train.display()
        );
        return Ok(());
    }
    Err(Error::Data(format!(
        "{} is not a store written by `prepare`, so the run would not read it: it would validate on images held out of {} instead; prepare the training images and it together (`alexnet-cuda prepare --train SRC --val {} --out NEW`, then --data NEW), or pass --val N to validate on N images held out of the training store",
        v.display(),
        train.display(),
        shell::word(v)
    )))
}

/// The channel std to divide by: a channel with no variation in the
/// training images (std 0) is the same value in every pixel, so
/// subtracting its mean already makes it 0; it is divided by 1, not 0.
fn usable_std(std: [f32; 3], data: &Path) -> [f32; 3] {
    let usable = |s: f32| s > 0.0 && s.is_finite();
    let flat: Vec<&str> = ["red", "green", "blue"]
        .into_iter()
        .zip(std)
        .filter(|&(_, s)| !usable(s))
        .map(|(name, _)| name)
        .collect();
    let (names, verb) = match flat.as_slice() {
        [] => return std,
        [one] => (one.to_string(), "channel has"),
        [rest @ .., last] => (format!("{} and {last}", rest.join(", ")), "channels have"),
    };
    let hint = match flat.len() {
        3 => ": every image is one flat colour, so there is nothing to learn; check the data",
        _ => "",
    };
    tracing::warn!(
        "{}: the {names} {verb} the same value in every training pixel; left unscaled{hint}",
        data.display()
    );
    std.map(|s| if usable(s) { s } else { 1.0 })
}

/// What decoding the raw folder `root` costs: `n` of its `total` images
/// (fewer under --limit) decoded into memory on every run. Small sets
/// (CIFAR, the demo) load in seconds; past that, a warning of how to stop
/// paying it.
fn decode_hint(root: &Path, n: usize, total: usize) {
    let which = match n < total {
        true => format!("{n} of its {total} images (--limit)"),
        false => format!("its {n} images"),
    };
    let hint = format!(
        "{} is a raw image folder: {which} are decoded into memory before training; run `alexnet-cuda prepare --train {} --out STORE` once and pass --data STORE to skip this",
        root.display(),
        shell::word(root)
    );
    if n > 60_000 {
        tracing::warn!("{hint}");
    } else {
        info!("{hint}");
    }
}

/// A raw class-folder tree, decoded into memory and split by `--val`.
fn load_folder(opts: &TrainOptions, image_size: usize) -> Result<TrainData> {
    let root = &opts.data;
    let folder = ImageFolder::scan(root)?;
    if let Some(k) = opts.run.limit.filter(|&k| k > 0) {
        limit_covers_classes(k, folder.classes().len(), root)?;
        warn_of_a_limit_above(k, folder.len(), root, "images");
    }
    // Before decoding: the set will hold exactly this many (`balanced_subset`).
    let n = limited_len(folder.len(), opts.run.limit);
    // The limit where it leaves images out.
    let cut = opts.run.limit.filter(|&l| l < folder.len());
    decode_hint(root, n, folder.len());
    let build = BuildOptions {
        size: image_size,
        limit: opts.run.limit,
        max_bytes: opts.max_memory,
        progress: opts.progress,
        stop: opts.stop_alone(),
    };
    let what = match cut {
        Some(l) => format!("the data set cut to --limit {l}"),
        None => "the data set".into(),
    };
    check_held_out(opts, n, &what)?;
    let threads = crate::memory::run_threads(opts.workers.unwrap_or(1));
    let room = crate::memory::room_for(opts.world.local_size, threads);
    refuse_past_room(root, n, image_size, room, opts.resume.is_some())?;
    // A resume on other data is refused before the decode, not after it.
    if let Some(ck) = &opts.resume {
        let st = &ck.state;
        let now = (folder.classes(), n - opts.run.val);
        if let Some(diff) = data_difference((&st.classes, st.train_images), now) {
            return Err(resume_mismatch(ck, root, &diff));
        }
    }
    let set = Arc::new(ImageSet::build(&folder, &build)?);
    let (train_idx, val_idx) = set.split(opts.run.val, opts.run.seed);
    warn_of_copies(&folder, &set, opts.run.limit, [&train_idx, &val_idx]);
    let val_files = held_out_files(&folder, opts.run.limit, opts.run.val, opts.run.seed);
    let val_digest = Some(folder_digest(&folder, &val_files));
    let (mean, std) = set.channel_stats(&train_idx);
    let cov = set.rgb_moments(&train_idx).map(|(_, c)| c);
    let set: Arc<dyn ImageSource> = set;
    Ok(TrainData {
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
        val_digest,
        stored: None,
        limit_cut: cut.is_some(),
    })
}

/// Warn of the decoded images of `folder` (its `limit` subset, as `set`
/// holds them) that repeat another across classes or the held-out split.
fn warn_of_copies(
    folder: &ImageFolder,
    set: &ImageSet,
    limit: Option<usize>,
    split: [&[usize]; 2],
) {
    use rayon::prelude::*;
    let items: Vec<(PathBuf, u32)> = limited(folder, limit)
        .into_iter()
        .map(|i| folder.items()[i].clone())
        .collect();
    let hashes: Vec<u64> = (0..set.len())
        .into_par_iter()
        .map(|i| pixel_hash(set.image(i)))
        .collect();
    warn_in_folder(folder.root(), &items, &hashes, split);
}

/// How the data `now` (classes, training images after any held-out
/// split) differs from `was`, the data a run trained on: the first class
/// that is not the same, the first new or missing one, or the count of
/// images; None when both agree.
pub fn data_difference(was: (&[String], usize), now: (&[String], usize)) -> Option<String> {
    let ((was, n_was), (now, n_now)) = (was, now);
    if let Some(i) = (0..was.len().min(now.len())).find(|&i| was[i] != now[i]) {
        return Some(format!(
            "class {} is {:?} there, and was {:?}",
            i + 1,
            now[i],
            was[i]
        ));
    }
    let (c_was, c_now) = (was.len(), now.len());
    let (what, first) = match c_now.cmp(&c_was) {
        std::cmp::Ordering::Greater => ("new", &now[c_was]),
        std::cmp::Ordering::Less => ("missing", &was[c_now]),
        std::cmp::Ordering::Equal => {
            return (n_now != n_was).then(|| {
                format!("the same classes, but {n_now} training images, and the run had {n_was}: images were added or removed")
            })
        }
    };
    Some(format!(
        "it has {c_now} classes and the run had {c_was} (first {what}: {first:?})"
    ))
}

/// Refuse a folder whose `n` images decoded at `size` would not fit in
/// `room`, the memory free now (this process's share where several of a
/// run share the machine): the buffer is touched as it fills, so past the
/// room the kernel kills the process mid-decode without a word. A resume
/// can take neither a store nor --limit (its data and subset are the run's).
fn refuse_past_room(
    root: &Path,
    n: usize,
    size: usize,
    room: Option<Room>,
    resumed: bool,
) -> Result<()> {
    let bytes = (n as u64).saturating_mul((size * size * 3) as u64);
    let Some(room) = room.filter(|r| bytes > r.bytes) else {
        return Ok(());
    };
    let fix = match resumed {
        true => "free that much memory (other programs), or resume on a machine with more".to_string(),
        false => format!("pack them once with `alexnet-cuda prepare --train {} --out STORE` and pass --data STORE (read from disk as needed), or train on a subset (--limit)", shell::word(root)),
    };
    Err(Error::Data(format!(
        "{}: its {n} images decoded at {size}x{size} take {} in memory, more than the {} {}; {fix}",
        root.display(),
        crate::fsutil::size(bytes),
        crate::fsutil::size(room.bytes),
        room.limit,
    )))
}

/// A resume of `ck`'s run refused: `data` is not the data it trained on.
pub fn resume_mismatch(ck: &Checkpoint, data: &Path, diff: &str) -> Error {
    Error::Config(format!(
        "--resume {}: the run trained on {}, but {} differs: {diff}; {}",
        ck.path.display(),
        ck.state.data,
        data.display(),
        other_data_fix(ck, data)
    ))
}

/// How to go on when `data` is not the run's: pass the run's with --data,
/// or, where it is the run's own folder changed since, put it back; or
/// start a new run from the checkpoint's weights.
pub fn other_data_fix(ck: &Checkpoint, data: &Path) -> String {
    let run = Path::new(&ck.state.data);
    let same = crate::fsutil::same_file(data, run)
        || std::path::absolute(data).is_ok_and(|d| d.components().eq(run.components()));
    let fix = match same {
        true => "the run's data changed since it trained: put its images back as they were",
        false => "pass the run's data with --data",
    };
    format!(
        "{fix}, or start a new run from the checkpoint's weights with --init-from {}",
        shell::word(&ck.path)
    )
}

/// `--val` images held out of `n`: at least one to validate on (the
/// schedule and `best.safetensors` follow validation error), and fewer than
/// `n`. The fix names a tenth of the set.
fn check_held_out(opts: &TrainOptions, n: usize, what: &str) -> Result<()> {
    let val = opts.run.val;
    if n < 2 {
        return Err(Error::Config(format!(
            "{what} has {n} image{}: too few to train on some and validate on others (at least 2, and far more to learn anything)",
            if n == 1 { "" } else { "s" }
        )));
    }
    let fix = format!("e.g. --val {}", (n / 10).max(1));
    if val == 0 {
        return Err(Error::Config(format!(
            "--val 0 holds out no images, and the run validates on them (the learning-rate schedule and best.safetensors follow validation error); hold out some, {fix}"
        )));
    }
    // The demo's held-out count is its own, and --val does not go with it.
    if val >= n && opts.run.demo {
        return Err(Error::Config(format!(
            "{what} has only {n} images, and the demo holds out {val} of them for validation; pass a --limit above {val}"
        )));
    }
    if val >= n {
        let given = if opts.val_given { "" } else { " (the default)" };
        return Err(Error::Config(format!(
            "--val {val}{given}: {what} has only {n} images; hold out fewer, {fix}"
        )));
    }
    Ok(())
}

/// The digest of `store`'s validation images `idx`, which the run's
/// checkpoints keep; None, with a warning of what that costs, when its
/// source list is missing or damaged.
fn val_digest(store: &PackedStore, idx: &[usize]) -> Option<u32> {
    store_digest(store, idx)
        .map_err(|e| {
            tracing::warn!("{e}; the run keeps no digest of its validation images, so a resume and `eval --held-out` cannot tell whether they are the same images (only classes and image counts are compared)")
        })
        .ok()
}

/// A store's training images, validated on `val_dir`'s store or, without
/// one, on `--val` images held out of the training store.
fn load_store(
    opts: &TrainOptions,
    train_dir: &Path,
    val_dir: Option<PathBuf>,
) -> Result<TrainData> {
    let store = Arc::new(PackedStore::open(train_dir)?);
    let meta = store.meta().clone();
    if let Some(k) = opts.run.limit.filter(|&k| k > 0) {
        limit_covers_classes(k, meta.classes.len(), train_dir)?;
    }
    let mean_image = Some(Arc::new(store.mean_image().to_vec()));
    let train: Arc<dyn ImageSource> = Arc::clone(&store) as _;
    let held_out_split = val_dir.is_none();
    let (mut train_idx, val, val_idx, val_digest) = match val_dir {
        Some(v) => {
            let vs = open_val_store(train_dir, &v, &meta)?;
            let all: Vec<usize> = (0..vs.len()).collect();
            let digest = val_digest(&vs, &all);
            ((0..train.len()).collect(), Arc::new(vs) as _, all, digest)
        }
        None => {
            check_held_out(opts, train.len(), &train_dir.display().to_string())?;
            let (t, v) =
                crate::data::store::split_indices(train.len(), opts.run.val, opts.run.seed);
            let digest = val_digest(&store, &v);
            (t, Arc::clone(&train), v, digest)
        }
    };
    let before = train_idx.len();
    limit_train(opts, &mut train_idx, &store)?;
    let limit_cut = train_idx.len() < before;
    if held_out_split {
        let split = [&train_idx[..], &val_idx[..]];
        duplicates::warn_in_store_split(train_dir, || store.sources(), split);
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
        val_digest,
        stored: Some(meta.stored()),
        limit_cut,
    })
}

/// The validation store beside a training store. It must list the same
/// classes in the same order (labels are indices) and hold images of the
/// same size (the loader subtracts the training mean image, and the crops
/// must cover the same share of each image); one left from an earlier
/// `prepare` of the train store is used, with a warning.
fn open_val_store(train_dir: &Path, v: &Path, train: &StoreMeta) -> Result<PackedStore> {
    let vs = PackedStore::open(v)?;
    let meta = vs.meta();
    let again = "prepare them together with `alexnet-cuda prepare --train ... --val ...`";
    match meta.unfit_beside(train) {
        Some(Unfit::Classes) => {
            return Err(Error::Data(format!(
                "{} and {} list different classes; {again}",
                train_dir.display(),
                v.display()
            )))
        }
        Some(Unfit::Size) => {
            return Err(Error::Data(format!(
                "{} holds {}x{} images and {} holds {}x{}; validation crops would cover another share of each image, and the training mean image would not fit; {again}",
                v.display(),
                meta.size,
                meta.size,
                train_dir.display(),
                train.size,
                train.size
            )))
        }
        None => {}
    }
    if meta.left_from_before(train) {
        tracing::warn!(
            "{} was not prepared with {} (it is from an earlier prepare, of {}); validating on it anyway; to be sure of it, {again}",
            v.display(),
            train_dir.display(),
            meta.source
        );
    }
    info!("validating on the {} images of {}", meta.count, v.display());
    Ok(vs)
}

/// `--limit K`: K of the store's training images, each class's share
/// (`draw_by_class`) drawn with the run's seed, kept in store order. Runs
/// from before the draw by class resume with their draw from the whole set.
fn limit_train(opts: &TrainOptions, train_idx: &mut Vec<usize>, store: &PackedStore) -> Result<()> {
    if let Some(k) = opts.run.limit {
        if k == 0 {
            return Err(Error::Config(
                "--limit 0 selects no images; pass a positive limit or leave it out".into(),
            ));
        }
        let what = match train_idx.len() < store.len() {
            true => format!("training images once --val {} are held out", opts.run.val),
            false => "images".into(),
        };
        warn_of_a_limit_above(k, train_idx.len(), &opts.data, &what);
        let seed = opts.run.seed;
        if opts.run.limit_by_class {
            let classes = store.meta().classes.len();
            *train_idx = draw_by_class(train_idx, |i| store.label(i), classes, k, seed);
        } else {
            crate::rng::Rng::derive(seed, LIMIT_STREAM).shuffle(train_idx);
            train_idx.truncate(k);
            train_idx.sort_unstable();
        }
    }
    Ok(())
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
        skip_unreadable: false,
        lighting,
        host_alloc: None,
        pool: Default::default(),
        shard: (0, 1),
    }
}

/// The training loader of this process (its share of each batch, in the
/// backend's pinned memory where it has some) and the validation loader
/// (every image once, centre crops, no noise).
pub fn run_loaders(
    topo: &Topology,
    opts: &TrainOptions,
    data: &TrainData,
    host_alloc: Option<HostAlloc>,
) -> (LoaderConfig, LoaderConfig) {
    let world = &opts.world;
    let mut loader = loader_config(topo, opts, data, lighting(topo, data));
    loader.batch = opts.run.batch / world.size;
    loader.shard = (world.rank, world.size);
    loader.host_alloc = host_alloc;
    // Only a GPU backend has pinned memory: then one core drives the device.
    loader.workers = workers_for(opts.workers, loader.host_alloc.is_some(), world.local_size);
    let eval = loader.validation();
    (loader, eval)
}

/// PCA lighting (section 4.1) from the training pixels' RGB covariance,
/// when the config asks for it and the data has one.
fn lighting(topo: &Topology, data: &TrainData) -> Option<Lighting> {
    match data.cov {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder whose decoded pixels pass the memory free is refused before
    /// the decode, naming the size, the room and `prepare` (for a resume,
    /// more memory); one that fits, or a system that does not say, goes on.
    #[test]
    fn a_folder_past_the_free_memory_is_refused_before_the_decode() {
        let root = Path::new("photos");
        let room = |bytes| {
            Some(Room {
                bytes,
                limit: "free".into(),
            })
        };
        // 10 images of 256x256x3 = 1,966,080 bytes.
        assert!(refuse_past_room(root, 10, 256, room(1_966_080), false).is_ok());
        assert!(refuse_past_room(root, 10, 256, None, false).is_ok());
        let e = refuse_past_room(root, 10, 256, room(1_966_079), false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("photos: its 10 images decoded at 256x256 take 2.0 MB"),
            "{e}"
        );
        assert!(e.contains("more than the 2.0 MB free"), "{e}");
        assert!(e.contains("prepare --train photos --out STORE"), "{e}");
        // A resume, whose data and subset are the run's: neither offered.
        let e = refuse_past_room(root, 10, 256, room(1_966_079), true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("resume on a machine with more"), "{e}");
        assert!(!e.contains("--limit") && !e.contains("prepare"), "{e}");
    }
}
