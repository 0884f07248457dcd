//! `bench-loader` (hidden): time the training loader over a prepared store
//! and measure its memory (scripts/bench-data); prints one JSON line.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;

use alexnet_cuda::data::{batches, Lighting, LoaderConfig, PackedStore};

use super::proc_status::{kb_to_mb, ProcStatus};
use crate::cli::common::{at_least_one, thread_count};

#[derive(Args)]
pub struct BenchLoaderArgs {
    /// A store folder: `prepare`'s output (its train/ is read) or a store in it.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    #[arg(long, default_value_t = 128, value_parser = at_least_one)]
    batch: usize,
    #[arg(long, default_value_t = 227, value_parser = at_least_one)]
    crop: usize,
    #[arg(long, default_value_t = 20, value_parser = at_least_one)]
    batches: usize,
    /// Loader threads; 0 decodes on this thread.
    #[arg(long, default_value_t = 1, value_parser = thread_count)]
    workers: usize,
}

/// bench-loader's JSON line (scripts/bench_data.py reads it).
#[derive(Serialize)]
struct LoaderReport {
    images: usize,
    seconds: f64,
    images_per_s: f64,
    workers: usize,
    store_images: usize,
    /// VmHWM: the peak resident set, the store's file pages included.
    peak_rss_mb: f64,
    /// The peak of RssAnon, sampled once per batch: the loader's own memory.
    peak_anon_mb: f64,
    /// RssFile at the end: the store's pages in the page cache.
    rss_file_mb: f64,
}

/// What loading measured: images loaded, seconds, peak RssAnon in kB.
struct Loaded {
    images: usize,
    seconds: f64,
    peak_anon_kb: u64,
}

/// Load `--batches` batches (more epochs if the store is small) and print
/// the rate and the peak memory.
pub fn run(mut args: BenchLoaderArgs) -> Result<()> {
    let (path, store) = super::open_store(&args.data, args.crop)?;
    args.data = path;
    let store = Arc::new(store);
    let count = store.meta().count;
    let loaded = load(&store, &args)?;
    let status = ProcStatus::read();
    let report = LoaderReport {
        images: loaded.images,
        seconds: loaded.seconds,
        images_per_s: loaded.images as f64 / loaded.seconds,
        workers: args.workers,
        store_images: count,
        peak_rss_mb: status.mb("VmHWM"),
        peak_anon_mb: kb_to_mb(loaded.peak_anon_kb),
        rss_file_mb: status.mb("RssFile"),
    };
    outln!("{}", serde_json::to_string(&report)?)?;
    Ok(())
}

/// The training loader's settings (random crops, mirrors and lighting)
/// for the store: `batch` images of `crop` crops, `workers` threads.
pub(super) fn store_loader(
    store: &PackedStore,
    batch: usize,
    crop: usize,
    workers: usize,
) -> LoaderConfig {
    LoaderConfig {
        mean_image: Some(Arc::new(store.mean_image().to_vec())),
        seed: 1,
        workers,
        drop_last: true,
        skip_unreadable: false,
        lighting: Some(Lighting {
            pca: store.meta().stats.pca,
            sigma: 0.1,
        }),
        ..LoaderConfig::new(batch, crop, true)
    }
}

/// Load batches, epoch after epoch, until `--batches` batches' worth of
/// images are done. Peak private (anonymous) memory is sampled once per
/// batch: VmHWM also counts the store's file pages, which are page cache
/// the kernel can drop at any time. The clock stops at the last batch, before
/// the iterator is dropped: its workers finish the batch each has begun, time
/// a training loop would spend on its next step.
fn load(store: &Arc<PackedStore>, args: &BenchLoaderArgs) -> Result<Loaded> {
    let cfg = store_loader(store, args.batch, args.crop, args.workers);
    let idx: Vec<usize> = (0..store.meta().count).collect();
    let anon_kb = || ProcStatus::read().kb("RssAnon");
    let mut peak_anon_kb = anon_kb();
    let (mut images, mut epoch) = (0usize, 0u64);
    let start = Instant::now();
    let seconds = 'outer: loop {
        let mut it = batches(store.clone(), &idx, &cfg, epoch)?;
        if it.num_batches() == 0 {
            bail!(
                "{}: fewer than {} images; pass a smaller --batch",
                args.data.display(),
                args.batch
            );
        }
        while let Some(b) = it.next() {
            let b = b?;
            images += b.n;
            peak_anon_kb = peak_anon_kb.max(anon_kb());
            it.recycle(b);
            if images >= args.batches.saturating_mul(args.batch) {
                break 'outer start.elapsed().as_secs_f64();
            }
        }
        epoch += 1;
    };
    Ok(Loaded {
        images,
        seconds,
        peak_anon_kb,
    })
}
