//! `features`: hidden-layer activations (fc6, fc7 after ReLU; pool5; any
//! layer of the config) of every image of a set to a .npy file, one row
//! per image, with a CSV saying what each row is.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;

use alexnet_cuda::backend::Backend;
use alexnet_cuda::data::unread_error;
use alexnet_cuda::dist::{run_on_one, OnDevice};
use alexnet_cuda::features;

use super::common::{named_as, not_a_run_file, positive};
use super::device::CheckpointRunArgs;

#[derive(Args)]
pub struct FeaturesArgs {
    #[command(flatten)]
    run: CheckpointRunArgs,
    /// Images: a store folder, a `prepare` output folder (its val/), or class sub-folders of images; of the checkpoint's classes or of new ones (rows then keep the data's own labels).
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Layer: fc6 or fc7 (after the ReLU), pool5 (flattened C, H, W), or any layer of the config (conv1..conv5: the layer's output after its ReLU, LRN and pooling, so conv5 is pool5).
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
}

/// Write the features and say how many.
pub fn run(mut args: FeaturesArgs) -> Result<()> {
    // Through a link, the file it names is the one written (and checked).
    args.out = alexnet_cuda::fsutil::through_links(&args.out);
    not_a_run_file("--out", &args.out)?;
    named_as("--out", &args.out, "npy", "a NumPy .npy array")?;
    let (request, ck) = args.run.start()?;
    let job = features::FeaturesJob {
        ck: &ck,
        data: &args.data,
        layer: &args.layer,
        out: &args.out,
        batch: args.batch as usize,
        limit: args.limit.map(|l| l as usize),
        workers: args.run.host.workers(!request.cpu),
        progress: args.run.host.progress(),
    };
    let t0 = Instant::now();
    let r = run_on_one(&request, FeaturesOn(&job))?;
    outln!(
        "{}: {} rows x {} values ({}) in {:.0}s; rows described in {}",
        args.out.display(),
        r.rows,
        r.width,
        args.layer,
        t0.elapsed().as_secs_f64(),
        r.rows_csv.display()
    )?;
    left_out(r.unread, r.images, r.rows)
}

/// Images that could not be read were left out of the rows: fail naming
/// every one, after the others' features are written.
pub fn left_out(unread: Vec<alexnet_cuda::Error>, images: usize, rows: usize) -> Result<()> {
    match unread.is_empty() {
        true => Ok(()),
        false => bail!(
            "{}; the features of the other {rows} images are written, and the rows CSV says which image each row is",
            unread_error(unread, images)
        ),
    }
}

/// `features::features` on the requested device.
struct FeaturesOn<'a>(&'a features::FeaturesJob<'a>);

impl OnDevice for FeaturesOn<'_> {
    type Out = features::FeaturesReport;
    type Err = alexnet_cuda::Error;
    fn run<B: Backend>(self, be: &B) -> alexnet_cuda::Result<Self::Out> {
        features::features(be, self.0)
    }
}
