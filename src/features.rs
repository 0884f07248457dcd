//! Hidden-layer features and nearest neighbours (the paper's Figure 4,
//! right). `features`: a checkpoint's activations at a layer (fc6, fc7,
//! pool5...) for every image of a set, centre crop, evaluation mode, streamed
//! to a [rows, values] .npy file with a CSV that says what each row is.
//! `nearest_blocks`: exact k-nearest-neighbour search by Euclidean distance,
//! a block of rows at a time (|q|^2 + |x|^2 - 2 q.x, the dot products by
//! GEMM; the distances kept are recomputed exactly). `neighbors`: query
//! images against a set's fc7, and `render_grid`, the picture of the result.
use std::borrow::Cow;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::imageops::FilterType;
use plotters::prelude::*;

use crate::backend::cpu::{sgemm, MatRef};
use crate::backend::Backend;
use crate::checkpoint::Checkpoint;
use crate::data::packed::PackedStore;
use crate::data::{
    batches, decode_some, unread_error, FileSource, ImageFolder, ImageSet, ImageSource,
    LoaderConfig,
};
use crate::error::{Error, Result};
use crate::eval::{check_image_size, loader_for, relabel_if_known, store_of};
use crate::fsutil::{check_target, check_writable, csv_bytes, Staged};
use crate::model::net::{activation_width, Mode, Network};
use crate::model::topology::Topology;
use crate::npy::{NpyRows, NpyWriter};
use crate::plot::{ensure_font, write_rgb_png, FONT};

/// Rows of the feature matrix read at once by the search.
pub const BLOCK_ROWS: usize = 4096;

/// The layer `neighbors` compares images by (section 6.1: "the feature
/// activations induced at the last, 4096-dimensional hidden layer").
pub const NEIGHBOR_LAYER: &str = "fc7";

/// A set of images to take features of, and what is known of each.
pub struct FeatureSet {
    pub set: Arc<dyn ImageSource>,
    /// The source file of each image, when the data keeps them (a store's
    /// `sources-<gen>.txt`, or a class folder's file paths).
    pub sources: Option<Vec<String>>,
    /// The store or folder the images are read from, for errors that say
    /// which data to compute features on.
    pub root: PathBuf,
    /// The data's own classes, where not all of them are the checkpoint's
    /// (features of new data, for another task): its labels are then the
    /// data's, not the checkpoint's.
    pub own_classes: Option<OwnClasses>,
}

/// Class ids and readable names of a set's own labels.
pub struct OwnClasses {
    pub ids: Vec<String>,
    pub names: Vec<String>,
}

impl FeatureSet {
    /// The class id of `label`: the data's own, or the checkpoint's.
    pub fn class_id(&self, ck: &Checkpoint, label: u32) -> String {
        match &self.own_classes {
            Some(own) => own.ids.get(label as usize).cloned().unwrap_or_default(),
            None => ck.class_id(label),
        }
    }

    /// The readable name of class `label` (its id when it has none).
    pub fn class_name(&self, ck: &Checkpoint, label: u32) -> String {
        match &self.own_classes {
            Some(own) => match own.names.get(label as usize).filter(|n| !n.is_empty()) {
                Some(n) => n.clone(),
                None => self.class_id(ck, label),
            },
            None => ck.class_name(label),
        }
    }
}

/// Open `path` for features with the checkpoint's preprocessing: a store
/// folder, a `prepare` output folder (its `split`/ store: val or train) or a
/// folder of class sub-folders. Labels follow the checkpoint's classes
/// where it knows all of the data's, else they are the data's own.
/// Where only the other split is there, the error offers it to `use_other`.
pub fn open_set(path: &Path, ck: &Checkpoint, split: &str, use_other: &str) -> Result<FeatureSet> {
    let Some(dir) = store_of(path, split, use_other)? else {
        // A folder is scanned once: its files are the sources, named under
        // the folder (as a store names them), so the same folder spelled
        // another way (`./data`, an absolute path) is the same set.
        let files = FileSource::new(
            &ImageFolder::scan_to_score(path)?,
            ck.state.preprocess.image_size,
        );
        let under = |p: &Path| p.strip_prefix(path).unwrap_or(p).display().to_string();
        let sources = (0..files.len()).map(|i| under(files.path(i))).collect();
        return fit_labels(path, Arc::new(files), Some(sources), Vec::new(), ck);
    };
    let store = PackedStore::open(&dir)?;
    // The names are for people (the rows CSV, the picture): a store whose
    // list is gone still has its images, as eval reads them.
    let sources = match store.sources() {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("{e}; the rows are written without their source files");
            None
        }
    };
    let names = store.meta().names.clone();
    fit_labels(&dir, Arc::new(store), sources, names, ck)
}

/// `set`, read from `root`, checked against the checkpoint's image size
/// and labelled by its classes, or by the data's own (`names`: their
/// readable names, where the data keeps them) where one is not the
/// checkpoint's.
fn fit_labels(
    root: &Path,
    set: Arc<dyn ImageSource>,
    sources: Option<Vec<String>>,
    names: Vec<String>,
    ck: &Checkpoint,
) -> Result<FeatureSet> {
    check_image_size(root, set.as_ref(), ck)?;
    let root = root.to_path_buf();
    if let Some(set) = relabel_if_known(&set, ck) {
        let own_classes = None;
        return Ok(FeatureSet {
            set,
            sources,
            root,
            own_classes,
        });
    }
    let ids = set.classes().to_vec();
    let unknown = ids.iter().filter(|c| !ck.state.classes.contains(c)).count();
    // Said aloud: data of the wrong run is also taken this way.
    tracing::warn!(
        "{}: {unknown} of its {} classes are not the checkpoint's; the rows keep the data's own labels and class names",
        root.display(),
        ids.len()
    );
    let names = if names.len() == ids.len() {
        names
    } else {
        ids.clone()
    };
    let own_classes = Some(OwnClasses { ids, names });
    Ok(FeatureSet {
        set,
        sources,
        root,
        own_classes,
    })
}

/// `limit` images spread evenly over `n` (all of them without a limit), as
/// `eval --limit` picks them.
pub fn spread(n: usize, limit: Option<usize>) -> Vec<usize> {
    match limit {
        Some(k) if k < n => (0..k).map(|i| i * n / k).collect(),
        _ => (0..n).collect(),
    }
}

/// The loader settings for features: the checkpoint's test-time
/// preprocessing, centre crop only.
pub fn feature_loader(ck: &Checkpoint, batch: usize, workers: usize) -> LoaderConfig {
    loader_for(ck, batch.max(1), false, workers)
}

/// The checkpoint's network and the feature loader for `images` images in
/// batches of `batch` with `workers` loader threads, checked against the
/// host's memory first. No batch is larger than the set, so neither is the
/// network.
fn sized_network<'a, B: Backend>(
    be: &'a B,
    ck: &Checkpoint,
    topo: &Topology,
    (batch, workers): (usize, usize),
    images: usize,
) -> Result<(Network<'a, B>, LoaderConfig)> {
    let cfg = feature_loader(ck, batch, workers);
    crate::memory::check_one(be, topo, &cfg, images)?;
    let net = ck.network(be, topo, batch.clamp(1, images.max(1)))?;
    Ok((net, cfg))
}

/// Forward `indices` of `set` through `net` in evaluation mode (no dropout)
/// and hand each batch's rows of `layer` to `sink` in order. `on_batch` gets
/// the images done so far. Returns the row width and, with
/// `cfg.skip_unreadable`, the images left out (index in the set, and why).
fn for_each_batch<B: Backend>(
    net: &mut Network<'_, B>,
    layer: &str,
    set: &Arc<dyn ImageSource>,
    indices: &[usize],
    cfg: &LoaderConfig,
    mut sink: impl FnMut(&[f32]) -> Result<()>,
    mut on_batch: impl FnMut(usize),
) -> Result<(usize, Vec<(usize, Error)>)> {
    let width = activation_width(net.topology(), layer)?;
    if cfg.ten_crop {
        return Err(Error::Config(
            "features are taken on the centre crop only".into(),
        ));
    }
    let mut done = 0;
    let mut unread = Vec::new();
    let mut iter = batches(Arc::clone(set), indices, cfg, 0)?;
    while let Some(b) = iter.next() {
        let mut b = b?;
        done += b.n + b.unread.len();
        unread.append(&mut b.unread);
        if b.n > 0 {
            // Labels only feed the loss, and new data's are not the
            // network's classes.
            net.forward(&b.x, &vec![0; b.n], Mode::Eval)?;
            let rows = net.activation(layer)?;
            crate::error::check_len("features", "activation", rows.len(), b.n * width)?;
            sink(&rows)?;
        }
        on_batch(done);
        iter.recycle(b);
    }
    Ok((width, unread))
}

/// What [`write_features`] wrote: the row width, the set's image of each
/// row, and the images left out because they could not be read (their
/// indices in the set, and why).
pub struct Written {
    pub width: usize,
    pub kept: Vec<usize>,
    pub left_out: Vec<usize>,
    pub unread: Vec<Error>,
}

/// `indices` in order, without those in `left_out`.
fn without(indices: &[usize], left_out: &[usize]) -> Vec<usize> {
    let out: HashSet<usize> = left_out.iter().copied().collect();
    indices
        .iter()
        .copied()
        .filter(|i| !out.contains(i))
        .collect()
}

/// Write `layer`'s activations for `indices` of `fs`'s set to `out` ([rows,
/// width] float32 .npy), batch by batch: the header first, then the rows, so
/// the matrix is never whole in memory; then its row table and record (of
/// `ck`) beside it. An image that cannot be read is left out of the rows,
/// not the end of the job: one bad file of 50,000 should not cost the
/// other features.
pub fn write_features<B: Backend>(
    net: &mut Network<'_, B>,
    (layer, ck): (&str, &Checkpoint),
    (fs, indices): (&FeatureSet, &[usize]),
    cfg: &LoaderConfig,
    out: &Path,
    on_batch: impl FnMut(usize),
) -> Result<Written> {
    let set = &fs.set;
    let width = activation_width(net.topology(), layer)?;
    let mut w = NpyWriter::create(out, indices.len(), width)?;
    let cfg = LoaderConfig {
        skip_unreadable: true,
        ..cfg.clone()
    };
    let sink = |rows: &[f32]| w.append(rows);
    let (width, unread) = for_each_batch(net, layer, set, indices, &cfg, sink, on_batch)?;
    let (left_out, unread): (Vec<usize>, Vec<Error>) = unread.into_iter().unzip();
    if left_out.len() == indices.len() {
        return Err(unread_error(unread, indices.len()));
    }
    w.leave_out(left_out.len())?;
    let kept = without(indices, &left_out);
    // All three are whole on disk before any lands, so a full disk keeps
    // the old ones. The old record and row table describe other rows: gone
    // before the new file lands, and the new ones land after it, so a run
    // stopped between leaves a file searched with a warning, never one
    // vouched for wrongly.
    let (csv, meta) = w.finish_with(|| {
        let csv = stage_rows_csv(&rows_csv_path(out), ck, fs, &kept)?;
        let meta = stage_meta(out, ck, layer, &left_out)?;
        remove_beside(&meta_path(out))?;
        remove_beside(&rows_csv_path(out))?;
        Ok((csv, meta))
    })?;
    csv.land()?;
    meta.land()?;
    Ok(Written {
        width,
        kept,
        left_out,
        unread,
    })
}

/// Remove `side`, a file kept beside a features file, if it is there.
fn remove_beside(side: &Path) -> Result<()> {
    match std::fs::remove_file(side) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(side, e)),
        _ => Ok(()),
    }
}

/// The CSV beside a features file: `F.npy` gets `F.rows.csv`.
pub fn rows_csv_path(features: &Path) -> PathBuf {
    features.with_extension("rows.csv")
}

/// The record beside a features file: `F.npy` gets `F.meta.json`.
pub fn meta_path(features: &Path) -> PathBuf {
    features.with_extension("meta.json")
}

/// Refuse, before any image is read, a features file whose row table or
/// record could not be written beside it: a folder of that name would
/// fail the job at its end, after every image's features were computed.
fn check_beside(features: &Path, flag: &str) -> Result<()> {
    for (side, what) in [
        (rows_csv_path(features), "row table"),
        (meta_path(features), "record"),
    ] {
        if side.is_dir() {
            return Err(Error::Config(format!(
                "{}: a folder, where the features file {} keeps its {what}; rename or remove the folder, or pass another {flag}",
                side.display(),
                features.display()
            )));
        }
    }
    Ok(())
}

/// What computed a features file, which its shape cannot tell (fc6 and fc7
/// are both 4096 wide; every checkpoint of a config has the same widths).
#[derive(serde::Serialize, serde::Deserialize)]
struct FeaturesMeta {
    layer: String,
    checkpoint: String,
    /// [`Checkpoint::weights_crc32`].
    weights_crc32: u32,
    /// The set's images left out of the rows because they could not be
    /// read (absent in records written before images were left out).
    #[serde(default)]
    left_out: Vec<usize>,
}

/// The record that `layer` of `ck` computed the features file `features`,
/// and which images of the set were left out of its rows, staged beside it.
fn stage_meta(features: &Path, ck: &Checkpoint, layer: &str, left_out: &[usize]) -> Result<Staged> {
    let meta = FeaturesMeta {
        layer: layer.to_string(),
        checkpoint: ck.path.display().to_string(),
        weights_crc32: ck.weights_crc32(),
        left_out: left_out.to_vec(),
    };
    let text = serde_json::to_string_pretty(&meta).map_err(|e| Error::Data(e.to_string()))?;
    Staged::write(&meta_path(features), text.as_bytes())
}

/// The text of `side`, a file kept beside features file `f`; None when
/// there is none, with a warning that `unchecked` is then not checked. One
/// there that cannot be read is an error: it would vouch for the file.
fn read_beside(f: &Path, side: &Path, unchecked: &str) -> Result<Option<String>> {
    match std::fs::read_to_string(side) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(
                "{}: no {} beside it, so {unchecked} is not checked",
                f.display(),
                side.display()
            );
            Ok(None)
        }
        Err(e) => Err(Error::Data(format!(
            "{}: cannot be read ({e}), so {unchecked} cannot be checked; make it readable, delete it to search {} unchecked, or compute the features again",
            side.display(),
            f.display()
        ))),
    }
}

/// A given features file against its record: fc7 of `ck`'s weights. A
/// file without one (written by hand, or by another tool) is searched, with
/// a warning. Returns the images the record says were left out.
fn check_meta(f: &Path, ck: &Checkpoint) -> Result<Vec<usize>> {
    let path = meta_path(f);
    let Some(text) = read_beside(f, &path, "which layer and checkpoint computed it")? else {
        return Ok(Vec::new());
    };
    let meta: FeaturesMeta = serde_json::from_str(&text).map_err(|e| {
        Error::Data(format!(
            "{}: not a features record ({e}); delete it, or compute the features again",
            path.display()
        ))
    })?;
    let fix = format!("compute them with `alexnet-cuda features --layer {NEIGHBOR_LAYER}` and this checkpoint, or leave out --features");
    if meta.layer != NEIGHBOR_LAYER {
        return Err(Error::Data(format!(
            "{}: features of {}, and neighbours are found by {NEIGHBOR_LAYER}; {fix}",
            f.display(),
            meta.layer
        )));
    }
    if meta.weights_crc32 != ck.weights_crc32() {
        return Err(Error::Data(format!(
            "{}: computed with the weights of {}, not those of {}; {fix}",
            f.display(),
            meta.checkpoint,
            ck.path.display()
        )));
    }
    Ok(meta.left_out)
}

/// The row table, staged at `path`: `row,index,label,class,name,source`
/// (row of the matrix, index of the image in the set, label index, class
/// id, class name, source file or empty when the data keeps none).
fn stage_rows_csv(
    path: &Path,
    ck: &Checkpoint,
    fs: &FeatureSet,
    indices: &[usize],
) -> Result<Staged> {
    let rows = indices.iter().enumerate().map(|(row, &i)| {
        let label = fs.set.label(i);
        let source = fs.sources.as_ref().and_then(|s| s.get(i));
        vec![
            row.to_string(),
            i.to_string(),
            label.to_string(),
            fs.class_id(ck, label),
            fs.class_name(ck, label),
            source.cloned().unwrap_or_default(),
        ]
    });
    let header = ["row", "index", "label", "class", "name", "source"];
    Staged::write(path, &csv_bytes(path, &header, rows)?)
}

/// One neighbour: its row in the feature matrix and squared distance.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Neighbor {
    pub row: usize,
    pub dist2: f32,
}

impl Neighbor {
    /// The distance; NaN stays NaN (not clamped to 0, the nearest).
    pub fn dist(&self) -> f32 {
        self.dist2.sqrt()
    }
}

/// Insert into a list kept sorted by (distance, row), at most `k` long.
fn keep_best(best: &mut Vec<Neighbor>, cand: Neighbor, k: usize) {
    let before = |a: &Neighbor, b: &Neighbor| (a.dist2, a.row) < (b.dist2, b.row);
    if best.len() == k && !best.last().is_some_and(|w| before(&cand, w)) {
        return;
    }
    let at = best.partition_point(|b| before(b, &cand));
    best.insert(at, cand);
    best.truncate(k);
}

/// The `k` rows nearest to each query (rows of `queries`, `dim` values
/// each) among `total` rows that `read(start, count)` returns a block at a
/// time (`block_rows` rows), nearest first, ties to the lower row. Squared
/// distances are screened as |q|^2 + |x|^2 - 2 q.x with one GEMM per block;
/// those that may enter the k best are recomputed exactly (f64) and kept.
pub fn nearest_blocks(
    queries: &[f32],
    dim: usize,
    k: usize,
    total: usize,
    block_rows: usize,
    mut read: impl FnMut(usize, usize) -> Result<Vec<f32>>,
) -> Result<Vec<Vec<Neighbor>>> {
    if dim == 0 || !queries.len().is_multiple_of(dim) {
        return Err(Error::Shape {
            op: "nearest",
            detail: format!("{} query values are not whole rows of {dim}", queries.len()),
        });
    }
    if k == 0 {
        return Err(Error::Config("--k must be at least 1".into()));
    }
    if k > total {
        return Err(Error::Config(format!(
            "--k {k} is larger than the set's {total} images; pass --k {total} or less"
        )));
    }
    let nq = queries.len() / dim;
    let block_rows = block_rows.max(1);
    let qn: Vec<f64> = queries.chunks_exact(dim).map(sq_norm).collect();
    let gamma = dot_error_bound(dim);
    let underflow = 2.0 * dim as f64 * f64::from(f32::from_bits(1));
    let mut best: Vec<Vec<Neighbor>> = vec![Vec::with_capacity(k + 1); nq];
    let mut dots = Vec::new();
    let mut start = 0;
    while start < total {
        let count = block_rows.min(total - start);
        let block = read(start, count)?;
        crate::error::check_len("nearest", "feature block", block.len(), count * dim)?;
        // dots[q, j] = queries[q] . block[j]: Q [nq, dim] times B^T [dim, count].
        dots.clear();
        dots.resize(nq * count, 0.0f32);
        sgemm(
            nq,
            count,
            dim,
            &mut dots,
            count,
            false,
            MatRef {
                data: queries,
                rs: dim,
                cs: 1,
            },
            MatRef {
                data: &block,
                rs: 1,
                cs: dim,
            },
            gemm::Parallelism::Rayon(0),
        );
        let xn: Vec<f64> = block.chunks_exact(dim).map(sq_norm).collect();
        for (q, best) in best.iter_mut().enumerate() {
            let qrow = &queries[q * dim..(q + 1) * dim];
            for j in 0..count {
                let approx = qn[q] + xn[j] - 2.0 * dots[q * count + j] as f64;
                // The f32 dot errs by at most gamma |q| |x|, so `approx` by
                // 2 gamma |q| |x| <= gamma (|q|^2 + |x|^2), and by products
                // that underflow, at most half the smallest subnormal each:
                // a row skipped is farther than the k-th best (kept as f32,
                // hence its last place), and every other is decided exactly.
                let slack = gamma * (qn[q] + xn[j]) + underflow;
                if best.len() == k {
                    if let Some(w) = best.last() {
                        if approx - slack > w.dist2 as f64 * (1.0 + f32::EPSILON as f64) {
                            continue;
                        }
                    }
                }
                let exact = sq_dist(qrow, &block[j * dim..(j + 1) * dim]);
                keep_best(
                    best,
                    Neighbor {
                        row: start + j,
                        dist2: exact as f32,
                    },
                    k,
                );
            }
        }
        start += count;
    }
    Ok(best)
}

fn sq_norm(x: &[f32]) -> f64 {
    x.iter().map(|&v| v as f64 * v as f64).sum()
}

/// The bound on an f32 dot product's error relative to sum |a_i b_i| for
/// rows of `dim`, in any order of summation: gamma_n = n u / (1 - n u),
/// u = 2^-24 (Higham, "Accuracy and Stability of Numerical Algorithms",
/// 2nd ed., 2002, eq. 3.5); infinite where n u reaches 1.
fn dot_error_bound(dim: usize) -> f64 {
    let nu = dim as f64 * f32::EPSILON as f64 / 2.0;
    if nu < 1.0 {
        nu / (1.0 - nu)
    } else {
        f64::INFINITY
    }
}

fn sq_dist(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = x as f64 - y as f64;
            d * d
        })
        .sum()
}

/// `nearest_blocks` over a matrix in memory ([rows, dim], C order).
pub fn nearest_in_matrix(
    x: &[f32],
    dim: usize,
    queries: &[f32],
    k: usize,
    block_rows: usize,
) -> Result<Vec<Vec<Neighbor>>> {
    let total = x.len().checked_div(dim).unwrap_or(0);
    nearest_blocks(queries, dim, k, total, block_rows, |s, c| {
        finite_rows(x[s * dim..(s + c) * dim].to_vec(), dim, s, "the features")
    })
}

/// `block` (rows from `start` on, `dim` values each) when every value is
/// finite; else an error naming `whose` row: no distance to a NaN means
/// anything (and one would sort as 0, the nearest).
fn finite_rows(block: Vec<f32>, dim: usize, start: usize, whose: &str) -> Result<Vec<f32>> {
    match block.iter().position(|v| !v.is_finite()) {
        None => Ok(block),
        Some(i) => Err(Error::Data(format!(
            "{whose}: row {}, value {}, is {}, not a finite number, so no distance to it means anything; compute the features again with `features` from weights that are finite",
            start + i / dim.max(1),
            i % dim.max(1),
            block[i]
        ))),
    }
}

/// `nearest_blocks` over a [rows, dim] float32 .npy file, read a block at a time.
pub fn nearest_in_npy(
    path: &Path,
    queries: &[f32],
    k: usize,
    block_rows: usize,
) -> Result<Vec<Vec<Neighbor>>> {
    let mut f = NpyRows::open(path)?;
    let (rows, dim) = (f.rows, f.cols);
    if dim == 0 || !queries.len().is_multiple_of(dim) {
        return Err(Error::Data(format!(
            "{}: rows of {dim} values, but the queries have {} values",
            path.display(),
            queries.len()
        )));
    }
    let whose = path.display().to_string();
    nearest_blocks(queries, dim, k, rows, block_rows, |s, c| {
        finite_rows(f.read(s, c)?, dim, s, &whose)
    })
}

/// What `neighbors` needs besides the device.
pub struct NeighborsJob<'a> {
    pub ck: &'a Checkpoint,
    /// The set searched: a store, a `prepare` output (its train/) or a class folder.
    pub data: &'a Path,
    pub queries: &'a [PathBuf],
    pub k: usize,
    /// The picture; without `features`, fc7 of the set goes beside it
    /// (`grid.png` gets `grid.fc7.npy`).
    pub out: &'a Path,
    pub features: Option<&'a Path>,
    pub batch: usize,
    pub limit: Option<usize>,
    pub workers: usize,
    pub progress: bool,
    /// Side of each picture in the grid (images are downscaled to it).
    pub cell: usize,
}

/// One neighbour as reported: rank 1 is the nearest.
#[derive(Clone, Debug, PartialEq)]
pub struct Found {
    pub rank: usize,
    /// Row of the feature matrix and index of the image in the set.
    pub row: usize,
    pub index: usize,
    pub label: u32,
    pub class: String,
    pub dist: f32,
    pub source: Option<String>,
}

pub struct QueryResult {
    pub query: PathBuf,
    pub neighbors: Vec<Found>,
}

pub struct NeighborsReport {
    pub features: PathBuf,
    /// Whether the set's features were computed by this run (else read).
    pub computed: bool,
    /// Rows searched, and the set's images asked for (more when some
    /// could not be read).
    pub set_rows: usize,
    pub images: usize,
    pub results: Vec<QueryResult>,
    /// Why each image left out of the rows by this run could not be read.
    pub unread: Vec<Error>,
}

/// The fc7 features file `neighbors` writes beside its picture.
pub fn default_features_path(out: &Path) -> PathBuf {
    out.with_extension(format!("{NEIGHBOR_LAYER}.npy"))
}

/// For each query image (decoded, resized and centre-cropped as `predict`
/// does), its k nearest images of the set by fc7 Euclidean distance; the
/// picture goes to `job.out`.
pub fn neighbors<B: Backend>(be: &B, job: &NeighborsJob) -> Result<NeighborsReport> {
    let ck = job.ck;
    let topo = ck.state.net.topology()?;
    let width = activation_width(&topo, NEIGHBOR_LAYER)?;
    // Where the picture goes, and whether it can be drawn, before any
    // image is read: the set's features may take an hour.
    check_writable(job.out).map_err(|e| Error::Config(format!("--out {e}")))?;
    if job.features.is_none() {
        let features = default_features_path(job.out);
        check_target(&features).map_err(|e| Error::Config(format!("the fc7 file {e}")))?;
        check_beside(&features, "--out")?;
    }
    grid_size(job.queries.len(), job.k.saturating_add(1), job.cell)?;
    // The queries next: a bad file fails before the set is read (from a
    // folder, every image decoded).
    let query_cells = query_cells(job)?;
    let fs = open_set(job.data, ck, "train", "search those images")?;
    let indices = spread(fs.set.len(), job.limit);
    check_job(job, indices.len())?;
    let given = match job.features {
        Some(f) => Some(check_features(job, f, &fs, &indices, (width, &topo.name))?),
        None => None,
    };
    // Sized for the larger of the set and the queries' batches: both go
    // through this network, and the memory check must see the larger.
    let most = indices.len().max(job.queries.len());
    let (mut net, cfg) = sized_network(be, ck, &topo, (job.batch, job.workers), most)?;
    let q = query_features(&mut net, job, width)?;
    finite_queries(&q, width, job.queries)?;
    // Features read from a file: this run reads none of the set's images.
    let (features, rows, unread) = match given {
        Some((f, rows)) => (f, rows, Vec::new()),
        None => set_features(&mut net, job, &fs, &indices, &cfg)?,
    };
    // Fewer rows than --k because images could not be read: name them.
    if let Err(e) = check_job(job, rows.len()) {
        return Err(match unread.is_empty() {
            true => e,
            false => Error::Data(format!(
                "{e}, as {}",
                crate::data::unread_error(unread, indices.len())
            )),
        });
    }
    let found = nearest_in_npy(&features, &q, job.k, BLOCK_ROWS)?;
    let results = query_results(job, &fs, &rows, found);
    let grid = grid_rows(&results, query_cells, &fs, job.cell)?;
    render_grid(job.out, &grid, job.cell)?;
    Ok(NeighborsReport {
        features,
        computed: job.features.is_none(),
        set_rows: rows.len(),
        images: indices.len(),
        results,
        unread,
    })
}

/// The set's fc7 computed into the file beside `job.out`, with its row
/// table and record. Returns the file, the set's image of each row and the
/// images left out as unreadable.
fn set_features<B: Backend>(
    net: &mut Network<'_, B>,
    job: &NeighborsJob,
    fs: &FeatureSet,
    indices: &[usize],
    cfg: &LoaderConfig,
) -> Result<(PathBuf, Vec<usize>, Vec<Error>)> {
    let features = default_features_path(job.out);
    let pb = crate::progress::bar(indices.len(), "fc7", job.progress);
    let what = (NEIGHBOR_LAYER, job.ck);
    let w = write_features(net, what, (fs, indices), cfg, &features, |d| {
        pb.set_position(d as u64)
    })?;
    pb.finish_and_clear();
    Ok((features, w.kept, w.unread))
}

/// Refuse a k the set of `n` images cannot give, and a job without queries.
fn check_job(job: &NeighborsJob, n: usize) -> Result<()> {
    if job.k == 0 {
        return Err(Error::Config("--k must be at least 1".into()));
    }
    if job.k > n {
        return Err(Error::Config(format!(
            "--k {} is larger than the set's {n} images; pass --k {n} or less",
            job.k
        )));
    }
    if job.queries.is_empty() {
        return Err(Error::Config("give at least one --query image".into()));
    }
    Ok(())
}

/// A given features file, checked against the set (its rows `indices`,
/// less those its record says were left out as unreadable) and the network
/// (`width` values a row, of config `config`). Returns the file and the
/// set's image of each row.
fn check_features(
    job: &NeighborsJob,
    f: &Path,
    fs: &FeatureSet,
    indices: &[usize],
    (width, config): (usize, &str),
) -> Result<(PathBuf, Vec<usize>)> {
    let rows = NpyRows::open(f)?;
    // The record first: it names the layer or weights that differ.
    let left_out = check_meta(f, job.ck)?;
    if rows.cols != width {
        return Err(Error::Data(format!(
            "{}: rows of {} values, but {NEIGHBOR_LAYER} of the checkpoint's config {config} has {width}; the file holds another layer's or another network's features: compute them with `alexnet-cuda features --layer {NEIGHBOR_LAYER}` and this checkpoint",
            f.display(),
            rows.cols,
        )));
    }
    let kept = without(indices, &left_out);
    let n = kept.len();
    if rows.rows != n {
        let unread = match indices.len() - n {
            0 => String::new(),
            k => format!(
                " ({k} left out, as its record says they could not be read when it was computed: if those files were removed or replaced since, the rows no longer line up with the set)"
            ),
        };
        return Err(Error::Data(format!(
            "{}: {} rows, but the set has {n} images{unread}{}; compute them with `alexnet-cuda features --layer {NEIGHBOR_LAYER} --data {}`{}",
            f.display(),
            rows.rows,
            if job.limit.is_some() { " (with --limit)" } else { "" },
            crate::shell::word(&fs.root),
            if job.limit.is_some() { " and the same --limit" } else { "" },
        )));
    }
    check_rows_csv(f, fs, &kept)?;
    Ok((f.to_path_buf(), kept))
}

/// The rows of features file `f` as its `.rows.csv` lists them (image
/// index and label), against the set's: a file of the same row count
/// computed on other data, or with another --limit, is refused at the
/// first row that differs. Without the CSV there is nothing to check.
fn check_rows_csv(f: &Path, fs: &FeatureSet, indices: &[usize]) -> Result<()> {
    let csv = rows_csv_path(f);
    let Some(text) = read_beside(f, &csv, "which images its rows are")? else {
        return Ok(());
    };
    // Each record's index and label (after the header; csv reads the quoted
    // names and paths whole).
    let listed: Vec<Option<Row>> = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes())
        .records()
        .map(|r| {
            let r = r.ok()?;
            let source = r.get(5).unwrap_or_default().to_string();
            Some((r.get(1)?.parse().ok()?, r.get(2)?.parse().ok()?, source))
        })
        .collect();
    let source = |i: usize| fs.sources.as_ref().and_then(|s| s.get(i).cloned());
    let want = |i: usize| (i, fs.set.label(i) as usize, source(i).unwrap_or_default());
    // Sources are compared where both sides know them (older files and
    // sets without source names leave them empty); a folder's are named
    // under it, older files' with the folder as typed then.
    let under = |long: &str, short: &str| long.ends_with(&format!("/{short}"));
    let named = |a: &str, b: &str| a == b || under(a, b) || under(b, a);
    let same = |a: &Row, b: &Row| {
        a.0 == b.0 && a.1 == b.1 && (a.2.is_empty() || b.2.is_empty() || named(&a.2, &b.2))
    };
    let differs = (listed.iter().zip(indices))
        .position(|(a, &i)| !a.as_ref().is_some_and(|a| same(a, &want(i))));
    let what = |(i, l, s): &Row| match s.is_empty() {
        true => format!("image {i} of class {l}"),
        false => format!("image {i} of class {l} ({s})"),
    };
    let problem = match differs {
        Some(r) => format!(
            "row {r} is {}, and in this set it is {}",
            listed[r].as_ref().map_or("unreadable".into(), what),
            what(&want(indices[r]))
        ),
        None if listed.len() != indices.len() => {
            format!(
                "it lists {} rows, for {} images",
                listed.len(),
                indices.len()
            )
        }
        None => return Ok(()),
    };
    Err(Error::Data(format!(
        "{}: {problem}: the features come from other data or another --limit; compute them with `alexnet-cuda features --layer {NEIGHBOR_LAYER} --data {}`",
        csv.display(),
        crate::shell::word(&fs.root)
    )))
}

/// A `.rows.csv` record: image index, label, source file ("" if none).
type Row = (usize, usize, String);

/// Each query as its cell of the picture, or one error naming every
/// query that cannot be read. Decoded a group at a time, so the full-size
/// pixels of at most one group are held.
fn query_cells(job: &NeighborsJob) -> Result<Vec<GridCell>> {
    let size = job.ck.state.preprocess.image_size;
    let (mut cells, mut failed) = (Vec::with_capacity(job.queries.len()), Vec::new());
    for paths in job.queries.chunks(QUERY_GROUP) {
        let (read, pixels, bad) = decode_some(paths, size);
        failed.extend(bad);
        for (i, px) in read.into_iter().zip(pixels.chunks_exact(size * size * 3)) {
            let name = paths[i].file_name().unwrap_or_default().to_string_lossy();
            let lines = ["query".into(), name.into_owned()];
            cells.push(GridCell::scaled(px, size, job.cell, lines)?);
        }
    }
    match failed.is_empty() {
        true => Ok(cells),
        false => Err(unread_error(failed, job.queries.len())),
    }
}

/// The queries' features, each decoded, resized and centre-cropped as the
/// set's images were: decoded again (they are few beside the set), a group
/// of whole batches at a time.
fn query_features<B: Backend>(
    net: &mut Network<'_, B>,
    job: &NeighborsJob,
    width: usize,
) -> Result<Vec<f32>> {
    let (ck, nq) = (job.ck, job.queries.len());
    let size = ck.state.preprocess.image_size;
    let batch = job.batch.clamp(1, nq.max(1));
    // Whole batches, as many as fit in QUERY_GROUP (one when it is larger).
    let group = batch * (QUERY_GROUP / batch).max(1);
    let mut q = Vec::with_capacity(nq * width);
    for paths in job.queries.chunks(group) {
        let (_, pixels, failed) = decode_some(paths, size);
        // Read a moment ago: one that fails now changed since.
        if !failed.is_empty() {
            return Err(unread_error(failed, paths.len()));
        }
        let n = paths.len();
        let labels = vec![0; n];
        let qset = ImageSet::from_parts(size, pixels, labels, ck.state.classes.clone())?;
        let qset: Arc<dyn ImageSource> = Arc::new(qset);
        let qidx: Vec<usize> = (0..n).collect();
        let qcfg = feature_loader(ck, batch.min(n), 0);
        let sink = |rows: &[f32]| {
            q.extend_from_slice(rows);
            Ok(())
        };
        for_each_batch(net, NEIGHBOR_LAYER, &qset, &qidx, &qcfg, sink, |_| {})?;
    }
    Ok(q)
}

/// Refuse a query whose features are not all finite numbers: every
/// distance from it would be infinite or NaN, and its "neighbours" the
/// set's first rows. The network overflowed on that image.
fn finite_queries(q: &[f32], width: usize, queries: &[PathBuf]) -> Result<()> {
    let Some(i) = q.iter().position(|v| !v.is_finite()) else {
        return Ok(());
    };
    let query = queries
        .get(i / width.max(1))
        .map_or(Path::new("?"), |p| p.as_path());
    Err(Error::Data(format!(
        "--query {}: its {NEIGHBOR_LAYER} features hold {} (value {}), not a finite number, so no distance from it means anything: the network overflowed on this image (weights too large, or --precision fp16/bf16: try fp32)",
        query.display(),
        q[i],
        i % width.max(1)
    )))
}

/// Each query's neighbours as reported: the set's image, its class, the
/// distance and its source file.
fn query_results(
    job: &NeighborsJob,
    fs: &FeatureSet,
    indices: &[usize],
    found: Vec<Vec<Neighbor>>,
) -> Vec<QueryResult> {
    job.queries
        .iter()
        .zip(found)
        .map(|(p, list)| QueryResult {
            query: p.clone(),
            neighbors: list
                .iter()
                .enumerate()
                .map(|(r, n)| {
                    let index = indices[n.row];
                    let label = fs.set.label(index);
                    Found {
                        rank: r + 1,
                        row: n.row,
                        index,
                        label,
                        class: fs.class_name(job.ck, label),
                        dist: n.dist(),
                        source: fs.sources.as_ref().and_then(|s| s.get(index).cloned()),
                    }
                })
                .collect(),
        })
        .collect()
}

/// The picture's rows: each query's cell, then its neighbours', each
/// scaled to `cell` pixels as it is read (the set's images at full size
/// would be (k + 1) of them per query in memory).
fn grid_rows(
    results: &[QueryResult],
    query_cells: Vec<GridCell>,
    fs: &FeatureSet,
    cell: usize,
) -> Result<Vec<Vec<GridCell>>> {
    let mut rows = Vec::with_capacity(results.len());
    let mut scratch = Vec::new();
    let side = fs.set.size();
    for (r, query) in results.iter().zip(query_cells) {
        let mut cells = vec![query];
        for n in &r.neighbors {
            let lines = [n.class.clone(), format!("d = {:.1}", n.dist)];
            // An image changed since its features were taken: the search
            // stands, drawn without it.
            cells.push(match fs.set.pixels(n.index, &mut scratch) {
                Ok(px) => GridCell::scaled(px, side, cell, lines)?,
                Err(e) => {
                    tracing::warn!("{e}; drawn as a grey cell in the picture");
                    let c = grid_cell(cell) as usize;
                    GridCell {
                        pixels: vec![128; c * c * 3],
                        side: c,
                        lines,
                    }
                }
            });
        }
        rows.push(cells);
    }
    Ok(rows)
}

/// One picture of the grid with two lines of text under it.
pub struct GridCell {
    /// `side x side x 3` HWC RGB.
    pub pixels: Vec<u8>,
    pub side: usize,
    pub lines: [String; 2],
}

impl GridCell {
    /// `pixels` (`side` square) scaled to the grid's `cell` pixels.
    pub fn scaled(pixels: &[u8], side: usize, cell: usize, lines: [String; 2]) -> Result<Self> {
        let c = grid_cell(cell);
        Ok(GridCell {
            pixels: scale_to(pixels, side as u32, c)?.into_owned(),
            side: c as usize,
            lines,
        })
    }
}

/// A `side` square RGB picture scaled to `cell` pixels (borrowed as it is
/// when `side` is `cell`, as the grid's cells are once scaled).
fn scale_to(pixels: &[u8], side: u32, cell: u32) -> Result<Cow<'_, [u8]>> {
    if side == cell {
        return Ok(Cow::Borrowed(pixels));
    }
    let img = image::ImageBuffer::<image::Rgb<u8>, &[u8]>::from_raw(side, side, pixels)
        .ok_or_else(|| Error::Shape {
            op: "render_grid",
            detail: format!(
                "a picture of {} bytes is not {side}x{side} RGB",
                pixels.len()
            ),
        })?;
    let scaled = image::imageops::resize(&img, cell, cell, FilterType::Triangle);
    Ok(Cow::Owned(scaled.into_raw()))
}

/// A cell's side as the grid draws it: `--cell` held to 16 to 1024.
fn grid_cell(cell: usize) -> u32 {
    cell.clamp(16, 1024) as u32
}

/// The grid's margins, text height under a picture and gap after the query
/// column, pixels.
const GRID_PAD: u32 = 6;
const GRID_TEXT: u32 = 30;
const GRID_GAP: u32 = 12;
/// Queries decoded at once, at least (a whole number of batches).
const QUERY_GROUP: usize = 256;
/// The largest picture drawn, RGB bytes: it is held whole in memory, and
/// few viewers open larger PNGs.
const GRID_MAX_BYTES: u64 = 1 << 30;

/// Width and height of a grid of `rows` rows of `cols` cells of `cell`
/// pixels (held to 16 to 1024); an error when the picture would pass
/// `GRID_MAX_BYTES`.
pub fn grid_size(rows: usize, cols: usize, cell: usize) -> Result<(u32, u32)> {
    let cell = cell.clamp(16, 1024) as u64;
    let (pad, text, gap) = (GRID_PAD as u64, GRID_TEXT as u64, GRID_GAP as u64);
    let (rows, cols) = (rows as u64, cols as u64);
    // Saturating throughout: a --k near 2^64 is too large, not a wrap.
    let width = (cols.saturating_mul(cell + pad))
        .saturating_add(pad)
        .saturating_add(if cols > 1 { gap } else { 0 });
    let height = rows.saturating_mul(cell + text + pad).saturating_add(pad);
    let bytes = width.saturating_mul(height).saturating_mul(3);
    if bytes > GRID_MAX_BYTES {
        return Err(Error::Config(format!(
            "--out: a grid of {rows} queries x {cols} pictures of {cell} pixels is {width}x{height} pixels ({:.1} GiB), more than the {} GiB drawn at most; pass fewer --query images, a smaller --k or a smaller --cell",
            bytes as f64 / (1u64 << 30) as f64,
            GRID_MAX_BYTES >> 30
        )));
    }
    Ok((width as u32, height as u32))
}

/// Draw `rows` of cells, each picture scaled to `cell` pixels (held to 16
/// to 1024, the range `neighbors --cell` takes), the text under it, a gap
/// after each row's first cell (the query), as a PNG.
pub fn render_grid(path: &Path, rows: &[Vec<GridCell>], cell: usize) -> Result<()> {
    ensure_font()?;
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let (width, height) = grid_size(rows.len(), cols, cell)?;
    let cell = grid_cell(cell);
    let (pad, text_h, query_gap) = (GRID_PAD, GRID_TEXT, GRID_GAP);
    let mut rgb = vec![255u8; width as usize * height as usize * 3];
    let x_of = |c: u32| pad + c * (cell + pad) + if c > 0 { query_gap } else { 0 };
    for (r, cells) in rows.iter().enumerate() {
        let y0 = pad + r as u32 * (cell + text_h + pad);
        for (c, gc) in cells.iter().enumerate() {
            let img = scale_to(&gc.pixels, gc.side as u32, cell)?;
            let x0 = x_of(c as u32) as usize;
            for (y, line) in img.chunks_exact(cell as usize * 3).enumerate() {
                let at = ((y0 as usize + y) * width as usize + x0) * 3;
                rgb[at..at + line.len()].copy_from_slice(line);
            }
        }
    }
    {
        let draw_err = |e: String| Error::Backend(format!("{}: drawing: {e}", path.display()));
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        let style = TextStyle::from((FONT, 12).into_font()).color(&BLACK);
        let max_chars = (cell as usize / 7).max(4);
        for (r, cells) in rows.iter().enumerate() {
            let y0 = pad + r as u32 * (cell + text_h + pad) + cell + 2;
            for (c, gc) in cells.iter().enumerate() {
                let x0 = x_of(c as u32);
                for (l, text) in gc.lines.iter().enumerate() {
                    let t: String = if text.chars().count() > max_chars {
                        let mut s: String = text.chars().take(max_chars - 1).collect();
                        s.push('.');
                        s
                    } else {
                        text.clone()
                    };
                    root.draw_text(&t, &style, (x0 as i32, (y0 + 14 * l as u32) as i32))
                        .map_err(|e| draw_err(e.to_string()))?;
                }
            }
        }
        root.present().map_err(|e| draw_err(e.to_string()))?;
    }
    write_rgb_png(path, &rgb, width, height)
}

/// What `features` needs besides the device.
pub struct FeaturesJob<'a> {
    pub ck: &'a Checkpoint,
    /// A store, a `prepare` output (its val/) or a class folder.
    pub data: &'a Path,
    pub layer: &'a str,
    pub out: &'a Path,
    pub batch: usize,
    pub limit: Option<usize>,
    pub workers: usize,
    pub progress: bool,
}

pub struct FeaturesReport {
    pub rows: usize,
    pub width: usize,
    pub rows_csv: PathBuf,
    /// Whether the rows name their source files.
    pub sources: bool,
    /// Images asked for, and why each unreadable one was left out.
    pub images: usize,
    pub unread: Vec<Error>,
}

/// Write `job.layer`'s activations of the set to `job.out`, and the row
/// table beside it (`rows_csv_path`).
pub fn features<B: Backend>(be: &B, job: &FeaturesJob) -> Result<FeaturesReport> {
    let ck = job.ck;
    let topo = ck.state.net.topology()?;
    // An unknown layer, an --out that cannot be written, or a folder where
    // a file goes beside it, fails before the data is opened.
    activation_width(&topo, job.layer)?;
    check_writable(job.out).map_err(|e| Error::Config(format!("--out {e}")))?;
    check_beside(job.out, "--out")?;
    let fs = open_set(job.data, ck, "val", "take features of those images")?;
    let indices = spread(fs.set.len(), job.limit);
    let (mut net, cfg) = sized_network(be, ck, &topo, (job.batch, job.workers), indices.len())?;
    let pb = crate::progress::bar(indices.len(), job.layer, job.progress);
    let what = (job.layer, ck);
    let w = write_features(&mut net, what, (&fs, &indices), &cfg, job.out, |d| {
        pb.set_position(d as u64)
    })?;
    pb.finish_and_clear();
    let rows_csv = rows_csv_path(job.out);
    Ok(FeaturesReport {
        rows: w.kept.len(),
        width: w.width,
        rows_csv,
        sources: fs.sources.is_some(),
        images: indices.len(),
        unread: w.unread,
    })
}
