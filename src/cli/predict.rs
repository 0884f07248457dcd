//! `predict`: the top classes of images (or of a preprocessed NCHW batch
//! from a .npy file) under a checkpoint, on the device the flags pick like
//! every other command's; optionally the raw logits to a .npy file.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Result};
use clap::Args;
use tracing::info;

use alexnet_cuda::backend::Backend;
use alexnet_cuda::checkpoint::{self, Checkpoint};
use alexnet_cuda::data::{batches, decode_each, ImageSet, ImageSource};
use alexnet_cuda::dist::{run_on_one, OnDevice};
use alexnet_cuda::eval::{average_crops, forward_rows, loader_for, top_k};
use alexnet_cuda::model::topology::Topology;
use alexnet_cuda::model::trainable::Model;
use alexnet_cuda::npy::{read_npy_f32, write_npy_f32};

use super::common::{
    crop_rows, existing_file, existing_image, positive, set_threads, thread_count,
};
use super::device::DeviceArgs;

#[derive(Args)]
pub struct PredictArgs {
    /// A checkpoint (ckpt-*.safetensors or best.safetensors), or a run folder for its best.safetensors.
    #[arg(long, value_name = "PATH")]
    checkpoint: PathBuf,
    #[command(flatten)]
    device: DeviceArgs,
    /// Images (JPEG, PNG): resized, centre-cropped and normalised as in evaluation.
    #[arg(
        value_name = "IMAGE",
        required_unless_present = "input_npy",
        conflicts_with = "input_npy",
        value_parser = existing_image
    )]
    images: Vec<PathBuf>,
    /// Instead of images: an already preprocessed float32 NCHW batch (.npy) of the network's input size.
    #[arg(long, value_name = "FILE", value_parser = existing_file)]
    input_npy: Option<PathBuf>,
    /// Write the raw logits (rows x classes, float32) to this .npy file.
    #[arg(long, value_name = "FILE")]
    logits: Option<PathBuf>,
    /// Average the softmax over the paper's 10 crops (the logits file then has 10 rows per image).
    #[arg(long, conflicts_with = "input_npy")]
    ten_crop: bool,
    /// Classes to list per input.
    #[arg(long, default_value_t = 5, value_parser = positive)]
    top: u64,
    /// Compute threads (default: all cores).
    #[arg(long, value_parser = thread_count)]
    threads: Option<usize>,
}

/// What the network made of the inputs: a label per input, the logits
/// (one row per network row) and the probabilities (one row per input);
/// and the images that could not be read, which have no row.
struct Rows {
    labels: Vec<String>,
    logits: Vec<f32>,
    probs: Vec<f32>,
    unread: Option<alexnet_cuda::Error>,
}

/// Classify the inputs and print each one's top classes.
pub fn run(args: PredictArgs) -> Result<()> {
    set_threads(args.threads)?;
    // The flags first: a bad one is reported before any file is read.
    let request = args.device.request_one()?;
    let ck = checkpoint::load_resolved(&args.checkpoint)?;
    let topo = ck.state.net.topology()?;
    let rows = run_on_one(
        &request,
        PredictOn {
            ck: &ck,
            topo: &topo,
            args: &args,
        },
    )?;
    let classes = topo.classes;
    // The file first: a reader of the listing that stops early (`| head`)
    // must not cost it.
    if let Some(path) = &args.logits {
        let n = rows.logits.len() / classes;
        write_npy_f32(path, &[n, classes], &rows.logits)?;
        info!("wrote {n} logits rows to {}", path.display());
    }
    print_top(&ck, &rows, classes, args.top as usize)?;
    report_unread(rows.unread)
}

/// After the readable images' predictions: the others, in one error.
fn report_unread(unread: Option<alexnet_cuda::Error>) -> Result<()> {
    match unread {
        None => Ok(()),
        Some(e) => bail!("{e}; the others' predictions are above"),
    }
}

/// The network restored from the checkpoint, run over the inputs.
struct PredictOn<'a> {
    ck: &'a Checkpoint,
    topo: &'a Topology,
    args: &'a PredictArgs,
}

impl OnDevice for PredictOn<'_> {
    type Out = Rows;
    type Err = anyhow::Error;
    fn run<B: Backend>(self, be: &B) -> Result<Rows> {
        let chunk = self.ck.state.options.batch.clamp(1, 64);
        let mut net = self.ck.network(be, self.topo, chunk)?;
        match &self.args.input_npy {
            Some(path) => npy_rows(&mut net, self.topo, path, chunk),
            None => image_rows(&mut net, self.topo.classes, self.ck, self.args, chunk),
        }
    }
}

/// A preprocessed batch from a .npy file, checked against the network's input.
fn npy_rows(net: &mut dyn Model, topo: &Topology, path: &Path, chunk: usize) -> Result<Rows> {
    let (shape, x) = read_npy_f32(path)?;
    let side = topo.crop;
    let want = [topo.channels, side, side];
    if shape.len() != 4 || shape[1..] != want {
        bail!(
            "{}: shape {shape:?}, but config {} takes [N, {}, {side}, {side}] (float32, NCHW, preprocessed as in training: mean subtracted)",
            path.display(),
            topo.name,
            topo.channels
        );
    }
    let (logits, probs) = forward_rows(net, &x, chunk)?;
    let labels = (0..shape[0])
        .map(|i| format!("{} row {i}", path.display()))
        .collect();
    Ok(Rows {
        labels,
        logits,
        probs,
        unread: None,
    })
}

/// Image files, decoded and cropped as evaluation does (--ten-crop: the
/// softmax averaged over the ten crops).
fn image_rows(
    net: &mut dyn Model,
    classes: usize,
    ck: &Checkpoint,
    args: &PredictArgs,
    chunk: usize,
) -> Result<Rows> {
    let size = ck.state.preprocess.image_size;
    let (read, pixels, unread) = decode_each(&args.images, size);
    // A logits file's rows must be the inputs': all or nothing.
    if let Some(e) = unread
        .as_ref()
        .filter(|_| read.is_empty() || args.logits.is_some())
    {
        let why = match read.is_empty() {
            true => "",
            false => "; nothing was predicted: --logits writes a row for every image",
        };
        bail!("{e}{why}");
    }
    let n = read.len();
    let set = ImageSet::from_parts(size, pixels, vec![0; n], ck.state.classes.clone())?;
    let set: Arc<dyn ImageSource> = Arc::new(set);
    let per_step = (chunk / crop_rows(args.ten_crop)).max(1);
    let cfg = loader_for(ck, per_step, args.ten_crop, 0);
    let idx: Vec<usize> = (0..n).collect();
    let (mut logits, mut probs) = (Vec::new(), Vec::new());
    for b in batches(Arc::clone(&set), &idx, &cfg, 0)? {
        let b = b?;
        let (l, p) = forward_rows(net, &b.x, b.n * b.crops)?;
        logits.extend(l);
        probs.extend(average_crops(&p, b.crops, classes));
    }
    let labels = read
        .iter()
        .map(|&i| args.images[i].display().to_string())
        .collect();
    Ok(Rows {
        labels,
        logits,
        probs,
        unread,
    })
}

/// Each input's label, then its `top` classes with probability, synset and name.
fn print_top(ck: &Checkpoint, rows: &Rows, classes: usize, top: usize) -> Result<()> {
    let names = &ck.state.names;
    for (label, row) in rows.labels.iter().zip(rows.probs.chunks_exact(classes)) {
        outln!("{label}")?;
        for (rank, (c, p)) in top_k(row, top).into_iter().enumerate() {
            let id = &ck.state.classes[c];
            match names.get(c).filter(|n| !n.is_empty() && *n != id) {
                Some(name) => outln!("  {}. {:6.2}%  {id}  {name}", rank + 1, 100.0 * p)?,
                None => outln!("  {}. {:6.2}%  {id}", rank + 1, 100.0 * p)?,
            }
        }
    }
    Ok(())
}
