//! Finding a labelled image set on disk: `<root>/<class>/<image>` (the
//! ImageNet/ILSVRC layout), classes and files in sorted order. The rules are
//! torchvision's `ImageFolder`'s, so a tree reads the same in both: its
//! image extensions, and images at any depth under a class folder. The
//! order within a class is the same where its images sit in one folder
//! (ImageNet's); under sub-folders each is read where its name sorts,
//! where torchvision reads a folder's own images before its sub-folders.
use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use super::packed::{is_store, refuse_unfinished_store};
use crate::error::{Error, Result};

/// File extensions read as images, compared case-insensitively (ImageNet
/// ships `.JPEG`): torchvision's `IMG_EXTENSIONS` (torchvision/datasets/
/// folder.py). The content decides the format, not the name.
pub const IMAGE_EXTENSIONS: [&str; 9] = [
    "jpg", "jpeg", "png", "ppm", "bmp", "pgm", "tif", "tiff", "webp",
];

/// A class-folder image set: one sub-folder per class, label = index of the
/// class in name order (ILSVRC labels are the sorted synset ids).
#[derive(Clone, Debug)]
pub struct ImageFolder {
    root: PathBuf,
    classes: Vec<String>,
    items: Vec<(PathBuf, u32)>,
    ignored: Vec<PathBuf>,
    /// Items that are links to nothing, as the listing found them.
    broken: Vec<PathBuf>,
}

impl ImageFolder {
    /// List `root`: every sub-folder (not hidden: [`is_hidden`]) is a class,
    /// every file under it, at any depth, with an image extension
    /// ([`IMAGE_EXTENSIONS`]) an image. Other entries are not read and are
    /// listed in a warning (see [`ignored`](Self::ignored)). Classes are
    /// sorted by name, files by path.
    pub fn scan(root: &Path) -> Result<ImageFolder> {
        Self::scan_for(root, "--data")
    }

    /// [`scan`](Self::scan) for the value of `flag`, which errors name.
    pub fn scan_for(root: &Path, flag: &str) -> Result<ImageFolder> {
        Self::scan_classes(root, flag, 2)
    }

    /// [`scan`](Self::scan) of images to score under a checkpoint, whose
    /// classes name the labels: one class folder is enough.
    pub fn scan_to_score(root: &Path) -> Result<ImageFolder> {
        Self::scan_classes(root, "--data", 1)
    }

    /// [`scan_for`](Self::scan_for) of a split labelled by another's
    /// classes (prepare's `--val`, named by train's): one class folder is
    /// enough.
    pub fn scan_subset(root: &Path, flag: &str) -> Result<ImageFolder> {
        Self::scan_classes(root, flag, 1)
    }

    /// The scan, refusing fewer than `min_classes` class folders.
    fn scan_classes(root: &Path, flag: &str, min_classes: usize) -> Result<ImageFolder> {
        if !root.is_dir() {
            return Err(not_a_folder(
                root,
                &format!("pass {flag} a folder with one sub-folder per class"),
            ));
        }
        refuse_unfinished_stores(root)?;
        let mut class_dirs: Vec<(String, PathBuf)> = Vec::new();
        let mut ignored = Vec::new();
        for (entry, kind) in read_dir_sorted(root)? {
            // Links are followed, so a tree of linked class folders works.
            // One whose target is gone, named as folders are (no
            // extension), may be a class on a drive not mounted: skipping
            // it would shift every later class's label. Others (a stale
            // labels.txt) are files, as in a class folder.
            if kind == Kind::Broken && !is_hidden(&entry) && entry.extension().is_none() {
                return Err(broken_link(
                    &entry,
                    "a class folder there would be left out and shift every later class's label",
                ));
            }
            if kind != Kind::Dir {
                // An image here has no class: say so (other files at the
                // root, a README or a labels file, are expected).
                if is_image_name(&entry) && !is_hidden(&entry) {
                    ignored.push(entry);
                }
                continue;
            }
            // Hidden first: a dot-folder is skipped whatever its name's bytes.
            if is_hidden(&entry) {
                continue;
            }
            let Some(name) = entry.file_name().and_then(|n| n.to_str()) else {
                return Err(Error::Data(format!(
                    "{}: class folder name is not valid UTF-8; rename it",
                    entry.display()
                )));
            };
            class_dirs.push((name.to_string(), entry.clone()));
        }
        if class_dirs.is_empty() {
            return Err(Error::Data(format!(
                "{} has no class sub-folders; pass {flag} a folder with one sub-folder per class (<root>/<class>/<image>.jpg)",
                root.display()
            )));
        }
        refuse_split_folders(root, &class_dirs, flag)?;
        if let [(name, dir)] = &class_dirs[..] {
            // prepare's output with its val/ store alone, say.
            if is_store(dir) {
                return Err(Error::Data(format!(
                    "{} holds only {name}/, a store written by `prepare`, and no train/ store beside it: prepare the training images there, with the validation ones (`alexnet-cuda prepare --train SRC --val VAL --out {}`), or, to read that store itself, pass {flag} {}",
                    root.display(),
                    crate::shell::word(root),
                    crate::shell::word(dir)
                )));
            }
        }
        if class_dirs.len() < min_classes {
            return Err(Error::Data(format!(
                "{} has only one class sub-folder ({}); a classifier needs at least 2 classes, one sub-folder each",
                root.display(),
                class_dirs[0].0
            )));
        }
        class_dirs.sort_by(|a, b| a.0.cmp(&b.0));

        let mut items = Vec::new();
        let mut classes = Vec::with_capacity(class_dirs.len());
        let mut claims = Claims::default();
        let mut broken = Vec::new();
        for (label, (name, dir)) in class_dirs.into_iter().enumerate() {
            let mut files = Vec::new();
            let mut walk = Walk::new(&dir, &name, &mut files, &mut ignored, &mut claims)?;
            walk.class(&dir)?;
            broken.extend(walk.broken);
            if files.is_empty() {
                return Err(no_images_in_class(&dir, &ignored));
            }
            items.extend(files.into_iter().map(|p| (p, label as u32)));
            classes.push(name);
        }
        claims.refuse_linked_across()?;
        ignored.sort();
        let rule = format!(
            "only {} files inside a class folder are images; to use the others, move them into their class's folder or convert them to one of these formats",
            image_kinds()
        );
        warn_ignored(root, &ignored, &rule);
        Ok(ImageFolder {
            root: root.to_path_buf(),
            classes,
            items,
            ignored,
            broken,
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

    /// The files the scan did not read, sorted: images directly in the root
    /// (outside any class), and under class folders every file that is not
    /// an image by name. Hidden entries are left out.
    pub fn ignored(&self) -> &[PathBuf] {
        &self.ignored
    }

    /// The images that are links to nothing (a drive not mounted), from
    /// the listing: checking each image for one would cost a `stat` each.
    pub fn broken_links(&self) -> &[PathBuf] {
        &self.broken
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// A class folder without images: the error says so, and names what it
/// holds instead (GIFs, HEICs: files whose names are not images'), which
/// the scan's warning, given only once every class is read, never shows.
fn no_images_in_class(dir: &Path, ignored: &[PathBuf]) -> Error {
    let here: Vec<&PathBuf> = ignored.iter().filter(|p| p.starts_with(dir)).collect();
    let held = match here.first() {
        Some(first) => format!(
            "; it holds {} other files, e.g. {}: convert them to one of these formats",
            here.len(),
            first.display()
        ),
        None => "; add images to it or remove the folder".into(),
    };
    Error::Data(format!(
        "{} has no {} images{held}",
        dir.display(),
        image_kinds()
    ))
}

/// The images under `dir`, unlabelled, by the rules of a class folder:
/// at any depth, by extension ([`IMAGE_EXTENSIONS`]), sorted by path, links
/// up the tree not followed. Other files are named in one warning; a
/// folder without any image is an error.
pub fn images_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let (mut files, mut ignored) = (Vec::new(), Vec::new());
    let mut claims = Claims::default();
    Walk::new(dir, "", &mut files, &mut ignored, &mut claims)?.class(dir)?;
    let kinds = image_kinds();
    warn_ignored(dir, &ignored, &format!("only {kinds} files are images"));
    if files.is_empty() {
        return Err(Error::Data(format!(
            "{} has no {kinds} images, in it or in its sub-folders",
            dir.display()
        )));
    }
    Ok(files)
}

/// Folder names that hold a data set's splits, not its classes.
const SPLIT_NAMES: [&str; 5] = ["train", "val", "valid", "validation", "test"];

/// Whether a folder's name is one of a split's ([`SPLIT_NAMES`], any case).
pub fn is_split_name(name: &str) -> bool {
    SPLIT_NAMES.iter().any(|s| name.eq_ignore_ascii_case(s))
}

/// `root` whose sub-folders are all split names (`train/`, `val/`): the
/// data set's top folder, passed where its split belongs. Scanned as
/// classes it would train a classifier of "train" against "val" on every
/// image below, at any depth.
fn refuse_split_folders(root: &Path, class_dirs: &[(String, PathBuf)], flag: &str) -> Result<()> {
    if class_dirs.len() < 2 || !class_dirs.iter().all(|(n, _)| is_split_name(n)) {
        return Ok(());
    }
    let names: Vec<String> = class_dirs.iter().map(|(n, _)| format!("{n}/")).collect();
    let paths: Vec<String> = class_dirs
        .iter()
        .map(|(_, p)| p.display().to_string())
        .collect();
    Err(Error::Data(format!(
        "{} holds {}: a data set's splits, not its classes; pass {flag} the split itself ({}), whose sub-folders are the classes",
        root.display(),
        names.join(" and "),
        paths.join(" or ")
    )))
}

/// A `prepare` output (or one store) whose first `prepare` did not finish
/// would be scanned as class folders holding no images: say what it is.
fn refuse_unfinished_stores(root: &Path) -> Result<()> {
    for dir in [root.to_path_buf(), root.join("train"), root.join("val")] {
        refuse_unfinished_store(&dir)?;
    }
    Ok(())
}

/// True when the file name ends in one of [`IMAGE_EXTENSIONS`], any case.
pub fn is_image_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// The folders above `dir`, resolved: a link to one of them from inside
/// `dir` would loop, or read the other classes' images as this one's.
fn above(dir: &Path) -> Result<HashSet<PathBuf>> {
    let real = fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
    Ok(real.ancestors().skip(1).map(Path::to_path_buf).collect())
}

/// One class folder's walk: its image files, depth first in path order,
/// so they come out sorted. Symlinked folders are followed once each, and
/// never to a folder in `seen` (see [`above`]); other non-hidden entries
/// go to `ignored`.
struct Walk<'a> {
    class: &'a str,
    files: &'a mut Vec<PathBuf>,
    ignored: &'a mut Vec<PathBuf>,
    seen: HashSet<PathBuf>,
    claims: &'a mut Claims,
    /// The images among `files` that are links to nothing.
    broken: Vec<PathBuf>,
}

impl<'a> Walk<'a> {
    fn new(
        dir: &Path,
        class: &'a str,
        files: &'a mut Vec<PathBuf>,
        ignored: &'a mut Vec<PathBuf>,
        claims: &'a mut Claims,
    ) -> Result<Self> {
        let seen = above(dir)?;
        Ok(Walk {
            class,
            files,
            ignored,
            seen,
            claims,
            broken: Vec::new(),
        })
    }

    fn class(&mut self, dir: &Path) -> Result<()> {
        let real = fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
        if !self.seen.insert(real.clone()) {
            return Ok(());
        }
        self.claims.claim_dir(real, dir, self.class)?;
        for (path, kind, linked) in read_dir_entries(dir)? {
            if is_hidden(&path) {
                continue;
            }
            // A broken link with an image's name is an image that cannot be
            // read (named, with its target, where unreadable images are),
            // not a stray file. One named as folders are (no extension) may
            // be a folder of the class's images on a drive not mounted:
            // leaving them out would go unnoticed. Others (an annex's
            // unfetched notes.xml) are stray files.
            if kind == Kind::Broken && is_image_name(&path) {
                self.broken.push(path.clone());
                self.files.push(path);
            } else if kind == Kind::Broken && path.extension().is_none() {
                return Err(broken_link(
                    &path,
                    "its images would be left out of the class",
                ));
            } else if kind == Kind::File && is_image_name(&path) {
                if linked {
                    self.claims.linked_file(&path, self.class)?;
                }
                self.files.push(path);
            } else if kind == Kind::Dir {
                self.class(&path)?;
            } else {
                self.ignored.push(path);
            }
        }
        Ok(())
    }
}

/// Which class read each folder and each linked image, resolved: a link
/// that reaches another class's images would give them both labels.
#[derive(Default)]
struct Claims {
    /// Resolved folder: the class that read it and the path it read.
    dirs: HashMap<PathBuf, (String, PathBuf)>,
    /// Resolved linked image: the class and the link.
    files: HashMap<PathBuf, (String, PathBuf)>,
}

impl Claims {
    fn claim_dir(&mut self, real: PathBuf, dir: &Path, class: &str) -> Result<()> {
        if let Some((other, by)) = self.dirs.get(&real) {
            return Err(both_classes(dir, class, by, other));
        }
        self.dirs
            .insert(real, (class.to_string(), dir.to_path_buf()));
        Ok(())
    }

    fn linked_file(&mut self, link: &Path, class: &str) -> Result<()> {
        let real = fs::canonicalize(link).map_err(|e| Error::io(link, e))?;
        match self.files.get(&real) {
            Some((other, by)) if other != class => Err(both_classes(link, class, by, other)),
            _ => {
                self.files
                    .insert(real, (class.to_string(), link.to_path_buf()));
                Ok(())
            }
        }
    }

    /// Linked images inside a folder another class read (known once every
    /// class folder is walked), where that class read them too: not a
    /// hidden file or one without an image's name.
    fn refuse_linked_across(&self) -> Result<()> {
        for (real, (class, link)) in &self.files {
            if is_hidden(real) || !is_image_name(real) {
                continue;
            }
            let Some(dir) = real.parent() else { continue };
            if let Some((other, by)) = self.dirs.get(dir) {
                if other != class {
                    let by = by.join(real.file_name().unwrap_or_default());
                    return Err(both_classes(link, class, &by, other));
                }
            }
        }
        Ok(())
    }
}

/// The error for `path` (in `class`) and `by` (in `other`) being one
/// folder or image.
fn both_classes(path: &Path, class: &str, by: &Path, other: &str) -> Error {
    Error::Data(format!(
        "{} (class {class}) and {} (class {other}) are one, reached through a symbolic link: its images would carry both labels; remove the link, or copy the images into the one class they belong to",
        path.display(),
        by.display()
    ))
}

/// `root` is missing, a file, or an archive still to unpack: which, and
/// `fix` (what to pass instead).
pub(super) fn not_a_folder(root: &Path, fix: &str) -> Error {
    let name = root.to_string_lossy().to_lowercase();
    let archive = [".tar", ".tar.gz", ".tgz", ".zip", ".tar.xz", ".tar.bz2"]
        .iter()
        .any(|e| name.ends_with(e));
    let r = root.display();
    Error::Data(match (root.exists(), archive) {
        (false, _) => format!("{r} does not exist; {fix}"),
        (true, true) => {
            format!("{r} is an archive, not a folder: unpack it (tar -xf or unzip) and {fix}")
        }
        (true, false) => format!("{r} is a file, not a folder; {fix}"),
    })
}

/// Names starting with '.' (`.DS_Store`, `.cache/`), and `__MACOSX`, the
/// folder of `._` resource forks that a zip made on macOS unpacks to: what
/// tools leave behind, never images or classes.
/// Read as bytes: a `._` fork of a name that is not UTF-8 is hidden too.
pub fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .map(|n| n.as_encoded_bytes())
        .is_some_and(|n| n.starts_with(b".") || n == b"__MACOSX")
}

/// One warning for everything a scan skipped, so a folder of `.gif` files,
/// or images left outside the class folders, are not lost in silence;
/// `rule` says which files are read and what to do with the others.
fn warn_ignored(root: &Path, ignored: &[PathBuf], rule: &str) {
    if ignored.is_empty() {
        return;
    }
    let shown: Vec<String> = ignored
        .iter()
        .take(5)
        .map(|p| p.strip_prefix(root).unwrap_or(p).display().to_string())
        .collect();
    let more = if ignored.len() > shown.len() {
        ", ..."
    } else {
        ""
    };
    tracing::warn!(
        "{}: {} files not read ({}{more}): {rule}",
        root.display(),
        ignored.len(),
        shown.join(", "),
    );
}

/// A link whose target is not there, and what skipping it would lose.
fn broken_link(link: &Path, lost: &str) -> Error {
    let target = fs::read_link(link).map_or_else(|_| "?".into(), |t| t.display().to_string());
    Error::Data(format!(
        "{} is a link to {target}, which is not there (a drive or share not mounted?): {lost}; mount or restore {target}, or remove the link",
        link.display()
    ))
}

/// The image file kinds, as messages name them: ".jpg/.jpeg/.png".
pub fn image_kinds() -> String {
    let dotted: Vec<String> = IMAGE_EXTENSIONS.iter().map(|e| format!(".{e}")).collect();
    dotted.join("/")
}

/// What a folder entry is, links followed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    File,
    Dir,
    /// A link whose target is not there (a drive or share not mounted).
    Broken,
    /// Anything else: a device, a socket.
    Other,
}

/// The entries of a folder and their kinds, sorted by path (read_dir order
/// is unspecified). The kind comes from the directory listing itself
/// (`d_type` on Linux file systems that keep it), so only links cost a
/// `stat`: on network storage a stat per file is most of the time a scan
/// of ImageNet's 1.28M files takes.
pub(super) fn read_dir_sorted(dir: &Path) -> Result<Vec<(PathBuf, Kind)>> {
    let all = read_dir_entries(dir)?;
    Ok(all.into_iter().map(|(p, k, _)| (p, k)).collect())
}

/// [`read_dir_sorted`], with whether each entry is a symbolic link.
fn read_dir_entries(dir: &Path) -> Result<Vec<(PathBuf, Kind, bool)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let ty = entry.file_type().map_err(|e| Error::io(entry.path(), e))?;
        let path = entry.path();
        let kind = if ty.is_symlink() {
            // Followed, as `Path::is_dir` does.
            fs::metadata(&path).map_or(Kind::Broken, |m| kind_of(m.file_type()))
        } else {
            kind_of(ty)
        };
        out.push((path, kind, ty.is_symlink()));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn kind_of(ty: fs::FileType) -> Kind {
    if ty.is_file() {
        Kind::File
    } else if ty.is_dir() {
        Kind::Dir
    } else {
        Kind::Other
    }
}
