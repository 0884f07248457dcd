//! Evaluation as the paper reports it (section 4.1, Table 2): top-1 and top-5
//! error on the centre crop, or on the softmax averaged over ten crops (four
//! corners and the centre, and their mirror images), with the checkpoint's
//! own preprocessing, on a store or a class-folder tree.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::checkpoint::Checkpoint;
use crate::data::folder::is_split_name;
use crate::data::packed::{is_store, read_meta, refuse_unfinished_store, PackedStore, StoreMeta};
use crate::data::{
    batches, unread_error, BatchIter, FileSource, ImageFolder, ImageSource, LoaderConfig,
};
use crate::error::{Error, Result};
use crate::model::net::Mode;
use crate::model::trainable::Model;

/// How many classes score at least as high as the label in `row` (softmax
/// or its log: only the order counts), the label's own entry aside: 0 is a
/// top-1 hit, under 5 a top-5 hit. Ties count against us, so a constant
/// output scores no hits. A label score that is not a number (outputs that
/// overflowed) ranks `usize::MAX`, never a hit; a NaN elsewhere beats nothing.
pub fn label_rank<T: PartialOrd>(row: &[T], label: u32) -> usize {
    let p = &row[label as usize];
    // Only NaN is unordered against itself.
    if p.partial_cmp(p).is_none() {
        return usize::MAX;
    }
    row.iter()
        .enumerate()
        .filter(|&(j, q)| j != label as usize && q >= p)
        .count()
}

/// Top-1 and top-5 hits of one batch ([`label_rank`] of each row).
pub fn topk_hits<T: PartialOrd>(probs: &[T], labels: &[u32], classes: usize) -> (usize, usize) {
    let mut top1 = 0;
    let mut top5 = 0;
    for (row, &label) in probs.chunks_exact(classes).zip(labels) {
        let better = label_rank(row, label);
        top1 += (better < 1) as usize;
        top5 += (better < 5) as usize;
    }
    (top1, top5)
}

/// Per-class counts of an evaluation: each class's images and top-1 and
/// top-5 hits, and the confusion matrix (true class x top-1 class), whose
/// diagonal is the top-1 hits. Its misses are kept as a map, at most one
/// entry per image: a dense matrix of a 100,000-class run's would take
/// 80 GB of counts.
#[derive(Clone, Debug)]
pub struct ClassTally {
    classes: usize,
    images: Vec<u64>,
    top1: Vec<u64>,
    top5: Vec<u64>,
    /// (true, top-1) -> images, for the pairs of different classes seen.
    missed: BTreeMap<(usize, usize), u64>,
    /// Images whose output was not a number: misses, in no column.
    unscored: u64,
}

impl ClassTally {
    pub fn new(classes: usize) -> ClassTally {
        ClassTally {
            classes,
            images: vec![0; classes],
            top1: vec![0; classes],
            top5: vec![0; classes],
            missed: BTreeMap::new(),
            unscored: 0,
        }
    }

    /// Count a batch of softmax (or log-softmax) rows. An image's top-1
    /// class is its label on a top-1 hit, else the likeliest other class
    /// (the lower index on ties), so the matrix's diagonal holds the top-1
    /// hits. A row whose label's score is not a number (the network
    /// overflowed) is a miss with no top-1 class: counted apart, not blamed
    /// on the first column.
    pub fn add<T: PartialOrd + Copy>(&mut self, probs: &[T], labels: &[u32]) {
        for (row, &label) in probs.chunks_exact(self.classes).zip(labels) {
            let (c, rank) = (label as usize, label_rank(row, label));
            self.images[c] += 1;
            if rank == usize::MAX {
                self.unscored += 1;
                continue;
            }
            self.top5[c] += (rank < 5) as u64;
            match rank {
                0 => self.top1[c] += 1,
                _ => *self.missed.entry((c, likeliest_other(row, c))).or_default() += 1,
            }
        }
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Images whose output was not a number, in no column of the matrix.
    pub fn unscored(&self) -> u64 {
        self.unscored
    }

    /// Images of class `c` seen, and its top-1 and top-5 hits.
    pub fn counts(&self, c: usize) -> (u64, u64, u64) {
        (self.images[c], self.top1[c], self.top5[c])
    }

    /// Images of class `truth` whose top-1 class is `pred`.
    pub fn confused(&self, truth: usize, pred: usize) -> u64 {
        match truth == pred {
            true => self.top1[truth],
            false => self.missed.get(&(truth, pred)).copied().unwrap_or(0),
        }
    }

    /// The cells off the diagonal that hold images, as ((true, top-1),
    /// images), in label order.
    pub fn misses(&self) -> impl Iterator<Item = ((usize, usize), u64)> + '_ {
        self.missed.iter().map(|(&k, &n)| (k, n))
    }

    /// The class `truth`'s images are most often taken for, and how many
    /// (the lower index on ties); None when none was missed.
    pub fn most_confused(&self, truth: usize) -> Option<(usize, u64)> {
        self.missed.range((truth, 0)..=(truth, usize::MAX)).fold(
            None,
            |best: Option<(usize, u64)>, (&(_, j), &n)| match best {
                Some((_, m)) if m >= n => best,
                _ => Some((j, n)),
            },
        )
    }
}

/// The highest-scoring class of `row` other than `label`, the lower index on ties.
fn likeliest_other<T: PartialOrd + Copy>(row: &[T], label: usize) -> usize {
    let mut best = None::<(usize, T)>;
    for (j, &q) in row.iter().enumerate() {
        if j != label && best.is_none_or(|(_, b)| q > b) {
            best = Some((j, q));
        }
    }
    best.map_or(label, |(j, _)| j)
}

/// The `k` largest entries of `row` as (index, value), largest first; ties
/// go to the lower index. Taken on log-probabilities (`log_mean_softmax`),
/// classes whose probability is below f32's least keep their order.
pub fn top_k(row: &[f64], k: usize) -> Vec<(usize, f64)> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx.into_iter().take(k).map(|i| (i, row[i])).collect()
}

/// Each image's log of its mean softmax over its `crops` consecutive rows
/// of `logits` ([n * crops, classes] to [n, classes]): the paper averages
/// the ten crops' softmax (section 4.1). Taken in f64 from the logits,
/// log(mean_r exp(l_rc - lse_r)), so a probability below f32's least (a
/// logit gap over about 100) keeps its order and its loss instead of tying
/// at 0. A row with a NaN or infinite logit (of either sign: an overflow)
/// gives its image NaN everywhere (a miss, not an infinite loss).
pub fn log_mean_softmax(logits: &[f32], crops: usize, classes: usize) -> Vec<f64> {
    let crops = crops.max(1);
    let mut out = Vec::with_capacity(logits.len() / crops);
    let mut v = vec![0.0f64; crops * classes];
    for img in logits.chunks_exact(crops * classes) {
        for (row, vr) in img.chunks_exact(classes).zip(v.chunks_exact_mut(classes)) {
            if row.iter().any(|l| !l.is_finite()) {
                vr.fill(f64::NAN);
                continue;
            }
            let lse = log_sum_exp(row.iter().map(|&l| l as f64));
            vr.iter_mut()
                .zip(row)
                .for_each(|(o, &l)| *o = l as f64 - lse);
        }
        let ln_crops = (crops as f64).ln();
        out.extend(
            (0..classes).map(|c| log_sum_exp((0..crops).map(|r| v[r * classes + c])) - ln_crops),
        );
    }
    out
}

/// ln(sum exp(x)), shifted by the largest x; NaN if any x is NaN or +inf.
fn log_sum_exp(x: impl Iterator<Item = f64> + Clone) -> f64 {
    // f64::max would pass over a NaN.
    let m = x.clone().fold(f64::NEG_INFINITY, |m, a| {
        if m.is_nan() || a.is_nan() {
            f64::NAN
        } else {
            m.max(a)
        }
    });
    if m.is_nan() || m == f64::NEG_INFINITY {
        return m;
    }
    m + x.map(|a| (a - m).exp()).sum::<f64>().ln()
}

/// Loss and accuracy over a set of images.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalResult {
    pub images: usize,
    /// Mean of -ln p(label), p the (averaged) softmax, from the logits.
    pub loss: f64,
    pub top1: f64,
    pub top5: f64,
}

/// Evaluate `net` on `indices` of `set` with the loader settings `cfg`
/// (`cfg.ten_crop` selects the paper's ten crops). `on_batch` is called
/// with the images done so far (progress bars).
pub fn evaluate(
    net: &mut dyn Model,
    set: &Arc<dyn ImageSource>,
    indices: &[usize],
    cfg: &LoaderConfig,
    on_batch: impl FnMut(usize),
) -> Result<EvalResult> {
    let iter = batches(Arc::clone(set), indices, cfg, 0)?;
    evaluate_pass(net, iter, indices.len(), on_batch)
}

/// [`evaluate`] over the batches of a pass already under way (the `n`
/// images of a run's validation, queued on its loader's feed).
pub fn evaluate_pass(
    net: &mut dyn Model,
    iter: BatchIter,
    n: usize,
    on_batch: impl FnMut(usize),
) -> Result<EvalResult> {
    evaluate_pass_until(net, iter, n, on_batch, &|| false)?.ok_or_else(never_stopped)
}

/// [`evaluate_pass`], given up (None) at the first batch after `stop`
/// says so: a run's validation at a signal, whose checkpoint must be
/// written before a scheduler's kill follows it.
pub fn evaluate_pass_until(
    net: &mut dyn Model,
    iter: BatchIter,
    n: usize,
    on_batch: impl FnMut(usize),
    stop: &dyn Fn() -> bool,
) -> Result<Option<EvalResult>> {
    let Some((r, unread)) = evaluate_batches(net, iter, on_batch, None, stop)? else {
        return Ok(None);
    };
    match unread.is_empty() {
        true => Ok(Some(r)),
        false => Err(unread_error(unread, n)),
    }
}

/// The error of an evaluation told never to stop that did.
fn never_stopped() -> Error {
    Error::Stopped("an evaluation with nothing to stop it stopped".into())
}

/// [`evaluate`], also counting each class's results into `tally` when given.
/// With `cfg.skip_unreadable`, images that cannot be read are left out of
/// the result and returned as their errors; `on_batch` counts them as done.
pub fn evaluate_by_class(
    net: &mut dyn Model,
    set: &Arc<dyn ImageSource>,
    indices: &[usize],
    cfg: &LoaderConfig,
    on_batch: impl FnMut(usize),
    tally: Option<&mut ClassTally>,
) -> Result<(EvalResult, Vec<Error>)> {
    let iter = batches(Arc::clone(set), indices, cfg, 0)?;
    evaluate_batches(net, iter, on_batch, tally, &|| false)?.ok_or_else(never_stopped)
}

/// [`evaluate_by_class`] over the batches of `iter`; None when `stop`
/// said so before a batch.
fn evaluate_batches(
    net: &mut dyn Model,
    mut iter: BatchIter,
    mut on_batch: impl FnMut(usize),
    mut tally: Option<&mut ClassTally>,
    stop: &dyn Fn() -> bool,
) -> Result<Option<(EvalResult, Vec<Error>)>> {
    let classes = net.topology().classes;
    let (mut loss, mut top1, mut top5, mut seen) = (0.0f64, 0usize, 0usize, 0usize);
    let mut row_labels = Vec::new();
    let mut unread = Vec::new();
    while let Some(b) = iter.next() {
        if stop() {
            return Ok(None);
        }
        let mut b = b?;
        unread.extend(b.unread.drain(..).map(|(_, e)| e));
        if b.n == 0 {
            on_batch(seen + unread.len());
            iter.recycle(b);
            continue;
        }
        // Every crop row carries its image's label.
        row_labels.clear();
        for &l in &b.labels {
            row_labels.extend(std::iter::repeat_n(l, b.crops));
        }
        net.forward(&b.x, &row_labels, Mode::Eval)?;
        let probs = log_mean_softmax(&net.logits()?, b.crops, classes);
        for (row, &l) in probs.chunks_exact(classes).zip(&b.labels) {
            loss -= row[l as usize];
        }
        if let Some(t) = tally.as_deref_mut() {
            t.add(&probs, &b.labels);
        }
        let (t1, t5) = topk_hits(&probs, &b.labels, classes);
        top1 += t1;
        top5 += t5;
        seen += b.n;
        on_batch(seen + unread.len());
        iter.recycle(b);
    }
    let s = seen as f64;
    let r = match seen {
        0 => EvalResult {
            images: 0,
            loss: f64::NAN,
            top1: f64::NAN,
            top5: f64::NAN,
        },
        _ => EvalResult {
            images: seen,
            loss: loss / s,
            top1: top1 as f64 / s,
            top5: top5 as f64 / s,
        },
    };
    Ok(Some((r, unread)))
}

/// Ten crops of images (stored `stored` pixels a side) no larger than the
/// crops are the centre and its mirror, five times each: warned of.
pub fn warn_of_ten_equal_crops(stored: usize, crop: usize) {
    if stored <= crop {
        tracing::warn!(
            "--ten-crop: the images are {stored}x{stored} and the crops {crop}x{crop}, so the four corners are the centre: the ten crops are the centre and its mirror, five times each (the paper crops 224 of 256: prepare the data at a larger --size for ten distinct crops)"
        );
    }
}

/// The loader settings that repeat a checkpoint's test-time preprocessing:
/// the same crop, padding and mean (image or per-channel) and std.
pub fn loader_for(ck: &Checkpoint, batch: usize, ten_crop: bool, workers: usize) -> LoaderConfig {
    let p = &ck.state.preprocess;
    LoaderConfig {
        batch,
        crop: p.crop,
        pad: p.pad,
        train: false,
        mean: p.mean,
        mean_image: ck.mean_image().map(|m| Arc::new(m.to_vec())),
        ten_crop,
        std: p.std,
        seed: 0,
        workers,
        drop_last: false,
        skip_unreadable: false,
        lighting: None,
        host_alloc: None,
        pool: Default::default(),
        shard: (0, 1),
    }
}

/// An image source whose labels are mapped into another class list.
struct Relabel {
    inner: Arc<dyn ImageSource>,
    map: Vec<u32>,
    classes: Vec<String>,
}

impl ImageSource for Relabel {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn label(&self, i: usize) -> u32 {
        self.map[self.inner.label(i) as usize]
    }
    fn classes(&self) -> &[String] {
        &self.classes
    }
    fn pixels<'a>(&'a self, i: usize, scratch: &'a mut Vec<u8>) -> Result<&'a [u8]> {
        self.inner.pixels(i, scratch)
    }
}

/// Open evaluation images for a checkpoint: a `prepare` output folder (its
/// `val/`), one store folder, or a class-folder tree (each image decoded
/// and resized as `prepare` does when the loader reads it), fitted to the
/// checkpoint ([`fit_to_checkpoint`]).
pub fn open_eval_data(path: &Path, ck: &Checkpoint) -> Result<Arc<dyn ImageSource>> {
    let size = ck.state.preprocess.image_size;
    let other = "evaluate on training images, or prepare with --val";
    let set: Arc<dyn ImageSource> = match store_of(path, "val", other)? {
        Some(dir) => {
            let store = PackedStore::open(&dir)?;
            warn_of_a_stale_val(&dir, store.meta());
            Arc::new(store)
        }
        None => Arc::new(FileSource::new(&ImageFolder::scan_to_score(path)?, size)),
    };
    fit_to_checkpoint(path, set, ck)
}

/// A warning when `dir` is a `prepare` output's val/ left from an earlier
/// `prepare` of the train/ beside it: its images may be ones the network
/// trained on, and its scores would not say so.
fn warn_of_a_stale_val(dir: &Path, meta: &StoreMeta) {
    let Some(train) = dir
        .file_name()
        .filter(|n| *n == "val")
        .and_then(|_| read_meta(&dir.parent()?.join("train")).ok())
    else {
        return;
    };
    if meta.left_from_before(&train) {
        tracing::warn!(
            "{} was not prepared with the train/ beside it (it is from an earlier prepare, of {}): the network may have trained on some of its images; scoring it anyway; to be sure of it, prepare again with --val",
            dir.display(),
            meta.source
        );
    }
}

/// The store `path` names: itself, or a `prepare` output folder's
/// `split`/ (val or train); None for a folder of class folders. A `prepare`
/// output folder with only the other split is an error that offers it, to
/// `use_other` (what passing it would do).
pub fn store_of(path: &Path, split: &str, use_other: &str) -> Result<Option<PathBuf>> {
    if is_store(path) {
        return Ok(Some(path.to_path_buf()));
    }
    if is_store(&path.join(split)) {
        return Ok(Some(path.join(split)));
    }
    // A prepare killed while writing it: not a split to do without.
    refuse_unfinished_store(&path.join(split))?;
    match ["train", "val"]
        .into_iter()
        .find(|s| is_store(&path.join(s)))
    {
        Some(other) => Err(Error::Config(format!(
            "{}: the store has {other}/ but no {split}/; pass {} to {use_other}",
            path.display(),
            crate::shell::word(&path.join(other))
        ))),
        None => Ok(None),
    }
}

/// `set` (read from `path`) checked against the checkpoint's crop and
/// image size, its labels matched to the checkpoint's classes by name; a
/// class the network does not know is an error.
pub fn fit_to_checkpoint(
    path: &Path,
    set: Arc<dyn ImageSource>,
    ck: &Checkpoint,
) -> Result<Arc<dyn ImageSource>> {
    check_image_size(path, set.as_ref(), ck)?;
    match label_map(set.classes(), &labels_present(set.as_ref()), &ck.state.classes) {
        Ok(map) => Ok(relabel(set, map, ck)),
        Err(c) if is_split_name(c) => Err(Error::Data(format!(
            "{}: its folder {c}/ is read as a class, which the checkpoint does not know; if {c}/ holds a split's class folders, pass --data {}",
            path.display(),
            crate::shell::word(&path.join(c))
        ))),
        Err(c) => Err(Error::Data(format!(
            "{}: class {c} is not one of the checkpoint's {} classes ({}...); pass images of the classes it was trained on",
            path.display(),
            ck.state.classes.len(),
            ck.state.classes.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// `set` relabelled into the checkpoint's classes where it knows all of
/// the set's; None where one of them is not the checkpoint's (features of
/// new data keep its own labels).
pub fn relabel_if_known(
    set: &Arc<dyn ImageSource>,
    ck: &Checkpoint,
) -> Option<Arc<dyn ImageSource>> {
    let map = label_map(
        set.classes(),
        &labels_present(set.as_ref()),
        &ck.state.classes,
    )
    .ok()?;
    Some(relabel(Arc::clone(set), map, ck))
}

fn relabel(
    set: Arc<dyn ImageSource>,
    map: Option<Vec<u32>>,
    ck: &Checkpoint,
) -> Arc<dyn ImageSource> {
    match map {
        None => set,
        Some(map) => Arc::new(Relabel {
            inner: set,
            map,
            classes: ck.state.classes.clone(),
        }),
    }
}

/// Refuse images smaller than the checkpoint's crops, or stored at another
/// size than its mean image's; warn where they are stored at another size
/// than it trained on.
pub fn check_image_size(path: &Path, set: &dyn ImageSource, ck: &Checkpoint) -> Result<()> {
    let size = ck.state.preprocess.image_size;
    if set.size() < ck.state.preprocess.crop {
        return Err(Error::Config(format!(
            "{}: images are {}x{}, smaller than the checkpoint's {}x{} crops; prepare them with --size {size}",
            path.display(),
            set.size(),
            set.size(),
            ck.state.preprocess.crop,
            ck.state.preprocess.crop
        )));
    }
    let stored = set.size();
    if stored != size && ck.mean_image().is_some() {
        return Err(Error::Config(format!(
            "{}: images are stored at {stored}x{stored}, but the checkpoint subtracts the {size}x{size} mean image of its training set (section 2 of the paper); prepare them with --size {size}, or pass a folder of class sub-folders (each image is scaled to {size} as it is read)",
            path.display()
        )));
    } else if stored != size {
        // The crops then cover another share of each image than in
        // training: accuracy changes with no error to show why.
        let crop = ck.state.preprocess.crop;
        tracing::warn!(
            "{}: images are stored at {stored}x{stored}, but the run trained on {size}x{size}; its {crop}x{crop} crops see another share of each image, which changes the error; prepare them with --size {size} to evaluate as trained",
            path.display()
        );
    }
    Ok(())
}

/// Each of `classes`' labels among the `known` ones, by name; None when
/// they are the same list. A class no image has (`present` false) need not
/// be known: a val store lists all of its train split's classes. Err: the
/// first class with images that is not known.
fn label_map<'a>(
    classes: &'a [String],
    present: &[bool],
    known: &[String],
) -> std::result::Result<Option<Vec<u32>>, &'a str> {
    if classes == known {
        return Ok(None);
    }
    let find = |(c, here): (&'a String, &bool)| match known.iter().position(|k| k == c) {
        Some(i) => Ok(i as u32),
        None if !here => Ok(u32::MAX),
        None => Err(c.as_str()),
    };
    classes
        .iter()
        .zip(present)
        .map(find)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map(Some)
}

/// Which of the set's classes at least one image has.
fn labels_present(set: &dyn ImageSource) -> Vec<bool> {
    let mut present = vec![false; set.classes().len()];
    for i in 0..set.len() {
        if let Some(p) = present.get_mut(set.label(i) as usize) {
            *p = true;
        }
    }
    present
}

/// Logits of preprocessed inputs `x` ([rows, C, H, W] in the network's
/// input shape), run `chunk` rows at a time.
pub fn forward_rows(net: &mut dyn Model, x: &[f32], chunk: usize) -> Result<Vec<f32>> {
    let t = net.topology();
    let per_row = t.channels * t.crop * t.crop;
    let mut logits = Vec::new();
    for part in x.chunks(per_row * chunk.max(1)) {
        let rows = part.len() / per_row;
        net.forward(part, &vec![0; rows], Mode::Eval)?;
        logits.extend(net.logits()?);
    }
    Ok(logits)
}
