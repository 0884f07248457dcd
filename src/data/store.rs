//! The in-memory image store: every image decoded once into one contiguous
//! `N x size x size x 3` (HWC, u8) buffer, with labels and class names; plus
//! the seeded train/val split and the channel statistics for normalising.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;

use super::decode::{decode_into, unread_error};
use super::folder::ImageFolder;
use super::packed::PackedStore;
use crate::error::{Error, Result};
use crate::rng::Rng;

/// Stream tag for the hold-out split, so it never shares draws with the
/// shuffles and crops derived from the same run seed.
const SPLIT_STREAM: u64 = 0x0053_504C_4954; // "SPLIT"
/// The random stream of `--limit`'s draw from a store ("LIMIT").
pub const LIMIT_STREAM: u64 = 0x004C_494D_4954;

/// How to build an [`ImageSet`] from an [`ImageFolder`].
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Side of the stored square images (the paper: 256).
    pub size: usize,
    /// Use only this many images, taken round-robin across classes (file
    /// order within a class), for quick runs and CI. `None` = all.
    pub limit: Option<usize>,
    /// Refuse to build when the pixel buffer would exceed this many bytes.
    pub max_bytes: u64,
    /// Show a progress bar (indicatif hides it when stderr is not a terminal).
    pub progress: bool,
    /// Set by a signal: the images not yet begun are left, and the build
    /// ends in `Error::Stopped` (a decode of a large folder takes minutes).
    pub stop: Option<Arc<AtomicBool>>,
}

impl BuildOptions {
    pub fn new(size: usize) -> Self {
        BuildOptions {
            size,
            limit: None,
            max_bytes: 16 << 30,
            progress: true,
            stop: None,
        }
    }
}

/// Decoded images, labels and class names.
#[derive(Clone, Debug)]
pub struct ImageSet {
    size: usize,
    pixels: Vec<u8>,
    labels: Vec<u32>,
    classes: Vec<String>,
}

impl ImageSet {
    /// Decode the folder's images (or the `limit` subset) in parallel. The
    /// first unreadable file aborts the build with its `Error::Image`.
    pub fn build(folder: &ImageFolder, opts: &BuildOptions) -> Result<ImageSet> {
        let size = opts.size;
        if size == 0 {
            return Err(Error::Config(
                "image size 0: images must be stored at a positive size (the paper uses 256)"
                    .into(),
            ));
        }
        if opts.limit == Some(0) {
            return Err(Error::Config(
                "--limit 0 selects no images; pass a positive limit or leave it out".into(),
            ));
        }
        let chosen = limited(folder, opts.limit);
        let n = chosen.len();
        let per_image = size * size * 3;
        let bytes = n as u64 * per_image as u64;
        if bytes > opts.max_bytes {
            return Err(Error::Data(format!(
                "{}: {n} images at {size}x{size} would need {:.1} GiB in memory (budget {:.1} GiB); train on a subset (--limit), or pack the images once with `alexnet-cuda prepare` and train from the store",
                folder.root().display(),
                bytes as f64 / (1u64 << 30) as f64,
                opts.max_bytes as f64 / (1u64 << 30) as f64,
            )));
        }
        let mut pixels = Vec::new();
        pixels.try_reserve_exact(bytes as usize).map_err(|_| {
            Error::Data(format!(
                "{}: could not allocate {:.1} GiB for {n} images; train on a subset (--limit), or pack the images once with `alexnet-cuda prepare` and train from the store",
                folder.root().display(),
                bytes as f64 / (1u64 << 30) as f64
            ))
        })?;
        pixels.resize(bytes as usize, 0);

        let bar = crate::progress::bar(n, "decoding", opts.progress);
        let start = Instant::now();
        let items = folder.items();
        let stopped = || {
            opts.stop
                .as_ref()
                .is_some_and(|s| s.load(Ordering::Relaxed))
        };
        // Every image is tried, so one error lists all the bad files.
        let mut failed: Vec<(usize, Error)> = pixels
            .par_chunks_mut(per_image)
            .zip(chosen.par_iter())
            .filter_map(|(out, &i)| {
                if stopped() {
                    return None;
                }
                let r = decode_into(&items[i].0, size, out);
                bar.inc(1);
                r.err().map(|e| (i, e))
            })
            .collect();
        bar.finish_and_clear();
        if stopped() {
            return Err(Error::Stopped(format!(
                "stopped at a signal while the images of {} were decoded, before any step: nothing was trained",
                folder.root().display()
            )));
        }
        failed.sort_by_key(|(i, _)| *i);
        if let Some(e) = unreadable(folder, n, failed) {
            return Err(e);
        }
        let secs = start.elapsed().as_secs_f64();
        let labels: Vec<u32> = chosen.iter().map(|&i| items[i].1).collect();
        tracing::info!(
            images = n,
            classes = folder.classes().len(),
            mb = bytes as f64 / 1e6,
            seconds = secs,
            "decoded {n} images of {} classes at {size}x{size} ({:.0} MB) in {secs:.1} s",
            folder.classes().len(),
            bytes as f64 / 1e6,
        );
        Ok(ImageSet {
            size,
            pixels,
            labels,
            classes: folder.classes().to_vec(),
        })
    }

    /// An image set from raw HWC pixels (tests, synthetic data, other stores).
    pub fn from_parts(
        size: usize,
        pixels: Vec<u8>,
        labels: Vec<u32>,
        classes: Vec<String>,
    ) -> Result<ImageSet> {
        let per_image = size * size * 3;
        if size == 0 || pixels.len() != labels.len() * per_image {
            return Err(Error::Data(format!(
                "image set: {} pixel bytes for {} labels at {size}x{size}x3 (want {})",
                pixels.len(),
                labels.len(),
                labels.len() * per_image
            )));
        }
        if let Some(&bad) = labels.iter().find(|&&l| l as usize >= classes.len()) {
            return Err(Error::Data(format!(
                "image set: label {bad} but only {} classes",
                classes.len()
            )));
        }
        Ok(ImageSet {
            size,
            pixels,
            labels,
            classes,
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Side of every stored image.
    pub fn size(&self) -> usize {
        self.size
    }

    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// All pixels, `len() x size x size x 3`, HWC.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// Image `i`, `size x size x 3` HWC. Panics if `i >= len()`.
    pub fn image(&self, i: usize) -> &[u8] {
        let per = self.size * self.size * 3;
        &self.pixels[i * per..(i + 1) * per]
    }

    /// A seeded random hold-out split of `0..len()`: see [`split_indices`].
    pub fn split(&self, n_val: usize, seed: u64) -> (Vec<usize>, Vec<usize>) {
        split_indices(self.len(), n_val, seed)
    }

    /// Per-channel (R, G, B) mean and standard deviation, in pixel units
    /// (0..255), over the images `indices` (pass the training indices so
    /// validation data does not leak into the normalisation). Empty `indices`
    /// gives mean 0, std 1. Panics on an index `>= len()`.
    pub fn channel_stats(&self, indices: &[usize]) -> ([f32; 3], [f32; 3]) {
        let Some((mean, cov)) = self.rgb_moments(indices) else {
            return ([0.0; 3], [1.0; 3]);
        };
        let mut m = [0f32; 3];
        let mut std = [0f32; 3];
        for c in 0..3 {
            m[c] = mean[c] as f32;
            std[c] = cov[c][c].max(0.0).sqrt() as f32;
        }
        (m, std)
    }

    /// Mean RGB and the 3x3 covariance of RGB pixel values over `indices`
    /// (pixel units), or None for no pixels. The PCA lighting noise of
    /// section 4.1 uses the covariance's eigenvectors.
    pub fn rgb_moments(&self, indices: &[usize]) -> Option<([f64; 3], [[f64; 3]; 3])> {
        let sums = indices
            .par_iter()
            .map(|&i| {
                let mut s = RgbSums::default();
                s.add(self.image(i));
                s
            })
            .reduce(RgbSums::default, RgbSums::merge);
        sums.moments()
    }
}

/// Sums of R, G, B and of their pairwise products over pixels. Integers are
/// exact and order-independent, so statistics built from them do not depend
/// on how the work was split between threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RgbSums {
    pub pixels: u64,
    pub sum: [u64; 3],
    /// Upper triangle (`c <= d`) of sum of `p[c] * p[d]`.
    pub sq: [[u64; 3]; 3],
}

impl RgbSums {
    /// Add the pixels of an HWC RGB image.
    pub fn add(&mut self, hwc: &[u8]) {
        for px in hwc.chunks_exact(3) {
            for c in 0..3 {
                self.sum[c] += px[c] as u64;
                for d in c..3 {
                    self.sq[c][d] += px[c] as u64 * px[d] as u64;
                }
            }
        }
        self.pixels += (hwc.len() / 3) as u64;
    }

    pub fn merge(mut self, o: RgbSums) -> RgbSums {
        self.pixels += o.pixels;
        for c in 0..3 {
            self.sum[c] += o.sum[c];
            for d in 0..3 {
                self.sq[c][d] += o.sq[c][d];
            }
        }
        self
    }

    /// Mean RGB and the 3x3 covariance, or None for no pixels.
    pub fn moments(&self) -> Option<([f64; 3], [[f64; 3]; 3])> {
        if self.pixels == 0 {
            return None;
        }
        let n = self.pixels as f64;
        let mean = self.sum.map(|v| v as f64 / n);
        let mut cov = [[0f64; 3]; 3];
        for c in 0..3 {
            for d in c..3 {
                cov[c][d] = self.sq[c][d] as f64 / n - mean[c] * mean[d];
                cov[d][c] = cov[c][d];
            }
        }
        Some((mean, cov))
    }
}

/// A seeded random hold-out split of `0..n`: `(train, val)`, each sorted,
/// `val` holding `min(n_val, n)` indices.
pub fn split_indices(n: usize, n_val: usize, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..n).collect();
    Rng::derive(seed, SPLIT_STREAM).shuffle(&mut order);
    let n_val = n_val.min(n);
    let mut val = order[..n_val].to_vec();
    let mut train = order[n_val..].to_vec();
    val.sort_unstable();
    train.sort_unstable();
    (train, val)
}

/// How many of `len` images a `--limit` keeps: `limited`'s count, and a
/// store's training images after its split.
pub fn limited_len(len: usize, limit: Option<usize>) -> usize {
    limit.map_or(len, |k| k.min(len))
}

/// `--limit k` below the number of `classes` leaves some without a single
/// image, whatever the draw: refused (by `prepare` and `train` alike),
/// naming the limit that covers them.
pub fn limit_covers_classes(k: usize, classes: usize, data: &std::path::Path) -> Result<()> {
    if k < classes {
        return Err(Error::Config(format!(
            "--limit {k}: fewer images than the {classes} classes of {}, so some classes would have none; pass --limit {classes} or more",
            data.display()
        )));
    }
    Ok(())
}

/// `--limit k` above the `n` images there are (`what`: "images", or what
/// is left of them to train on) takes them all: said, since a typo would
/// otherwise pass unseen.
pub fn warn_of_a_limit_above(k: usize, n: usize, data: &std::path::Path, what: &str) {
    if k > n {
        tracing::warn!(
            "--limit {k}: {} has only {n} {what}; all of them are used",
            data.display()
        );
    }
}

/// Indices into `folder.items()` of the images a run with `--limit`
/// decodes: the balanced subset of `limit`, or every image.
pub fn limited(folder: &ImageFolder, limit: Option<usize>) -> Vec<usize> {
    match limit {
        Some(k) => balanced_subset(folder, k),
        None => (0..folder.len()).collect(),
    }
}

/// Indices into `folder.items()` of the `n_val` images a run on the folder
/// held out: the split (`split_indices`) of `limited`'s subset, as
/// `ImageSet::build` and `ImageSet::split` make them.
pub fn held_out_files(
    folder: &ImageFolder,
    limit: Option<usize>,
    n_val: usize,
    seed: u64,
) -> Vec<usize> {
    let chosen = limited(folder, limit);
    let (_, val) = split_indices(chosen.len(), n_val, seed);
    val.into_iter().map(|i| chosen[i]).collect()
}

/// `names_digest` of `folder`'s images `idx` by their paths relative to
/// the folder (as `prepare` writes a store's source lines) and labels.
pub fn folder_digest(folder: &ImageFolder, idx: &[usize]) -> u32 {
    let items = folder.items();
    names_digest(idx.iter().map(|&i| {
        let (path, label) = &items[i];
        let rel = path.strip_prefix(folder.root()).unwrap_or(path);
        (rel.to_string_lossy(), *label)
    }))
}

/// CRC-32 of images' names and labels in order, a `name TAB label LF` line
/// each: how a checkpoint recognises the images it validated on again
/// (`held_out.rs`). An image added, removed, renamed or relabelled that
/// moves the split changes it.
pub fn names_digest<S: AsRef<str>>(names: impl IntoIterator<Item = (S, u32)>) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for (name, label) in names {
        h.update(name.as_ref().as_bytes());
        h.update(format!("\t{label}\n").as_bytes());
    }
    h.finalize()
}

/// `names_digest` of a store's images `idx` by their source lines and
/// labels; an error when the store's source list is missing or short.
pub fn store_digest(store: &PackedStore, idx: &[usize]) -> Result<u32> {
    let names = store.sources()?;
    let entries = store.entries();
    Ok(names_digest(
        idx.iter().map(|&i| (&names[i], entries[i].label)),
    ))
}

/// Indices into `folder.items()` of a class-balanced subset of `k` images:
/// round-robin over the classes, each class in file order, sorted.
pub fn balanced_subset(folder: &ImageFolder, k: usize) -> Vec<usize> {
    let items = folder.items();
    // Items are grouped by class: find each class's [start, end).
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for (i, (_, label)) in items.iter().enumerate() {
        match ranges.last_mut() {
            Some(r) if items[r.0].1 == *label => r.1 = i + 1,
            _ => ranges.push((i, i + 1)),
        }
    }
    let by_class: Vec<Vec<usize>> = ranges.into_iter().map(|(s, e)| (s..e).collect()).collect();
    round_robin(&by_class, k)
}

/// Rounds of one image per class (each class's images in the order
/// given) until `k` are taken, or all are: sorted, as the set holds them.
fn round_robin(by_class: &[Vec<usize>], k: usize) -> Vec<usize> {
    let k = k.min(by_class.iter().map(Vec::len).sum());
    let mut chosen = Vec::with_capacity(k);
    let mut round = 0;
    while chosen.len() < k {
        for c in by_class {
            if chosen.len() == k {
                break;
            }
            if let Some(&i) = c.get(round) {
                chosen.push(i);
            }
        }
        round += 1;
    }
    chosen.sort_unstable();
    chosen
}

/// `k` of the images `idx` (labels `label(i)` below `classes`), the same
/// number from each class where each has enough: rounds of one image per
/// class, each class's images in a seeded random order, until `k` are
/// taken. Sorted, as the store holds them. A draw from the whole set
/// would leave about C(1 - 1/C)^k of C classes out (135 of 1000 at
/// k = 2000).
pub fn draw_by_class(
    idx: &[usize],
    label: impl Fn(usize) -> u32,
    classes: usize,
    k: usize,
    seed: u64,
) -> Vec<usize> {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for &i in idx {
        if let Some(c) = by_class.get_mut(label(i) as usize) {
            c.push(i);
        }
    }
    let mut rng = Rng::derive(seed, LIMIT_STREAM);
    for c in &mut by_class {
        rng.shuffle(c);
    }
    round_robin(&by_class, k)
}

/// The error for images that could not be decoded (`unread_error`), with
/// the folder named and, for several, `prepare`'s way around them.
fn unreadable(folder: &ImageFolder, n: usize, failed: Vec<(usize, Error)>) -> Option<Error> {
    if failed.is_empty() {
        return None;
    }
    let errors: Vec<Error> = failed.into_iter().map(|(_, e)| e).collect();
    // prepare skips images that do not decode, not files it cannot read.
    let several = errors.len() > 1 && errors.iter().all(|e| matches!(e, Error::Image { .. }));
    Some(match unread_error(errors, n) {
        Error::Data(m) if several => Error::Data(format!(
            "{}: {m}, or pack the folder with `alexnet-cuda prepare`, which skips unreadable images and lists them",
            folder.root().display()
        )),
        e => e,
    })
}
