//! `alexnet-cuda prepare`: turn an ImageNet-style tree into packed stores.
//! Every image is decoded (any of `decode::FORMATS`; greyscale, CMYK), its
//! short side scaled to `size` with Lanczos-3, the centre `size x size` kept
//! (section 2) and re-encoded, on every core; the results are written in
//! file order, so a store is the same for any thread count. Bad images
//! (empty, truncated, not images) are skipped, counted and listed in
//! `skipped.txt`; a file that cannot be read at all stops it. The
//! training store also carries the statistics the loader needs: the mean
//! image, channel mean and std, and the RGB covariance whose PCA drives the
//! lighting noise. Images stored with the same pixels as another (under
//! another class, or in both train and val) are listed and warned of
//! (`duplicates`).
//!
//! Layouts: train as `<root>/<synset>/*.JPEG`; val as class folders too, or
//! flat with `--val-labels`: a CSV of `file,synset` (Kaggle's
//! `LOC_val_solution.csv` works), or the devkit's ground-truth file (one
//! ILSVRC2012_ID per line, files in name order) with `--val-synsets` listing
//! the synsets in devkit ID order. Labels are the index of the synset in
//! sorted order, the standard ILSVRC-2012 class order.
use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;

use super::decode::{can_open, decode_file, encode_jpeg};
use super::duplicates::{self, pixel_hash, Duplicates, Hashed};
use super::folder::{
    image_kinds, is_hidden, is_image_name, not_a_folder, read_dir_sorted, ImageFolder, Kind,
    IMAGE_EXTENSIONS,
};
use super::lighting::Pca;
use super::packed::{
    is_store, is_unfinished_store, read_meta, remove_leftovers, retire_val, Encoding, Stats,
    StoreMeta, StoreWriter, Unfit, MAX_SIDE,
};
use super::store::{balanced_subset, limit_covers_classes, warn_of_a_limit_above, RgbSums};
use crate::error::{list_failures, Error, Result};
use crate::fsutil::{
    create_dir_durably, lock_folder, missing_folders, refuse_file_in_the_way, resolved,
    short_of_room, size, tsv_field, write_atomic, ELSEWHERE,
};

/// Images handed to the thread pool at a time; results are written in order
/// after each chunk, so memory holds at most one chunk of encoded images:
/// 2048, or fewer where that would pass 1 GiB of raw pixels (large sizes).
fn chunk_len(size: usize) -> usize {
    let fit = (1usize << 30) / (size * size * 3).max(1);
    fit.max(rayon::current_num_threads()).min(2048)
}

#[derive(Clone, Debug)]
pub struct PrepareOptions {
    pub train: PathBuf,
    pub val: Option<PathBuf>,
    pub val_labels: Option<PathBuf>,
    pub val_synsets: Option<PathBuf>,
    /// `synset name...` per line (LOC_synset_mapping.txt, synset_words.txt).
    pub names: Option<PathBuf>,
    pub out: PathBuf,
    pub size: usize,
    pub encoding: Encoding,
    pub quality: u8,
    /// Take only this many training images (class-balanced), for quick runs.
    pub limit: Option<usize>,
    pub progress: bool,
    /// Set from outside (SIGINT/SIGTERM): stop between images, the store
    /// being written removed, any earlier one untouched.
    pub stop: Option<Arc<AtomicBool>>,
}

impl PrepareOptions {
    pub fn new(train: PathBuf, out: PathBuf) -> PrepareOptions {
        PrepareOptions {
            train,
            val: None,
            val_labels: None,
            val_synsets: None,
            names: None,
            out,
            size: 256,
            encoding: Encoding::Jpeg,
            quality: 90,
            limit: None,
            progress: true,
            stop: None,
        }
    }

    fn stopped(&self) -> bool {
        self.stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
    }
}

/// What `prepare` wrote: `out/train` and, with a val source, `out/val`.
#[derive(Clone, Debug)]
pub struct PrepareReport {
    pub train: StoreMeta,
    pub val: Option<StoreMeta>,
    /// Images stored with the same pixels as another (`duplicates.txt`).
    pub duplicates: Duplicates,
    pub seconds: f64,
}

/// A store inside the image tree would be scanned as a class next time;
/// images inside a store's folder (`--train D/train --out D`) would share it
/// with the store's files, and a killed run's would block every rerun's
/// scan. Paths are compared resolved (`..`, symbolic links), also when
/// `--out` is not made yet.
fn refuse_out_inside_images(opts: &PrepareOptions) -> Result<()> {
    let out = resolved(&opts.out);
    for src in std::iter::once(&opts.train).chain(opts.val.as_ref()) {
        let images = resolved(src);
        if out.starts_with(&images) {
            return Err(Error::Config(format!(
                "--out {} is inside {}; write the store somewhere outside the image tree",
                opts.out.display(),
                src.display()
            )));
        }
        // Each store's folder resolved itself: `--out/train` may be a link.
        let store = |s: &str| resolved(&opts.out.join(s));
        if let Some(split) = ["train", "val"].into_iter().find(|s| {
            let store = store(s);
            images.starts_with(&store) || store.starts_with(&images)
        }) {
            return Err(Error::Config(format!(
                "--out {}: its {split}/ store would be written among the images of {}; pass another --out, outside the image tree",
                opts.out.display(),
                src.display()
            )));
        }
    }
    Ok(())
}

/// A file (or a link to nothing) where a store's folder goes would stop
/// prepare only once that store is written: hours, and for val's, after
/// the train store was replaced. Refused before any work.
fn refuse_files_at_the_stores(opts: &PrepareOptions) -> Result<()> {
    let splits: &[&str] = match opts.val {
        Some(_) => &["train", "val"],
        None => &["train"],
    };
    for split in splits {
        let dir = opts.out.join(split);
        if fs::symlink_metadata(&dir).is_ok() && !dir.is_dir() {
            return Err(Error::Config(format!(
                "--out {}: {} is a file, where the {split} store's folder goes; move or remove it, or pass another --out",
                opts.out.display(),
                dir.display()
            )));
        }
    }
    Ok(())
}

/// A store `prepare` wrote, passed where the image tree goes, would be
/// scanned as class folders (or as none): say what it is.
fn refuse_stores_as_images(opts: &PrepareOptions) -> Result<()> {
    let given = std::iter::once(("--train", &opts.train));
    for (flag, dir) in given.chain(opts.val.iter().map(|v| ("--val", v))) {
        if [dir.clone(), dir.join("train"), dir.join("val")]
            .iter()
            .any(|d| is_store(d))
        {
            return Err(Error::Config(format!(
                "{flag} {}: a store written by prepare, not images; pass {flag} the folder of images it was prepared from (class sub-folders), or train on the store as it is (train --data)",
                dir.display()
            )));
        }
    }
    Ok(())
}

/// Links to nothing among the images to store (a drive not mounted) are
/// named before any image is encoded: found on the way, they would cost
/// the work done, and in val, the train store written again. `broken` is
/// what the folder's listing found, so no image costs a `stat` here.
fn refuse_broken_links(items: &[(PathBuf, u32)], broken: &[PathBuf], source: &Path) -> Result<()> {
    if broken.is_empty() {
        return Ok(());
    }
    let broken: HashSet<&PathBuf> = broken.iter().collect();
    let errors: Vec<Error> = items
        .iter()
        .filter(|(p, _)| broken.contains(p))
        .filter_map(|(p, _)| can_open(p).err())
        .collect();
    match errors.is_empty() {
        true => Ok(()),
        false => Err(unread(errors, &[], source)),
    }
}

/// Write `opts.out/train` (and `opts.out/val`).
pub fn prepare(opts: &PrepareOptions) -> Result<PrepareReport> {
    let start = Instant::now();
    if !(1..=100).contains(&opts.quality) {
        return Err(Error::Config(format!(
            "--quality {}: pass a JPEG quality from 1 to 100",
            opts.quality
        )));
    }
    if !(1..=MAX_SIDE).contains(&opts.size) {
        return Err(Error::Config(format!(
            "--size {}: pass an image side from 1 to {MAX_SIDE} (the paper: 256)",
            opts.size
        )));
    }
    refuse_file_in_the_way(&opts.out, "the stores")?;
    refuse_files_at_the_stores(opts)?;
    refuse_stores_as_images(opts)?;
    refuse_out_inside_images(opts)?;
    let folder = ImageFolder::scan_for(&opts.train, "--train")?;
    let classes = folder.classes().to_vec();
    let names = match &opts.names {
        Some(p) => read_names(p, &classes)?,
        None => Vec::new(),
    };
    let mut items: Vec<(PathBuf, u32)> = folder.items().to_vec();
    if let Some(k) = opts.limit {
        if k == 0 {
            return Err(Error::Config("--limit 0 selects no images".into()));
        }
        limit_covers_classes(k, classes.len(), &opts.train)?;
        warn_of_a_limit_above(k, items.len(), &opts.train, "images");
        items = balanced_subset(&folder, k)
            .into_iter()
            .map(|i| items[i].clone())
            .collect();
    }
    // Resolve the val labels before spending hours on train.
    let val_items = match &opts.val {
        Some(v) => Some(val_items(v, opts, &classes)?),
        None => None,
    };
    refuse_broken_links(&items, folder.broken_links(), &opts.train)?;
    let val_count = val_items.as_ref().map_or(0, Vec::len);
    // Two prepares into one folder would delete each other's files. A
    // killed prepare's files go before the room is counted: they would
    // take it, and be removed anyway.
    let lock = match opts.out.is_dir() {
        true => Some(lock_folder(&opts.out, "another prepare", ELSEWHERE)?),
        false => None,
    };
    remove_leftovers(&opts.out.join("train"));
    if opts.val.is_some() {
        remove_leftovers(&opts.out.join("val"));
    }
    if opts.encoding == Encoding::Raw {
        let each = (opts.size * opts.size * 3) as f64;
        let basis = format!("{0}x{0}x3 bytes, raw", opts.size);
        check_room(&opts.out, each, items.len() + val_count, &basis)?;
    }
    // A signal during the scan (minutes for a large tree): nothing made yet.
    if opts.stopped() {
        return Err(Error::Stopped(
            "prepare stopped at a signal while it listed the images, before writing anything"
                .into(),
        ));
    }
    // Made here (no lock was taken in it above): removed again should the
    // first store fail or be stopped.
    let made: Option<Vec<PathBuf>> = lock.is_none().then(|| {
        missing_folders(&opts.out)
            .into_iter()
            .map(Path::to_path_buf)
            .collect()
    });
    create_dir_durably(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let _lock = match lock {
        Some(l) => l,
        None => lock_folder(&opts.out, "another prepare", ELSEWHERE)?,
    };
    let store = |name: &str, source: &Path, items: &[(PathBuf, u32)], later, pair| {
        let to = Target {
            dir: opts.out.join(name),
            source,
            what: name,
            later,
            paired_with: pair,
        };
        write_store(&to, items, &classes, &names, opts)
    };
    let (train, stored) =
        store("train", &opts.train, &items, val_count, None).inspect_err(|_| {
            if let Some(made) = &made {
                remove_made_folders(&opts.out, made);
            }
        })?;
    // The earlier val store was paired with the train store just replaced:
    // should its own replacement fail or be killed, it must not pass as
    // this one's.
    let retired = opts.val.is_some() && retire_earlier_val(&opts.out)?;
    let th = Hashed::new(&items, stored);
    let train_dir = opts.out.join("train");
    let mut dups = duplicates::list_train(&train_dir, &opts.train, &th, &classes)
        .map_err(|e| after_commit(e, &train_dir))?;
    let val = match (&opts.val, val_items) {
        (Some(v), Some(items)) => {
            let gen = Some(train.generation.clone());
            let (val, stored) = store("val", v, &items, 0, gen).map_err(|e| {
                // Its "nothing was written" is the val store's: say what was.
                let (kind, fix): (fn(String) -> Error, _) = match e {
                    Error::Stopped(_) => (Error::Stopped, "run the same prepare again (it writes both again)"),
                    _ => (Error::Data, "run the same prepare again once the val data is fixed (it writes both again)"),
                };
                kind(format!(
                    "{e}. The train store, {}, was written before the val store and is complete{}; {fix}",
                    opts.out.join("train").display(),
                    match retired {
                        true => "; the earlier val store, paired with the train store replaced, was removed",
                        false => "",
                    }
                ))
            })?;
            let vh = Hashed::new(&items, stored);
            let dir = opts.out.join("val");
            dups.val_in_train = duplicates::list_val(&dir, [v, &opts.train], &vh, &th)
                .map_err(|e| after_commit(e, &dir))?;
            Some(val)
        }
        _ => {
            warn_of_earlier_val(&opts.out.join("val"), &train);
            None
        }
    };
    warn_of_duplicates(&opts.out, &dups);
    Ok(PrepareReport {
        train,
        val,
        duplicates: dups,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Remove `out`'s val store and its lists, once the train store it was
/// paired with is replaced; whether there was one.
fn retire_earlier_val(out: &Path) -> Result<bool> {
    let dir = out.join("val");
    let gone = |e: Error| {
        Error::Data(format!(
            "{e}. The train store, {}, is written and complete, but the earlier val store, {}, is from before it: remove that folder and run the same prepare again",
            out.join("train").display(),
            dir.display()
        ))
    };
    if !retire_val(&dir).map_err(gone)? {
        return Ok(false);
    }
    for list in [SKIPPED_LIST, duplicates::LIST] {
        match fs::remove_file(dir.join(list)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(gone(Error::io(dir.join(list), e)))
            }
            _ => {}
        }
    }
    Ok(true)
}

/// The list of files a store left out, beside it.
const SKIPPED_LIST: &str = "skipped.txt";

/// A list that could not be written beside a store already committed:
/// the store is whole and replaced the previous one, which is said.
fn after_commit(e: Error, store: &Path) -> Error {
    Error::Data(format!(
        "{e}. The store {} was committed before it (it is whole, and it replaced any earlier one); only its list is missing: run the same prepare again to write it",
        store.display()
    ))
}

/// A warning for each kind of image stored twice, naming its list.
fn warn_of_duplicates(out: &Path, d: &Duplicates) {
    let list = |store: &str| out.join(store).join(duplicates::LIST).display().to_string();
    if d.other_class > 0 {
        tracing::warn!(
            "train: {} images have the same pixels as one under another class, so the labels contradict each other; pairs listed in {}",
            d.other_class,
            list("train")
        );
    }
    if d.same_class > 0 {
        tracing::warn!(
            "train: {} images repeat one of their class (each copy counts as one more image in training); listed in {}",
            d.same_class,
            list("train")
        );
    }
    if d.val_in_train > 0 {
        tracing::warn!(
            "val: {} images are also training images, so validation error will read low; pairs listed in {}",
            d.val_in_train,
            list("val")
        );
    }
}

/// A val store left beside a train store prepared without `--val`:
/// training validates on it when its classes and image size are the new
/// `train` store's, and refuses it otherwise (as an unfinished one), so
/// say which and where it came from.
fn warn_of_earlier_val(dir: &Path, train: &StoreMeta) {
    let instead =
        "remove it to hold out --val training images instead, or prepare again with --val";
    let Ok(meta) = read_meta(dir) else {
        if is_unfinished_store(dir) {
            tracing::warn!(
                "{} is an unfinished val store from an earlier prepare, which training refuses; {instead}",
                dir.display()
            );
        }
        return;
    };
    let unlike = meta.unfit_beside(train).map(|u| match u {
        Unfit::Classes => "other classes than this train store".to_string(),
        Unfit::Size => format!(
            "{}x{} images and this train store {}x{}",
            meta.size, meta.size, train.size, train.size
        ),
    });
    let (src, dir) = (&meta.source, dir.display());
    match unlike {
        Some(what) => tracing::warn!(
            "{dir} is from an earlier prepare (of {src}) and holds {what}: training refuses it; {instead}"
        ),
        None => tracing::warn!(
            "{dir} is from an earlier prepare (of {src}); training will validate on it; {instead}"
        ),
    }
}

/// A text file a user passes (names, labels, synsets): UTF-8, or UTF-16
/// with its byte order mark (Notepad's "Unicode"), without the mark that
/// editors on Windows write first, which would otherwise stick to the
/// first line's synset or file name. Other bytes are an error naming the
/// line.
fn read_text(path: &Path) -> Result<String> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = match bytes.as_slice() {
        [0xFF, 0xFE, rest @ ..] => utf16(path, rest, u16::from_le_bytes)?,
        [0xFE, 0xFF, rest @ ..] => utf16(path, rest, u16::from_be_bytes)?,
        _ => String::from_utf8(bytes).map_err(|e| not_utf8(path, e.as_bytes(), e.utf8_error()))?,
    };
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

/// UTF-16 text after its byte order mark, each unit read by `unit`.
fn utf16(path: &Path, bytes: &[u8], unit: fn([u8; 2]) -> u16) -> Result<String> {
    let units: Vec<u16> = bytes
        .chunks(2)
        .map(|c| unit([c[0], c.get(1).copied().unwrap_or(0)]))
        .collect();
    match bytes.len().is_multiple_of(2) {
        true => String::from_utf16(&units).ok(),
        false => None,
    }
    .ok_or_else(|| {
        Error::Data(format!(
            "{}: begins as UTF-16 text (its byte order mark) but is not whole UTF-16 text; save it again as UTF-8",
            path.display()
        ))
    })
}

/// The error for a file that is not UTF-8 (Latin-1 or another code page,
/// most often): where the first bad byte is, and the fix.
fn not_utf8(path: &Path, bytes: &[u8], e: std::str::Utf8Error) -> Error {
    let at = e.valid_up_to();
    let line = 1 + bytes[..at].iter().filter(|&&b| b == b'\n').count();
    Error::Data(format!(
        "{}: line {line} is not UTF-8 text (byte 0x{:02X} at offset {at}: Latin-1 or another code page?); save the file as UTF-8",
        path.display(),
        bytes[at]
    ))
}

/// `synset name...` lines to a name per class (empty where not listed, and
/// the classes without one named in a warning).
fn read_names(path: &Path, classes: &[String]) -> Result<Vec<String>> {
    let text = read_text(path)?;
    let map: HashMap<&str, &str> = text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let (id, name) = l.split_once(char::is_whitespace)?;
            Some((id, name.trim()))
        })
        .collect();
    if !classes.iter().any(|c| map.contains_key(c.as_str())) {
        return Err(Error::Data(format!(
            "{}: names none of the {} class folders (expected lines like `n01440764 tench, Tinca tinca`)",
            path.display(),
            classes.len()
        )));
    }
    let unnamed: Vec<&str> = classes
        .iter()
        .map(String::as_str)
        .filter(|c| !map.contains_key(c))
        .collect();
    if let Some(first) = unnamed.first() {
        tracing::warn!(
            "{}: no name for {} of the {} classes ({first} first); they are shown by folder name",
            path.display(),
            unnamed.len(),
            classes.len()
        );
    }
    Ok(classes
        .iter()
        .map(|c| {
            map.get(c.as_str())
                .map(|s| s.to_string())
                .unwrap_or_default()
        })
        .collect())
}

/// The val images with their labels in the train class order.
fn val_items(
    root: &Path,
    opts: &PrepareOptions,
    classes: &[String],
) -> Result<Vec<(PathBuf, u32)>> {
    if !root.is_dir() {
        let fix = "pass --val a folder of class sub-folders, or of images with --val-labels";
        return Err(not_a_folder(root, fix));
    }
    let index: HashMap<&str, u32> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i as u32))
        .collect();
    // Kinds from the listing: a flat val folder holds 50,000 images.
    let entries = read_dir_sorted(root)?;
    // `__MACOSX/` or `.ipynb_checkpoints/` beside flat images is no class.
    let has_class_dirs = entries
        .iter()
        .any(|(p, k)| *k == Kind::Dir && !is_hidden(p));
    if has_class_dirs && opts.val_labels.is_none() {
        // Its classes are a subset of train's: one is enough.
        let f = ImageFolder::scan_subset(root, "--val")?;
        let mut out = Vec::with_capacity(f.len());
        for (path, label) in f.items() {
            let name = &f.classes()[*label as usize];
            let Some(&l) = index.get(name.as_str()) else {
                return Err(Error::Data(format!(
                    "{}: class folder {name} is not among the {} training classes; val classes must be a subset of train's",
                    root.display(),
                    classes.len()
                )));
            };
            out.push((path.clone(), l));
        }
        refuse_broken_links(&out, f.broken_links(), root)?;
        return Ok(out);
    }
    let Some(labels_path) = &opts.val_labels else {
        return Err(Error::Data(format!(
            "{}: flat val folder (no class sub-folders); pass --val-labels with a `file,synset` CSV or the devkit's ILSVRC2012_validation_ground_truth.txt",
            root.display()
        )));
    };
    let broken: Vec<PathBuf> = entries
        .iter()
        .filter(|(p, k)| *k == Kind::Broken && is_image_name(p) && !is_hidden(p))
        .map(|(p, _)| p.clone())
        .collect();
    let files: Vec<PathBuf> = entries
        .into_iter()
        // Hidden files are skipped, as in a class folder: a copy made on
        // macOS leaves a `._NAME.JPEG` beside each image.
        .filter(|(p, k)| {
            matches!(k, Kind::File | Kind::Broken) && is_image_name(p) && !is_hidden(p)
        })
        .map(|(p, _)| p)
        .collect();
    if files.is_empty() && has_class_dirs {
        return Err(Error::Data(format!(
            "{}: class sub-folders, whose names label their images, and no images beside them for --val-labels {} to label; leave out --val-labels",
            root.display(),
            labels_path.display()
        )));
    }
    if files.is_empty() {
        return Err(Error::Data(format!(
            "{}: no {} images",
            root.display(),
            image_kinds()
        )));
    }
    if has_class_dirs {
        tracing::warn!(
            "{}: --val-labels labels the images directly in it; the images in its sub-folders are not read",
            root.display()
        );
    }
    let text = read_text(labels_path)?;
    // Non-blank lines with their numbers in the file, for errors.
    let lines: Vec<(usize, &str)> = (1..)
        .zip(text.lines().map(str::trim))
        .filter(|(_, l)| !l.is_empty())
        .collect();
    let bad = |msg: String| Error::Data(format!("{}: {msg}", labels_path.display()));
    if lines.is_empty() {
        return Err(bad(
            "it holds no labels (an empty or blank file): pass the labels file, the devkit's ground truth or a `file,synset` CSV".into(),
        ));
    }
    // The devkit's ground truth has one ID a line and no commas; one bad
    // line in it is that line's error, not a reason to read it as a CSV.
    let devkit = !lines.iter().any(|(_, l)| l.contains(','))
        && lines.first().is_some_and(|(_, l)| l.parse::<u32>().is_ok());
    if devkit {
        let Some(syn_path) = &opts.val_synsets else {
            return Err(bad("this is devkit ground truth (one ID per line): also pass --val-synsets, the synsets in devkit ID order (the WNIDs of the devkit's meta.mat, IDs 1 to 1000), one per line".into()));
        };
        let syn_text = read_text(syn_path)?;
        let labels = devkit_labels(&lines, (syn_path, &syn_text), &index, files.len(), root);
        let labelled = files.into_iter().zip(labels.map_err(bad)?).collect();
        let items = training_classes_only(labelled, root).map_err(bad)?;
        refuse_broken_links(&items, &broken, root)?;
        return Ok(items);
    }
    if let Some(syn) = &opts.val_synsets {
        return Err(bad(format!(
            "these labels name their synsets (`file,synset` lines), so --val-synsets {} would not be read; drop it",
            syn.display()
        )));
    }
    let by_name = csv_labels(&lines, &index).map_err(bad)?;
    let labelled = label_files(files, &by_name).map_err(bad)?;
    warn_of_rows_without_files(&by_name, &labelled, labels_path, root);
    let items = training_classes_only(labelled, root).map_err(bad)?;
    refuse_broken_links(&items, &broken, root)?;
    Ok(items)
}

/// Rows of `by_name` labelling a training class whose file is not among
/// `labelled`: a val folder copied or unpacked in part would otherwise
/// give a smaller held-out set without a word. Rows of other classes (a
/// subset's training classes against the full labels) are not counted.
fn warn_of_rows_without_files(
    by_name: &CsvLabels,
    labelled: &[(PathBuf, ValLabel)],
    labels_path: &Path,
    root: &Path,
) {
    let found: HashSet<String> = labelled
        .iter()
        .filter_map(|(p, _)| p.file_name().map(|n| stem(&n.to_string_lossy())))
        .collect();
    let mut gone: Vec<(usize, &String)> = by_name
        .iter()
        .filter(|(name, (l, ..))| l.is_some() && !found.contains(*name))
        .map(|(name, (_, n, _))| (*n, name))
        .collect();
    gone.sort_unstable();
    if let Some((n, name)) = gone.first() {
        tracing::warn!(
            "{}: {} rows name an image of a training class that is not in {} (the first, line {n}: {name}); those images are not in the val store: if the folder is not whole, copy or unpack the rest and run prepare again",
            labels_path.display(),
            gone.len(),
            root.display()
        );
    }
}

/// A val image's label, or why it has none among the training classes
/// ([`other_class`]).
type ValLabel = std::result::Result<u32, String>;

/// Why line `n` of a labels file, synset `syn`, labels no training class.
fn other_class(n: usize, syn: &str) -> String {
    format!("line {n}: synset {syn:?} is not a training class")
}

/// The val images of training classes. Those of other classes (a
/// subset's training classes against the full val folder and labels) are
/// left out with a warning that counts them; when none is left, an error.
fn training_classes_only(
    labelled: Vec<(PathBuf, ValLabel)>,
    root: &Path,
) -> std::result::Result<Vec<(PathBuf, u32)>, String> {
    let all = labelled.len();
    let mut first_other = None;
    let kept: Vec<(PathBuf, u32)> = labelled
        .into_iter()
        .filter_map(|(p, l)| match l {
            Ok(l) => Some((p, l)),
            Err(why) => {
                first_other.get_or_insert(why);
                None
            }
        })
        .collect();
    let Some(why) = first_other else {
        return Ok(kept);
    };
    if kept.is_empty() {
        return Err(format!(
            "{why}, nor is any other image's of {}: are these the labels of this val folder, and is --train the right folder?",
            root.display()
        ));
    }
    tracing::warn!(
        "{}: {} of its {all} images are of classes the training data does not have ({why}, the first); they are left out of the val store",
        root.display(),
        all - kept.len()
    );
    Ok(kept)
}

/// Devkit ground truth (`ILSVRC2012_validation_ground_truth.txt`): line k
/// is the ILSVRC2012_ID of the k-th file in name order; the `--val-synsets`
/// file (its path and text) maps IDs to synsets. Errors are text for the
/// labels file's name.
fn devkit_labels(
    lines: &[(usize, &str)],
    (syn_path, syn_text): (&Path, &str),
    index: &HashMap<&str, u32>,
    images: usize,
    root: &Path,
) -> std::result::Result<Vec<ValLabel>, String> {
    // One synset per line; words after it (a names file such as
    // LOC_synset_mapping.txt, passed whole) are not synsets.
    let synsets: Vec<&str> = syn_text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    check_devkit_order(&synsets, syn_path)?;
    if lines.len() != images {
        return Err(format!(
            "{} labels for {images} images in {}: the devkit's labels go by position in the folder's sorted file list, so the folder must hold the whole validation set, no more and no less; copy or unpack it again, or label the images with a `file,synset` CSV (--val-labels)",
            lines.len(),
            root.display()
        ));
    }
    let label = |&(n, line): &(usize, &str)| {
        let syn = line
            .parse::<usize>()
            .ok()
            .and_then(|id| id.checked_sub(1))
            .and_then(|i| synsets.get(i))
            .ok_or_else(|| {
                format!(
                    "line {n}: {line:?} is not an ID in 1..={} ({})",
                    synsets.len(),
                    syn_path.display()
                )
            })?;
        Ok(index.get(syn).copied().ok_or_else(|| other_class(n, syn)))
    };
    lines.iter().map(label).collect()
}

/// Refuse a `--val-synsets` list that cannot be the devkit's ID order: a
/// synset listed twice, or a long list in sorted order. ILSVRC-2012's
/// devkit numbers its classes by the WordNet hierarchy, not sorted, so a
/// sorted list (Caffe's synsets.txt, the first column of
/// LOC_synset_mapping.txt) gives every validation image a wrong label
/// without any other sign.
fn check_devkit_order(synsets: &[&str], path: &Path) -> std::result::Result<(), String> {
    let mut seen = HashMap::new();
    for (i, s) in synsets.iter().enumerate() {
        if let Some(first) = seen.insert(*s, i + 1) {
            return Err(format!(
                "{}: synset {s} is listed twice (IDs {first} and {})",
                path.display(),
                i + 1
            ));
        }
    }
    if synsets.len() >= 10 && synsets.windows(2).all(|w| w[0] < w[1]) {
        return Err(format!(
            "{}: its {} synsets are in sorted order, as Caffe's synsets.txt and LOC_synset_mapping.txt list them, but the devkit's IDs follow its own order (the WNIDs of meta.mat's synsets, IDs 1 to 1000), which is not sorted, so every label would be wrong: pass the synsets in that order, or label the images with a `file,synset` CSV (--val-labels)",
            path.display(),
            synsets.len()
        ));
    }
    Ok(())
}

/// A CSV's labels by file stem: (label, or none for a synset that is not
/// a training class; line; synset as written).
type CsvLabels = HashMap<String, (Option<u32>, usize, String)>;

/// A `file,synset` CSV: the file with or without extension; the synset may
/// be followed by more fields or boxes (Kaggle's `LOC_val_solution.csv`,
/// whose header line names no image, so it labels none). Each file stem's
/// label; a stem labelled
/// twice with different synsets is refused.
fn csv_labels(
    lines: &[(usize, &str)],
    index: &HashMap<&str, u32>,
) -> std::result::Result<CsvLabels, String> {
    let mut by_name = CsvLabels::new();
    for &(n, line) in lines {
        let fields = csv_fields(line);
        let (file, rest) = match &fields[..] {
            [file, rest @ ..] if !rest.is_empty() => (file, rest),
            _ => return Err(format!("line {n}: expected `file,synset`")),
        };
        let syn = rest
            .iter()
            .flat_map(|f| f.split_whitespace())
            .next()
            .unwrap_or("");
        // A header line (`ImageId,PredictionString`) is not a synset: it
        // names no file, so it is kept like a line of another class.
        let l = index.get(syn).copied();
        let file = file.trim();
        match by_name.insert(stem(file), (l, n, syn.to_string())) {
            Some((_, m, other)) if other != syn => {
                return Err(format!(
                    "line {n} labels {file} {syn}, line {m} labels it {other}; keep one"
                ))
            }
            _ => {}
        }
    }
    Ok(by_name)
}

/// A CSV line's fields, their quotes taken off (spreadsheets and pandas'
/// QUOTE_ALL quote every field).
fn csv_fields(line: &str) -> Vec<String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(line.as_bytes());
    match reader.records().next() {
        Some(Ok(record)) => record.iter().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

/// Each file's label from [`csv_labels`], or an error naming the unlabelled.
fn label_files(
    files: Vec<PathBuf>,
    by_name: &CsvLabels,
) -> std::result::Result<Vec<(PathBuf, ValLabel)>, String> {
    let mut out = Vec::with_capacity(files.len());
    let mut missing = Vec::new();
    for p in files {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        match by_name.get(&stem(&name)) {
            Some((Some(l), ..)) => out.push((p, Ok(*l))),
            Some((None, n, syn)) => out.push((p, Err(other_class(*n, syn)))),
            None => missing.push(p),
        }
    }
    match missing.first() {
        Some(first) => Err(format!(
            "no label for {} of the images, e.g. {}",
            missing.len(),
            first.display()
        )),
        None => Ok(out),
    }
}

/// A file's name without folders or an image extension: a CSV may name
/// `img.1.jpg` or `img.1`, and both are `img.1` (not `img`).
fn stem(name: &str) -> String {
    let base = Path::new(name)
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    match base.rsplit_once('.') {
        Some((stem, ext)) if IMAGE_EXTENSIONS.iter().any(|e| e.eq_ignore_ascii_case(ext)) => {
            stem.to_string()
        }
        _ => base,
    }
}

/// Per-thread sums for the statistics: integers, so they are exact and the
/// result does not depend on how the work was split. The mean image's sums
/// are u32 (a chunk, at most 2048 images of 255, cannot overflow them) and
/// made at the first image: rayon keeps one per piece of work, about two
/// per thread, and at `--size 4096` each is 200 MB.
struct Acc {
    image_sum: Vec<u32>,
    rgb: RgbSums,
    images: u64,
    /// By the image's place in its chunk.
    out: Vec<(usize, Prepared)>,
}

/// One image's stored bytes and pixel hash, or why it failed.
type Prepared = Result<(Vec<u8>, u64)>;

impl Acc {
    fn new() -> Acc {
        Acc {
            image_sum: Vec::new(),
            rgb: RgbSums::default(),
            images: 0,
            out: Vec::new(),
        }
    }

    fn add(&mut self, px: &[u8]) {
        if self.image_sum.is_empty() {
            self.image_sum = vec![0; px.len()];
        }
        for (s, &v) in self.image_sum.iter_mut().zip(px) {
            *s += v as u32;
        }
        self.rgb.add(px);
        self.images += 1;
    }

    fn merge(mut self, mut o: Acc) -> Acc {
        if self.image_sum.is_empty() {
            std::mem::swap(&mut self.image_sum, &mut o.image_sum);
        }
        for (a, b) in self.image_sum.iter_mut().zip(&o.image_sum) {
            *a += b;
        }
        self.rgb = self.rgb.merge(o.rgb);
        self.images += o.images;
        self.out.extend(o.out);
        self
    }
}

/// The whole split's sums, chunk by chunk: u64, for any number of images.
struct Totals {
    image_sum: Vec<u64>,
    rgb: RgbSums,
    images: u64,
}

impl Totals {
    fn add(&mut self, acc: Acc) {
        for (t, &s) in self.image_sum.iter_mut().zip(&acc.image_sum) {
            *t += s as u64;
        }
        self.rgb = self.rgb.merge(acc.rgb);
        self.images += acc.images;
    }
}

/// A listed file that could not be read (permission, disk, mount, or
/// gone since the scan) stops the store: leaving it out like a bad image
/// would quietly drop a share of the data set if a mount flickers. The
/// error names the chunk's such files (`failed`) and every file of `rest`
/// that cannot even be opened, so that a tree copied with the wrong owner
/// is named whole in one run, not a file a run.
fn unread(failed: Vec<Error>, rest: &[(PathBuf, u32)], source: &Path) -> Error {
    if !rest.is_empty() {
        tracing::info!(
            "prepare: opening the {} images after it, to name every one that cannot be read",
            rest.len()
        );
    }
    let mut errors = failed;
    errors.extend(
        rest.par_iter()
            .filter_map(|(p, _)| can_open(p).err())
            .collect::<Vec<_>>(),
    );
    let (what, them, it) = match errors.len() {
        1 => (errors[0].brief(), "the file's", "it"),
        n => (
            format!("{n} files could not be read: {}", list_failures(&errors)),
            "their",
            "them",
        ),
    };
    Error::Data(format!(
        "{what}: a read error, not a bad image, so prepare stops rather than leave {it} out; nothing was committed (a previous store, if any, is untouched); fix {them} permission, disk or mount, or move {it} out of {}, and run prepare again",
        source.display()
    ))
}

/// A link whose target is not there (a drive or share not mounted).
fn is_broken_link(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_symlink()) && !path.exists()
}

/// Decode, resize, crop and encode one file: (stored bytes, pixels).
pub fn prepare_image(
    path: &Path,
    size: usize,
    encoding: Encoding,
    quality: u8,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let px = decode_file(path, size)?;
    let stored = match encoding {
        Encoding::Raw => px.clone(),
        Encoding::Jpeg => {
            let mut out = Vec::with_capacity(px.len() / 4);
            encode_jpeg(&px, size, quality, &mut out)?;
            out
        }
    };
    Ok((stored, px))
}

/// A stop at a signal while `to` was written, `done` of its `n` images in
/// (a val store's error says what became of the train store, and the fix).
fn stopped(to: &Target, done: usize, n: usize) -> Error {
    let rest = match to.paired_with {
        None => " (a previous one, if any, is untouched); run the same prepare again to write it",
        Some(_) => "",
    };
    Error::Stopped(format!(
        "prepare stopped at a signal after {done} of {n} {what} images: the unfinished {what} store was removed{rest}",
        what = to.what
    ))
}

/// Refuse to commit a store (`what`: train or val) that lost a class:
/// every image listed for it was left out as a bad image, so the network
/// would never see the class, or never be scored on it.
fn refuse_lost_class(
    what: &str,
    source: &Path,
    classes: &[String],
    (listed, stored): (&[u64], &[u64]),
    first_skip: &[Option<String>],
    limit: Option<usize>,
) -> Result<()> {
    let lost = (0..classes.len()).find(|&c| listed[c] > 0 && stored[c] == 0);
    let Some(c) = lost else {
        return Ok(());
    };
    // --limit takes each class's first files: more of them may read.
    let raise = match limit {
        Some(k) => format!(
            ", or raise --limit {k}, which took only {} of the class's files (its first)",
            listed[c]
        ),
        None => String::new(),
    };
    let why = match what {
        "val" => "validation without the class would never score it",
        _ => "a store without the class would train a network that never sees it",
    };
    Err(Error::Data(format!(
        "{}: none of the {} images of class {} could be read (first: {}); {why}, so nothing was written: fix or replace those files (or remove the class){raise}, and run the same prepare again",
        source.display(),
        listed[c],
        classes[c],
        first_skip[c].as_deref().unwrap_or("-")
    )))
}

/// Refuse to go on when `left` more images would not fit on the disk that
/// holds (or will hold) `dir`: `each` bytes apiece (exact for raw, measured so far for
/// JPEG), plus the index and a source line. Hours into ImageNet's 1.28M
/// images is the wrong time to find a full disk.
fn check_room(dir: &Path, each: f64, left: usize, basis: &str) -> Result<()> {
    let need = (left as f64 * (each * 1.02 + 128.0)) as u64;
    let Some(free) = short_of_room(dir, need)? else {
        return Ok(());
    };
    Err(Error::Data(format!(
        "{}: its disk has {} free, and the {left} images still to write need about {} ({} each, {basis}); nothing is committed until a store is whole, so the previous one, if any, is untouched; free space, pass --out a folder on another disk, or make the store smaller (--format jpeg, a lower --quality or --size, or --limit)",
        dir.display(),
        size(free),
        size(need),
        size(each as u64)
    )))
}

/// The output folder a prepare made, after its first store failed or was
/// stopped (that store's files removed): removed too when only the lock is
/// left in it, which `train --data` would take for a class folder without
/// classes, and so are the folders made with it (`made`, deepest first),
/// each while empty.
fn remove_made_folders(out: &Path, made: &[PathBuf]) {
    let only_lock =
        fs::read_dir(out).is_ok_and(|mut d| d.all(|e| e.is_ok_and(|e| e.file_name() == ".lock")));
    if !only_lock {
        return;
    }
    let _ = fs::remove_file(out.join(".lock"));
    // remove_dir refuses a folder that is not empty, and `nx/..` (a path
    // through one made, not one made itself): left as they are.
    for dir in made {
        let _ = fs::remove_dir(dir);
    }
}

/// One store to write: where, from which tree, its name in messages, how
/// many images the stores after it will add (for the room check), and the
/// store it pairs with.
struct Target<'a> {
    dir: PathBuf,
    source: &'a Path,
    what: &'a str,
    later: usize,
    /// For val: the train store's generation (`StoreMeta::paired_with`).
    paired_with: Option<String>,
}

/// Write one store; returns its meta and each stored image's pixel hash
/// and index in `items`.
fn write_store(
    to: &Target,
    items: &[(PathBuf, u32)],
    classes: &[String],
    names: &[String],
    opts: &PrepareOptions,
) -> Result<(StoreMeta, Vec<(u64, usize)>)> {
    let (dir, source, what) = (to.dir.as_path(), to.source, to.what);
    let size = opts.size;
    let px = size * size * 3;
    let mut writer = StoreWriter::create(dir, size, opts.encoding)?;
    let bar = crate::progress::bar(items.len(), &format!("prepare {what}"), opts.progress);
    let start = Instant::now();
    let mut total = Totals {
        image_sum: vec![0; px],
        rgb: RgbSums::default(),
        images: 0,
    };
    let mut skipped: Vec<String> = Vec::new();
    let mut class_counts = vec![0u64; classes.len()];
    // Per class: images listed, and the first one left out, with why.
    let mut listed = vec![0u64; classes.len()];
    items.iter().for_each(|(_, l)| listed[*l as usize] += 1);
    let mut first_skip: Vec<Option<String>> = vec![None; classes.len()];
    let mut hashes = Vec::with_capacity(items.len());
    let chunk_len = chunk_len(size);
    for (c, chunk) in items.chunks(chunk_len).enumerate() {
        let acc = chunk
            .par_iter()
            .enumerate()
            .fold(Acc::new, |mut acc, (i, (path, _))| {
                if opts.stopped() {
                    return acc;
                }
                let r = prepare_image(path, size, opts.encoding, opts.quality);
                let r = r.map(|(stored, pixels)| {
                    acc.add(&pixels);
                    (stored, pixel_hash(&pixels))
                });
                acc.out.push((i, r));
                bar.inc(1);
                acc
            })
            .reduce(Acc::new, Acc::merge);
        if opts.stopped() {
            return Err(stopped(to, c * chunk_len, items.len()));
        }
        let mut acc = acc;
        acc.out.sort_unstable_by_key(|(i, _)| *i);
        let mut unreadable = Vec::new();
        for (i, r) in std::mem::take(&mut acc.out) {
            let (path, label) = &chunk[i];
            match r {
                Ok((stored, hash)) => {
                    let rel = path.strip_prefix(source).unwrap_or(path);
                    writer.push(&stored, *label, &rel.to_string_lossy())?;
                    class_counts[*label as usize] += 1;
                    hashes.push((hash, c * chunk_len + i));
                }
                Err(e) if matches!(e, Error::Io { .. }) || is_broken_link(path) => {
                    unreadable.push(e)
                }
                Err(e) => {
                    let msg = e.to_string();
                    tracing::debug!("skipping {msg}");
                    first_skip[*label as usize].get_or_insert_with(|| msg.clone());
                    let file = path.display().to_string();
                    skipped.push(format!("{}\t{}", tsv_field(&file), tsv_field(&msg)));
                }
            }
        }
        let n = c * chunk_len + chunk.len();
        if !unreadable.is_empty() {
            return Err(unread(unreadable, &items[n..], source));
        }
        if !writer.is_empty() {
            let each = writer.data_bytes() as f64 / writer.len() as f64;
            let basis = format!("measured over the {} written so far", writer.len());
            check_room(dir, each, items.len() - n + to.later, &basis)?;
        }
        bar.set_message(format!("{} skipped", skipped.len()));
        if !opts.progress && (c + 1) % 16 == 0 {
            tracing::info!("prepare {what}: {n}/{} images", items.len());
        }
        total.add(acc);
    }
    bar.finish_and_clear();
    if writer.is_empty() {
        return Err(Error::Data(format!(
            "{}: none of the {} images could be read (first: {}); nothing written",
            source.display(),
            items.len(),
            // Its reason (which names the file), not the list's line.
            skipped
                .first()
                .and_then(|l| l.split_once('\t'))
                .map_or("-", |(_, why)| why)
        )));
    }
    let limit = opts.limit.filter(|_| to.paired_with.is_none());
    let counts = (&listed[..], &class_counts[..]);
    refuse_lost_class(to.what, source, classes, counts, &first_skip, limit)?;
    let n = total.images as f64;
    let (mean_rgb, cov) = total.rgb.moments().unwrap_or_default();
    let mean_image: Vec<f32> = total
        .image_sum
        .iter()
        .map(|&s| (s as f64 / n) as f32)
        .collect();
    let stats = Stats {
        images: total.images,
        channel_mean: mean_rgb,
        channel_std: [0, 1, 2].map(|c| cov[c][c].max(0.0).sqrt()),
        rgb_cov: cov,
        pca: Pca::from_covariance(cov),
    };
    let meta = StoreMeta {
        format: String::new(),
        version: 0,
        generation: String::new(),
        size,
        encoding: opts.encoding,
        quality: (opts.encoding == Encoding::Jpeg).then_some(opts.quality),
        count: 0,
        classes: classes.to_vec(),
        names: names.to_vec(),
        class_counts,
        stats,
        skipped: skipped.len(),
        source: source.display().to_string(),
        data_bytes: 0,
        data_crc: 0,
        index_crc: 0,
        mean_crc: 0,
        sources_crc: 0,
        paired_with: to.paired_with.clone(),
    };
    let meta = writer.finish(meta, &mean_image)?;
    // The report of what was left out, next to the store it describes.
    let report = dir.join(SKIPPED_LIST);
    let mut text = skipped.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    write_atomic(&report, text.as_bytes()).map_err(|e| after_commit(e, dir))?;

    let secs = start.elapsed().as_secs_f64();
    tracing::info!(
        "{what}: {} images ({} skipped, listed in {}) -> {} ({:.1} MB) in {secs:.1} s, {:.0} images/s",
        meta.count,
        meta.skipped,
        report.display(),
        dir.display(),
        meta.data_bytes as f64 / 1e6,
        items.len() as f64 / secs.max(1e-9)
    );
    Ok((meta, hashes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listed file that cannot be read (here: gone since the scan) stops
    /// the store with nothing committed, where a bad image would be skipped.
    #[test]
    fn a_read_error_stops_the_store() {
        let root = tempfile::tempdir().unwrap();
        let (src, dir) = (root.path().join("src"), root.path().join("train"));
        fs::create_dir_all(src.join("a")).unwrap();
        let good = src.join("a/good.png");
        image::RgbImage::from_pixel(8, 8, image::Rgb([9, 99, 199]))
            .save(&good)
            .unwrap();
        let bad = src.join("a/bad.jpg");
        fs::write(&bad, b"not a jpeg").unwrap();
        let gone = src.join("a/gone.jpg");
        let opts = PrepareOptions {
            size: 8,
            progress: false,
            ..PrepareOptions::new(src.clone(), root.path().into())
        };
        let to = Target {
            dir: dir.clone(),
            source: &src,
            what: "train",
            later: 0,
            paired_with: None,
        };
        let classes = ["a".to_string()];
        let items = |p: &[&PathBuf]| p.iter().map(|p| ((*p).clone(), 0)).collect::<Vec<_>>();
        // A bad image is left out, and the store is written.
        let (meta, _) =
            write_store(&to, &items(&[&good, &bad]), &classes, &classes, &opts).unwrap();
        assert_eq!((meta.count, meta.skipped), (1, 1));
        let before = read_meta(&dir).unwrap().generation;
        // A file that cannot be read stops it, naming the file.
        let e = write_store(&to, &items(&[&good, &gone]), &classes, &classes, &opts).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("gone.jpg") && msg.contains("a read error"),
            "{msg}"
        );
        assert_eq!(read_meta(&dir).unwrap().generation, before, "committed");
    }
}
