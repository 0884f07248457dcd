//! The images a run validated on, found again from its checkpoint (`eval
//! --held-out`): its store's `val/`, or the `--val` images it held out of
//! its training data, drawn again from the run's seed by the split training
//! used (`split_indices`, after `--limit`'s `balanced_subset` on a folder).
//! The data must be as it was: the classes, the image counts and a digest
//! of the held-out images' names (`names_digest`) are checked against the
//! checkpoint's, since a change could move the split.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::checkpoint::Checkpoint;
use crate::data::packed::{is_store, is_store_or_prepared};
use crate::data::store::split_indices;
use crate::data::PackedStore;
use crate::data::{
    folder_digest, held_out_files, limited_len, store_digest, FileSource, ImageFolder, ImageSource,
};
use crate::error::{Error, Result};
use crate::eval::fit_to_checkpoint;
use crate::fsutil::resolved;
use crate::train::data_difference;

/// The held-out images: indices into `set`, and the folder they are in.
pub struct HeldOut {
    pub set: Arc<dyn ImageSource>,
    pub idx: Vec<usize>,
    pub root: PathBuf,
}

/// The images `ck`'s run validated on, in its data folder (`data`, or the
/// one the checkpoint names when None).
pub fn held_out(ck: &Checkpoint, data: Option<&Path>) -> Result<HeldOut> {
    let st = &ck.state;
    if st.options.demo && data.is_none() {
        return Err(Error::Config(format!(
            "--held-out: {} is a `train --demo` run, whose images were temporary; evaluate it on new ones with --demo",
            ck.path.display()
        )));
    }
    let root = data.map_or_else(|| PathBuf::from(&st.data), Path::to_path_buf);
    if !root.is_dir() {
        return Err(Error::Config(match data {
            Some(d) => format!(
                "--held-out --data {}: not a folder; pass the folder {} trained on, or leave --data out for the one it names ({})",
                d.display(),
                ck.path.display(),
                st.data
            ),
            None => format!(
                "--held-out: {} trained on {}, which is not a folder here now; pass --data with where its images are",
                ck.path.display(),
                root.display()
            ),
        }));
    }
    let (set, idx) = if is_store(&root.join("train")) && is_store(&root.join("val")) {
        prepared_pair(ck, &root)?
    } else if is_store_or_prepared(&root) {
        let dir = if is_store(&root) {
            root.clone()
        } else {
            root.join("train")
        };
        store_split(ck, &dir)?
    } else {
        folder_split(ck, &root)?
    };
    Ok(HeldOut {
        set: fit_to_checkpoint(&root, set, ck)?,
        idx,
        root,
    })
}

/// Whether `path`, as eval reads it (a store, a `prepare` output's val/,
/// or a class folder), is the folder `ck`'s run trained from: then its
/// images are the run's training images (and any it held out), and their
/// error is not a validation error.
pub fn is_training_data(ck: &Checkpoint, path: &Path) -> bool {
    let st = &ck.state;
    if st.options.demo {
        return false;
    }
    let data = PathBuf::from(&st.data);
    let trained = if is_store(&data.join("train")) {
        data.join("train")
    } else {
        data
    };
    let read = if !is_store(path) && is_store(&path.join("val")) {
        path.join("val")
    } else {
        path.to_path_buf()
    };
    resolved(&read) == resolved(&trained)
}

/// The held-out images in a `prepare` output with both stores: its val/
/// for a run given the root, the `--val` split of its train/ for a run
/// given train/ alone (which never read val/). The run's recorded data
/// says which to try first; moved data (`--data`) is tried both ways.
fn prepared_pair(ck: &Checkpoint, root: &Path) -> Result<(Arc<dyn ImageSource>, Vec<usize>)> {
    let train = root.join("train");
    let split = || store_split(ck, &train);
    let val = || val_store(ck, root);
    match resolved(Path::new(&ck.state.data)) == resolved(&train) {
        true => split().or_else(|e| val().map_err(|_| e)),
        false => val().or_else(|e| split().map_err(|_| e)),
    }
}

/// Every image of `root`'s val/ store, checked against its train/.
fn val_store(ck: &Checkpoint, root: &Path) -> Result<(Arc<dyn ImageSource>, Vec<usize>)> {
    let val = PackedStore::open(&root.join("val"))?;
    let train = PackedStore::open(&root.join("train"))?;
    let all: Vec<usize> = (0..val.len()).collect();
    let found = Found {
        classes: val.classes(),
        trained: limited_len(train.len(), ck.state.options.limit),
        digest: store_digest(&val, &all).ok(),
    };
    check_same(ck, root, found, all.len())?;
    Ok((Arc::new(val), all))
}

/// A store's `--val` images: the split `load_store` made (`--limit` draws
/// from the rest, so it leaves the held-out images alone).
fn store_split(ck: &Checkpoint, dir: &Path) -> Result<(Arc<dyn ImageSource>, Vec<usize>)> {
    let store = PackedStore::open(dir)?;
    let opts = &ck.state.options;
    let n = store.len();
    let trained = n.saturating_sub(opts.val);
    let (_, val) = split_indices(n, opts.val, opts.seed);
    let found = Found {
        classes: store.classes(),
        trained: limited_len(trained, opts.limit),
        digest: store_digest(&store, &val).ok(),
    };
    check_same(ck, dir, found, val.len())?;
    Ok((Arc::new(store), val))
}

/// A class folder's `--val` images (`held_out_files`).
fn folder_split(ck: &Checkpoint, root: &Path) -> Result<(Arc<dyn ImageSource>, Vec<usize>)> {
    let folder = ImageFolder::scan_for(root, "--data")?;
    let opts = &ck.state.options;
    let idx = held_out_files(&folder, opts.limit, opts.val, opts.seed);
    let chosen = limited_len(folder.len(), opts.limit);
    let found = Found {
        classes: folder.classes(),
        trained: chosen - idx.len(),
        digest: Some(folder_digest(&folder, &idx)),
    };
    check_same(ck, root, found, idx.len())?;
    let size = ck.state.preprocess.image_size;
    Ok((Arc::new(FileSource::new(&folder, size)), idx))
}

/// What the data found now holds, to compare with the checkpoint's.
struct Found<'a> {
    classes: &'a [String],
    /// The images the run would have trained on.
    trained: usize,
    /// `names_digest` of the held-out images, where names are known.
    digest: Option<u32>,
}

/// The data at `path` must be the run's: its classes, the images it
/// trained on and the `validated` ones it held out, as many as the
/// checkpoint says and, where it recorded them, by the same names.
fn check_same(ck: &Checkpoint, path: &Path, found: Found, validated: usize) -> Result<()> {
    let st = &ck.state;
    let was = (&st.classes[..], st.train_images);
    let diff = data_difference(was, (found.classes, found.trained))
        .or_else(|| {
            (validated != st.val_images).then(|| {
                format!(
                    "{validated} images would be held out, and the run validated on {}",
                    st.val_images
                )
            })
        })
        .or_else(|| match (st.val_digest, found.digest) {
            (Some(a), Some(b)) if a != b => Some(
                "the held-out images are not the ones the run validated on (files added, removed or renamed)".into(),
            ),
            _ => None,
        });
    if let Some(d) = diff {
        return Err(Error::Config(format!(
            "--held-out: {} is not the data {} trained on: {d}; the held-out images cannot be found again; evaluate instead on images the run did not train on, with --data DIR and no --held-out",
            path.display(),
            ck.path.display()
        )));
    }
    if st.val_digest.is_none() || found.digest.is_none() {
        tracing::warn!(
            "--held-out: the names of the held-out images cannot be compared (a checkpoint from before they were recorded, or a store without its source list); checked by class and image counts only"
        );
    }
    Ok(())
}
