//! Writing files so a crash, a kill or a full disk never leaves a half-written
//! one where a reader looks: write a temporary file in the same folder, fsync
//! it, rename it over the target (atomic on POSIX file systems), fsync the
//! folder so the rename itself survives a power cut. `write_csv` is the
//! same for a table; `short_of_room` says when a folder's disk has too
//! little free space, `lock_folder` keeps a folder to one process, `size`
//! writes a byte count as text.
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

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

/// A temporary file's name (see [`temp_path`]) split into the file it was
/// to become and its writer's pid.
pub fn temp_of(name: &str) -> Option<(&str, u32)> {
    let (target, pid) = name.rsplit_once(".tmp-")?;
    Some((target, pid.parse().ok()?))
}

/// Whether process `pid` (not this one) has ended. Only where /proc lists
/// the running processes (Linux); elsewhere, never.
pub fn process_gone(pid: u32) -> bool {
    pid != std::process::id()
        && Path::new("/proc/self").exists()
        && !Path::new(&format!("/proc/{pid}")).exists()
}

/// Delete the temporary files that killed processes left in `dir` (a
/// checkpoint, a features file cut short by SIGKILL), which would
/// otherwise stay for good: later writes use their own pid. Only those of
/// files `of` names, and of those only the ones whose process is gone,
/// unless `any_pid` (the caller holds the folder's lock, so no one else
/// writes them: a pid taken again, as pid 1 is in every container, would
/// otherwise keep a killed write's file for good). The process check
/// needs /proc (Linux); elsewhere nothing is taken for abandoned.
pub fn remove_abandoned_temps(dir: &Path, of: impl Fn(&str) -> bool, any_pid: bool) -> Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((target, pid)) = temp_of(name) else {
            continue;
        };
        if of(target) && (any_pid || process_gone(pid)) {
            let p = entry.path();
            let mb = entry
                .metadata()
                .map(|m| m.len() as f64 / 1e6)
                .unwrap_or(0.0);
            fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
            tracing::info!(
                "removed {} ({mb:.1} MB), left by a process that stopped before finishing it",
                p.display()
            );
        }
    }
    Ok(())
}

/// `dir`, or "." where it is "" (the folder of a bare file name).
pub fn dir_or_here(dir: &Path) -> &Path {
    match dir.as_os_str().is_empty() {
        true => Path::new("."),
        false => dir,
    }
}

/// The folder holding `path` ("." for a bare name).
pub fn folder_of(path: &Path) -> &Path {
    dir_or_here(path.parent().unwrap_or(Path::new("")))
}

/// [`remove_abandoned_temps`] for `path`'s own temporary files, before a
/// new one is written; a failure only warns, as the write can go on.
pub fn sweep_before_writing(path: &Path) {
    let dir = folder_of(path);
    let name = path.file_name().and_then(|n| n.to_str());
    if let Some(name) = name {
        if let Err(e) = remove_abandoned_temps(dir, |t| t == name, false) {
            tracing::warn!("{e}");
        }
    }
}

/// The nearest of `dir` and the folders above it that exists as something
/// other than a folder: a file where a folder is to be made.
pub fn file_in_the_way(dir: &Path) -> Option<&Path> {
    dir.ancestors()
        .filter(|a| !a.as_os_str().is_empty())
        .find(|a| a.exists())
        .filter(|a| !a.is_dir())
}

/// `path` with symbolic links and `..` resolved as far as it exists, the
/// rest appended as written: where a folder not made yet will be. A `..`
/// after a folder not made yet is taken lexically, as `create_dir_all`
/// makes `a/../b` (`a`, then `b` beside it), and what follows it is
/// resolved again, since it may exist.
pub fn resolved(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    for base in abs.ancestors() {
        if let Ok(real) = base.canonicalize() {
            let rest = abs.strip_prefix(base).unwrap_or(Path::new(""));
            if !rest.components().any(|c| c == Component::ParentDir) {
                return real.join(rest);
            }
            return resolved(&lexically(real, rest));
        }
    }
    abs
}

/// `base` joined with `rest`, each `..` in `rest` taking off one part.
fn lexically(mut base: PathBuf, rest: &Path) -> PathBuf {
    for part in rest.components() {
        match part {
            Component::ParentDir => {
                base.pop();
            }
            Component::CurDir => {}
            other => base.push(other),
        }
    }
    base
}

/// Refuse an `--out` folder with a file in its place or above it, before
/// anything is written; `what` is what the folder is for ("the run").
pub fn refuse_file_in_the_way(dir: &Path, what: &str) -> Result<()> {
    match file_in_the_way(dir) {
        Some(file) => Err(Error::Config(format!(
            "--out {}: {} is a file, not a folder; pass a folder for {what} (created if missing)",
            dir.display(),
            file.display()
        ))),
        None => Ok(()),
    }
}

/// `a` and `b` name the same file: one path through symbolic links or
/// `..`, or two hard links (as `best.safetensors` is to its checkpoint).
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Refuse, before anything is written, a target that is a folder, is
/// written as one (a trailing `/`: the OS says "not a directory"), or
/// whose folder does not exist (the OS would name the temporary file
/// instead).
pub fn check_target(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(Error::Data(format!(
            "{}: a folder, not a file name; pass the path of the file to write",
            path.display()
        )));
    }
    if path.as_os_str().as_encoded_bytes().ends_with(b"/") {
        return Err(Error::Data(format!(
            "{}: ends in /, as a folder's name does, but names no folder; to write the file, drop the trailing /",
            path.display()
        )));
    }
    refuse_long_name(path)?;
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
            crate::shell::word(d)
        ))),
        _ => Ok(()),
    }
}

/// Refuse a name that fits the file system's 255 bytes (NAME_MAX on
/// Linux's file systems) while the temporary name it is written through
/// ([`temp_path`]) does not: the OS would name neither, after the work.
fn refuse_long_name(path: &Path) -> Result<()> {
    const NAME_MAX: usize = 255;
    let len = |p: &Path| p.file_name().map_or(0, |n| n.as_encoded_bytes().len());
    let (name, tmp) = (len(path), len(&temp_path(path)));
    if name > NAME_MAX || tmp <= NAME_MAX {
        return Ok(());
    }
    Err(Error::Data(format!(
        "{}: its name is {name} bytes, and it is written through a temporary file whose name adds {} (then renamed), past the {NAME_MAX} a file name may have; use a name of at most {} bytes",
        path.display(),
        tmp - name,
        NAME_MAX - (tmp - name)
    )))
}

/// [`check_target`], and a file can be made beside it (the folder's
/// permissions, a read-only disk): for a file written after long work,
/// refused before the work. The probe is the temporary file a write
/// makes, removed at once.
pub fn check_writable(path: &Path) -> Result<()> {
    check_target(path)?;
    let tmp = temp_path(path);
    File::create(&tmp).map_err(|e| Error::io(path, e))?;
    let _ = fs::remove_file(&tmp);
    Ok(())
}

/// `base`, or where that is taken (what an earlier resume from the same
/// step kept aside) the first of `base-2`, `base-3` ... that is not: what
/// is set aside never replaces another.
pub fn first_free(base: &Path) -> PathBuf {
    let name = base.file_name().unwrap_or_default().to_string_lossy();
    let mut free = base.to_path_buf();
    for k in 2.. {
        if !free.exists() {
            break;
        }
        free = base.with_file_name(format!("{name}-{k}"));
    }
    free
}

/// Writes `bytes` to [`first_free`] of `base`; returns where they went.
pub fn write_aside(base: &Path, bytes: &[u8]) -> Result<PathBuf> {
    let aside = first_free(base);
    write_atomic(&aside, bytes)?;
    Ok(aside)
}

/// The file a command told to write `path` (`--out`, `--logits`, ...)
/// writes: `path`, or where it is a symbolic link, what the link names
/// (followed link by link, a relative target read from the link's
/// folder), as the shell's `>` writes through a link; a rename onto the
/// link itself would replace it with a file and leave its target as it
/// was. Past 40 links (a loop), `path`. The program's own files (a run's,
/// a store's) are not followed: a linked copy of a run must not write
/// into the original.
pub fn through_links(path: &Path) -> PathBuf {
    let mut at = path.to_path_buf();
    for _ in 0..40 {
        match fs::read_link(&at) {
            Ok(target) => at = folder_of(&at).join(target),
            Err(_) => return at,
        }
    }
    path.to_path_buf()
}

/// Replace `path` with `bytes` atomically: a symbolic link there is
/// replaced too, not followed (the commands follow the links of the files
/// they are told to write, with [`through_links`], before they get here).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Staged::write(path, bytes)?.land()
}

/// A file written whole and synced under a temporary name beside `path`,
/// put in place by `land`; dropped unlanded, it is removed. Files that
/// belong together are all staged before any replaces its old one, so a
/// full disk keeps the old set whole.
pub struct Staged {
    tmp: PathBuf,
    path: PathBuf,
    landed: bool,
}

impl Staged {
    pub fn write(path: &Path, bytes: &[u8]) -> Result<Staged> {
        check_target(path)?;
        sweep_before_writing(path);
        let staged = Staged {
            tmp: temp_path(path),
            path: path.to_path_buf(),
            landed: false,
        };
        // Errors name the file asked for: the temporary one is removed (drop).
        let io = |e| Error::io(path, e);
        let mut f = File::create(&staged.tmp).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        Ok(staged)
    }

    /// Rename it over `path`, and sync the folder.
    pub fn land(mut self) -> Result<()> {
        fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        self.landed = true;
        sync_dir(&self.path)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.landed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// A file or class name as one field of a tab-separated line: a tab or
/// line break in it would shift the columns or split the line, so they
/// and the backslash are escaped (`\t`, `\n`, `\r`, `\\`), as in
/// PostgreSQL's text format.
pub fn tsv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains(['\t', '\n', '\r', '\\']) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 4);
    for ch in s.chars() {
        match ch {
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.into()
}

/// Write a CSV file atomically: `header`, then `rows`, quoted by the `csv`
/// crate where a field needs it (names such as "tench, Tinca tinca").
pub fn write_csv(
    path: &Path,
    header: &[&str],
    rows: impl IntoIterator<Item = Vec<String>>,
) -> Result<()> {
    write_atomic(path, &csv_bytes(path, header, rows)?)
}

/// The bytes of the CSV file `path` (named in errors) would hold.
pub fn csv_bytes(
    path: &Path,
    header: &[&str],
    rows: impl IntoIterator<Item = Vec<String>>,
) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let io = |e: csv::Error| Error::io(path, e.into());
    w.write_record(header).map_err(io)?;
    for row in rows {
        w.write_record(&row).map_err(io)?;
    }
    w.into_inner().map_err(|e| Error::io(path, e.into_error()))
}

/// `create_dir_all`, then each folder it made synced into its parent: a
/// file fsynced in a new folder (a checkpoint, a store) is lost with the
/// folder at a power cut if the folder's own entry never reached the disk.
pub fn create_dir_durably(dir: &Path) -> std::io::Result<()> {
    let made = missing_folders(dir);
    fs::create_dir_all(dir)?;
    for d in made {
        File::open(folder_of(d))?.sync_all()?;
    }
    Ok(())
}

/// The folders on the way to `dir`, itself first, that are not there yet:
/// what creating `dir` makes.
pub fn missing_folders(dir: &Path) -> Vec<&Path> {
    dir.ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
        .collect()
}

/// fsync the folder holding `path`, making a rename or create in it durable.
pub fn sync_dir(path: &Path) -> Result<()> {
    let dir = folder_of(path);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Bytes an unprivileged process may still write on the disk that holds
/// `dir` (statvfs: available blocks times the block size). None where the
/// OS does not say.
fn free_bytes(dir: &Path) -> Result<Option<u64>> {
    #[cfg(unix)]
    {
        let st = rustix::fs::statvfs(dir).map_err(|e| Error::io(dir, e.into()))?;
        Ok(Some(st.f_bavail.saturating_mul(st.f_frsize)))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(None)
    }
}

/// The bytes free on the disk that holds (or will hold) `dir`, when they
/// are fewer than `need`; None when there is room or the OS does not say.
pub fn short_of_room(dir: &Path, need: u64) -> Result<Option<u64>> {
    Ok(free_bytes(made_in(dir))?.filter(|&free| free < need))
}

/// `dir`, or the nearest folder above it that exists (where it will be made).
fn made_in(dir: &Path) -> &Path {
    dir.ancestors()
        .map(|a| match a.as_os_str().is_empty() {
            true => Path::new("."),
            false => a,
        })
        .find(|a| a.is_dir())
        .unwrap_or(Path::new("."))
}

/// A byte count as GB, MB or kB (powers of 1000).
pub fn size(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..1_000_000 => format!("{:.1} kB", b / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", b / 1e6),
        _ => format!("{:.1} GB", b / 1e9),
    }
}

/// A lock refused because the file system has none (ENOLCK: an NFS
/// mount without its lock daemon; EOPNOTSUPP, ENOSYS: a FUSE file system
/// without flock), not because of this folder.
fn keeps_no_locks(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOLCK) || e.kind() == std::io::ErrorKind::Unsupported
}

/// `f.try_lock()`, tried again for up to a second while it would block: a
/// lock can outlive its holder's close for a moment, when a child process
/// being started elsewhere in the same process holds a copy of the
/// descriptor until its exec closes it. A lock held by a running process
/// still refuses, a second later.
fn try_lock_briefly(f: &File) -> std::result::Result<(), TryLockError> {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        match f.try_lock() {
            Err(TryLockError::WouldBlock) if std::time::Instant::now() < until => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// What a process that finds a folder locked by another for good is
/// told to do ([`lock_folder`]'s `fix`).
pub const ELSEWHERE: &str = "wait for it to end, or pass another --out";

/// Lock `dir/.lock` for this process (released when it exits, however it
/// exits), with its pid written in for the next process's error, which
/// names `holder` ("another training process") and the `fix`.
pub fn lock_folder(dir: &Path, holder: &str, fix: &str) -> Result<File> {
    let mut f = take_lock(dir, (holder, fix), true)?;
    let pid = std::process::id().to_string();
    f.set_len(0)
        .and_then(|()| f.write_all(pid.as_bytes()))
        .map_err(|e| Error::io(dir.join(".lock"), e))?;
    Ok(f)
}

/// [`lock_folder`]'s refusal, the lock released at once and the file left
/// as it was: a cheap check before a lock is taken for good, which is the
/// one to warn of a file system without locks.
pub fn check_not_locked(dir: &Path, holder: &str, fix: &str) -> Result<()> {
    take_lock(dir, (holder, fix), false).map(drop)
}

/// [`lock_folder`] but for the pid, warning of a file system without
/// locks if `warn`.
fn take_lock(dir: &Path, (holder, fix): (&str, &str), warn: bool) -> Result<File> {
    let path = dir.join(".lock");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    match try_lock_briefly(&f) {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = f.read_to_string(&mut pid);
            return Err(Error::Config(format!(
                "{} is in use by {holder} (pid {}); {fix}",
                dir.display(),
                pid.trim()
            )));
        }
        // Some network file systems keep no locks: the run goes on, told
        // that nothing then keeps a second process out of the folder.
        Err(TryLockError::Error(e)) if keeps_no_locks(&e) => {
            if warn {
                tracing::warn!(
                    "{}: could not lock it ({e}; its file system keeps no locks): nothing stops {holder} from writing into {} at the same time; run one at a time there",
                    path.display(),
                    dir.display()
                );
            }
        }
        Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::{check_writable, create_dir_durably, keeps_no_locks};
    use std::io::Error;

    /// A folder that takes files passes and is left as it was; one that
    /// refuses them (/sys, even to root) is refused, naming the file.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_file_that_cannot_be_made_is_refused_before_it_is_written() {
        let t = tempfile::tempdir().unwrap();
        check_writable(&t.path().join("t.csv")).unwrap();
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
        let err = check_writable(std::path::Path::new("/sys/t.csv")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("/sys/t.csv: Permission denied"), "{msg}");
        assert!(msg.contains("change its permissions or owner"), "{msg}");
    }

    #[test]
    fn folders_are_made_at_any_depth_and_an_existing_one_is_left() {
        let t = tempfile::tempdir().unwrap();
        let deep = t.path().join("a/b/c");
        create_dir_durably(&deep).unwrap();
        assert!(deep.is_dir());
        std::fs::write(deep.join("f"), "x").unwrap();
        create_dir_durably(&deep).unwrap();
        assert!(deep.join("f").is_file());
        let file = deep.join("f/g");
        assert!(create_dir_durably(&file).is_err(), "a folder under a file");
    }

    /// Linux's numbers (asm-generic/errno.h): ENOLCK 37, ENOSYS 38,
    /// EOPNOTSUPP 95 mean a file system without locks; EACCES 13 and
    /// ENOSPC 28 are faults of this folder, which stay errors.
    #[cfg(target_os = "linux")]
    #[test]
    fn only_a_file_system_without_locks_is_taken_for_one() {
        for (errno, none) in [(37, true), (38, true), (95, true), (13, false), (28, false)] {
            assert_eq!(
                keeps_no_locks(&Error::from_raw_os_error(errno)),
                none,
                "{errno}"
            );
        }
    }
}
