//! Writing files so a crash, a kill or a full disk never leaves a half-written
//! one where a reader looks: write a temporary file in the same folder, fsync
//! it, rename it over the target (atomic on POSIX file systems), fsync the
//! folder so the rename itself survives a power cut.
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// `path` with `.tmp-<pid>` appended: unique per process, next to the target.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// A file's name written with a trailing `/` (`best.safetensors/`), which
/// the OS reports as missing or as "not a directory": the file, if so.
pub fn file_with_slash(path: &Path) -> Option<&Path> {
    let s = path.to_str()?;
    let trimmed = Path::new(s.trim_end_matches('/'));
    (s.ends_with('/') && !trimmed.as_os_str().is_empty() && trimmed.is_file()).then_some(trimmed)
}

/// The nearest of `dir` and the folders above it that exists as something
/// other than a folder: a file where a folder is to be made.
pub fn file_in_the_way(dir: &Path) -> Option<&Path> {
    dir.ancestors()
        .filter(|a| !a.as_os_str().is_empty())
        .find(|a| a.exists())
        .filter(|a| !a.is_dir())
}

/// Refuse, before anything is written, a target that is a folder or whose
/// folder does not exist (the OS would name the temporary file instead).
pub fn check_target(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(Error::Data(format!(
            "{}: a folder, not a file name; pass the path of the file to write",
            path.display()
        )));
    }
    let parent = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(file) = parent.and_then(file_in_the_way) {
        return Err(Error::Data(format!(
            "{}: {} is a file, not a folder; write elsewhere",
            path.display(),
            file.display()
        )));
    }
    match parent {
        Some(d) if !d.is_dir() => Err(Error::Data(format!(
            "{}: the folder {} does not exist; create it (mkdir -p {}) or write elsewhere",
            path.display(),
            d.display(),
            d.display()
        ))),
        _ => Ok(()),
    }
}

/// Replace `path` with `bytes` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    check_target(path)?;
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        drop(f);
        fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        sync_dir(path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// fsync the folder holding `path`, making a rename or create in it durable.
pub fn sync_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}
