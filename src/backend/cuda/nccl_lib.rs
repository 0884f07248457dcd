//! Finding libnccl where it is installed. This file owns the search for the
//! NCCL library when cudarc's own names fail, the link folder a restart puts
//! on `LD_LIBRARY_PATH`, the guard that keeps that restart from repeating,
//! and reading back which NCCL a process loaded (`nccl-check`).
//!
//! cudarc opens `libnccl.so` and a list of versioned names (`.so.12`,
//! `.so.11`, ..., `.so.1`), but not `libnccl.so.2`, the one name Debian's
//! `libnccl2` package and PyPI's `nvidia-nccl-cu12` / `nvidia-nccl-cu13`
//! wheels install. The dynamic loader reads `LD_LIBRARY_PATH` only when a
//! process starts, so the command line (src/cli/nccl.rs), once `locate` has found
//! the file, makes a folder holding a link `libnccl.so` to it and starts
//! itself again with that folder first on `LD_LIBRARY_PATH` and
//! `RESTART_GUARD` set; with the guard set it never restarts a second time.
//!
//! `locate` looks, in order: in `LD_LIBRARY_PATH`'s folders, in the dynamic
//! loader's cache (`ldconfig -p`), in the usual system folders, in the
//! active virtualenv or conda prefix, and in the `nvidia/nccl/lib` folder of
//! a wheel installed for `python3` (a missing python3 is not an error). A
//! file counts only if it is an ELF shared object for this machine.
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use tracing::{debug, warn};

use super::nccl::NO_NCCL;

/// The file name every NCCL 2 package installs.
pub const SONAME: &str = "libnccl.so.2";
/// The name cudarc opens first; the restart's link has it.
pub const LINK_NAME: &str = "libnccl.so";
/// Set in the restarted process to the file found (so it never restarts again).
pub const RESTART_GUARD: &str = "ALEXNET_NCCL_RESTARTED";

/// Why NCCL could not be made available.
#[derive(Debug, thiserror::Error)]
pub enum NcclLibError {
    /// No libnccl.so.2 anywhere the search looked.
    #[error("{NO_NCCL}; searched LD_LIBRARY_PATH, the loader cache (ldconfig -p), {}, the active virtualenv and python3's site-packages", system_dirs().iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "))]
    NotFound,
    /// The process was restarted with a link to `found`, and still cannot open it.
    #[error("{found} was found and the program restarted with a link libnccl.so to it first on LD_LIBRARY_PATH (LD_LIBRARY_PATH={ld_library_path}), but NCCL still does not load: check that its dependencies resolve (ldd {found}) and that it is built for this machine; if {RESTART_GUARD} was inherited from another program, unset it")]
    StillMissing {
        found: String,
        ld_library_path: String,
    },
    /// The link folder or the link could not be made.
    #[error("could not make the link {} -> {}: {source}; put a link libnccl.so to it in a folder on LD_LIBRARY_PATH by hand", link.display(), target.display())]
    Link {
        link: PathBuf,
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// This program's own path, needed to start it again, is unknown.
    #[error("found {}, but could not find this program's own file to restart it with NCCL on LD_LIBRARY_PATH: {source}", found.display())]
    SelfPath {
        found: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `exec` of the restart failed.
    #[error("restarting {} with NCCL on LD_LIBRARY_PATH failed: {source}", exe.display())]
    Exec {
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A libnccl.so.2 that `locate` found, and where it looked to find it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub path: PathBuf,
    pub place: &'static str,
}

/// What to do about NCCL in this process.
#[derive(Debug)]
pub enum Plan {
    /// cudarc opens NCCL as things are.
    Ready,
    /// It is installed under a name cudarc does not try: restart with a link.
    Restart(Found),
    /// It cannot be had; the error says why and what to do.
    Unavailable(NcclLibError),
}

/// True when cudarc opens libnccl under one of its own names.
pub fn cudarc_opens() -> bool {
    super::nccl::nccl_present()
}

/// The plan, given whether cudarc opens NCCL, the restart guard's value in
/// this process's environment, and the search (`locate`, called only when
/// needed). With the guard set the answer is never another restart.
pub fn plan(opens: bool, guard: Option<&OsStr>, locate: impl FnOnce() -> Option<Found>) -> Plan {
    if opens {
        return Plan::Ready;
    }
    if let Some(found) = guard {
        return Plan::Unavailable(NcclLibError::StillMissing {
            found: found.to_string_lossy().into_owned(),
            ld_library_path: std::env::var_os("LD_LIBRARY_PATH")
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
        });
    }
    match locate() {
        Some(found) => Plan::Restart(found),
        None => Plan::Unavailable(NcclLibError::NotFound),
    }
}

/// The plan for this process: its environment and the real search.
pub fn plan_here() -> Plan {
    plan(
        cudarc_opens(),
        std::env::var_os(RESTART_GUARD).as_deref(),
        locate,
    )
}

/// Search the places the module comment lists for libnccl.so.2.
pub fn locate() -> Option<Found> {
    let ld = std::env::var_os("LD_LIBRARY_PATH").unwrap_or_default();
    if let Some(path) = find_in_dirs(&path_list(&ld), SONAME) {
        return Some(Found {
            path,
            place: "LD_LIBRARY_PATH",
        });
    }
    if let Some(text) = ldconfig_cache() {
        let hit = ldconfig_paths(&text, SONAME)
            .into_iter()
            .find(|p| fits_this_machine(p));
        if let Some(path) = hit {
            return Some(Found {
                path,
                place: "the loader cache (ldconfig -p)",
            });
        }
    }
    if let Some(path) = find_in_dirs(&system_dirs(), SONAME) {
        return Some(Found {
            path,
            place: "a system library folder",
        });
    }
    let mut env_dirs = Vec::new();
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(prefix) = std::env::var_os(var).filter(|p| !p.is_empty()) {
            env_dirs.extend(prefix_dirs(Path::new(&prefix)));
        }
    }
    if let Some(path) = find_in_dirs(&env_dirs, SONAME) {
        return Some(Found {
            path,
            place: "the active Python environment",
        });
    }
    if let Some(path) = find_in_dirs(&python_wheel_dirs(), SONAME) {
        return Some(Found {
            path,
            place: "python3's nvidia-nccl wheel",
        });
    }
    None
}

/// The folders of a `:`-separated list such as LD_LIBRARY_PATH, without
/// the empty entries (which the loader reads as the current folder).
pub fn path_list(list: &OsStr) -> Vec<PathBuf> {
    std::env::split_paths(list)
        .filter(|p| !p.as_os_str().is_empty())
        .collect()
}

/// The first `dir/name` among `dirs` that is a shared object for this
/// machine, made absolute (a relative folder is read from the current one,
/// which the restart's link does not share).
pub fn find_in_dirs(dirs: &[PathBuf], name: &str) -> Option<PathBuf> {
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| fits_this_machine(p))
        .map(|p| absolute_or_as_is(&p))
}

/// The paths `ldconfig -p` lists for `name`, in its order, keeping only
/// the entries whose flags fit this machine where it can tell (x86-64 and
/// AArch64). Lines look like
/// `libnccl.so.2 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libnccl.so.2`.
pub fn ldconfig_paths(text: &str, name: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let (left, path) = line.split_once(" => ")?;
            let left = left.trim();
            let (lib, flags) = match left.split_once(" (") {
                Some((lib, rest)) => (lib.trim(), rest.trim_end_matches(')')),
                None => (left, ""),
            };
            (lib == name && flags_fit(flags)).then(|| PathBuf::from(path.trim()))
        })
        .collect()
}

/// Whether an `ldconfig -p` flags field (`libc6,x86-64`) is this machine's.
fn flags_fit(flags: &str) -> bool {
    let has = |f: &str| flags.split(',').any(|x| x.trim() == f);
    if cfg!(target_arch = "x86_64") {
        has("x86-64")
    } else if cfg!(target_arch = "aarch64") {
        has("AArch64")
    } else {
        true
    }
}

/// `ldconfig -p`'s output, from /sbin/ldconfig, /usr/sbin/ldconfig or the
/// one on PATH; None where none runs.
fn ldconfig_cache() -> Option<String> {
    for exe in ["/sbin/ldconfig", "/usr/sbin/ldconfig", "ldconfig"] {
        match Command::new(exe).arg("-p").output() {
            Ok(out) if out.status.success() => {
                return Some(String::from_utf8_lossy(&out.stdout).into_owned())
            }
            Ok(out) => debug!("{exe} -p: exit {}", out.status),
            Err(e) => debug!("{exe} -p: {e}"),
        }
    }
    None
}

/// Where distributions and NVIDIA's packages put libraries.
pub fn system_dirs() -> Vec<PathBuf> {
    let triplet = if cfg!(target_arch = "aarch64") {
        "aarch64-linux-gnu"
    } else {
        "x86_64-linux-gnu"
    };
    let cuda_target = if cfg!(target_arch = "aarch64") {
        "sbsa-linux"
    } else {
        "x86_64-linux"
    };
    [
        format!("/usr/lib/{triplet}"),
        format!("/lib/{triplet}"),
        "/usr/lib64".into(),
        "/usr/lib".into(),
        "/usr/local/lib".into(),
        "/usr/local/cuda/lib64".into(),
        format!("/usr/local/cuda/targets/{cuda_target}/lib"),
        "/usr/local/nccl/lib".into(),
    ]
    .into_iter()
    .map(PathBuf::from)
    .collect()
}

/// A Python prefix's candidate folders: `lib` itself (conda's nccl
/// package) and each `lib/python*/site-packages/nvidia/nccl/lib`.
pub fn prefix_dirs(prefix: &Path) -> Vec<PathBuf> {
    let lib = prefix.join("lib");
    let mut dirs = vec![lib.clone()];
    let mut pythons: Vec<PathBuf> = std::fs::read_dir(&lib)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python"))
        .map(|e| e.path().join("site-packages/nvidia/nccl/lib"))
        .collect();
    pythons.sort();
    dirs.extend(pythons);
    dirs
}

/// Prints, one a line, each `nvidia/nccl/lib` folder on python3's module
/// path that holds the library (the wheel is a namespace package, so this
/// looks at sys.path rather than importing it).
const PYTHON_FIND: &str = "import os, sys\nfor p in sys.path:\n    d = os.path.join(p or '.', 'nvidia', 'nccl', 'lib')\n    if os.path.isfile(os.path.join(d, 'libnccl.so.2')):\n        print(d)\n";

/// The wheel folders python3 reports; empty when python3 is not there or fails.
fn python_wheel_dirs() -> Vec<PathBuf> {
    match Command::new("python3").args(["-c", PYTHON_FIND]).output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| PathBuf::from(l.trim()))
            .collect(),
        Ok(out) => {
            debug!(
                "python3 (looking for the nvidia-nccl wheel): exit {}",
                out.status
            );
            Vec::new()
        }
        Err(e) => {
            debug!("python3 (looking for the nvidia-nccl wheel): {e}");
            Vec::new()
        }
    }
}

/// True when `path` is an ELF shared object (or executable) of this
/// machine's word size, byte order and architecture.
pub fn fits_this_machine(path: &Path) -> bool {
    let mut head = [0u8; 20];
    let read = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head));
    if read.is_err() {
        return false;
    }
    let fits = elf_header_fits(&head);
    if !fits {
        debug!("{}: not a shared library for this machine", path.display());
    }
    fits
}

/// The check of `fits_this_machine` on an ELF header's first 20 bytes.
pub fn elf_header_fits(head: &[u8; 20]) -> bool {
    if head[..4] != *b"\x7fELF" {
        return false;
    }
    let class = if cfg!(target_pointer_width = "64") {
        2
    } else {
        1
    };
    let data = if cfg!(target_endian = "little") { 1 } else { 2 };
    let machine = if cfg!(target_endian = "little") {
        u16::from_le_bytes([head[18], head[19]])
    } else {
        u16::from_be_bytes([head[18], head[19]])
    };
    let want_machine = if cfg!(target_arch = "x86_64") {
        Some(62)
    } else if cfg!(target_arch = "aarch64") {
        Some(183)
    } else {
        None
    };
    head[4] == class && head[5] == data && want_machine.is_none_or(|m| m == machine)
}

/// The folder for the restart's link: `$XDG_CACHE_HOME/alexnet-cuda/lib`,
/// else `~/.cache/alexnet-cuda/lib` (None when neither variable is set to
/// an absolute path).
pub fn cache_link_dir(xdg_cache_home: Option<&OsStr>, home: Option<&OsStr>) -> Option<PathBuf> {
    let abs = |v: Option<&OsStr>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    abs(xdg_cache_home)
        .or_else(|| abs(home).map(|h| h.join(".cache")))
        .map(|c| c.join("alexnet-cuda").join("lib"))
}

/// The link folder in `cache` for `target`: one per target (named by a
/// CRC-32 of its path), so processes that found NCCL in different places
/// (machines sharing a home folder) never repoint each other's link
/// between making it and the restart's loader opening it.
pub fn link_dir_for(cache: &Path, target: &Path) -> PathBuf {
    let key = crc32fast::hash(target.as_os_str().as_encoded_bytes());
    cache.join(format!("nccl-{key:08x}"))
}

/// Make `dir/libnccl.so` a link to `target`, made absolute (a relative
/// one would resolve against `dir`); a link that already points there is
/// kept, another replaced atomically, so processes starting together do
/// not race.
pub fn make_link_in(dir: &Path, target: &Path) -> Result<PathBuf, NcclLibError> {
    let link = dir.join(LINK_NAME);
    let err = |source| NcclLibError::Link {
        link: link.clone(),
        target: target.to_path_buf(),
        source,
    };
    let target = &std::path::absolute(target).map_err(err)?;
    if std::fs::read_link(&link).is_ok_and(|t| t == *target) {
        return Ok(link);
    }
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = dir.join(format!(".{LINK_NAME}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(err)?;
    std::fs::rename(&tmp, &link).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })?;
    Ok(link)
}

/// `path` made absolute against the current folder (as it is if that fails).
fn absolute_or_as_is(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The link folder for this process, with the link in it: the cache
/// folder, or where that cannot be written a new private temporary folder
/// (kept: the restarted process loads from it).
pub fn make_link(target: &Path) -> Result<PathBuf, NcclLibError> {
    let cache = cache_link_dir(
        std::env::var_os("XDG_CACHE_HOME").as_deref(),
        std::env::var_os("HOME").as_deref(),
    );
    let key = absolute_or_as_is(target);
    if let Some(dir) = cache.map(|c| link_dir_for(&c, &key)) {
        match make_link_in(&dir, target) {
            Ok(_) => return Ok(dir),
            Err(e) => warn!("{e}; using a temporary folder"),
        }
    }
    let tmp = tempfile::Builder::new()
        .prefix("alexnet-cuda-lib-")
        .tempdir()
        .map_err(|source| NcclLibError::Link {
            link: std::env::temp_dir().join(LINK_NAME),
            target: target.to_path_buf(),
            source,
        })?
        .keep();
    make_link_in(&tmp, target)?;
    Ok(tmp)
}

/// `dir` first, then the folders of `old` (LD_LIBRARY_PATH before the restart).
pub fn prepend_path(dir: &Path, old: Option<&OsStr>) -> OsString {
    let mut out = OsString::from(dir.as_os_str());
    if let Some(old) = old.filter(|o| !o.is_empty()) {
        out.push(":");
        out.push(old);
    }
    out
}

/// This program again, with the same arguments, `link_dir` first on
/// LD_LIBRARY_PATH and the guard set to the file found. The caller `exec`s it.
pub fn restart_command(found: &Found, link_dir: &Path) -> Result<Command, NcclLibError> {
    let exe = std::env::current_exe().map_err(|source| NcclLibError::SelfPath {
        found: found.path.clone(),
        source,
    })?;
    let mut args = std::env::args_os();
    let mut cmd = Command::new(&exe);
    if let Some(arg0) = args.next() {
        std::os::unix::process::CommandExt::arg0(&mut cmd, arg0);
    }
    cmd.args(args)
        .env(
            "LD_LIBRARY_PATH",
            prepend_path(link_dir, std::env::var_os("LD_LIBRARY_PATH").as_deref()),
        )
        .env(RESTART_GUARD, &found.path);
    Ok(cmd)
}

/// NCCL's version as (major, minor, patch) from ncclGetVersion's number
/// (X*10000 + Y*100 + Z since 2.9, X*1000 + Y*100 + Z before).
pub fn decode_version(code: i32) -> (i32, i32, i32) {
    if code >= 10000 {
        (code / 10000, code % 10000 / 100, code % 100)
    } else {
        (code / 1000, code % 1000 / 100, code % 100)
    }
}

/// ncclGetVersion of the library cudarc opens (needs no GPU); None when it
/// does not open.
pub fn loaded_version() -> Option<Result<i32, String>> {
    if !cudarc_opens() {
        return None;
    }
    Some(cudarc::nccl::result::get_nccl_version().map_err(|e| format!("ncclGetVersion: {e:?}")))
}

/// The file of the loaded NCCL, from a `/proc/self/maps`-style text.
pub fn mapped_nccl(maps: &str) -> Option<PathBuf> {
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| {
            Path::new(p)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libnccl.so"))
        })
        .map(PathBuf::from)
}

/// The file this process loaded NCCL from (None if it has not, or where
/// /proc is not there).
pub fn loaded_path() -> Option<PathBuf> {
    mapped_nccl(&std::fs::read_to_string("/proc/self/maps").ok()?)
}

/// What to tell the user when a run needs NCCL and the process cannot open
/// it (library code, which cannot restart): where it is, if anywhere, and
/// how to make it load.
pub fn unavailable_message() -> String {
    match locate() {
        Some(f) => format!(
            "{} is at {} ({}), but cudarc opens only libnccl.so and versioned names other than .so.2: put a link libnccl.so -> {} in a folder on LD_LIBRARY_PATH before the program starts (the alexnet-cuda command does this itself)",
            SONAME,
            f.path.display(),
            f.place,
            f.path.display()
        ),
        None => NcclLibError::NotFound.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A 64-byte ELF header for this machine (what `elf_header_fits` reads).
    fn this_elf() -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = if cfg!(target_pointer_width = "64") {
            2
        } else {
            1
        };
        h[5] = if cfg!(target_endian = "little") { 1 } else { 2 };
        let machine: u16 = if cfg!(target_arch = "aarch64") {
            183
        } else {
            62
        };
        let bytes = if cfg!(target_endian = "little") {
            machine.to_le_bytes()
        } else {
            machine.to_be_bytes()
        };
        h[18..20].copy_from_slice(&bytes);
        h
    }

    const LDCONFIG: &str = "912 libs found in cache `/etc/ld.so.cache'
\tlibnccl.so.2 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libnccl.so.2
\tlibnccl.so.2 (libc6,AArch64) => /usr/lib/aarch64-linux-gnu/libnccl.so.2
\tlibnccl.so.2 (libc6) => /usr/lib/i386-linux-gnu/libnccl.so.2
\tlibnccl.so (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libnccl.so
\tlibnccl-net.so.2 (libc6,x86-64) => /opt/plugins/libnccl-net.so.2
\tlibm.so.6 (libc6,x86-64, OS ABI: Linux 3.2.0) => /lib/x86_64-linux-gnu/libm.so.6
Cache generated by: ldconfig (GNU libc) stable release version 2.35
";

    #[test]
    fn ldconfig_output_gives_this_machines_entries_for_the_name() {
        let got = ldconfig_paths(LDCONFIG, "libnccl.so.2");
        let want: Vec<PathBuf> = if cfg!(target_arch = "x86_64") {
            vec!["/usr/lib/x86_64-linux-gnu/libnccl.so.2".into()]
        } else if cfg!(target_arch = "aarch64") {
            vec!["/usr/lib/aarch64-linux-gnu/libnccl.so.2".into()]
        } else {
            vec![
                "/usr/lib/x86_64-linux-gnu/libnccl.so.2".into(),
                "/usr/lib/aarch64-linux-gnu/libnccl.so.2".into(),
                "/usr/lib/i386-linux-gnu/libnccl.so.2".into(),
            ]
        };
        assert_eq!(got, want);
        // Another name's lines, the header and the footer are not matches.
        assert_eq!(
            ldconfig_paths(LDCONFIG, "libnccl.so"),
            if cfg!(target_arch = "aarch64") {
                vec![]
            } else {
                vec![PathBuf::from("/usr/lib/x86_64-linux-gnu/libnccl.so")]
            }
        );
        assert!(ldconfig_paths(LDCONFIG, "libnccl-net.so").is_empty());
        assert!(ldconfig_paths("", "libnccl.so.2").is_empty());
        // Flags with more than the architecture still parse.
        if cfg!(target_arch = "x86_64") {
            assert_eq!(
                ldconfig_paths(LDCONFIG, "libm.so.6"),
                vec![PathBuf::from("/lib/x86_64-linux-gnu/libm.so.6")]
            );
        }
    }

    #[test]
    fn finds_the_library_in_a_path_list_skipping_what_does_not_fit() {
        let root = tempfile::tempdir().unwrap();
        let (empty, text, elf, later) = (
            root.path().join("empty"),
            root.path().join("text"),
            root.path().join("elf"),
            root.path().join("later"),
        );
        for d in [&empty, &text, &elf, &later] {
            std::fs::create_dir(d).unwrap();
        }
        // A linker script by the same name is not a library.
        std::fs::write(text.join(SONAME), "INPUT(libnccl_static.a)\n").unwrap();
        std::fs::write(elf.join(SONAME), this_elf()).unwrap();
        std::fs::write(later.join(SONAME), this_elf()).unwrap();
        let list = std::env::join_paths([&empty, &text, &elf, &later]).unwrap();
        // An empty entry (the current folder to the loader) is dropped.
        let mut with_empty = OsString::from("::");
        with_empty.push(&list);
        let dirs = path_list(&with_empty);
        assert_eq!(dirs, vec![empty.clone(), text, elf.clone(), later]);
        assert_eq!(find_in_dirs(&dirs, SONAME), Some(elf.join(SONAME)));
        assert_eq!(find_in_dirs(&[empty], SONAME), None);
    }

    #[test]
    fn elf_check_rejects_other_machines() {
        let ok: [u8; 20] = this_elf()[..20].try_into().unwrap();
        assert!(elf_header_fits(&ok));
        let mut other_class = ok;
        other_class[4] = 3 - ok[4];
        assert!(!elf_header_fits(&other_class));
        let mut not_elf = ok;
        not_elf[1] = b'X';
        assert!(!elf_header_fits(&not_elf));
        if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
            let mut other_arch = ok;
            other_arch[18] = 40; // EM_ARM
            other_arch[19] = 0;
            assert!(!elf_header_fits(&other_arch));
        }
    }

    #[test]
    fn the_guard_stops_a_second_restart() {
        let searched = Cell::new(0);
        let found = || {
            searched.set(searched.get() + 1);
            Some(Found {
                path: "/opt/nccl/lib/libnccl.so.2".into(),
                place: "LD_LIBRARY_PATH",
            })
        };
        // First start, not openable, found: restart.
        match plan(false, None, found) {
            Plan::Restart(f) => assert_eq!(f.path, Path::new("/opt/nccl/lib/libnccl.so.2")),
            p => panic!("expected a restart, got {p:?}"),
        }
        assert_eq!(searched.get(), 1);
        // Restarted and still not openable: an error naming the file, no search.
        let guard = OsString::from("/opt/nccl/lib/libnccl.so.2");
        match plan(false, Some(&guard), found) {
            Plan::Unavailable(e @ NcclLibError::StillMissing { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("/opt/nccl/lib/libnccl.so.2"), "{msg}");
                assert!(msg.contains(RESTART_GUARD), "{msg}");
            }
            p => panic!("expected StillMissing, got {p:?}"),
        }
        assert_eq!(searched.get(), 1);
        // Restarted and now openable: ready.
        assert!(matches!(plan(true, Some(&guard), found), Plan::Ready));
        assert_eq!(searched.get(), 1);
        // Not found anywhere: the error says how to install it.
        match plan(false, None, || None) {
            Plan::Unavailable(e @ NcclLibError::NotFound) => {
                let msg = e.to_string();
                assert!(msg.contains("pip install nvidia-nccl-cu12"), "{msg}");
                assert!(msg.contains("apt install libnccl2"), "{msg}");
                assert!(msg.contains("LD_LIBRARY_PATH"), "{msg}");
            }
            p => panic!("expected NotFound, got {p:?}"),
        }
    }

    #[test]
    fn link_folder_link_and_path() {
        assert_eq!(
            cache_link_dir(Some(OsStr::new("/c")), Some(OsStr::new("/h"))),
            Some(PathBuf::from("/c/alexnet-cuda/lib"))
        );
        // A relative XDG_CACHE_HOME is ignored, as the spec says.
        assert_eq!(
            cache_link_dir(Some(OsStr::new("rel")), Some(OsStr::new("/h"))),
            Some(PathBuf::from("/h/.cache/alexnet-cuda/lib"))
        );
        assert_eq!(cache_link_dir(None, None), None);

        let root = tempfile::tempdir().unwrap();
        let (a, b) = (root.path().join("a.so.2"), root.path().join("b.so.2"));
        let dir = root.path().join("cache/lib");
        let link = make_link_in(&dir, &a).unwrap();
        assert_eq!(link, dir.join(LINK_NAME));
        assert_eq!(std::fs::read_link(&link).unwrap(), a);
        // A second run replaces the link.
        make_link_in(&dir, &b).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), b);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        // A relative target is linked by its path from the current folder:
        // the link, elsewhere, would read it from its own folder.
        let rel = Path::new("venv/nvidia/nccl/lib/libnccl.so.2");
        let link = make_link_in(&root.path().join("rel"), rel).unwrap();
        let here = std::env::current_dir().unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), here.join(rel));
        // One folder per target, inside the cache folder.
        let cache = root.path().join("cache");
        let (da, db) = (link_dir_for(&cache, &a), link_dir_for(&cache, &b));
        assert!(da != db && da.parent() == Some(&*cache), "{da:?} {db:?}");

        assert_eq!(
            prepend_path(Path::new("/x"), Some(OsStr::new("/a:/b"))),
            OsString::from("/x:/a:/b")
        );
        assert_eq!(prepend_path(Path::new("/x"), Some(OsStr::new(""))), "/x");
        assert_eq!(prepend_path(Path::new("/x"), None), "/x");
    }

    #[test]
    fn version_numbers_and_mapped_file() {
        assert_eq!(decode_version(23203), (2, 32, 3));
        assert_eq!(decode_version(22105), (2, 21, 5));
        assert_eq!(decode_version(2804), (2, 8, 4));
        let maps = "7f00-7f10 r--p 00000000 08:01 123 /usr/lib/x86_64-linux-gnu/libc.so.6
7f20-7f30 r-xp 00000000 08:01 456 /venv/nvidia/nccl/lib/libnccl.so.2
7f40-7f50 rw-p 00000000 00:00 0 
";
        assert_eq!(
            mapped_nccl(maps),
            Some(PathBuf::from("/venv/nvidia/nccl/lib/libnccl.so.2"))
        );
        assert_eq!(
            mapped_nccl("7f40-7f50 rw-p 00000000 00:00 0 [heap]\n"),
            None
        );
    }
}
