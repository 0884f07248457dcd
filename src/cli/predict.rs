//! `predict`: the top classes of images (or of a preprocessed NCHW batch
//! from a .npy file) under a checkpoint, on the device the flags pick like
//! every other command's; optionally the raw logits to a .npy file.
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Result};
use clap::Args;
use tracing::{info, warn};

use alexnet_cuda::backend::Backend;
use alexnet_cuda::checkpoint::{self, Checkpoint};
use alexnet_cuda::data::{batches, decode_some, unread_error, ImageSet, ImageSource, LoaderConfig};
use alexnet_cuda::dist::{run_on_one, OnDevice};
use alexnet_cuda::eval::{
    forward_rows, loader_for, log_mean_softmax, top_k, warn_of_ten_equal_crops,
};
use alexnet_cuda::fsutil;
use alexnet_cuda::model::topology::Topology;
use alexnet_cuda::model::trainable::Model;
use alexnet_cuda::npy::{NpyRows, NpyWriter};
use alexnet_cuda::progress;
use alexnet_cuda::run_state::Preprocess;

use super::common::{
    crop_rows, existing_file, image_files, image_or_folder, named_as, not_a_run_file, path_parser,
    positive, set_threads, thread_count,
};
use super::device::DeviceArgs;

#[derive(Args)]
pub struct PredictArgs {
    /// A checkpoint (ckpt-*.safetensors or best.safetensors), or a run folder for its best.safetensors.
    #[arg(long, value_name = "PATH")]
    checkpoint: PathBuf,
    #[command(flatten)]
    device: DeviceArgs,
    /// Images, or folders of them (every image under a folder, in path order): resized, centre-cropped and normalised as in evaluation.
    #[arg(
        value_name = "IMAGE",
        required_unless_present = "input_npy",
        conflicts_with = "input_npy",
        value_parser = path_parser(image_or_folder)
    )]
    images: Vec<PathBuf>,
    /// Instead of images: an already preprocessed float32 NCHW batch (.npy) of the network's input size.
    #[arg(long, value_name = "FILE", value_parser = path_parser(existing_file))]
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
    /// Hide the progress bar.
    #[arg(long)]
    no_progress: bool,
}

/// Images decoded at a time. Each group is decoded, predicted, listed and
/// let go, so memory stays the same for ten images or a million (one image
/// at 256 px is 192 KiB decoded), and the first lines come out at once.
const GROUP: usize = 256;

/// Classify the inputs and print each one's top classes.
pub fn run(mut args: PredictArgs) -> Result<()> {
    // Through a link, the file it names is the one written (and checked).
    args.logits = args.logits.map(|f| fsutil::through_links(&f));
    set_threads(args.threads)?;
    // The flags first: a bad one is reported before any file is read.
    let request = args.device.request_one()?;
    if let Some(f) = &args.logits {
        fsutil::check_target(f)?;
        not_a_run_file("--logits", f)?;
        named_as("--logits", f, "npy", "a NumPy .npy array")?;
        if let Some(input) = args
            .input_npy
            .as_deref()
            .filter(|i| fsutil::same_file(f, i))
        {
            bail!(
                "--logits {} is the --input-npy file {}: the logits would replace the input; name another file",
                f.display(),
                input.display()
            );
        }
    }
    let images = image_files(&args.images)?;
    let ck = checkpoint::load_resolved(&args.checkpoint)?;
    let topo = ck.state.net.topology()?;
    run_on_one(
        &request,
        PredictOn {
            ck: &ck,
            topo: &topo,
            args: &args,
            images: &images,
        },
    )
}

/// The network restored from the checkpoint, run over the inputs.
struct PredictOn<'a> {
    ck: &'a Checkpoint,
    topo: &'a Topology,
    args: &'a PredictArgs,
    /// The image files, folders expanded.
    images: &'a [PathBuf],
}

impl OnDevice for PredictOn<'_> {
    type Out = ();
    type Err = anyhow::Error;
    fn run<B: Backend>(self, be: &B) -> Result<()> {
        let chunk = self.ck.state.options.batch.clamp(1, 64);
        let mut net = self.ck.network(be, self.topo, chunk)?;
        match &self.args.input_npy {
            Some(path) => npy_rows(&mut net, self.topo, self.ck, self.args, path, chunk),
            None => image_rows(&mut net, self.ck, self.args, self.images, chunk),
        }
    }
}

/// A preprocessed batch from a .npy file, checked against the network's
/// input, read `chunk` rows at a time (the shape from the header first).
fn npy_rows(
    net: &mut dyn Model,
    topo: &Topology,
    ck: &Checkpoint,
    args: &PredictArgs,
    path: &Path,
    chunk: usize,
) -> Result<()> {
    let (mut rows, shape) = NpyRows::open_shaped(path, true)?;
    let side = topo.crop;
    let want = [topo.channels, side, side];
    if shape.len() != 4 || shape[1..] != want {
        bail!(
            "{}: shape {shape:?}, but config {} takes [N, {}, {side}, {side}] (float32, NCHW: {})",
            path.display(),
            topo.name,
            topo.channels,
            preprocessing(&ck.state.preprocess, side)
        );
    }
    if shape[0] == 0 {
        bail!("{}: shape {shape:?} holds no images", path.display());
    }
    let chunk = chunk.max(1);
    // A pass over the values first: a bad one is refused before any output.
    for start in (0..shape[0]).step_by(chunk) {
        let x = rows.read(start, chunk)?;
        refuse_non_finite(path, ck, (rows.cols, side), start * rows.cols, &x)?;
    }
    let mut out = Output::new(ck, args, shape[0])?;
    for start in (0..shape[0]).step_by(chunk) {
        let x = rows.read(start, chunk)?;
        let logits = forward_rows(net, &x, chunk)?;
        let logp = log_mean_softmax(&logits, 1, ck.state.classes.len());
        let labels: Vec<String> = (start..start + x.len() / rows.cols)
            .map(|i| format!("{} row {i}", path.display()))
            .collect();
        out.take(&labels, &logits, &logp)?;
    }
    out.finish(None)
}

/// Refuse a value of the input that is not finite, named by its index in
/// the file (`x` starts at value `first`), its image and channel (`per`
/// values an image, planes of `side` x `side`).
fn refuse_non_finite(
    path: &Path,
    ck: &Checkpoint,
    (per, side): (usize, usize),
    first: usize,
    x: &[f32],
) -> Result<()> {
    let Some(i) = x.iter().position(|v| !v.is_finite()) else {
        return Ok(());
    };
    let at = first + i;
    bail!(
        "{}: value {at} (image {}, channel {}) is {}, not a finite number; the input must hold preprocessed pixels ({})",
        path.display(),
        at / per,
        at % per / (side * side),
        x[i],
        preprocessing(&ck.state.preprocess, side)
    )
}

/// Image files, a group at a time, decoded and cropped as evaluation does
/// (--ten-crop: the softmax averaged over the ten crops).
fn image_rows(
    net: &mut dyn Model,
    ck: &Checkpoint,
    args: &PredictArgs,
    images: &[PathBuf],
    chunk: usize,
) -> Result<()> {
    let crops = crop_rows(args.ten_crop);
    let mut out = Output::new(ck, args, images.len() * crops)?;
    if args.ten_crop {
        let p = &ck.state.preprocess;
        warn_of_ten_equal_crops(p.image_size, p.crop);
    }
    let cfg = loader_for(ck, (chunk / crops).max(1), args.ten_crop, 0);
    let bar = progress::bar(images.len(), "predicting", !args.no_progress);
    let mut failed = Vec::new();
    for group in images.chunks(GROUP) {
        let size = ck.state.preprocess.image_size;
        let (read, pixels, errors) = decode_some(group, size);
        if !errors.is_empty() {
            out.drop_logits();
        }
        failed.extend(errors);
        let (logits, logp) = predict_group(net, ck, &cfg, pixels, read.len())?;
        let labels: Vec<String> = read
            .iter()
            .map(|&i| group[i].display().to_string())
            .collect();
        out.take(&labels, &logits, &logp)?;
        bar.inc(group.len() as u64);
    }
    bar.finish_and_clear();
    let unread = (!failed.is_empty()).then(|| unread_error(failed, images.len()));
    out.finish(unread)
}

/// The logits (a row per crop) and the log of the crop-averaged softmax (a
/// row per image) of `n` decoded images.
fn predict_group(
    net: &mut dyn Model,
    ck: &Checkpoint,
    cfg: &LoaderConfig,
    pixels: Vec<u8>,
    n: usize,
) -> Result<(Vec<f32>, Vec<f64>)> {
    let (mut logits, mut logp) = (Vec::new(), Vec::new());
    if n == 0 {
        return Ok((logits, logp));
    }
    let size = ck.state.preprocess.image_size;
    let set = ImageSet::from_parts(size, pixels, vec![0; n], ck.state.classes.clone())?;
    let set: Arc<dyn ImageSource> = Arc::new(set);
    let idx: Vec<usize> = (0..n).collect();
    for b in batches(set, &idx, cfg, 0)? {
        let b = b?;
        let l = forward_rows(net, &b.x, b.n * b.crops)?;
        logp.extend(log_mean_softmax(&l, b.crops, ck.state.classes.len()));
        logits.extend(l);
    }
    Ok((logits, logp))
}

/// What a preprocessed input holds under `p`, for a shape error.
fn preprocessing(p: &Preprocess, side: usize) -> String {
    let mean = match p.mean_image {
        true => "the checkpoint's mean image subtracted".to_string(),
        false => format!("the channel means {:?} subtracted", p.mean),
    };
    let std = p
        .std
        .map(|s| format!(", divided by the channel stds {s:?}"));
    let pad = (p.pad > 0).then(|| {
        format!(
            ", the {c}x{c} crop padded with zeros to {side}x{side}",
            c = p.crop
        )
    });
    format!(
        "RGB pixels 0 to 255, {mean}{}{}",
        std.unwrap_or_default(),
        pad.unwrap_or_default()
    )
}

/// Where predictions go as they come: the listing on standard output, and
/// the --logits file, whose rows must be the inputs': written whole, or
/// not at all.
struct Output<'a> {
    ck: &'a Checkpoint,
    top: usize,
    /// The --logits file being written, until an input cannot be read.
    logits: Option<NpyWriter>,
    logits_path: Option<&'a Path>,
    /// Inputs listed (or, once the listing's reader has gone, predicted).
    predicted: usize,
    /// Rows written to the logits file (ten per image with --ten-crop).
    rows: usize,
    /// Inputs whose output was not a finite number: no prediction.
    unscored: Vec<String>,
    /// False once the reader of standard output has gone (`| head`): the
    /// logits file is still finished, then the run ends as a closed pipe
    /// does.
    listing: bool,
}

impl<'a> Output<'a> {
    /// Opens the logits file (`rows` rows) before any input is read, so a
    /// path that cannot be written costs nothing.
    fn new(ck: &'a Checkpoint, args: &'a PredictArgs, rows: usize) -> Result<Output<'a>> {
        let classes = ck.state.classes.len();
        let logits = match &args.logits {
            Some(p) => Some(NpyWriter::create(p, rows, classes)?),
            None => None,
        };
        Ok(Output {
            ck,
            top: args.top as usize,
            logits,
            logits_path: args.logits.as_deref(),
            predicted: 0,
            rows: 0,
            unscored: Vec::new(),
            listing: true,
        })
    }

    /// Inputs `labels`: their logits rows and their log-probabilities
    /// (`log_mean_softmax`), one row each.
    fn take(&mut self, labels: &[String], logits: &[f32], logp: &[f64]) -> Result<()> {
        if let Some(w) = &mut self.logits {
            w.append(logits)?;
            self.rows += logits.len() / self.ck.state.classes.len().max(1);
        }
        self.predicted += labels.len();
        let classes = self.ck.state.classes.len().max(1);
        for (label, row) in labels.iter().zip(logp.chunks_exact(classes)) {
            if !scored(row) {
                self.unscored.push(label.clone());
            }
        }
        if !self.listing {
            return Ok(());
        }
        match print_top(self.ck, labels, logp, self.top) {
            Err(e) if e.kind() == ErrorKind::BrokenPipe && self.logits_path.is_some() => {
                self.listing = false;
                Ok(())
            }
            r => Ok(r?),
        }
    }

    /// An input could not be read, so the logits file will not be
    /// written: its temporary file goes now, not after the last input.
    fn drop_logits(&mut self) {
        self.logits = None;
    }

    /// The logits file finished, if every input was read; then the inputs
    /// that were not, in one error.
    fn finish(self, unread: Option<alexnet_cuda::Error>) -> Result<()> {
        let unscored = self.unscored_error();
        if let (Some(u), true) = (&unscored, unread.is_some()) {
            warn!("{u}");
        }
        match (unread, self.logits, self.logits_path) {
            (Some(e), _, _) if self.predicted == 0 => bail!("{e}"),
            (Some(e), _, Some(path)) => bail!(
                "{e}; the others' predictions are above, and {} was not written{}: --logits writes a row for every image",
                path.display(),
                if path.exists() {
                    " (the file there is an earlier one, left as it was)"
                } else {
                    ""
                }
            ),
            (Some(e), _, None) => bail!("{e}; the others' predictions are above"),
            (None, Some(w), Some(path)) => {
                w.finish()?;
                info!(
                    "wrote {} logits rows, of {} inputs, to {}",
                    self.rows,
                    self.predicted,
                    path.display()
                );
            }
            _ => {}
        }
        if let Some(e) = unscored {
            bail!("{e}");
        }
        if !self.listing {
            return Err(std::io::Error::from(ErrorKind::BrokenPipe).into());
        }
        Ok(())
    }

    /// The inputs that got no prediction, as one error: the network's
    /// output overflowed (huge weights, or fp16's range).
    fn unscored_error(&self) -> Option<String> {
        let first = self.unscored.first()?;
        Some(format!(
            "{} of {} inputs got an output that is not a finite number (NaN or infinity), e.g. {first}: the network overflowed (weights too large, or --precision fp16/bf16: try fp32), so they have no prediction; the others' predictions are above",
            self.unscored.len(),
            self.predicted
        ))
    }
}

/// Whether a row of log-probabilities holds a prediction: NaN marks an
/// output that overflowed (a probability of 0 is a log of -inf).
fn scored(row: &[f64]) -> bool {
    !row.iter().any(|v| v.is_nan())
}

/// Each input's label, then its `top` classes with probability, synset and
/// name, ranked by log-probability (`logp`).
fn print_top(ck: &Checkpoint, labels: &[String], logp: &[f64], top: usize) -> std::io::Result<()> {
    let (names, classes) = (&ck.state.names, ck.state.classes.len());
    // Ranks right-aligned, so the columns line up past rank 9.
    let w = top.min(classes).to_string().len();
    for (label, row) in labels.iter().zip(logp.chunks_exact(classes)) {
        // Escaped: a line break in a file name would forge a line.
        outln!("{}", fsutil::tsv_field(label))?;
        if !scored(row) {
            outln!("  no prediction: the network's output is not a finite number")?;
            continue;
        }
        for (rank, (c, lp)) in top_k(row, top).into_iter().enumerate() {
            let (id, pct) = (&ck.state.classes[c], 100.0 * lp.exp());
            match names.get(c).filter(|n| !n.is_empty() && *n != id) {
                Some(name) => outln!("  {:>w$}. {pct:6.2}%  {id}  {name}", rank + 1)?,
                None => outln!("  {:>w$}. {pct:6.2}%  {id}", rank + 1)?,
            }
        }
    }
    Ok(())
}
