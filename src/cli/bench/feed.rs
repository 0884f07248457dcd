//! `bench-feed` (hidden): how long a run's passes (epochs over a store,
//! each followed by a validation pass) take to feed, with one loader per
//! pass against one feed with every pass queued ahead (data::feed), in the
//! same run, each twice in turn and the best kept. The step is stood in
//! for by a sleep: a GPU step leaves the host's cores to the loader, and a
//! sleep does the same, so on a CPU machine this measures what the loader
//! gives a GPU of that step time. Prints one JSON line.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;

use alexnet_cuda::data::{batches, BatchIter, Feed, ImageSource, LoaderConfig};

use super::loader::store_loader;
use crate::cli::common::{at_least_one, thread_count};

#[derive(Args)]
pub struct BenchFeedArgs {
    /// A store folder: `prepare`'s output (its train/ is read) or a store in it.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Images per epoch: the store's first N (default: all).
    #[arg(long, value_parser = at_least_one)]
    limit: Option<usize>,
    /// Images per validation pass: the store's first N, centre crops.
    #[arg(long, default_value_t = 944)]
    val: usize,
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
    epochs: usize,
    /// Milliseconds the stand-in step takes per training batch; a
    /// validation batch (a forward pass) takes a third of it.
    #[arg(long, value_parser = step_millis)]
    step_ms: f64,
    #[arg(long, default_value_t = 128, value_parser = at_least_one)]
    batch: usize,
    #[arg(long, default_value_t = 227, value_parser = at_least_one)]
    crop: usize,
    #[arg(long, default_value_t = 1, value_parser = some_threads)]
    workers: usize,
}

/// Loader threads, 1 to `thread_count`'s most: each holds batches ahead.
fn some_threads(s: &str) -> std::result::Result<usize, String> {
    match thread_count(s)? {
        0 => Err("must be at least 1".into()),
        n => Ok(n),
    }
}

/// bench-feed's JSON line.
#[derive(Serialize)]
struct FeedReport {
    epochs: usize,
    train_batches: usize,
    val_batches: usize,
    step_ms: f64,
    workers: usize,
    /// The stand-in steps alone: the time were the loader never waited for.
    ideal_s: f64,
    /// One loader per pass, started when the pass starts.
    per_pass_s: f64,
    /// One feed, every pass queued ahead.
    fed_s: f64,
    per_pass_over_ideal: f64,
    fed_over_ideal: f64,
}

/// Flag parser for the stand-in step: milliseconds, at least 0.01 (the
/// report's ratios are over the steps' time, and a sleep is kept to the
/// nanosecond: a smaller step would round to nothing, or to a time the
/// sleep's own overhead swamps) and at most a minute (far past any GPU
/// step; more would sleep for years).
fn step_millis(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.01..=60_000.0).contains(&v) => Ok(v),
        _ => Err("pass the milliseconds of one step, at least 0.01 and at most 60000".into()),
    }
}

/// The run's passes and how each is read.
struct Plan {
    set: Arc<dyn ImageSource>,
    train_idx: Vec<usize>,
    val_idx: Vec<usize>,
    train: LoaderConfig,
    val: LoaderConfig,
    epochs: usize,
    step: Duration,
}

/// The images per epoch (--limit, or the store's `n`), checked with --val
/// and --batch against the store; each error names the flag to change.
fn check_counts(args: &BenchFeedArgs, n: usize) -> Result<usize> {
    let data = args.data.display();
    if args.batch > n {
        bail!(
            "{data}: {n} images, fewer than --batch ({}); pass a --batch of at most {n}",
            args.batch
        );
    }
    let limit = args.limit.unwrap_or(n);
    if limit > n || limit < args.batch {
        bail!(
            "{data}: {n} images; pass --limit between --batch ({}) and {n}",
            args.batch
        );
    }
    if args.val == 0 || args.val > n {
        bail!("{data}: {n} images; pass --val between 1 and {n}");
    }
    Ok(limit)
}

/// Time the passes both ways, one after the other, and print the ratios.
pub fn run(mut args: BenchFeedArgs) -> Result<()> {
    let (path, store) = super::open_store(&args.data, args.crop)?;
    args.data = path;
    let store = Arc::new(store);
    let n = store.meta().count;
    let limit = check_counts(&args, n)?;
    let train = store_loader(&store, args.batch, args.crop, args.workers);
    let plan = Plan {
        set: store,
        train_idx: (0..limit).collect(),
        val_idx: (0..args.val).collect(),
        val: train.validation(),
        train,
        epochs: args.epochs,
        step: Duration::from_secs_f64(args.step_ms / 1e3),
    };
    // Each way twice, in turn, the best of each kept: the first pass over
    // the store also warms the page cache, and the machine's noise is
    // a few percent.
    let (mut per_pass_s, mut fed_s) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..2 {
        per_pass_s = per_pass_s.min(plan.per_pass()?);
        fed_s = fed_s.min(plan.fed()?);
    }
    let (train_batches, val_batches) = (limit / args.batch, args.val.div_ceil(args.batch));
    let ideal_s = args.epochs as f64
        * plan.step.as_secs_f64()
        * (train_batches as f64 + val_batches as f64 / 3.0);
    let report = FeedReport {
        epochs: args.epochs,
        train_batches,
        val_batches,
        step_ms: args.step_ms,
        workers: args.workers,
        ideal_s,
        per_pass_s,
        fed_s,
        per_pass_over_ideal: per_pass_s / ideal_s,
        fed_over_ideal: fed_s / ideal_s,
    };
    outln!("{}", serde_json::to_string(&report)?)?;
    Ok(())
}

impl Plan {
    /// Seconds for the passes, each with a loader of its own.
    fn per_pass(&self) -> Result<f64> {
        let t0 = Instant::now();
        for e in 0..self.epochs {
            let it = batches(
                Arc::clone(&self.set),
                &self.train_idx,
                &self.train,
                e as u64,
            )?;
            self.read(it, self.step)?;
            let it = batches(Arc::clone(&self.set), &self.val_idx, &self.val, 0)?;
            self.read(it, self.step / 3)?;
        }
        Ok(t0.elapsed().as_secs_f64())
    }

    /// Seconds for the passes from one feed, all queued at the start.
    fn fed(&self) -> Result<f64> {
        let t0 = Instant::now();
        let feed = Feed::new(self.train.workers)?;
        let mut passes = Vec::with_capacity(2 * self.epochs);
        for e in 0..self.epochs {
            let set = Arc::clone(&self.set);
            passes.push(feed.queue(set, &self.train_idx, &self.train, e as u64, 0)?);
            let set = Arc::clone(&self.set);
            passes.push(feed.queue(set, &self.val_idx, &self.val, 0, 0)?);
        }
        for (i, pass) in passes.into_iter().enumerate() {
            let step = if i % 2 == 0 { self.step } else { self.step / 3 };
            self.read(feed.open(pass), step)?;
        }
        Ok(t0.elapsed().as_secs_f64())
    }

    /// Read every batch of `it`, taking `step` over each.
    fn read(&self, mut it: BatchIter, step: Duration) -> Result<()> {
        while let Some(b) = it.next() {
            let b = b?;
            std::thread::sleep(step);
            it.recycle(b);
        }
        Ok(())
    }
}
