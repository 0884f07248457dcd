//! `prepare`: pack an ImageNet-style image tree into the memory-mapped
//! stores training reads, and print what went in.
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use alexnet_cuda::data::prepare::{prepare, PrepareOptions};
use alexnet_cuda::data::{Encoding, StoreMeta};

use super::common::{
    existing_file, path_parser, positive, set_threads, thread_count, SAME_REQUEST,
};

#[derive(Args)]
pub struct PrepareArgs {
    /// Training images: one sub-folder per class (train/<synset>/*.JPEG).
    #[arg(long, value_name = "DIR")]
    train: PathBuf,
    /// Validation images: class sub-folders, or flat with --val-labels.
    #[arg(long, value_name = "DIR")]
    val: Option<PathBuf>,
    /// Labels of a flat val folder: a `file,synset` CSV, or the devkit's ILSVRC2012_validation_ground_truth.txt (with --val-synsets).
    #[arg(long, value_name = "FILE", requires = "val", value_parser = path_parser(existing_file))]
    val_labels: Option<PathBuf>,
    /// The synsets in devkit ID order, one per line (for devkit ground truth).
    #[arg(long, value_name = "FILE", requires = "val_labels", value_parser = path_parser(existing_file))]
    val_synsets: Option<PathBuf>,
    /// Class names: lines of `synset name` (LOC_synset_mapping.txt or synset_words.txt).
    #[arg(long, value_name = "FILE", value_parser = path_parser(existing_file))]
    names: Option<PathBuf>,
    /// Output folder: gets train/ and val/ stores.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Side of the stored images (the paper: 256).
    #[arg(long, default_value_t = 256, value_parser = positive)]
    size: u64,
    /// Storage: jpeg (about 40 KB per 256x256 image) or raw (196 KB, no decoding).
    #[arg(long, value_enum, default_value_t = StoreFormat::Jpeg)]
    format: StoreFormat,
    /// JPEG quality, 1 to 100 [default: 90] (--format jpeg only).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=100))]
    quality: Option<u8>,
    /// Take only this many training images, balanced over classes.
    #[arg(long, value_parser = positive)]
    limit: Option<u64>,
    /// Threads (default: all cores).
    #[arg(long, value_parser = thread_count)]
    threads: Option<usize>,
    /// Hide the progress bar.
    #[arg(long)]
    no_progress: bool,
}

/// --format's values: the library's `Encoding`.
#[derive(Clone, Copy, ValueEnum)]
enum StoreFormat {
    Jpeg,
    Raw,
}

impl From<StoreFormat> for Encoding {
    fn from(f: StoreFormat) -> Encoding {
        match f {
            StoreFormat::Jpeg => Encoding::Jpeg,
            StoreFormat::Raw => Encoding::Raw,
        }
    }
}

/// Write the stores and print a line for each.
pub fn run(args: PrepareArgs) -> Result<()> {
    set_threads(args.threads)?;
    let mut opts = options(args)?;
    let (stop, status) = stop_on_signals()?;
    opts.stop = Some(Arc::clone(&stop));
    let r = match prepare(&opts) {
        Err(alexnet_cuda::Error::Stopped(why)) => {
            let _ = outln!("{why}");
            std::process::exit(status.load(Ordering::SeqCst));
        }
        r => r?,
    };
    print_store("train", &r.train)?;
    if let Some(v) = &r.val {
        print_store("val", v)?;
    }
    outln!(
        "wrote {} in {:.1} s; train with --data {}",
        opts.out.display(),
        r.seconds,
        alexnet_cuda::shell::word(&opts.out)
    )?;
    // A signal after the last image: the stores were whole by then.
    if stop.load(Ordering::SeqCst) {
        let code = status.load(Ordering::SeqCst);
        outln!("a signal came after the last image was written: the stores above are whole and committed; exiting with status {code}")?;
        std::process::exit(code);
    }
    Ok(())
}

/// At SIGINT or SIGTERM, stop between images: the store being written is
/// removed, and the exit status is 128 + the signal's number. A signal
/// again past `SAME_REQUEST` (not `timeout`'s second copy of the first)
/// quits at once, leaving that store's files to the next prepare.
fn stop_on_signals() -> Result<(Arc<AtomicBool>, Arc<AtomicI32>)> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut incoming = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("could not install signal handlers")?;
    let stop = Arc::new(AtomicBool::new(false));
    let status = Arc::new(AtomicI32::new(0));
    let (flag, code) = (Arc::clone(&stop), Arc::clone(&status));
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut first: Option<Instant> = None;
            for sig in incoming.forever() {
                match first {
                    None => {
                        // The status before the flag: whoever sees the flag reads it.
                        code.store(128 + sig, Ordering::SeqCst);
                        flag.store(true, Ordering::SeqCst);
                        tracing::warn!("stopping: the images in progress finish, then the store being written is removed; Ctrl-C again quits at once and leaves its files to the next prepare");
                        first = Some(Instant::now());
                    }
                    Some(t) if t.elapsed() >= SAME_REQUEST => std::process::exit(128 + sig),
                    Some(_) => {}
                }
            }
        })
        .context("could not start the signal thread")?;
    Ok((stop, status))
}

/// The library's options from the flags.
fn options(args: PrepareArgs) -> Result<PrepareOptions> {
    if let (StoreFormat::Raw, Some(q)) = (args.format, args.quality) {
        bail!("--quality {q}: a raw store keeps the pixels as they are, with no JPEG quality; drop --quality or pass --format jpeg");
    }
    let mut opts = PrepareOptions::new(args.train, args.out);
    opts.val = args.val;
    opts.val_labels = args.val_labels;
    opts.val_synsets = args.val_synsets;
    opts.names = args.names;
    opts.size = args.size as usize;
    opts.encoding = args.format.into();
    if let Some(q) = args.quality {
        opts.quality = q;
    }
    opts.limit = args.limit.map(|v| v as usize);
    opts.progress = !args.no_progress;
    Ok(opts)
}

/// One store's line: images, the classes they are of (a val store lists
/// all of train's), skipped files, size.
fn print_store(what: &str, m: &StoreMeta) -> Result<()> {
    outln!(
        "{what}: {} images of {} classes, {} skipped, {:.1} MB",
        m.count,
        m.class_counts.iter().filter(|&&n| n > 0).count(),
        m.skipped,
        m.data_bytes as f64 / 1e6
    )?;
    Ok(())
}
