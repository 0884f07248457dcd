//! The library's error type: every fallible call returns `Result<T>`, and each
//! variant names the thing (file, flag, op, shape) a user needs to fix.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An op was called with buffers or geometry that do not fit together.
    #[error("{op}: {detail}")]
    Shape { op: &'static str, detail: String },

    /// A file or folder could not be read or written. The OS error is in the
    /// message and not also a `source()`, or `{:#}` would print it twice.
    #[error("{}: {err}{}", path.display(), disk_fix(err))]
    Io { path: PathBuf, err: std::io::Error },

    /// A file exists but is not an image we can decode.
    #[error("{}: not a readable image ({msg}); remove or replace the file", path.display())]
    Image { path: PathBuf, msg: String },

    /// The data set as a whole is unusable (missing folder, no classes, empty class...).
    #[error("{0}")]
    Data(String),

    /// A configuration or flag value is not valid.
    #[error("{0}")]
    Config(String),

    /// A backend could not be created or failed at run time.
    #[error("{0}")]
    Backend(String),

    /// No usable CUDA device: the driver library is missing, it finds no GPU,
    /// or fewer GPUs exist than were asked for. The message says which.
    #[error("{0}")]
    NoDevice(String),

    /// Training diverged: a loss or a weight is no longer a finite number.
    /// `what` says which, at which step; `fix`, how to go on.
    #[error("{what}: the run diverged; {fix}")]
    Diverged { what: String, fix: String },

    /// Another process of a multi-process run stopped, hung or lost the
    /// network mid-run: its gradients or flags did not come, or could not
    /// be sent. The message names the rank.
    #[error("{0}")]
    Peer(String),

    /// A signal (SIGINT, SIGTERM) came before any training: while the
    /// process waited for the other processes of a run, or while a run of
    /// one process was set up. Nothing to keep.
    #[error("{0}")]
    Stopped(String),

    /// A CUDA library call (driver, NVRTC, cuBLAS, cuDNN) failed; `op` names
    /// the backend op or setup step that made it.
    #[error("cuda {op}: {detail}")]
    Cuda { op: &'static str, detail: String },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            err: source,
        }
    }

    /// `Diverged`'s fix when no checkpoint is at hand: a run at a tenth
    /// of the rate `lr` that diverged.
    pub fn lower_rate(lr: f32) -> String {
        format!(
            "start again with a lower rate than {lr:e}, e.g. --lr {:e}",
            crate::lr::tenth(lr)
        )
    }

    /// The file and the reason, without the fix: "a.jpg (empty file)",
    /// for lists of failures that state the fix once.
    pub fn brief(&self) -> String {
        match self {
            Error::Image { path, msg } => format!("{} ({msg})", path.display()),
            Error::Io { path, err } => format!("{} ({err})", path.display()),
            other => other.to_string(),
        }
    }
}

/// What to do about an I/O error whose cause is the disk or the file's
/// permissions: nothing in the file's name or content would fix it.
fn disk_fix(err: &std::io::Error) -> &'static str {
    use std::io::ErrorKind;
    match err.kind() {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => {
            "; free space on its disk (or raise the quota), or write elsewhere"
        }
        ErrorKind::FileTooLarge => {
            "; a file-size limit (the file system's, or `ulimit -f`) stopped it: raise it, or write elsewhere"
        }
        ErrorKind::ReadOnlyFilesystem => "; its file system is read-only: write elsewhere",
        ErrorKind::PermissionDenied => {
            "; this user may not use it: change its permissions or owner (or its folder's), or use another path"
        }
        _ => "",
    }
}

/// How many failures a message lists before it stops.
pub const LISTED: usize = 5;

/// Failures as one clause: the first [`LISTED`] of `errors`, each
/// [`brief`](Error::brief), "(the first 5)" ahead when there are more.
pub fn list_failures(errors: &[Error]) -> String {
    let shown: Vec<String> = errors.iter().take(LISTED).map(Error::brief).collect();
    let cut = if errors.len() > LISTED {
        format!("(the first {LISTED}) ")
    } else {
        String::new()
    };
    format!("{cut}{}", shown.join("; "))
}

/// Check that a buffer has the length an op expects.
pub fn check_len(op: &'static str, what: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(Error::Shape {
            op,
            detail: format!("{what} has {got} elements, expected {want}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The OS's own "disk full" (/dev/full fails every write with ENOSPC)
    /// comes with what to do about it.
    #[test]
    #[cfg(target_os = "linux")]
    fn a_full_disk_says_what_to_do() {
        let path = PathBuf::from("/dev/full");
        assert!(path.exists(), "Linux without /dev/full");
        let err = std::fs::write(&path, b"x").expect_err("/dev/full took a write");
        let msg = Error::io(&path, err).to_string();
        assert!(
            msg.starts_with("/dev/full: No space left on device"),
            "{msg}"
        );
        assert!(
            msg.ends_with("free space on its disk (or raise the quota), or write elsewhere"),
            "{msg}"
        );
    }

    /// Permission denied (as root, a chmod does not bring it about, so
    /// the OS's error kind stands in) names the permissions to change.
    #[test]
    fn a_permission_error_says_what_to_do() {
        let err = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let msg = Error::io(std::path::Path::new("runs/x/.lock"), err).to_string();
        assert!(msg.starts_with("runs/x/.lock: permission denied"), "{msg}");
        assert!(msg.contains("change its permissions or owner"), "{msg}");
    }

    /// A run that diverged at 1.25e-2 is told that rate, not 1.2e-2, and a
    /// tenth the decimal way (1.25e-3, the f32 a `--lr 0.00125` reads as).
    #[test]
    fn a_lower_rate_names_the_rate_and_its_decimal_tenth() {
        let msg = Error::lower_rate(0.0125);
        assert!(msg.contains("lower rate than 1.25e-2,"), "{msg}");
        let suggested = msg.rsplit("--lr ").next().unwrap_or_default();
        assert_eq!(suggested.parse::<f32>(), Ok(0.00125f32), "{msg}");
    }
}
