//! The packed image store: what `prepare` writes and training memory-maps.
//! A store is a folder:
//!
//! - `meta.json`: format version, image size and encoding, class synsets and
//!   names, per-class counts, the training statistics (channel mean and std,
//!   RGB covariance and its PCA for the lighting noise), the checksums of the
//!   files below and the generation that names them (for a val store, also
//!   the train store's it was prepared with). It is written last,
//!   atomically: it is the commit point.
//! - `data-<gen>.bin`: every image back to back (JPEG or raw HWC RGB).
//! - `index-<gen>.bin`: per image: offset u64, length u32, label u32,
//!   CRC-32 u32, reserved u32 (24 bytes, little-endian).
//! - `mean-<gen>.bin`: the mean image, `size x size x 3` f32 (HWC, 0..255).
//! - `sources-<gen>.txt`: the source file of each image, one per line, so an
//!   error can name it.
//!
//! A prepare that dies before the rename leaves the old `meta.json` and its
//! files untouched; the next run deletes the orphaned generation.
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use memmap2::{Advice, Mmap};
use serde::{Deserialize, Serialize};

use super::lighting::Pca;
use crate::error::{Error, Result};
use crate::fsutil::{check_not_locked, sync_dir, write_atomic};

pub const META_FILE: &str = "meta.json";
pub const FORMAT_NAME: &str = "alexnet-cuda packed image store";
pub const FORMAT_VERSION: u32 = 1;
const ENTRY_BYTES: usize = 24;
/// The largest image side `prepare` writes.
pub const MAX_SIDE: usize = 4096;

/// How each image is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Baseline JPEG of the `size x size` RGB image.
    Jpeg,
    /// `size x size x 3` bytes, HWC RGB: no decode cost, ~6x the disk.
    Raw,
}

/// Pixel statistics of a store's images, in 0..255 units.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub images: u64,
    pub channel_mean: [f64; 3],
    pub channel_std: [f64; 3],
    /// Covariance of (R, G, B) over all pixels of all images.
    pub rgb_cov: [[f64; 3]; 3],
    /// PCA of `rgb_cov` on the [0, 1] scale (section 4.1's lighting noise).
    pub pca: Pca,
}

/// The contents of `meta.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoreMeta {
    pub format: String,
    pub version: u32,
    pub generation: String,
    pub size: usize,
    pub encoding: Encoding,
    /// JPEG quality when `encoding` is jpeg.
    pub quality: Option<u8>,
    pub count: usize,
    /// Class ids (synsets), label `i` is `classes[i]`, sorted.
    pub classes: Vec<String>,
    /// Human-readable class names, same order; empty when none were given.
    pub names: Vec<String>,
    pub class_counts: Vec<u64>,
    pub stats: Stats,
    /// Files found but not stored (unreadable); listed in `skipped.txt`.
    pub skipped: usize,
    /// The folder the images came from.
    pub source: String,
    pub data_bytes: u64,
    pub data_crc: u32,
    pub index_crc: u32,
    pub mean_crc: u32,
    pub sources_crc: u32,
    /// For a val store: the generation of the train store prepared with it,
    /// so training can tell a val left from an earlier `prepare`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paired_with: Option<String>,
}

impl StoreMeta {
    /// How the images are kept, in words: "JPEG quality 90" or "raw".
    pub fn stored(&self) -> String {
        match (self.encoding, self.quality) {
            (Encoding::Jpeg, Some(q)) => format!("JPEG quality {q}"),
            (Encoding::Jpeg, None) => "JPEG".into(),
            (Encoding::Raw, _) => "raw".into(),
        }
    }

    /// This val store is left from an earlier `prepare` of `train` (stores
    /// from before the pairing was recorded carry none, and pass).
    pub fn left_from_before(&self, train: &StoreMeta) -> bool {
        self.paired_with
            .as_ref()
            .is_some_and(|g| *g != train.generation)
    }

    /// Why this val store cannot be validated on beside `train`, which
    /// training refuses; None where it can.
    pub fn unfit_beside(&self, train: &StoreMeta) -> Option<Unfit> {
        if self.classes != train.classes {
            Some(Unfit::Classes)
        } else if self.size != train.size {
            Some(Unfit::Size)
        } else {
            None
        }
    }
}

/// How a val store does not fit its train store ([`StoreMeta::unfit_beside`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unfit {
    /// Other classes, or another order: labels are indices into them.
    Classes,
    /// Another image size: the training mean image would not fit, and the
    /// crops would cover another share of each image.
    Size,
}

/// One index record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub offset: u64,
    pub len: u32,
    pub label: u32,
    pub crc: u32,
}

/// True when `dir` holds a store's files but no `meta.json`, the commit
/// point: a first `prepare` into it that did not finish. A kill while it
/// streams leaves only the data and the source list (the index and the
/// mean image are written at the end), so any of a store's files counts.
pub fn is_unfinished_store(dir: &Path) -> bool {
    let Ok(rd) = fs::read_dir(dir) else {
        return false;
    };
    !is_store(dir)
        && rd
            .flatten()
            .any(|e| e.file_name().to_str().is_some_and(is_generation_file))
}

/// An error naming `dir` and the fix when it is an unfinished store: one
/// a prepare is writing now (it holds the lock of the folder above), or
/// one a prepare left.
pub fn refuse_unfinished_store(dir: &Path) -> Result<()> {
    if !is_unfinished_store(dir) {
        return Ok(());
    }
    // Looked at only where a prepare made its lock file: nothing is
    // created in the user's folders.
    let out = Some(crate::fsutil::folder_of(dir)).filter(|p| p.join(".lock").is_file());
    let wait = "wait for it to finish";
    if let Some(Err(e @ Error::Config(_))) = out.map(|o| check_not_locked(o, "a prepare", wait)) {
        return Err(Error::Data(format!(
            "{}: no store yet (no meta.json): {e}",
            dir.display()
        )));
    }
    // The lock is waited for briefly: a prepare may have finished since.
    if !is_unfinished_store(dir) {
        return Ok(());
    }
    Err(Error::Data(format!(
        "{}: a store that `alexnet-cuda prepare` did not finish (its data files are there, but not meta.json, which it writes last); run the same prepare again, or remove the folder if it is not wanted",
        dir.display()
    )))
}

/// A name of one of a generation's files (`data-<gen>.bin`, ...), `<gen>`
/// being the 16 lowercase hex digits [`StoreWriter::create`] writes: a
/// user's `data-2021.bin` or `sources-urls.txt` is not one, neither to
/// delete nor to take an image folder for an unfinished store.
pub fn is_generation_file(name: &str) -> bool {
    GEN_FILES.iter().any(|(stem, ext)| {
        name.strip_prefix(stem)
            .and_then(|r| r.strip_prefix('-'))
            .and_then(|r| r.strip_suffix(ext))
            .and_then(|r| r.strip_suffix('.'))
            .is_some_and(|gen| {
                gen.len() == 16 && gen.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            })
    })
}

fn gen_file(dir: &Path, stem: &str, gen: &str, ext: &str) -> PathBuf {
    dir.join(format!("{stem}-{gen}.{ext}"))
}

const GEN_FILES: [(&str, &str); 4] = [
    ("data", "bin"),
    ("index", "bin"),
    ("mean", "bin"),
    ("sources", "txt"),
];

/// Delete every generation's files in `dir` except `keep`'s (and meta.json).
fn remove_other_generations(dir: &Path, keep: Option<&str>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = is_generation_file(&name);
        let kept = keep.is_some_and(|g| name.contains(&format!("-{g}.")));
        if ours && !kept {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Remove the files of `dir`'s generations that were never committed (a
/// prepare killed or out of disk), keeping the committed store's. A
/// meta.json that is there but cannot be read (another version's, or an
/// I/O error) leaves everything as it is. The caller holds the lock.
pub fn remove_leftovers(dir: &Path) {
    let current = match read_meta(dir) {
        Ok(m) => Some(m.generation),
        Err(_) if dir.join("meta.json").exists() => return,
        Err(_) => None,
    };
    remove_other_generations(dir, current.as_deref());
}

/// Remove the val store at `dir` (one whose meta.json [`read_meta`] reads
/// and names a train store: `paired_with`): its `meta.json` first, durably
/// (from then on it is no store), then its generation files. Returns
/// whether there was one; anything else there is left as it is.
pub fn retire_val(dir: &Path) -> Result<bool> {
    if !read_meta(dir).is_ok_and(|m| m.paired_with.is_some()) {
        return Ok(false);
    }
    let meta = dir.join(META_FILE);
    fs::remove_file(&meta).map_err(|e| Error::io(&meta, e))?;
    sync_dir(&meta)?;
    remove_other_generations(dir, None);
    Ok(true)
}

/// A failed write while building a store: name the file, say that the
/// committed store is safe, and what to do (a full disk is the usual cause).
fn write_error(path: &Path, e: std::io::Error) -> Error {
    Error::Data(format!(
        "{}: {e}; the new store was not committed and the previous one, if any, is untouched; free disk space (or fix the folder's permissions) and rerun `alexnet-cuda prepare`",
        path.display()
    ))
}

/// Streams images into a new generation of the store at `dir`. Dropped
/// without [`StoreWriter::finish`] (an error), it deletes its files.
pub struct StoreWriter {
    dir: PathBuf,
    gen: String,
    size: usize,
    encoding: Encoding,
    data: BufWriter<File>,
    data_crc: crc32fast::Hasher,
    sources: BufWriter<File>,
    entries: Vec<Entry>,
    offset: u64,
    committed: bool,
    /// Whether `create` made `dir`: a first prepare that fails removes it
    /// again, or an empty `train/` would be read as a class folder.
    made_dir: bool,
}

impl Drop for StoreWriter {
    fn drop(&mut self) {
        // A failure after meta.json was renamed (syncing the folder) leaves
        // this generation committed: keep it.
        let named = read_meta(&self.dir).is_ok_and(|m| m.generation == self.gen);
        if !self.committed && !named {
            for (stem, ext) in GEN_FILES {
                let _ = fs::remove_file(gen_file(&self.dir, stem, &self.gen, ext));
            }
            if self.made_dir {
                // Only when empty: remove_dir refuses anything else.
                let _ = fs::remove_dir(&self.dir);
            }
        }
    }
}

impl StoreWriter {
    /// Start a generation in `dir` (created if missing). Files of earlier
    /// interrupted runs are removed; the committed store stays readable
    /// until [`StoreWriter::finish`] replaces it.
    pub fn create(dir: &Path, size: usize, encoding: Encoding) -> Result<StoreWriter> {
        // A file where the store's folder goes is no disk trouble: say so.
        if let Some(file) = crate::fsutil::file_in_the_way(dir) {
            return Err(Error::Data(format!(
                "{}: {} is a file, not a folder; a store is a folder: pass another path",
                dir.display(),
                file.display()
            )));
        }
        let made_dir = !dir.exists();
        crate::fsutil::create_dir_durably(dir).map_err(|e| write_error(dir, e))?;
        remove_leftovers(dir);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let gen = format!(
            "{:016x}",
            crate::rng::hash_u64(nanos, std::process::id() as u64)
        );
        let open = |stem: &str, ext: &str| {
            let p = gen_file(dir, stem, &gen, ext);
            File::create(&p)
                .map(|f| BufWriter::with_capacity(1 << 20, f))
                .map_err(|e| write_error(&p, e))
        };
        Ok(StoreWriter {
            dir: dir.to_path_buf(),
            size,
            encoding,
            data: open("data", "bin")?,
            data_crc: crc32fast::Hasher::new(),
            sources: open("sources", "txt")?,
            entries: Vec::new(),
            offset: 0,
            committed: false,
            made_dir,
            gen,
        })
    }

    /// Append one encoded image with its label and source path.
    pub fn push(&mut self, bytes: &[u8], label: u32, source: &str) -> Result<()> {
        let len = u32::try_from(bytes.len())
            .map_err(|_| Error::Data(format!("{source}: encoded image over 4 GiB")))?;
        let data_path = || gen_file(&self.dir, "data", &self.gen, "bin");
        self.data
            .write_all(bytes)
            .map_err(|e| write_error(&data_path(), e))?;
        self.data_crc.update(bytes);
        // One line per image: a newline in a file name would shift the list.
        let line = source.replace('\n', " ");
        writeln!(self.sources, "{line}")
            .map_err(|e| write_error(&gen_file(&self.dir, "sources", &self.gen, "txt"), e))?;
        self.entries.push(Entry {
            offset: self.offset,
            len,
            label,
            crc: crc32fast::hash(bytes),
        });
        self.offset += bytes.len() as u64;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of encoded images pushed so far.
    pub fn data_bytes(&self) -> u64 {
        self.offset
    }

    /// Write the index and mean image, fsync everything, then commit by
    /// atomically replacing `meta.json`. `meta`'s file fields (generation,
    /// size, encoding, count, checksums) are filled in here.
    pub fn finish(mut self, mut meta: StoreMeta, mean_image: &[f32]) -> Result<StoreMeta> {
        crate::error::check_len(
            "store",
            "mean image",
            mean_image.len(),
            self.size * self.size * 3,
        )?;
        for (w, stem, ext) in [
            (&mut self.data, "data", "bin"),
            (&mut self.sources, "sources", "txt"),
        ] {
            let p = gen_file(&self.dir, stem, &self.gen, ext);
            w.flush().map_err(|e| write_error(&p, e))?;
            w.get_ref().sync_all().map_err(|e| write_error(&p, e))?;
        }
        let mut index = Vec::with_capacity(self.entries.len() * ENTRY_BYTES);
        for e in &self.entries {
            index.extend_from_slice(&e.offset.to_le_bytes());
            index.extend_from_slice(&e.len.to_le_bytes());
            index.extend_from_slice(&e.label.to_le_bytes());
            index.extend_from_slice(&e.crc.to_le_bytes());
            index.extend_from_slice(&0u32.to_le_bytes());
        }
        let mean: Vec<u8> = mean_image.iter().flat_map(|v| v.to_le_bytes()).collect();
        for (stem, bytes) in [("index", &index), ("mean", &mean)] {
            let p = gen_file(&self.dir, stem, &self.gen, "bin");
            let mut f = File::create(&p).map_err(|e| write_error(&p, e))?;
            f.write_all(bytes).map_err(|e| write_error(&p, e))?;
            f.sync_all().map_err(|e| write_error(&p, e))?;
        }
        let sources_path = gen_file(&self.dir, "sources", &self.gen, "txt");
        let sources = fs::read(&sources_path).map_err(|e| Error::io(&sources_path, e))?;

        meta.format = FORMAT_NAME.into();
        meta.version = FORMAT_VERSION;
        meta.generation = self.gen.clone();
        meta.size = self.size;
        meta.encoding = self.encoding;
        meta.count = self.entries.len();
        meta.data_bytes = self.offset;
        meta.data_crc = self.data_crc.clone().finalize();
        meta.index_crc = crc32fast::hash(&index);
        meta.mean_crc = crc32fast::hash(&mean);
        meta.sources_crc = crc32fast::hash(&sources);
        let json = serde_json::to_vec_pretty(&meta)
            .map_err(|e| Error::Data(format!("store metadata: {e}")))?;
        sync_dir(&self.dir.join(META_FILE))?;
        write_atomic(&self.dir.join(META_FILE), &json)?;
        self.committed = true;
        remove_other_generations(&self.dir, Some(&self.gen));
        Ok(meta)
    }
}

/// A store file that cannot be read: a missing one means the store is
/// incomplete (a file deleted, or left out of a copy), which `prepare` mends.
fn read_error(dir: &Path, path: &Path, e: std::io::Error) -> Error {
    if e.kind() != std::io::ErrorKind::NotFound {
        return Error::io(path, e);
    }
    Error::Data(format!(
        "{}: missing; the store at {} is incomplete (a file deleted, or left out of a copy): copy the whole folder again, or rerun `alexnet-cuda prepare`",
        path.display(),
        dir.display()
    ))
}

/// The format and version of `meta.json` (`text`), read before its other
/// fields: another version's fields differ, and its error must say which
/// build reads it rather than name a missing field.
fn check_version(path: &Path, text: &[u8]) -> Result<()> {
    #[derive(serde::Deserialize)]
    struct Version {
        format: Option<String>,
        version: Option<u32>,
    }
    let Ok(Version { format, version }) = serde_json::from_slice::<Version>(text) else {
        return Ok(()); // not JSON at all: the full read says where
    };
    let (name, v) = (path.display(), version.unwrap_or(0));
    let fix = match (format.as_deref() == Some(FORMAT_NAME), v) {
        (false, _) => format!(
            "not an alexnet-cuda store description (format {}); pass a folder written by `alexnet-cuda prepare`",
            format.as_deref().map_or("none".into(), |f| format!("{f:?}"))
        ),
        (true, v) if v > FORMAT_VERSION => format!(
            "a store of version {v}, written by a newer alexnet-cuda; this build reads version {FORMAT_VERSION}: use that build, or rerun `alexnet-cuda prepare` with this one"
        ),
        (true, v) if v < FORMAT_VERSION => format!(
            "a store of version {v}, written by an older alexnet-cuda; this build reads version {FORMAT_VERSION}: rerun `alexnet-cuda prepare`"
        ),
        _ => return Ok(()),
    };
    Err(Error::Data(format!("{name}: {fix}")))
}

/// Read and check `dir/meta.json`.
pub fn read_meta(dir: &Path) -> Result<StoreMeta> {
    let path = dir.join(META_FILE);
    let text = fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Data(format!(
            "{}: not a store (it has no {META_FILE}); pass a folder written by `alexnet-cuda prepare`",
            dir.display()
        )),
        _ => Error::io(&path, e),
    })?;
    check_version(&path, &text)?;
    let meta: StoreMeta = serde_json::from_slice(&text).map_err(|e| {
        Error::Data(format!(
            "{}: not a valid store description ({e}); rerun `alexnet-cuda prepare`",
            path.display()
        ))
    })?;
    // prepare writes hex digits; anything else (`../x`) would name files
    // outside the store when joined into their names.
    let hex = |g: &str| (1..=64).contains(&g.len()) && g.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(g) = Some(&meta.generation)
        .into_iter()
        .chain(&meta.paired_with)
        .find(|g| !hex(g))
    {
        return Err(Error::Data(format!(
            "{}: generation {g:?}, where prepare writes hex digits; the store is damaged, rerun `alexnet-cuda prepare`",
            path.display()
        )));
    }
    // Runs keep the class list, names and counts in their checkpoints:
    // ones that disagree would make every checkpoint of a run unreadable.
    if let Some(why) = uneven_classes(&meta) {
        return Err(Error::Data(format!(
            "{}: {why}; the store description was changed after prepare wrote it, rerun `alexnet-cuda prepare`",
            path.display()
        )));
    }
    // prepare's range: a side past it would overflow `size * size * 3`.
    if !(1..=MAX_SIDE).contains(&meta.size) {
        return Err(Error::Data(format!(
            "{}: image side {}, where prepare writes 1 to {MAX_SIDE}; the store is damaged, rerun `alexnet-cuda prepare`",
            path.display(),
            meta.size
        )));
    }
    Ok(meta)
}

/// What disagrees among `meta`'s classes, their names, their counts and
/// its image count, if anything does.
fn uneven_classes(meta: &StoreMeta) -> Option<String> {
    let c = meta.classes.len();
    let (names, counts) = (meta.names.len(), meta.class_counts.len());
    let sum: u64 = meta.class_counts.iter().sum();
    if names != 0 && names != c {
        Some(format!("{names} class names for {c} classes"))
    } else if counts != c {
        Some(format!("{counts} class counts for {c} classes"))
    } else if sum != meta.count as u64 {
        Some(format!(
            "class counts add up to {sum} images, not its {}",
            meta.count
        ))
    } else {
        None
    }
}

/// The first index entry that does not fit the store, said as what is
/// wrong: its bytes past the data file's `len`, a label past the class
/// list, or a raw image of other than `size * size * 3` bytes (the loader
/// slices rows of that size out of it).
fn bad_entry(entries: &[Entry], meta: &StoreMeta, len: u64) -> Option<String> {
    let raw = (meta.encoding == Encoding::Raw).then(|| meta.size * meta.size * 3);
    entries.iter().enumerate().find_map(|(i, e)| {
        let end = e.offset.checked_add(u64::from(e.len));
        if end.is_none_or(|end| end > len) || e.label as usize >= meta.classes.len() {
            return Some(format!("entry {i} out of range"));
        }
        let n = raw.filter(|&n| n != e.len as usize)?;
        Some(format!(
            "entry {i} has {} bytes, a raw {s}x{s} image {n}",
            e.len,
            s = meta.size
        ))
    })
}

/// True when `dir` holds a committed store.
pub fn is_store(dir: &Path) -> bool {
    dir.join(META_FILE).is_file()
}

/// True when `dir` is a store, or `prepare`'s folder with a `train/` one.
pub fn is_store_or_prepared(dir: &Path) -> bool {
    is_store(dir) || is_store(&dir.join("train"))
}

/// An opened store: metadata, index and mean image in memory (24 bytes per
/// image plus 768 KB; after an unreadable image, the sources file too), the
/// image data memory-mapped.
pub struct PackedStore {
    dir: PathBuf,
    meta: StoreMeta,
    entries: Vec<Entry>,
    mean_image: Vec<f32>,
    data: Mmap,
    /// `sources-<gen>.txt`, read at the first error that names a source:
    /// a damaged region spoils many images, and each would read it again.
    source_lines: OnceLock<Option<Lines>>,
}

/// A text file's lines, as the text and where each line starts.
struct Lines {
    text: String,
    starts: Vec<usize>,
}

impl Lines {
    fn new(text: String) -> Lines {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(at, _)| at + 1));
        Lines { text, starts }
    }

    /// Line `i`, without its line ending (as `str::lines` gives it: "\n",
    /// or "\r\n"; a last line's lone "\r" stays).
    fn get(&self, i: usize) -> Option<&str> {
        let start = *self.starts.get(i)?;
        if start >= self.text.len() {
            return None;
        }
        Some(match self.starts.get(i + 1) {
            Some(&next) => {
                let line = &self.text[start..next - 1];
                line.strip_suffix('\r').unwrap_or(line)
            }
            None => &self.text[start..],
        })
    }
}

impl PackedStore {
    /// Open the store at `dir`, checking the index and mean image against
    /// their checksums and the data file's length (a full check of the data
    /// is [`PackedStore::verify`]; each image is checked when read).
    pub fn open(dir: &Path) -> Result<PackedStore> {
        let meta = read_meta(dir)?;
        let generation = meta.generation.clone();
        // A prepare that committed since meta.json was read removed the
        // files it named: the store it wrote is opened instead.
        Self::open_as(dir, meta).or_else(|e| match read_meta(dir) {
            Ok(now) if now.generation != generation => Self::open_as(dir, now),
            _ => Err(e),
        })
    }

    /// `open`, of the generation `meta` (read from `dir`) names.
    fn open_as(dir: &Path, meta: StoreMeta) -> Result<PackedStore> {
        let damaged = |file: &Path, what: String| {
            Error::Data(format!(
                "{}: {what}; the store at {} is damaged, rerun `alexnet-cuda prepare`",
                file.display(),
                dir.display()
            ))
        };
        let read_checked = |stem: &str, ext: &str, crc: u32| -> Result<Vec<u8>> {
            let p = gen_file(dir, stem, &meta.generation, ext);
            let bytes = fs::read(&p).map_err(|e| read_error(dir, &p, e))?;
            let got = crc32fast::hash(&bytes);
            if got != crc {
                return Err(damaged(
                    &p,
                    format!("checksum {got:08x}, expected {crc:08x}"),
                ));
            }
            Ok(bytes)
        };
        let index = read_checked("index", "bin", meta.index_crc)?;
        let mean = read_checked("mean", "bin", meta.mean_crc)?;
        let index_path = gen_file(dir, "index", &meta.generation, "bin");
        if meta.count.checked_mul(ENTRY_BYTES) != Some(index.len()) {
            return Err(damaged(
                &index_path,
                format!("{} bytes for {} images", index.len(), meta.count),
            ));
        }
        let entries: Vec<Entry> = index
            .chunks_exact(ENTRY_BYTES)
            .map(|r| Entry {
                offset: u64::from_le_bytes(r[0..8].try_into().unwrap_or_default()),
                len: u32::from_le_bytes(r[8..12].try_into().unwrap_or_default()),
                label: u32::from_le_bytes(r[12..16].try_into().unwrap_or_default()),
                crc: u32::from_le_bytes(r[16..20].try_into().unwrap_or_default()),
            })
            .collect();
        let mean_image: Vec<f32> = mean
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if mean_image.len() != meta.size * meta.size * 3 {
            return Err(damaged(
                &gen_file(dir, "mean", &meta.generation, "bin"),
                format!(
                    "{} values for a {}x{} image",
                    mean_image.len(),
                    meta.size,
                    meta.size
                ),
            ));
        }
        let data_path = gen_file(dir, "data", &meta.generation, "bin");
        let file = File::open(&data_path).map_err(|e| read_error(dir, &data_path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&data_path, e))?.len();
        if len != meta.data_bytes {
            return Err(damaged(
                &data_path,
                format!("{len} bytes, expected {}", meta.data_bytes),
            ));
        }
        if let Some(what) = bad_entry(&entries, &meta, len) {
            return Err(damaged(&index_path, what));
        }
        // SAFETY: the map is read-only, and a store is never modified in
        // place: prepare writes a new generation and renames meta.json.
        let data = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&data_path, e))?;
        // Training reads images in shuffled order: readahead would only
        // evict useful pages.
        let _ = data.advise(Advice::Random);
        Ok(PackedStore {
            dir: dir.to_path_buf(),
            meta,
            entries,
            mean_image,
            data,
            source_lines: OnceLock::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn meta(&self) -> &StoreMeta {
        &self.meta
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The mean image, `size x size x 3` HWC, 0..255.
    pub fn mean_image(&self) -> &[f32] {
        &self.mean_image
    }

    /// The stored bytes of image `i`, checked against their CRC.
    pub fn bytes(&self, i: usize) -> Result<&[u8]> {
        let e = self.entries.get(i).ok_or_else(|| {
            Error::Data(format!(
                "{}: image {i} requested, the store has {}",
                self.dir.display(),
                self.entries.len()
            ))
        })?;
        let b = &self.data[e.offset as usize..(e.offset + e.len as u64) as usize];
        if crc32fast::hash(b) != e.crc {
            return Err(self.entry_error(i, "fails its checksum"));
        }
        Ok(b)
    }

    /// The source file image `i` came from (from `sources-<gen>.txt`, read
    /// once, when first asked; used for error messages).
    pub fn source(&self, i: usize) -> Option<String> {
        let lines = self.source_lines.get_or_init(|| {
            let p = gen_file(&self.dir, "sources", &self.meta.generation, "txt");
            fs::read_to_string(p).ok().map(Lines::new)
        });
        lines.as_ref()?.get(i).map(str::to_string)
    }

    /// The source file of every image, in store order (one read of
    /// `sources-<gen>.txt`); an error when the file is missing, short, or
    /// not what `prepare` wrote: the names digest a run's held-out images
    /// (`store_digest`), so an edited list would pass for the run's.
    pub fn sources(&self) -> Result<Vec<String>> {
        let p = gen_file(&self.dir, "sources", &self.meta.generation, "txt");
        let text = fs::read_to_string(&p).map_err(|e| read_error(&self.dir, &p, e))?;
        if crc32fast::hash(text.as_bytes()) != self.meta.sources_crc {
            return Err(Error::Data(format!(
                "{}: checksum mismatch (the list of source files was changed or damaged after prepare wrote it); rerun `alexnet-cuda prepare`",
                p.display()
            )));
        }
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() < self.entries.len() {
            return Err(Error::Data(format!(
                "{}: {} lines for {} images; rerun `alexnet-cuda prepare`",
                p.display(),
                lines.len(),
                self.entries.len()
            )));
        }
        Ok(lines)
    }

    /// An error about image `i`, naming the data file and the source image.
    pub fn entry_error(&self, i: usize, what: &str) -> Error {
        let data = gen_file(&self.dir, "data", &self.meta.generation, "bin");
        Error::Data(format!(
            "{}: image {i} ({}) {what}; the store is damaged, rerun `alexnet-cuda prepare`",
            data.display(),
            self.source(i).unwrap_or_else(|| "source unknown".into())
        ))
    }

    /// Check every image's checksum and the whole data file's.
    pub fn verify(&self) -> Result<()> {
        for i in 0..self.entries.len() {
            self.bytes(i)?;
        }
        if crc32fast::hash(&self.data) != self.meta.data_crc {
            let data = gen_file(&self.dir, "data", &self.meta.generation, "bin");
            return Err(Error::Data(format!(
                "{}: data checksum mismatch; rerun `alexnet-cuda prepare`",
                data.display()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Lines;

    /// Line by line as the standard library's `str::lines` splits them.
    #[test]
    fn lines_are_std_lines() {
        let texts = [
            "",
            "a",
            "a\n",
            "a\nb",
            "a\r\nb\r\n",
            "\n\nc\n",
            "x\ny\n\n",
            "a\nb\r",
        ];
        for text in texts {
            let lines = Lines::new(text.to_string());
            let want: Vec<&str> = text.lines().collect();
            let got: Vec<&str> = (0..=want.len()).map_while(|i| lines.get(i)).collect();
            assert_eq!(got, want, "{text:?}");
        }
    }
}
