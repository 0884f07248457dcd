//! Finding a labelled image set on disk: `<root>/<class>/<image>` (the
//! ImageNet/ILSVRC layout), classes and files in sorted order.
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// File extensions read as images, compared case-insensitively (ImageNet
/// ships `.JPEG`). The content decides the format, not the name.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// A class-folder image set: one sub-folder per class, label = index of the
/// class in name order (ILSVRC labels are the sorted synset ids).
#[derive(Clone, Debug)]
pub struct ImageFolder {
    root: PathBuf,
    classes: Vec<String>,
    items: Vec<(PathBuf, u32)>,
}

impl ImageFolder {
    /// List `root`: every sub-folder (not starting with '.') is a class,
    /// every `.jpg`/`.jpeg`/`.png` file directly inside it an image; other
    /// files are ignored. Classes are sorted by name, files by path.
    pub fn scan(root: &Path) -> Result<ImageFolder> {
        Self::scan_for(root, "--data")
    }

    /// [`scan`](Self::scan) for the value of `flag`, which errors name.
    pub fn scan_for(root: &Path, flag: &str) -> Result<ImageFolder> {
        if !root.is_dir() {
            return Err(Error::Data(format!(
                "{} does not exist or is not a folder; pass {flag} a folder with one sub-folder per class",
                root.display()
            )));
        }
        let mut class_dirs: Vec<(String, PathBuf)> = Vec::new();
        for entry in read_dir_sorted(root)? {
            // `is_dir` follows symlinks, so a tree of linked class folders works.
            if !entry.is_dir() {
                continue;
            }
            let Some(name) = entry.file_name().and_then(|n| n.to_str()) else {
                return Err(Error::Data(format!(
                    "{}: class folder name is not valid UTF-8; rename it",
                    entry.display()
                )));
            };
            if name.starts_with('.') {
                continue;
            }
            class_dirs.push((name.to_string(), entry.clone()));
        }
        if class_dirs.is_empty() {
            return Err(Error::Data(format!(
                "{} has no class sub-folders; pass {flag} a folder with one sub-folder per class (<root>/<class>/<image>.jpg)",
                root.display()
            )));
        }
        if class_dirs.len() < 2 {
            return Err(Error::Data(format!(
                "{} has only one class sub-folder ({}); a classifier needs at least 2 classes, one sub-folder each",
                root.display(),
                class_dirs[0].0
            )));
        }
        class_dirs.sort_by(|a, b| a.0.cmp(&b.0));

        let mut items = Vec::new();
        let mut classes = Vec::with_capacity(class_dirs.len());
        for (label, (name, dir)) in class_dirs.into_iter().enumerate() {
            let before = items.len();
            for path in read_dir_sorted(&dir)? {
                if is_image_name(&path) && path.is_file() {
                    items.push((path, label as u32));
                }
            }
            if items.len() == before {
                return Err(Error::Data(format!(
                    "{} has no .jpg/.jpeg/.png images; add images to it or remove the folder",
                    dir.display()
                )));
            }
            classes.push(name);
        }
        Ok(ImageFolder {
            root: root.to_path_buf(),
            classes,
            items,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Class names; label `i` is `classes()[i]`.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// (image path, label), grouped by class in label order, files sorted.
    pub fn items(&self) -> &[(PathBuf, u32)] {
        &self.items
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// True when the file name ends in one of [`IMAGE_EXTENSIONS`], any case.
pub fn is_image_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// The entries of a folder, sorted by path (read_dir order is unspecified).
fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        out.push(entry.map_err(|e| Error::io(dir, e))?.path());
    }
    out.sort();
    Ok(out)
}
