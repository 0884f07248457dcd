//! How a path is written in a command the program prints for the user to
//! copy (`continue with: alexnet-cuda train --resume RUN`): quoted for a
//! POSIX shell when it holds spaces or other special characters.
use std::path::Path;

/// `path` as one shell word: as it is when nothing in it needs quoting,
/// else single-quoted (shlex). A path with a NUL byte cannot be one; it
/// is written as displayed.
pub fn word(path: &Path) -> String {
    let text = path.display().to_string();
    match shlex::try_quote(&text) {
        Ok(quoted) => quoted.into_owned(),
        Err(_) => text,
    }
}
