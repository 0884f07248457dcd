//! The training/eval loader: shuffles an epoch's indices, cuts batches, and
//! decodes, crops, flips, lights and normalises them into NCHW f32, on the
//! worker threads of a feed (`data::feed`, which also has `batches`, the
//! loader of one pass), delivered in order. Every random choice is a
//! function of (seed, epoch, position), so batch k of an epoch is the same
//! whatever the number of workers. Batch buffers are recycled through the
//! config's pool, across epochs too, and each worker decodes into one
//! scratch image, so this code allocates nothing per image (the JPEG
//! decoder, made anew for each image, allocates its own working buffers).
use std::sync::Arc;

use multiversion::multiversion;

use super::decode::decode_jpeg_rgb_into;
use super::hostmem::{HostAlloc, HostBuf};
use super::lighting::Pca;
use super::packed::{Encoding, PackedStore};
use super::pool::Pool;
use super::store::ImageSet;
use crate::error::{Error, Result};
use crate::rng::{hash_u64, Rng};

/// Stream tag for per-image augmentation draws (distinct from the shuffle).
const AUG_STREAM: u64 = 0x4155_474D; // "AUGM"
/// Batches each worker may have ready ahead of the consumer (W workers
/// already give W batches of lookahead; each batch is ~80 MB at 128 x 227^2).
pub(super) const PREFETCH_PER_WORKER: usize = 1;

/// Where the loader's images come from: the in-memory [`ImageSet`] or the
/// memory-mapped [`PackedStore`]. Images are `size x size x 3` HWC RGB.
pub trait ImageSource: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Side of every image.
    fn size(&self) -> usize;
    fn label(&self, i: usize) -> u32;
    fn classes(&self) -> &[String];
    /// The pixels of image `i`, decoding into `scratch` when the source
    /// stores them encoded (the caller keeps `scratch` between calls).
    fn pixels<'a>(&'a self, i: usize, scratch: &'a mut Vec<u8>) -> Result<&'a [u8]>;
}

impl ImageSource for ImageSet {
    fn len(&self) -> usize {
        ImageSet::len(self)
    }
    fn size(&self) -> usize {
        ImageSet::size(self)
    }
    fn label(&self, i: usize) -> u32 {
        self.labels()[i]
    }
    fn classes(&self) -> &[String] {
        ImageSet::classes(self)
    }
    fn pixels<'a>(&'a self, i: usize, _scratch: &'a mut Vec<u8>) -> Result<&'a [u8]> {
        Ok(self.image(i))
    }
}

impl ImageSource for PackedStore {
    fn len(&self) -> usize {
        self.entries().len()
    }
    fn size(&self) -> usize {
        self.meta().size
    }
    fn label(&self, i: usize) -> u32 {
        self.entries()[i].label
    }
    fn classes(&self) -> &[String] {
        &self.meta().classes
    }
    fn pixels<'a>(&'a self, i: usize, scratch: &'a mut Vec<u8>) -> Result<&'a [u8]> {
        let bytes = self.bytes(i)?;
        let size = self.meta().size;
        match self.meta().encoding {
            Encoding::Raw => Ok(bytes),
            Encoding::Jpeg => {
                scratch.resize(size * size * 3, 0);
                decode_jpeg_rgb_into(bytes, size, scratch)
                    .map_err(|msg| self.entry_error(i, &format!("does not decode ({msg})")))?;
                Ok(scratch)
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct LoaderConfig {
    /// Images per batch.
    pub batch: usize,
    /// Side of the square cut from each image (the paper: 224 of 256).
    pub crop: usize,
    /// Zeros added around the crop (after normalisation, so they read as
    /// the mean): `pad / 2` before and the rest after, on each axis. The
    /// paper's 224 crops need 3 to make the 227 that gives conv1 55x55.
    pub pad: usize,
    /// Training: shuffle, random crop, random horizontal flip. Otherwise the
    /// indices' order, centre crop, no flip.
    pub train: bool,
    /// Per-channel mean subtracted, in pixel units (0..255).
    pub mean: [f32; 3],
    /// The mean image (`size x size x 3` HWC, 0..255), subtracted per pixel
    /// instead of `mean` when given (the paper, section 2).
    pub mean_image: Option<Arc<Vec<f32>>>,
    /// Evaluation with the paper's 10 crops (section 4.1): each image gives
    /// 10 rows, the 4 corners and centre, then the same mirrored.
    pub ten_crop: bool,
    /// `None`: subtract the mean only, as the paper; `Some`: also divide.
    pub std: Option<[f32; 3]>,
    pub seed: u64,
    /// Producer threads; 0 = produce on the consumer's thread in `next()`.
    pub workers: usize,
    /// Skip a last, short batch (training); else yield it with `n < batch`.
    pub drop_last: bool,
    /// An image that cannot be read is left out of its batch and its error
    /// kept in [`Batch::unread`] (evaluation: one bad file of 50,000 should
    /// not cost the other 49,999); else the batch is that error.
    pub skip_unreadable: bool,
    /// PCA lighting noise for training images (section 4.1); None = off.
    pub lighting: Option<Lighting>,
    /// Where batch pixels live: None = ordinary memory; a GPU backend's
    /// pinned allocator lets its uploads copy without staging.
    pub host_alloc: Option<HostAlloc>,
    /// The batches given back (`BatchIter::recycle`), shared by this
    /// config's clones: a run's epochs and validation passes refill the
    /// same buffers instead of allocating (and, on a GPU, pinning) new ones.
    pub pool: Pool<Batch>,
    /// (rank, ranks): this process's share of a multi-process run. Global
    /// batch k is images k*B*ranks .. (k+1)*B*ranks of the epoch's order;
    /// rank r takes its r-th block of `batch`, with the crops and noise
    /// drawn for those positions, so the ranks' batches together are the
    /// one-process batch of B*ranks. (0, 1): the whole epoch.
    pub shard: (usize, usize),
}

impl LoaderConfig {
    /// `batch` images of `crop` crops, training (shuffle, random crops and
    /// flips) or not; no padding, mean 0 and std 1, no lighting, seed 0, no
    /// worker threads, short last batch kept. Set the rest with `..`.
    pub fn new(batch: usize, crop: usize, train: bool) -> LoaderConfig {
        LoaderConfig {
            batch,
            crop,
            pad: 0,
            train,
            mean: [0.0; 3],
            mean_image: None,
            ten_crop: false,
            std: None,
            seed: 0,
            workers: 0,
            drop_last: false,
            skip_unreadable: false,
            lighting: None,
            host_alloc: None,
            pool: Pool::default(),
            shard: (0, 1),
        }
    }

    /// The validation loader of this training config: every image once,
    /// centre crops, no lighting noise, nothing skipped, unsharded; batch,
    /// crop, padding, mean, std, workers, memory and pool shared.
    pub fn validation(&self) -> LoaderConfig {
        LoaderConfig {
            train: false,
            drop_last: false,
            skip_unreadable: false,
            lighting: None,
            shard: (0, 1),
            ..self.clone()
        }
    }
}

/// Loader threads when `--workers` is not given, for a machine of `cores`
/// cores shared by `processes` of a run (LOCAL_WORLD_SIZE; each gets its
/// share): on the CPU, the share the `compute_threads` leave free (None:
/// the compute threads take it all); on a GPU, the share but the core
/// driving the device. At least one.
pub fn default_workers(
    cores: usize,
    processes: usize,
    compute_threads: Option<usize>,
    on_gpu: bool,
) -> usize {
    let share = (cores / processes.max(1)).max(1);
    let busy = if on_gpu {
        1
    } else {
        compute_threads.unwrap_or(share)
    };
    share.saturating_sub(busy).max(1)
}

/// `requested` (`--workers`) when given, else `default_workers` for this
/// machine, its `processes` of the run and the compute pool; logged with
/// the reason.
pub fn workers_for(requested: Option<usize>, on_gpu: bool, processes: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = rayon::current_num_threads();
    let shared = match processes {
        0 | 1 => String::new(),
        p => format!(", shared by {p} processes"),
    };
    let (n, why) = match requested {
        Some(n) => (n, "--workers".to_string()),
        None if on_gpu => (
            default_workers(cores, processes, None, true),
            format!("{cores} cores{shared}, one each drives a GPU"),
        ),
        None => (
            default_workers(cores, processes, Some(threads), false),
            format!("{cores} cores{shared}, {threads} compute threads"),
        ),
    };
    tracing::info!(
        "loader: {n} worker{} ({why})",
        if n == 1 { "" } else { "s" }
    );
    if n > cores {
        tracing::warn!(
            "--workers {n} is more than the {cores} cores: decoding is bound by the cores, so the extra threads hold batches in memory and delay the first one"
        );
    }
    n
}

/// The principal components of the training set's RGB values and the
/// standard deviation of the per-image coefficients (the paper: 0.1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lighting {
    pub pca: Pca,
    pub sigma: f32,
}

/// Stream tag for the lighting coefficients (distinct from crops and shuffle).
const LIGHT_STREAM: u64 = 0x004C_4947_4854; // "LIGHT"

/// The lighting coefficients alpha_i ~ N(0, sigma) of the image at `position`
/// in the epoch's order, drawn from (seed, epoch, position); zero when
/// lighting is off or not training.
pub fn lighting_alpha(cfg: &LoaderConfig, epoch: u64, position: usize) -> [f32; 3] {
    match (&cfg.lighting, cfg.train) {
        (Some(l), true) => {
            let mut r = Rng::derive(hash_u64(cfg.seed ^ LIGHT_STREAM, epoch), position as u64);
            [0; 3].map(|_| (r.normal() * l.sigma as f64) as f32)
        }
        _ => [0.0; 3],
    }
}

/// One batch: `x` is `n * crops x 3 x side x side` (NCHW, side = crop +
/// pad), normalised; with 10 crops, rows `10 i .. 10 i + 10` are image `i`'s.
#[derive(Debug, Default)]
pub struct Batch {
    pub x: HostBuf,
    pub labels: Vec<u32>,
    /// Images in the batch.
    pub n: usize,
    /// Rows per image: 1, or 10 for the paper's test crops.
    pub crops: usize,
    /// The batch's images left out because they could not be read
    /// (`LoaderConfig::skip_unreadable`): their index in the set, and why;
    /// `n` counts only the others.
    pub unread: Vec<(usize, Error)>,
}

/// Where an image is cropped and whether it is mirrored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crop {
    pub x: usize,
    pub y: usize,
    pub flip: bool,
}

/// The crop of the image at `position` in the epoch's order. Training:
/// offsets uniform in `[0, size - crop]` per axis, flip with probability
/// 1/2, drawn from (seed, epoch, position). Eval: centre, no flip.
pub fn crop_for(cfg: &LoaderConfig, size: usize, epoch: u64, position: usize) -> Crop {
    let span = size.saturating_sub(cfg.crop);
    if !cfg.train {
        return Crop {
            x: span / 2,
            y: span / 2,
            flip: false,
        };
    }
    let mut r = Rng::derive(hash_u64(cfg.seed ^ AUG_STREAM, epoch), position as u64);
    let x = r.below(span + 1);
    let y = r.below(span + 1);
    let flip = r.below(2) == 1;
    Crop { x, y, flip }
}

/// The paper's 10 test crops of a `size` image (section 4.1): top-left,
/// top-right, bottom-left, bottom-right, centre, then the same five mirrored.
pub fn ten_crops(size: usize, crop: usize) -> [Crop; 10] {
    let s = size.saturating_sub(crop);
    let at = [(0, 0), (s, 0), (0, s), (s, s), (s / 2, s / 2)];
    std::array::from_fn(|k| Crop {
        x: at[k % 5].0,
        y: at[k % 5].1,
        flip: k >= 5,
    })
}

/// The shuffle's own stream: `Rng::derive(seed, i)` is layer i's initial
/// weights (`model::stage`), so epoch i's order must not be drawn from it.
const SHUFFLE_STREAM: u64 = 0x5348_5546_464C; // "SHUFFL"

/// The order in which an epoch visits `indices`: shuffled with
/// `Rng::derive(seed ^ SHUFFLE_STREAM, epoch)` when training, as given
/// otherwise.
pub fn epoch_order(indices: &[usize], cfg: &LoaderConfig, epoch: u64) -> Vec<usize> {
    let mut order = indices.to_vec();
    if cfg.train {
        Rng::derive(cfg.seed ^ SHUFFLE_STREAM, epoch).shuffle(&mut order);
    }
    order
}

fn validate(set: &dyn ImageSource, indices: &[usize], cfg: &LoaderConfig) -> Result<()> {
    if cfg.batch == 0 {
        return Err(Error::Config(
            "batch size 0: pass a positive --batch".into(),
        ));
    }
    let (rank, ranks) = cfg.shard;
    if ranks == 0 || rank >= ranks || (ranks > 1 && !(cfg.train && cfg.drop_last)) {
        return Err(Error::Config(format!(
            "loader: shard {rank} of {ranks}; shards are for training batches (every rank evaluates the whole validation set)"
        )));
    }
    if cfg.crop == 0 || cfg.crop > set.size() {
        return Err(Error::Config(format!(
            "crop {} does not fit images of {}x{}; pass a crop between 1 and the image size",
            cfg.crop,
            set.size(),
            set.size()
        )));
    }
    if let Some(&i) = indices.iter().find(|&&i| i >= set.len()) {
        return Err(Error::Config(format!(
            "loader: index {i} but the image set has {} images",
            set.len()
        )));
    }
    if let Some(m) = &cfg.mean_image {
        let want = set.size() * set.size() * 3;
        if m.len() != want {
            return Err(Error::Config(format!(
                "loader: mean image of {} values for {}x{} images (want {want})",
                m.len(),
                set.size(),
                set.size()
            )));
        }
    }
    if let Some(s) = cfg.std {
        if s.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(Error::Config(format!(
                "loader: channel std {s:?} must be positive and finite; pass std = None to subtract the mean only"
            )));
        }
    }
    Ok(())
}

/// What every worker needs to build any batch of the epoch.
pub(super) struct Job {
    set: Arc<dyn ImageSource>,
    order: Vec<usize>,
    pub(super) cfg: LoaderConfig,
    epoch: u64,
    inv_std: [f32; 3],
    /// The mean to subtract, already divided by the std, as three
    /// `size x size` planes (CHW), so the inner loop reads it contiguously.
    mean_planes: Vec<f32>,
    /// The same planes mirrored left to right, read by mirrored crops.
    mean_mirrored: Vec<f32>,
}

/// The mean image (or the channel means, broadcast), scaled by `inv_std`,
/// in CHW order.
fn mean_planes(cfg: &LoaderConfig, size: usize, inv_std: [f32; 3]) -> Vec<f32> {
    let plane = size * size;
    let mut out = vec![0f32; 3 * plane];
    for ch in 0..3 {
        let dst = &mut out[ch * plane..(ch + 1) * plane];
        match &cfg.mean_image {
            Some(m) => {
                for (d, px) in dst.iter_mut().zip(m.chunks_exact(3)) {
                    *d = px[ch] * inv_std[ch];
                }
            }
            None => dst.fill(cfg.mean[ch] * inv_std[ch]),
        }
    }
    out
}

/// `planes` (CHW, `size` wide) with every row reversed.
fn mirrored(planes: &[f32], size: usize) -> Vec<f32> {
    let mut out = planes.to_vec();
    for row in out.chunks_exact_mut(size) {
        row.reverse();
    }
    out
}

impl Job {
    /// Epoch `epoch` over `indices` of `set`. Errors when the config does
    /// not fit the set (crop larger than the images, batch 0, an index out
    /// of range, a non-positive std).
    pub(super) fn new(
        set: Arc<dyn ImageSource>,
        indices: &[usize],
        cfg: &LoaderConfig,
        epoch: u64,
    ) -> Result<Job> {
        validate(set.as_ref(), indices, cfg)?;
        let inv_std = match cfg.std {
            Some(s) => [1.0 / s[0], 1.0 / s[1], 1.0 / s[2]],
            None => [1.0; 3],
        };
        let mean = mean_planes(cfg, set.size(), inv_std);
        Ok(Job {
            mean_mirrored: mirrored(&mean, set.size()),
            mean_planes: mean,
            order: epoch_order(indices, cfg, epoch),
            set,
            cfg: cfg.clone(),
            epoch,
            inv_std,
        })
    }

    /// Batches in the epoch: whole ones only when `drop_last` (of the
    /// batch all ranks together take).
    pub(super) fn n_batches(&self) -> usize {
        let cfg = &self.cfg;
        if cfg.drop_last {
            self.order.len() / (cfg.batch * cfg.shard.1)
        } else {
            self.order.len().div_ceil(cfg.batch)
        }
    }

    /// Fill `b` with batch `k`, reusing its allocations; `scratch` holds
    /// one decoded image.
    pub(super) fn fill(&self, k: usize, b: &mut Batch, scratch: &mut Vec<u8>) -> Result<()> {
        let cfg = &self.cfg;
        let (rank, ranks) = cfg.shard;
        let start = (k * ranks + rank) * cfg.batch;
        let end = (start + cfg.batch).min(self.order.len());
        let n = end - start;
        let size = self.set.size();
        let side = cfg.crop + cfg.pad;
        let plane = side * side;
        let tens = ten_crops(size, cfg.crop);
        let crops: &[Crop] = if cfg.ten_crop && !cfg.train {
            &tens
        } else {
            &[]
        };
        let per_image = crops.len().max(1);
        b.crops = per_image;
        b.labels.clear();
        b.unread.clear();
        // Every element kept is written below; resize only changes the length
        // (or, past the capacity, gets memory from the configured allocator).
        b.x.resize(n * per_image * 3 * plane, cfg.host_alloc.as_ref())?;
        for pos in start..end {
            let idx = self.order[pos];
            let img = match self.set.pixels(idx, scratch) {
                Ok(img) => img,
                Err(e) if cfg.skip_unreadable => {
                    b.unread.push((idx, e));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let j = b.labels.len();
            b.labels.push(self.set.label(idx));
            // Lighting adds the same RGB offset to every pixel of the image,
            // so it folds into the mean subtracted.
            let shift = match &cfg.lighting {
                Some(l) if cfg.train => l.pca.offset(lighting_alpha(cfg, self.epoch, pos)),
                _ => [0.0; 3],
            };
            let rows = j * per_image..(j + 1) * per_image;
            for (r, row) in rows.enumerate() {
                let c = match crops.get(r) {
                    Some(c) => *c,
                    None => crop_for(cfg, size, self.epoch, pos),
                };
                let out = &mut b.x[row * 3 * plane..(row + 1) * 3 * plane];
                self.write_crop(img, size, c, shift, out);
            }
        }
        b.n = b.labels.len();
        // Shorter when images were left out: the rows kept, no allocation.
        b.x.resize(b.n * per_image * 3 * plane, None)?;
        Ok(())
    }

    /// One crop of `img` into `out` (3 planes, CHW): out = (pixel - mean +
    /// shift) / std, mirrored when `c.flip` ([`write_rows`]).
    fn write_crop(&self, img: &[u8], size: usize, c: Crop, shift: [f32; 3], out: &mut [f32]) {
        let crop = self.cfg.crop;
        let (side, p0) = (crop + self.cfg.pad, self.cfg.pad / 2);
        if crop > MAX_ROW {
            // Not AlexNet's geometry; kept correct, not fast.
            out.fill(0.0);
            return self.write_crop_slow(img, size, c, shift, out);
        }
        zero_border(out, side, p0, crop);
        let inv = self.inv_std;
        // Mirrored, output column j is source column c.x + crop - 1 - j,
        // whose mean sits at column size - c.x - crop + j of the mirror.
        let (means, mx) = match c.flip {
            true => (&self.mean_mirrored, size - c.x - crop),
            false => (&self.mean_planes, c.x),
        };
        let rows = CropRows {
            img,
            size,
            c,
            crop,
            side,
            p0,
            inv,
            k: [0, 1, 2].map(|ch| shift[ch] * inv[ch]),
            means,
            mx,
        };
        write_rows(&rows, out);
    }

    /// [`Job::write_crop`] for any width, one pixel at a time.
    fn write_crop_slow(&self, img: &[u8], size: usize, c: Crop, shift: [f32; 3], out: &mut [f32]) {
        let crop = self.cfg.crop;
        let side = crop + self.cfg.pad;
        let p0 = self.cfg.pad / 2;
        let plane = side * side;
        for ch in 0..3 {
            let inv = self.inv_std[ch];
            for oy in 0..crop {
                for ox in 0..crop {
                    let sx = c.x + if c.flip { crop - 1 - ox } else { ox };
                    let sy = c.y + oy;
                    let v = img[(sy * size + sx) * 3 + ch] as f32;
                    let m = self.mean_planes[ch * size * size + sy * size + sx];
                    out[ch * plane + (p0 + oy) * side + p0 + ox] = v * inv + shift[ch] * inv - m;
                }
            }
        }
    }
}

/// Zeroes the padding of `out`'s three `side x side` planes: everything
/// outside the `crop x crop` square at (p0, p0), which the crop fills.
fn zero_border(out: &mut [f32], side: usize, p0: usize, crop: usize) {
    if side == crop {
        return;
    }
    for plane in out.chunks_exact_mut(side * side) {
        for (y, row) in plane.chunks_exact_mut(side).enumerate() {
            if y < p0 || y >= p0 + crop {
                row.fill(0.0);
            } else {
                row[..p0].fill(0.0);
                row[p0 + crop..].fill(0.0);
            }
        }
    }
}

/// Widest crop [`write_rows`] takes (its row buffers live on the stack).
const MAX_ROW: usize = 512;

/// One crop's geometry and arithmetic, for [`write_rows`].
struct CropRows<'a> {
    img: &'a [u8],
    size: usize,
    c: Crop,
    crop: usize,
    side: usize,
    p0: usize,
    inv: [f32; 3],
    /// The lighting shift over the std, per channel.
    k: [f32; 3],
    /// Mean planes over the std (mirrored ones for a mirrored crop),
    /// `size` wide, and the column of the crop's first output pixel there.
    means: &'a [f32],
    mx: usize,
}

/// The crop's `crop x crop` square of `out`: each row is split into three
/// f32 channel rows first (read backwards when mirrored), so the arithmetic,
/// t * inv + (k - mean), runs on contiguous slices. Compiled twice, plain
/// and with AVX2 (picked at run time; the loader's busiest loop after JPEG
/// decoding). No FMA, so both give the same bits.
#[multiversion(targets("x86_64+avx2"))]
fn write_rows(r: &CropRows, out: &mut [f32]) {
    let (size, crop, side) = (r.size, r.crop, r.side);
    let plane = side * side;
    let mut rgb = [[0f32; MAX_ROW]; 3];
    for oy in 0..crop {
        let at = ((r.c.y + oy) * size + r.c.x) * 3;
        split_row(&r.img[at..at + crop * 3], r.c.flip, &mut rgb);
        for (ch, t) in rgb.iter().enumerate() {
            let m0 = ch * size * size + (r.c.y + oy) * size + r.mx;
            let m = &r.means[m0..m0 + crop];
            let (inv, k) = (r.inv[ch], r.k[ch]);
            let d = &mut out[ch * plane + (r.p0 + oy) * side + r.p0..][..crop];
            for ((d, &t), &m) in d.iter_mut().zip(&t[..crop]).zip(m) {
                *d = t * inv + (k - m);
            }
        }
    }
}

/// The RGB pixels of `src` into three f32 rows, in reverse order when
/// `flip`. Always inlined, so it is compiled with its caller's features.
#[inline(always)]
fn split_row(src: &[u8], flip: bool, rgb: &mut [[f32; MAX_ROW]; 3]) {
    let [r, g, b] = rgb;
    let px = src.chunks_exact(3);
    let mut put = |i: usize, p: &[u8]| {
        r[i] = p[0] as f32;
        g[i] = p[1] as f32;
        b[i] = p[2] as f32;
    };
    if flip {
        px.rev().enumerate().for_each(|(i, p)| put(i, p));
    } else {
        px.enumerate().for_each(|(i, p)| put(i, p));
    }
}
