//! Images that `prepare` stored with the same pixels (after the resize and
//! crop): a training image under two classes teaches two answers for one
//! picture, and a validation image that is also a training image makes the
//! validation error read low. Each stored image's pixels are hashed (64-bit
//! SipHash, std's `DefaultHasher`: among ImageNet's 1.33M images the odds
//! of one false pair are about 5e-8); the pairs are listed beside each
//! store in `duplicates.txt` and warned of, never refused: whether a copy
//! is a mistake is the data set's owner's call.
use std::collections::HashMap;
use std::hash::Hasher;
use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::fsutil::write_atomic;

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
    for &(h, i) in &train.stored {
        let j = train.first[&h];
        if j == i {
            continue;
        }
        let ((a, la), (b, lb)) = (&train.items[i], &train.items[j]);
        let class = |l: u32| classes.get(l as usize).map_or("?", String::as_str);
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
    for &(h, i) in &val.stored {
        if let Some(&j) = train.first.get(&h) {
            let (a, b) = (&val.items[i].0, &train.items[j].0);
            lines.push_str(&format!("{}\t{}\n", rel(a, srcs[0]), rel(b, srcs[1])));
            n += 1;
        }
    }
    write_atomic(&dir.join(LIST), lines.as_bytes())?;
    Ok(n)
}

/// `path` under `src`, as the store's sources list names it.
fn rel(path: &Path, src: &Path) -> String {
    path.strip_prefix(src).unwrap_or(path).display().to_string()
}
