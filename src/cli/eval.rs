//! `eval`: top-1 and top-5 error of a checkpoint on a set of images, with
//! the centre crop or the paper's 10 crops, as text or one JSON line; the
//! class-by-class table and confusion matrix on request.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Result};
use clap::Args;
use serde::Serialize;
use tempfile::TempDir;
use tracing::warn;

use alexnet_cuda::backend::Backend;
use alexnet_cuda::checkpoint::{self, Checkpoint};
use alexnet_cuda::data::ImageSource;
use alexnet_cuda::data::LoaderConfig;
use alexnet_cuda::data::{unread_error, write_demo_test};
use alexnet_cuda::dist::{run_on_one, OnDevice};
use alexnet_cuda::eval::{
    evaluate_by_class, loader_for, open_eval_data, warn_of_ten_equal_crops, ClassTally, EvalResult,
};
use alexnet_cuda::features::spread;
use alexnet_cuda::fsutil::{check_writable, resolved, through_links, Staged};
use alexnet_cuda::held_out::{held_out, is_training_data};
use alexnet_cuda::model::topology::Topology;
use alexnet_cuda::per_class;
use alexnet_cuda::viz::confusion;
use alexnet_cuda::Error;

use super::common::{crop_rows, demo_folder, named_as, not_a_run_file, not_among_images, positive};
use super::device::CheckpointRunArgs;

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    run: CheckpointRunArgs,
    /// Images: a `prepare` output folder (its val/), a store folder, or class sub-folders of images.
    #[arg(long, value_name = "DIR", required_unless_present_any = ["demo", "held_out"])]
    data: Option<PathBuf>,
    /// For a `train --demo` run: 500 new images of the demo's classes, none of them trained or validated on.
    #[arg(long, conflicts_with_all = ["data", "held_out"])]
    demo: bool,
    /// The images the run validated on: its store's val/, or the --val images it held out of its data, drawn again from its seed (the data must be as it was). The data is where the run read it, or --data DIR.
    #[arg(long)]
    held_out: bool,
    /// Average the softmax over the paper's 10 crops (4 corners, centre, and their mirror images).
    #[arg(long)]
    ten_crop: bool,
    /// Crops per step (default: the run's training batch): images per step, or with --ten-crop a tenth as many images (at least one: 10 crops).
    #[arg(long, value_parser = positive)]
    batch: Option<u64>,
    /// Evaluate N images spread evenly over the set.
    #[arg(long, value_parser = positive)]
    limit: Option<u64>,
    /// Print one JSON line instead of text.
    #[arg(long)]
    json: bool,
    /// Write each class's images, top-1 and top-5 error, and the class its images are most often taken for, to this CSV; the hardest classes and commonest confusions are printed too.
    #[arg(long, value_name = "FILE")]
    per_class: Option<PathBuf>,
    /// Write the confusion matrix (rows: true class, columns: top-1 class) to this file: FILE.npy for the image counts as float32, FILE.png for a picture; repeat for both.
    #[arg(long, value_name = "FILE")]
    confusion: Vec<PathBuf>,
}

/// Evaluate and print the result.
pub fn run(mut args: EvalArgs) -> Result<()> {
    // Through a link, the file it names is the one written (and checked).
    args.per_class = args.per_class.map(|f| through_links(&f));
    args.confusion = args.confusion.iter().map(|f| through_links(f)).collect();
    // Refused before the run, not after it.
    if let Some(f) = &args.per_class {
        not_a_run_file("--per-class", f)?;
        check_writable(f)?;
        // Not a picture's name either, which a later scan of a class
        // folder would take for one of its images.
        named_as("--per-class", f, "csv", "a CSV table")?;
    }
    for f in &args.confusion {
        not_a_run_file("--confusion", f)?;
        check_writable(f)?;
        if let (Picture::Png, Some(data)) = (confusion_kind(f)?, &args.data) {
            not_among_images("--confusion", f, data)?;
        }
    }
    let (request, ck) = args.run.start()?;
    let topo = ck.state.net.topology()?;
    for f in &args.confusion {
        confusion_fits(f, topo.classes)?;
    }
    let batch = args
        .batch
        .map(|b| b as usize)
        .unwrap_or(ck.state.options.batch);
    let (data, set, idx, _demo_dir) = eval_images(&args, &ck)?;
    // Without --data, the tree (--held-out's, the run's) is known now.
    if args.data.is_none() {
        for f in &args.confusion {
            if let Picture::Png = confusion_kind(f)? {
                not_among_images("--confusion", f, &data)?;
            }
        }
    }
    // Ten crops make ten rows per image: keep the rows per step near
    // `batch`. No step is larger than the set, so neither is the network.
    let per_step = if args.ten_crop {
        (batch / 10).max(1)
    } else {
        batch
    }
    .min(idx.len().max(1));
    if args.ten_crop {
        warn_of_ten_equal_crops(set.size(), ck.state.preprocess.crop);
    }
    let workers = args.run.host.workers(!request.cpu);
    // One unreadable file of a folder costs its own score, not the rest's.
    let cfg = LoaderConfig {
        skip_unreadable: true,
        ..loader_for(&ck, per_step, args.ten_crop, workers)
    };
    let label = if args.ten_crop {
        "eval (10 crops)"
    } else {
        "eval"
    };
    let pb = alexnet_cuda::progress::bar(idx.len(), label, args.run.host.progress());
    let t0 = Instant::now();
    let job = EvalOn {
        ck: &ck,
        topo: &topo,
        rows: per_step * crop_rows(args.ten_crop),
        set: &set,
        idx: &idx,
        cfg: &cfg,
        pb: &pb,
    };
    let (r, tally, unread) = run_on_one(&request, job)?;
    pb.finish_and_clear();
    let seconds = t0.elapsed().as_secs_f64();
    if r.images == 0 && !unread.is_empty() {
        return Err(unread_error(unread, idx.len()).into());
    }
    // The scores first: a table the disk refuses must not cost them. And
    // the tables whatever the printing did: a reader that stopped early
    // (`| head`) must not leave an earlier run's table in their place.
    let printed = print_result(&args, (&ck, &data), &r, unread.len(), seconds).and_then(|()| {
        match args.per_class.is_some() && !args.json {
            true => print_classes(&ck, &tally),
            false => Ok(()),
        }
    });
    let written = write_tables(&args, &ck, &tally);
    printed?;
    written?;
    let unscored = (tally.unscored() > 0).then(|| {
        format!(
            "{} of the {} images got an output that is not a finite number (NaN or infinity): the network overflowed (weights too large, or --precision fp16/bf16: try fp32); the scores above count them as misses, and the loss is not a number",
            tally.unscored(),
            r.images
        )
    });
    if let (Some(u), false) = (&unscored, unread.is_empty()) {
        warn!("{u}");
    }
    if let (Some(u), true) = (&unscored, unread.is_empty()) {
        bail!("{u}");
    }
    match unread.is_empty() {
        true => Ok(()),
        false => bail!(
            "{}; the results above are over the other {} images",
            unread_error(unread, idx.len()),
            r.images
        ),
    }
}

/// --per-class and --confusion, a set: each file is staged whole before
/// any replaces an earlier eval's, so a disk that refuses one leaves the
/// old set as it was, not one run's table beside another's matrix.
fn write_tables(args: &EvalArgs, ck: &Checkpoint, tally: &ClassTally) -> Result<()> {
    let stand = "the scores above stand";
    let staged = stage_tables(args, ck, tally).map_err(|e| {
        anyhow::anyhow!(
            "{e:#}; {stand}, but no table was written (any from an earlier eval is as it was)"
        )
    })?;
    let mut landed = Vec::new();
    for (path, s) in staged {
        s.land()
            .map_err(|e| anyhow::anyhow!("{e:#}; {stand}; written: {}", listed(&landed)))?;
        landed.push(path);
    }
    Ok(())
}

/// Each table's bytes under its temporary name (a file named twice, once).
fn stage_tables(
    args: &EvalArgs,
    ck: &Checkpoint,
    tally: &ClassTally,
) -> Result<Vec<(PathBuf, Staged)>> {
    let mut staged: Vec<(PathBuf, Staged)> = Vec::new();
    let mut stage = |f: &Path, bytes: Vec<u8>| -> Result<()> {
        staged.push((f.to_path_buf(), Staged::write(f, &bytes)?));
        Ok(())
    };
    if let Some(f) = &args.per_class {
        stage(f, per_class::csv(f, ck, tally)?)?;
    }
    // One file under two spellings (`c.npy`, `./c.npy`, a link) is one
    // file: staged twice, both would share one temporary name.
    let all: Vec<PathBuf> = args.confusion.iter().map(|f| resolved(f)).collect();
    for (i, f) in args.confusion.iter().enumerate() {
        if all[..i].contains(&all[i]) {
            continue;
        }
        let bytes = match confusion_kind(f)? {
            Picture::Npy => per_class::confusion_npy(f, tally)?,
            Picture::Png => {
                let names: Vec<String> = (0..tally.classes() as u32)
                    .map(|c| ck.class_name(c))
                    .collect();
                confusion::png(f, &names, tally)?.0
            }
        };
        stage(f, bytes)?;
    }
    Ok(staged)
}

/// Files as "a, b", or "none".
fn listed(files: &[PathBuf]) -> String {
    match files.is_empty() {
        true => "none".into(),
        false => files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    }
}

enum Picture {
    Npy,
    Png,
}

/// Most classes whose matrix --confusion writes: a picture's pixels and a
/// .npy's float32 counts grow as classes² (50 MB and 1 GiB at these).
const MOST_PICTURED: usize = 4096;
const MOST_IN_NPY: usize = 16384;

/// --confusion FILE for a net of `classes` classes, refused before the run
/// where the matrix would be too large to write.
fn confusion_fits(f: &Path, classes: usize) -> Result<()> {
    let (most, what) = match confusion_kind(f)? {
        Picture::Png => (MOST_PICTURED, "a picture"),
        Picture::Npy => (MOST_IN_NPY, "a .npy matrix"),
    };
    ensure!(
        classes <= most,
        "--confusion {}: the checkpoint has {classes} classes, and {what} is written for up to {most} \
         ({classes}² cells); --per-class FILE.csv names each class's commonest confusion instead",
        f.display()
    );
    Ok(())
}

/// What --confusion FILE asks for, by its extension.
fn confusion_kind(f: &Path) -> Result<Picture> {
    let ext = f
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_lowercase);
    match ext.as_deref() {
        Some("npy") => Ok(Picture::Npy),
        Some("png") => Ok(Picture::Png),
        _ => bail!(
            "--confusion {}: name a .npy file (the counts) or a .png file (a picture)",
            f.display()
        ),
    }
}

/// The five hardest classes and the five commonest confusions, separated
/// by "; " because ImageNet's names hold commas ("tench, Tinca tinca").
fn print_classes(ck: &Checkpoint, tally: &ClassTally) -> Result<()> {
    let hard = per_class::hardest(ck, tally, 5);
    if hard.is_empty() {
        outln!("every image's class is its top-1 class")?;
        return Ok(());
    }
    outln!("hardest classes (top-1 error): {}", hard.join("; "))?;
    let c = per_class::confusions(ck, tally, 5);
    // Empty when every miss's output was not a number (no top-1 class).
    let c = match c.is_empty() {
        true => "none: no missed image's output was a finite number".into(),
        false => c.join("; "),
    };
    outln!("most confused (true -> top-1, images): {c}")?;
    Ok(())
}

/// The images to evaluate (--limit of them, spread evenly) and their
/// folder: the run's held-out ones (--held-out), or all of --data's or the
/// demo's test set (in a temporary folder that lives as long as the guard).
fn eval_images(args: &EvalArgs, ck: &Checkpoint) -> Result<EvalImages> {
    let limit = args.limit.map(|k| k as usize);
    if args.held_out {
        let h = held_out(ck, args.data.as_deref())?;
        let idx = spread(h.idx.len(), limit).into_iter().map(|i| h.idx[i]);
        return Ok((h.root, h.set, idx.collect(), None));
    }
    let (data, demo_dir) = eval_folder(args, ck)?;
    let set = open_eval_data(&data, ck)?;
    if is_training_data(ck, &data) {
        warn_of_training_data(&data, ck, set.len());
    }
    let idx = spread(set.len(), limit);
    Ok((data, set, idx, demo_dir))
}

/// eval on the data the run trained from, of `images` images: how much of
/// it the run trained on (all but the held-out images, or under --limit
/// perhaps a small part), and so what kind of error is scored.
fn warn_of_training_data(data: &Path, ck: &Checkpoint, images: usize) {
    let trained = ck.state.train_images;
    let kind = match 2 * trained >= images {
        true => "mostly a training error, not a validation error",
        false => "partly a training error, partly one on images the run never trained on",
    };
    // A folder that lost images since the run: not "210 of its 100".
    let counts = match trained > images {
        true => format!("{trained} images, more than the {images} it holds now"),
        false => format!("{trained} of its {images} images"),
    };
    warn!(
        "{}: this is the data the run trained from; it trained on {counts}, so the error below is {kind}; --held-out scores only the held-out images",
        data.display()
    );
}

/// The folder, its images, the ones to evaluate, and the demo's guard.
type EvalImages = (PathBuf, Arc<dyn ImageSource>, Vec<usize>, Option<TempDir>);

/// --data, or (--demo) a test set for the checkpoint's demo run in a
/// temporary folder that lives as long as the guard.
fn eval_folder(args: &EvalArgs, ck: &Checkpoint) -> Result<(PathBuf, Option<TempDir>)> {
    if let Some(d) = &args.data {
        return Ok((d.clone(), None));
    }
    let st = &ck.state;
    if !st.options.demo {
        bail!(
            "--demo: {} was trained on {}, not on `train --demo`'s set; pass that data with --data DIR",
            ck.path.display(),
            st.data
        );
    }
    let (size, seed) = (st.preprocess.image_size, st.options.seed);
    let dir = demo_folder("test", |d| write_demo_test(d, size, seed))?;
    Ok((dir.path().to_path_buf(), Some(dir)))
}

/// The network restored from the checkpoint, run over the images.
struct EvalOn<'a> {
    ck: &'a checkpoint::Checkpoint,
    topo: &'a Topology,
    /// Network rows per step (images x crops).
    rows: usize,
    set: &'a Arc<dyn ImageSource>,
    idx: &'a [usize],
    cfg: &'a LoaderConfig,
    pb: &'a indicatif::ProgressBar,
}

impl OnDevice for EvalOn<'_> {
    type Out = (EvalResult, ClassTally, Vec<Error>);
    type Err = anyhow::Error;
    fn run<B: Backend>(self, be: &B) -> Result<Self::Out> {
        alexnet_cuda::memory::check_one(be, self.topo, self.cfg, self.idx.len())?;
        let mut net = self.ck.network(be, self.topo, self.rows)?;
        let mut tally = ClassTally::new(self.topo.classes);
        let on_batch = |done| self.pb.set_position(done as u64);
        let (set, idx) = (self.set, self.idx);
        let (r, unread) =
            evaluate_by_class(&mut net, set, idx, self.cfg, on_batch, Some(&mut tally))?;
        Ok((r, tally, unread))
    }
}

/// eval's --json line (scripts/gpu-check reads it).
#[derive(Serialize)]
struct EvalReport {
    /// The file scored (a run folder or link resolved), and the step its
    /// weights were saved at: `best.safetensors` moves as a run goes on.
    checkpoint: String,
    step: u64,
    data: String,
    /// "centre-crop" or "10-crop".
    mode: &'static str,
    /// The images are the run's held-out ones (--held-out).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    held_out: bool,
    images: usize,
    /// Images that could not be read, left out of the errors.
    #[serde(skip_serializing_if = "is_zero")]
    unreadable: usize,
    top1_error: f64,
    top5_error: f64,
    loss: f64,
    seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    per_class: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    confusion: Vec<String>,
}

/// The result as text, or (--json) as one JSON line.
fn print_result(
    args: &EvalArgs,
    (ck, data): (&Checkpoint, &Path),
    r: &EvalResult,
    unreadable: usize,
    seconds: f64,
) -> Result<()> {
    let mode = if args.ten_crop {
        "10-crop"
    } else {
        "centre-crop"
    };
    if args.json {
        let report = EvalReport {
            checkpoint: ck.path.display().to_string(),
            step: ck.state.progress.step,
            data: match args.demo {
                true => "demo".to_string(),
                false => data.display().to_string(),
            },
            mode,
            held_out: args.held_out,
            images: r.images,
            unreadable,
            top1_error: 1.0 - r.top1,
            top5_error: 1.0 - r.top5,
            loss: r.loss,
            seconds,
            per_class: args.per_class.as_ref().map(|p| p.display().to_string()),
            confusion: args
                .confusion
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
        };
        outln!("{}", serde_json::to_string(&report)?)?;
    } else {
        // With five classes or fewer every class is in the top 5.
        let classes = ck.state.classes.len();
        let trivial = match classes <= 5 {
            true => format!(" (trivial: {classes} classes)"),
            false => String::new(),
        };
        outln!(
            "{mode}: top-1 error {:.2}%, top-5 error {:.2}%{trivial} on {} {}images (loss {:.4}, {:.0} images/s)",
            100.0 * (1.0 - r.top1),
            100.0 * (1.0 - r.top5),
            r.images,
            if args.held_out { "held-out " } else { "" },
            r.loss,
            r.images as f64 / seconds
        )?;
    }
    Ok(())
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}
