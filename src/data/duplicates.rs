//! Images with the same pixels (after the resize and crop), in a store
//! `prepare` writes or a class folder decoded for training: a training
//! image under two classes teaches two answers for one picture, and a
//! validation image that is also a training image makes the validation
//! error read low. Each image's pixels are hashed (64-bit SipHash, std's
//! `DefaultHasher`: among ImageNet's 1.33M images the odds of one false
//! pair are about 5e-8). `prepare` lists the pairs beside each store in
//! `duplicates.txt`; training from a folder logs the first of each kind,
//! and a held-out split of a store is checked against its list.
//! Both warn, never refuse: whether a copy is a mistake is the data set's
//! owner's call.
use std::collections::HashMap;
use std::hash::Hasher;
use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::fsutil::{tsv_field, write_atomic};

/// The list's name in a store folder.
pub const LIST: &str = "duplicates.txt";

/// The hash of one stored image's pixels.
pub fn pixel_hash(px: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(px);
    h.finish()
}

/// One store's images: each stored one's pixel hash and its (file, label)
/// in the list the store was written from, and the first with each hash.
pub struct Hashed<'a> {
    items: &'a [(PathBuf, u32)],
    stored: Vec<(u64, usize)>,
    first: HashMap<u64, usize>,
}

impl<'a> Hashed<'a> {
    /// `stored`: (hash, index in `items`) in store order.
    pub fn new(items: &'a [(PathBuf, u32)], stored: Vec<(u64, usize)>) -> Self {
        let mut first = HashMap::with_capacity(stored.len());
        for &(h, i) in &stored {
            first.entry(h).or_insert(i);
        }
        Hashed {
            items,
            stored,
            first,
        }
    }

    /// Each image whose pixels an earlier one has: (it, the earlier one),
    /// as indices into `items`, in store order.
    fn repeats(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.stored
            .iter()
            .map(|&(h, i)| (i, self.first[&h]))
            .filter(|(i, j)| i != j)
    }

    /// Each image whose pixels one of `train` has: (it, that one).
    fn found_in<'b>(&'b self, train: &'b Hashed) -> impl Iterator<Item = (usize, usize)> + 'b {
        self.stored
            .iter()
            .filter_map(|&(h, i)| train.first.get(&h).map(|&j| (i, j)))
    }
}

/// What the lists hold: repeats within train under the same class and
/// under another, and val images found in train.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Duplicates {
    pub same_class: usize,
    pub other_class: usize,
    pub val_in_train: usize,
}

/// Write `dir/duplicates.txt` for the training store: each image whose
/// pixels an earlier one has, `file<TAB>earlier file<TAB>class[<TAB>its
/// class]` (two classes where they differ); an empty list where none.
pub fn list_train(
    dir: &Path,
    src: &Path,
    train: &Hashed,
    classes: &[String],
) -> Result<Duplicates> {
    let mut found = Duplicates::default();
    let mut lines = String::new();
    for (i, j) in train.repeats() {
        let ((a, la), (b, lb)) = (&train.items[i], &train.items[j]);
        let class = |l: u32| tsv_field(classes.get(l as usize).map_or("?", String::as_str));
        let mut line = format!("{}\t{}\t{}", rel(a, src), rel(b, src), class(*la));
        match la == lb {
            true => found.same_class += 1,
            false => {
                found.other_class += 1;
                line = format!("{line}\t{}", class(*lb));
            }
        }
        lines.push_str(&line);
        lines.push('\n');
    }
    write_atomic(&dir.join(LIST), lines.as_bytes())?;
    Ok(found)
}

/// Write `dir/duplicates.txt` for the val store: each val image whose
/// pixels a training image has, `val file<TAB>training file` (paths under
/// their sources, `srcs`); returns how many.
pub fn list_val(dir: &Path, srcs: [&Path; 2], val: &Hashed, train: &Hashed) -> Result<usize> {
    let mut lines = String::new();
    let mut n = 0;
    for (i, j) in val.found_in(train) {
        let (a, b) = (&val.items[i].0, &train.items[j].0);
        lines.push_str(&format!("{}\t{}\n", rel(a, srcs[0]), rel(b, srcs[1])));
        n += 1;
    }
    write_atomic(&dir.join(LIST), lines.as_bytes())?;
    Ok(n)
}

/// Warn of the images of a class folder decoded for training (`items`
/// under `root`, their pixel hashes `hashes`) that repeat another: within
/// the training split `train_idx` under another class or the same one,
/// and in the held-out split `val_idx`. Each warning names the first pair.
pub fn warn_in_folder(
    root: &Path,
    items: &[(PathBuf, u32)],
    hashes: &[u64],
    [train_idx, val_idx]: [&[usize]; 2],
) {
    let hashed = |idx: &[usize]| Hashed::new(items, idx.iter().map(|&i| (hashes[i], i)).collect());
    let (train, val) = (hashed(train_idx), hashed(val_idx));
    let (other, same): (Vec<_>, Vec<_>) = train
        .repeats()
        .partition(|&(i, j)| items[i].1 != items[j].1);
    let leaked: Vec<_> = val.found_in(&train).collect();
    for (pairs, what) in [
        (other, "training images have the same pixels as one under another class, so the labels contradict each other"),
        (same, "training images repeat one of their class, each copy counting as one more image"),
        (leaked, "held-out images have the same pixels as a training image, so validation error will read low"),
    ] {
        if let Some(&(i, j)) = pairs.first() {
            tracing::warn!(
                "{}: {} {what} (first: {} and {}); remove the copies, or `alexnet-cuda prepare` the folder for a list of them all",
                root.display(),
                pairs.len(),
                rel(&items[i].0, root),
                rel(&items[j].0, root)
            );
        }
    }
}

/// Warn when `--val` holds out images of the training store `dir` whose
/// copies stay in training, from the pairs `prepare` listed there (each
/// image and the first with its pixels: a group per first). `sources`
/// reads the store's source files, in store order, only when it lists any.
pub fn warn_in_store_split(
    dir: &Path,
    sources: impl FnOnce() -> Result<Vec<String>>,
    [train_idx, val_idx]: [&[usize]; 2],
) {
    let first_of = listed_firsts(dir);
    if first_of.is_empty() {
        return;
    }
    let Ok(sources) = sources() else {
        return;
    };
    let held: std::collections::HashSet<usize> = val_idx.iter().copied().collect();
    // Per group: a training member, and the held-out ones.
    let mut groups: HashMap<&str, (Option<usize>, Vec<usize>)> = HashMap::new();
    for &i in train_idx.iter().chain(val_idx) {
        if let Some(first) = sources.get(i).and_then(|s| first_of.get(s)) {
            let g = groups.entry(first).or_default();
            match held.contains(&i) {
                true => g.1.push(i),
                false => g.0 = g.0.or(Some(i)),
            }
        }
    }
    let mut leaked: Vec<(usize, usize)> = (groups.values())
        .filter_map(|(t, v)| t.map(|t| v.iter().map(move |&i| (i, t))))
        .flatten()
        .collect();
    leaked.sort_unstable();
    if let Some(&(i, t)) = leaked.first() {
        tracing::warn!(
            "{}: {} held-out images (--val) have the same pixels as a training image, so validation error will read low (first: {}, a copy of {}; all pairs are listed in {}); remove the copies and prepare again, or prepare a separate validation set with prepare's --val",
            dir.display(),
            leaked.len(),
            tsv_field(&sources[i]),
            tsv_field(&sources[t]),
            dir.join(LIST).display()
        );
    }
}

/// Each file `dir/duplicates.txt` names, as its sources list has it, and
/// the first with its pixels (itself for a first); empty without a list.
fn listed_firsts(dir: &Path) -> HashMap<String, String> {
    let mut first_of = HashMap::new();
    let text = std::fs::read_to_string(dir.join(LIST)).unwrap_or_default();
    for line in text.lines() {
        let mut f = line.split('\t').map(source_line);
        if let (Some(a), Some(b)) = (f.next(), f.next()) {
            first_of.insert(b.clone(), b.clone());
            first_of.insert(a, b);
        }
    }
    first_of
}

/// A file field of `duplicates.txt` as the store's sources list has it:
/// unescaped (see `tsv_field`), with a line break written as a space.
fn source_line(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        out.push(match c {
            '\\' => match chars.next() {
                Some('t') => '\t',
                Some('n') => ' ',
                Some('r') => '\r',
                Some(other) => other,
                None => '\\',
            },
            c => c,
        });
    }
    out
}

/// `path` under `src`, as the store's sources list names it, as one field
/// of the list's tab-separated line.
fn rel(path: &Path, src: &Path) -> String {
    let name = path.strip_prefix(src).unwrap_or(path).display().to_string();
    tsv_field(&name).into_owned()
}
