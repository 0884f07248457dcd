//! `synth-store` (hidden): write a synthetic store of COUNT copies of a few
//! encoded images, for the loader's memory benchmarks (scripts/bench-data);
//! prints one JSON line.
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;

use alexnet_cuda::data::decode::encode_jpeg;
use alexnet_cuda::data::packed::{
    is_generation_file, is_store, read_meta, Stats, StoreWriter, META_FILE,
};
use alexnet_cuda::data::{Encoding, Pca, StoreMeta};
use alexnet_cuda::fsutil::{folder_of, temp_of};

use crate::cli::common::at_least_one;

/// The `source` a synthetic store's meta.json names.
const SOURCE: &str = "synthetic";

#[derive(Args)]
pub struct SynthStoreArgs {
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_parser = at_least_one)]
    count: usize,
    /// Image side, 8 to 4096 (the demo set's range).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u16).range(8..=4096))]
    size: u16,
}

/// synth-store's JSON line: the images written and the data file's size.
#[derive(Serialize)]
struct SynthReport {
    images: usize,
    data_mb: f64,
}

/// Write the store and print its image count and size.
pub fn run(args: SynthStoreArgs) -> Result<()> {
    let SynthStoreArgs { out, count, size } = args;
    let size = usize::from(size);
    refuse_a_real_store(&out)?;
    let encoded = distinct_images(size)?;
    let mut w = StoreWriter::create(&out, size, Encoding::Jpeg)?;
    for i in 0..count {
        w.push(&encoded[i % encoded.len()], (i % 1000) as u32, "synthetic")?;
    }
    let m = w.finish(meta(count, size), &vec![127.0; size * size * 3])?;
    let report = SynthReport {
        images: m.count,
        data_mb: m.data_bytes as f64 / 1e6,
    };
    outln!("{}", serde_json::to_string(&report)?)?;
    Ok(())
}

/// synth-store writes a new or empty folder, or over a synthetic store of
/// its own (a rerun): a store prepared from images, `prepare`'s folder of
/// stores, or a folder of images at --out would be replaced or shadowed
/// unasked.
fn refuse_a_real_store(out: &Path) -> Result<()> {
    let elsewhere =
        "synth-store writes only a new folder or its own synthetic stores: pass another --out";
    if is_store(&out.join("train")) {
        bail!(
            "{}: holds the stores `prepare` wrote; {elsewhere}",
            out.display()
        );
    }
    if is_store(out) {
        return match read_meta(out) {
            Ok(m) if m.source == SOURCE => Ok(()),
            Ok(m) => bail!("{}: a store of {}; {elsewhere}", out.display(), m.source),
            Err(e) => bail!("{e}; {elsewhere}"),
        };
    }
    // A store prepare is writing now (or was killed writing) sits in a
    // folder holding prepare's lock: its generation files are not ours.
    let parent = folder_of(out);
    if parent.join(".lock").is_file() {
        bail!(
            "{}: in a folder `prepare` writes (it holds prepare's .lock); {elsewhere}",
            out.display()
        );
    }
    // Anything else there (class folders of images, prepare's val store
    // alone, the user's files) is not ours to write beside; the files a
    // killed synth-store left (a generation's, a meta.json being renamed)
    // are, as the writer removes them.
    let left =
        |name: &str| is_generation_file(name) || temp_of(name).is_some_and(|(t, _)| t == META_FILE);
    let other = fs::read_dir(out)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| !left(name));
    if let Some(name) = other {
        bail!(
            "{}: holds {name:?}, and no store; {elsewhere} (a new or empty folder)",
            out.display()
        );
    }
    Ok(())
}

/// 16 distinct noise images, each encoded once (JPEG, quality 90) for the
/// store to repeat.
fn distinct_images(size: usize) -> Result<Vec<Vec<u8>>> {
    let mut encoded = Vec::new();
    for k in 0..16u32 {
        let px: Vec<u8> = (0..size * size * 3)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(k * 977) >> 24) as u8 / 2 + 64
            })
            .collect();
        let mut e = Vec::new();
        encode_jpeg(&px, size, 90, &mut e)?;
        encoded.push(e);
    }
    Ok(encoded)
}

/// The store's metadata: 1000 classes, image i of class i mod 1000 (so the
/// first count mod 1000 classes hold one more), and made-up pixel
/// statistics (the writer fills in the counts, sizes and checksums).
fn meta(count: usize, size: usize) -> StoreMeta {
    let cov = [[400.0, 0.0, 0.0], [0.0, 400.0, 0.0], [0.0, 0.0, 400.0]];
    StoreMeta {
        format: String::new(),
        version: 0,
        generation: String::new(),
        size,
        encoding: Encoding::Jpeg,
        quality: Some(90),
        count: 0,
        classes: (0..1000).map(|c| format!("n{c:08}")).collect(),
        names: Vec::new(),
        class_counts: (0..1000)
            .map(|c| (count / 1000 + usize::from(c < count % 1000)) as u64)
            .collect(),
        stats: Stats {
            images: count as u64,
            channel_mean: [127.0; 3],
            channel_std: [20.0; 3],
            rgb_cov: cov,
            pca: Pca::from_covariance(cov),
        },
        skipped: 0,
        source: SOURCE.into(),
        data_bytes: 0,
        data_crc: 0,
        index_crc: 0,
        mean_crc: 0,
        sources_crc: 0,
        paired_with: None,
    }
}
