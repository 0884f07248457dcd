//! What `eval` reports class by class: the table `--per-class` writes (each
//! class's images, top-1 and top-5 error, and the class its images are most
//! often taken for), the matrix `--confusion` writes, and the few lines of
//! text that name the hardest classes and the commonest confusions.
use std::path::Path;

use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::eval::ClassTally;
use crate::fsutil;
use crate::npy::npy_f32_bytes;

/// The bytes of the per-class CSV `path` (named in errors): `label,class,
/// name,images,top1_error,top5_error,confused_with,confused_name,
/// confused_images`, one row per class in label order. A class with no
/// images has empty errors; one none of whose misses has a top-1 class
/// (never missed, or its misses' outputs not finite) an empty
/// `confused_with`.
pub fn csv(path: &Path, ck: &Checkpoint, tally: &ClassTally) -> Result<Vec<u8>> {
    let header = [
        "label",
        "class",
        "name",
        "images",
        "top1_error",
        "top5_error",
        "confused_with",
        "confused_name",
        "confused_images",
    ];
    fsutil::csv_bytes(
        path,
        &header,
        (0..tally.classes()).map(|c| row(ck, tally, c)),
    )
}

/// Class `c`'s CSV record.
fn row(ck: &Checkpoint, tally: &ClassTally, c: usize) -> Vec<String> {
    let (n, top1, top5) = tally.counts(c);
    let error = |hits: u64| match n {
        0 => String::new(),
        _ => format!("{:.6}", 1.0 - hits as f64 / n as f64),
    };
    let (with, name, count) = match tally.most_confused(c) {
        Some((j, k)) => (
            ck.class_id(j as u32),
            ck.class_name(j as u32),
            k.to_string(),
        ),
        None => Default::default(),
    };
    vec![
        c.to_string(),
        ck.class_id(c as u32),
        ck.class_name(c as u32),
        n.to_string(),
        error(top1),
        error(top5),
        with,
        name,
        count,
    ]
}

/// The confusion matrix as the bytes of a float32 .npy file `path` (named
/// in errors), of shape [classes, classes]:
/// row = true class, column = top-1 class, values = image counts (exact up
/// to 2^24 per cell).
pub fn confusion_npy(path: &Path, tally: &ClassTally) -> Result<Vec<u8>> {
    let c = tally.classes();
    // Filled from the diagonal and the misses: no classes² copy besides.
    let mut m = vec![0.0f32; c * c];
    for t in 0..c {
        m[t * c + t] = tally.confused(t, t) as f32;
    }
    for ((t, p), n) in tally.misses() {
        m[t * c + p] = n as f32;
    }
    npy_f32_bytes(path, &[c, c], &m)
}

/// Up to `k` classes with the highest top-1 error (ties in label order),
/// as "name error% of n"; classes with no images or no misses are left out.
pub fn hardest(ck: &Checkpoint, tally: &ClassTally, k: usize) -> Vec<String> {
    let mut seen: Vec<(usize, f64, u64)> = (0..tally.classes())
        .filter_map(|c| {
            let (n, top1, _) = tally.counts(c);
            (top1 < n).then(|| (c, 1.0 - top1 as f64 / n as f64, n))
        })
        .collect();
    seen.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    seen.iter()
        .take(k)
        .map(|&(c, e, n)| format!("{} {:.1}% of {n}", shown(ck, c), 100.0 * e))
        .collect()
}

/// Up to `k` (true, top-1) pairs of different classes, most images first
/// (ties in label order), as "true -> predicted n".
pub fn confusions(ck: &Checkpoint, tally: &ClassTally, k: usize) -> Vec<String> {
    let mut pairs: Vec<(u64, usize, usize)> = tally.misses().map(|((t, p), n)| (n, t, p)).collect();
    pairs.sort_by(|a, b| b.0.cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
    pairs
        .iter()
        .take(k)
        .map(|&(n, t, p)| format!("{} -> {} {n}", shown(ck, t), shown(ck, p)))
        .collect()
}

/// Class `c`'s name as printed: a line break in a folder's name must not
/// split the line (escaped as `fsutil::tsv_field` does).
fn shown(ck: &Checkpoint, c: usize) -> String {
    fsutil::tsv_field(&ck.class_name(c as u32)).into_owned()
}
