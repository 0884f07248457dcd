//! `bench-loader` (hidden): time the training loader over a prepared store
//! and measure its memory (scripts/bench-data); prints one JSON line.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;

use alexnet_cuda::data::{batches, Lighting, LoaderConfig, PackedStore};

#[derive(Args)]
pub struct BenchLoaderArgs {
    /// A store folder (out/train from `prepare`).
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    #[arg(long, default_value_t = 128)]
    batch: usize,
    #[arg(long, default_value_t = 227)]
    crop: usize,
    #[arg(long, default_value_t = 20)]
    batches: usize,
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

/// Load `--batches` batches (more epochs if the store is small) and print
/// the rate and the peak memory.
pub fn run(args: BenchLoaderArgs) -> Result<()> {
    let BenchLoaderArgs {
        data,
        batch,
        crop,
        batches: n,
        workers,
    } = args;
    let data = data.as_path();
    let store = Arc::new(PackedStore::open(data)?);
    let meta = store.meta().clone();
    let light = Lighting {
        pca: meta.stats.pca,
        sigma: 0.1,
    };
    let cfg = LoaderConfig {
        mean_image: Some(Arc::new(store.mean_image().to_vec())),
        seed: 1,
        workers,
        drop_last: true,
        lighting: Some(light),
        ..LoaderConfig::new(batch, crop, true)
    };
    let idx: Vec<usize> = (0..meta.count).collect();
    // Peak private (anonymous) memory, sampled once per batch: VmHWM also
    // counts the store's file pages, which are page cache the kernel can
    // drop at any time.
    let anon_kb = || -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("RssAnon:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let mut peak_anon = anon_kb();
    let (mut images, mut epoch) = (0usize, 0u64);
    let start = Instant::now();
    'outer: loop {
        let mut it = batches(store.clone(), &idx, &cfg, epoch)?;
        if it.num_batches() == 0 {
            bail!(
                "{}: fewer than {batch} images; pass a smaller --batch",
                data.display()
            );
        }
        while let Some(b) = it.next() {
            let b = b?;
            images += b.n;
            peak_anon = peak_anon.max(anon_kb());
            it.recycle(b);
            if images >= n * batch {
                break 'outer;
            }
        }
        epoch += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |key: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    println!(
        "{{\"images\": {images}, \"seconds\": {secs:.4}, \"images_per_s\": {:.1}, \"workers\": {workers}, \"store_images\": {}, \"peak_rss_mb\": {:.1}, \"peak_anon_mb\": {:.1}, \"rss_file_mb\": {:.1}}}",
        images as f64 / secs,
        meta.count,
        kb("VmHWM:") as f64 / 1024.0,
        peak_anon as f64 / 1024.0,
        kb("RssFile:") as f64 / 1024.0,
    );
    Ok(())
}
