//! `features`: hidden-layer activations (fc6, fc7 after ReLU; pool5; any
//! layer of the config) of every image of a set to a .npy file, one row
//! per image, with a CSV saying what each row is.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;

use alexnet_cuda::checkpoint;
use alexnet_cuda::data::workers_for;
use alexnet_cuda::device::Device;
use alexnet_cuda::features;

use super::common::{positive, set_threads};
use super::device::{on_device, DeviceArgs};

#[derive(Args)]
pub struct FeaturesArgs {
    /// A checkpoint (ckpt-*.safetensors or best.safetensors in a run folder).
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,
    #[command(flatten)]
    device: DeviceArgs,
    /// Images: a store folder, a `prepare` output folder (its val/), or class sub-folders of images.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Layer: fc6 or fc7 (after the ReLU), pool5 (flattened C, H, W), or any layer of the config.
    // A string, not a ValueEnum: the layers are the checkpoint's config's.
    #[arg(long, default_value = "fc7")]
    layer: String,
    /// The features, [images, values] float32 .npy; F.rows.csv beside it says what each row is.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Images per batch.
    #[arg(long, default_value_t = 64, value_parser = positive)]
    batch: u64,
    /// N images spread evenly over the set.
    #[arg(long, value_parser = positive)]
    limit: Option<u64>,
    /// Loader threads (default: as eval).
    #[arg(long)]
    workers: Option<usize>,
    /// Compute threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Hide the progress bar.
    #[arg(long)]
    no_progress: bool,
}

/// Write the features and say how many.
pub fn run(args: FeaturesArgs) -> Result<()> {
    set_threads(args.threads)?;
    let ck = checkpoint::load(&args.checkpoint)?;
    let device = args.device.resolve()?;
    let job = features::FeaturesJob {
        ck: &ck,
        data: &args.data,
        layer: &args.layer,
        out: &args.out,
        batch: args.batch as usize,
        limit: args.limit.map(|l| l as usize),
        workers: workers_for(args.workers, matches!(device, Device::Cuda(_))),
        progress: !args.no_progress,
    };
    let t0 = Instant::now();
    let r = on_device!(&device, args.device, |be| features::features(&be, &job)?);
    println!(
        "{}: {} rows x {} values ({}) in {:.0}s; rows described in {}",
        args.out.display(),
        r.rows,
        r.width,
        args.layer,
        t0.elapsed().as_secs_f64(),
        r.rows_csv.display()
    );
    Ok(())
}
