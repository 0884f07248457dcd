//! The run folder: checkpoints (the newest `--keep` and `best.safetensors`),
//! the metrics files (`steps.csv`, `epochs.csv` or their `.jsonl`), the
//! TensorBoard events and the plot (`curves.png`). One run per folder: a
//! fresh run refuses a folder that already holds one, and a lock
//! (`.lock`) refuses a second process while one is running.
use std::fs::File;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::checkpoint::{self, RunState};
use crate::data::packed::{is_store, is_store_or_prepared};
use crate::error::{Error, Result};
use crate::export::Tensor;
use crate::fsutil;
use crate::metrics::{MetricsFormat, MetricsWriter, StepRow};
use crate::model::topology::Topology;
use crate::model::trainable::Model;
use crate::plot::{render_png, EpochPoint, StepPoint};
use crate::run_state::EpochStats;
use crate::shell;
use crate::step_log::StepSink;
use crate::tensorboard::{self, EventWriter};

use super::options::TrainOptions;
use super::writer::{About, Written};

/// Who holds a run folder's lock, for the next process's error.
const TRAINING: &str = "another training process";

/// An open run folder and what the run writes into it.
pub struct RunDir {
    /// `.lock`, locked while the run is open: one process per folder.
    _lock: File,
    dir: PathBuf,
    /// Checkpoints kept besides `best.safetensors`.
    keep: usize,
    /// The newest checkpoint written (or resumed from).
    last: Option<PathBuf>,
    /// What a command that continues the run repeats after `--resume`:
    /// the device flags (a resume does not take them from a checkpoint),
    /// and while the resumed checkpoint is the newest, what this resume
    /// changed that it does not hold.
    go_on: GoOn,
    metrics: MetricsWriter,
    /// TensorBoard's copy of the metrics, and conv1's kernels each epoch.
    events: EventWriter,
    /// Every step row of the run, for the plot.
    rows: Vec<StepRow>,
    /// The plot's title: the config and the data.
    title: String,
}

/// What a command that continues a run repeats after `--resume`.
struct GoOn {
    /// The device flags (" --cpu", " --gpus 0,1").
    device_flags: String,
    /// The checkpoint this run resumed, if any, and its step.
    resumed: Option<(PathBuf, u64)>,
    /// The run's epochs and data (None for the demo's) now: a checkpoint
    /// that holds others, one written before a resume changed them, is
    /// continued with them given.
    epochs: usize,
    data: Option<String>,
    /// The rate a resume set from its step on: repeated for the resumed
    /// checkpoint, and for one written at its step (the end of an epoch it
    /// only validated), which holds the rate but not that the next epoch's
    /// milestone leaves it be; one written after a step holds all of it.
    lr: Option<f32>,
}

impl GoOn {
    fn of(opts: &TrainOptions) -> GoOn {
        let ck = opts.resume.as_deref();
        GoOn {
            device_flags: opts
                .compute
                .as_ref()
                .map_or(String::new(), |c| c.flags.clone()),
            resumed: ck.map(|c| (c.path.clone(), c.state.progress.step)),
            epochs: opts.run.epochs,
            data: (!opts.run.demo).then(|| super::setup::data_path(opts)),
            lr: opts.lr_from_here.filter(|_| ck.is_some()),
        }
    }

    /// The flags that continue from `ckpt` as this run goes on, where its
    /// state differs (the rate only `with_lr`).
    fn changes(&self, ckpt: &Path, with_lr: bool) -> String {
        let mut s = String::new();
        let Some(state) = checkpoint::checked_state_of(ckpt) else {
            return s;
        };
        if state.options.epochs != self.epochs {
            s += &format!(" --epochs {}", self.epochs);
        }
        let at_resume = self
            .resumed
            .as_ref()
            .is_some_and(|(r, step)| fsutil::same_file(r, ckpt) || *step == state.progress.step);
        if let Some(lr) = self.lr.filter(|_| with_lr && at_resume) {
            s += &format!(" --lr {lr}");
        }
        if let Some(d) = self.data.as_ref().filter(|d| **d != state.data) {
            s += &format!(" --data {}", shell::word(Path::new(d)));
        }
        s
    }
}

/// The `--resume` argument that continues from `ckpt` in the run folder
/// `dir`: the folder where `ckpt` is its newest checkpoint, which
/// `--resume DIR` takes; else the file (a run resumed from
/// `best.safetensors`, whose own checkpoint `--keep` may have pruned, the
/// later ones set aside; an older checkpoint of a finished run).
pub fn resume_arg(dir: &Path, ckpt: &Path) -> String {
    let newest = checkpoint::list(dir).ok().and_then(|mut l| l.pop());
    match newest {
        Some((_, p)) if fsutil::same_file(&p, ckpt) => shell::word(dir),
        _ => shell::word(ckpt),
    }
}

/// Refuse a run folder that cannot be one: a file in its place or above
/// it, a folder another process is training in, for a fresh run one that
/// already holds a run's checkpoints, for a resume (`resumed`, its state)
/// one that holds another run's, or one on a disk without room for `keep`
/// checkpoints of `topo`. Cheap, so `train` calls it before loading any
/// data; [`RunDir::open`] checks again under its lock.
pub fn check_run_folder(
    dir: &Path,
    resumed: Option<&RunState>,
    topo: &Topology,
    keep: usize,
) -> Result<()> {
    fsutil::refuse_file_in_the_way(dir, "the run")?;
    let upto = resumed.map(|s| s.progress.step);
    check_room(dir, topo, topo.image_size, keep, upto)?;
    if !dir.is_dir() {
        return Ok(());
    }
    let fix = lock_fix(resumed.is_some());
    fsutil::check_not_locked(dir, TRAINING, fix)
        .map_err(|e| unwritable(e, dir, resumed.is_some()))?;
    match resumed {
        Some(state) => refuse_other_runs(dir, state),
        None => refuse_existing_run(dir),
    }
}

/// A resume sets aside and prunes (`--keep`) the folder's checkpoints as
/// its own, and marks its best epoch's as `best.safetensors` over the one
/// there, so one of another run there (checkpoints of several runs copied
/// into one folder) would be lost: refuse, naming it. A header that
/// cannot be read or fails its checksum (damage) is left to the resume's
/// own checks, which set such a file aside.
fn refuse_other_runs(dir: &Path, state: &RunState) -> Result<()> {
    let best = dir.join("best.safetensors");
    let files = checkpoint::list(dir)?.into_iter().map(|(_, p)| p);
    for p in files.chain(best.is_file().then_some(best)) {
        let Some(why) = checkpoint::checked_state_of(&p).and_then(|o| other_run(state, &o)) else {
            continue;
        };
        return Err(Error::Config(format!(
            "{}: a checkpoint of another run ({why}) in the folder of the one resumed, which would set it aside, delete it (--keep) or replace it (best.safetensors) as its own; copy the checkpoint to resume into a folder of its own and resume from there",
            p.display()
        )));
    }
    Ok(())
}

/// Why `b` is not a checkpoint of `a`'s run, or None. Not the data's path
/// (a resume may name the same data elsewhere), nor options a resume may
/// change (--epochs); finished epochs are compared as their JSON, as the
/// checkpoints hold them.
fn other_run(a: &RunState, b: &RunState) -> Option<&'static str> {
    let n = a.history.len().min(b.history.len());
    let json = |s: &RunState| serde_json::to_string(&s.history[..n]).ok();
    if a.net != b.net {
        Some("another network")
    } else if a.classes != b.classes || a.train_images != b.train_images {
        Some("other data")
    } else if a.options.seed != b.options.seed || a.options.batch != b.options.batch {
        Some("another --seed or --batch")
    } else if json(a) != json(b) {
        Some("its epochs differ from this run's")
    } else {
        None
    }
}

/// Refuse a run folder inside the class-folder tree the run reads: the
/// next scan of the tree (a resume, eval, another run) would take it for a
/// class, with `curves.png` as its image. A store's folders are not
/// scanned, but `prepare` writes them, the data's or any other
/// (`in_store`).
pub fn refuse_run_inside_data(dir: &Path, data: &Path, resumed: bool) -> Result<()> {
    let (at, root) = (fsutil::resolved(dir), fsutil::resolved(data));
    let d = dir.display();
    let store = in_store(&at);
    let problem = match &store {
        Some(why) => format!("the run folder {d} is {why}"),
        None if !is_store_or_prepared(data) && at.starts_with(&root) => format!(
            "the run folder {d} is inside the data {}, a tree of class folders: the run's files would be read as a class of images by the next scan (curves.png is one)",
            data.display()
        ),
        None => return Ok(()),
    };
    // A run folder that holds a store is not to be moved whole.
    let fix = match (resumed, is_store_or_prepared(&at)) {
        (true, false) => format!(
            "move the run folder out of it (e.g. mkdir -p runs && mv {} runs/) and resume from there",
            shell::word(dir)
        ),
        (true, true) => "move the run's own files (its checkpoints, .csv logs, events file and curves.png) into a folder of their own and resume from there".into(),
        (false, _) if store.is_some() => "pass --out a folder of its own: not a store's, nor one holding stores (a folder beside them is fine)".into(),
        (false, _) => format!("pass --out a folder outside {}", shell::word(data)),
    };
    Err(Error::Config(format!("{problem}; {fix}")))
}

/// Why run folder `at` (resolved) may not be where it is among stores:
/// it is a store's own folder or inside one, which `prepare` writes, or a
/// folder prepare wrote stores into, which it locks under the name a
/// run's lock has. Beside the stores (`DATA/runs/x`) it may be: None.
fn in_store(at: &Path) -> Option<String> {
    if let Some(store) = at.ancestors().find(|a| is_store(a)) {
        return Some(match store == at {
            true => "a store's folder, which `prepare` writes".into(),
            false => format!(
                "inside the store {}, a folder `prepare` writes",
                store.display()
            ),
        });
    }
    is_store(&at.join("train")).then(|| {
        "a folder `prepare` wrote stores into, which it locks under the name a run's lock has"
            .into()
    })
}

/// A run resumed from a checkpoint older than its folder's newest goes on
/// from there: the later checkpoints, and a `best.safetensors` of after
/// it, belong to the history it replaces. They are moved, not deleted, to
/// `replaced-after-step-<s>/`, so that pruning and `--resume RUN` see
/// only this run's; a best moved aside is replaced by [`check_best`]. The
/// metrics and events files are copied there whole, since the resumed run
/// keeps only their rows up to its step.
fn set_aside_later(dir: &Path, state: &RunState) -> Result<()> {
    let step = state.progress.step;
    let mut later: Vec<PathBuf> = checkpoint::list(dir)?
        .into_iter()
        .filter(|(s, _)| *s > step)
        .map(|(_, p)| p)
        .collect();
    let best = dir.join("best.safetensors");
    let best_later = checkpoint::step_of(&best).is_some_and(|s| s > step);
    if best_later {
        later.push(best);
    }
    if later.is_empty() {
        return Ok(());
    }
    let aside = fsutil::first_free(&dir.join(format!("replaced-after-step-{step}")));
    fsutil::create_dir_durably(&aside).map_err(|e| Error::io(&aside, e))?;
    // The metrics first: once the checkpoints are moved, a resume stopped
    // here finds nothing later and would cut the files back uncopied.
    if let Err(e) = copy_metrics(dir, &aside).and_then(|()| fsutil::sync_dir(&aside.join("x"))) {
        let _ = std::fs::remove_dir_all(&aside);
        return Err(Error::Data(format!(
            "{e}: the metrics could not be copied aside with the checkpoints after step {step}, and nothing was moved; {} and resume again",
            way_on(&e)
        )));
    }
    for p in later.iter().rev() {
        let name = p.file_name().unwrap_or_default();
        std::fs::rename(p, aside.join(name)).map_err(|e| Error::io(p, e))?;
    }
    fsutil::sync_dir(&aside.join("x"))?;
    fsutil::sync_dir(&aside)?;
    warn!(
        "resuming at step {step}, before the folder's newest checkpoint: moved the {} later files of the history this run replaces to {}",
        later.len(),
        aside.display()
    );
    Ok(())
}

/// Copies of `dir`'s metrics files (either format) and TensorBoard events
/// files in `aside`, on disk.
fn copy_metrics(dir: &Path, aside: &Path) -> Result<()> {
    let mut files: Vec<PathBuf> = ["steps", "epochs"]
        .iter()
        .flat_map(|what| {
            [MetricsFormat::Csv, MetricsFormat::Jsonl]
                .map(|format| dir.join(format!("{what}.{}", format.ext())))
        })
        .collect();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with("events.out.tfevents.") {
            files.push(path);
        }
    }
    for from in files.iter().filter(|f| f.is_file()) {
        let to = aside.join(from.file_name().unwrap_or_default());
        std::fs::copy(from, &to).map_err(|e| Error::io(&to, e))?;
        File::open(&to)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(&to, e))?;
    }
    Ok(())
}

/// `best.safetensors` is the best epoch of the resumed `state`'s history,
/// or is made so by [`restore_best`]: after a resume before the folder's
/// best (moved aside), or a kill between writing a new best's checkpoint
/// and marking it, which left the previous best marked.
fn check_best(dir: &Path, state: &RunState) -> Result<()> {
    let Some(err) = state.progress.best_err else {
        return Ok(());
    };
    let marked = checkpoint::state_of(&dir.join("best.safetensors"));
    if marked.is_some_and(|s| scores_best(&s, err)) {
        return Ok(());
    }
    restore_best(dir, state, err)
}

/// `s` is of the end of the epoch that scored validation error `err`,
/// the best up to it.
fn scores_best(s: &RunState, err: f64) -> bool {
    s.progress.epoch_done
        && s.progress.best_err == Some(err)
        && s.history.last().is_some_and(|h| 1.0 - h.val_top1 == err)
}

/// Mark best again the checkpoint validation found best up to the resumed
/// `state`: the first written with its best error `err`, at that epoch's end
/// (whose last epoch scored it). Without one left (pruned by `--keep`, or
/// not copied with the run), the next epoch that beats it writes
/// `best.safetensors`.
fn restore_best(dir: &Path, state: &RunState, err: f64) -> Result<()> {
    let found = checkpoint::list(dir)?
        .into_iter()
        .find(|(_, p)| checkpoint::state_of(p).is_some_and(|s| scores_best(&s, err)));
    match found {
        Some((_, p)) => {
            checkpoint::mark_best(dir, &p)?;
            info!("best.safetensors is {} again, the best epoch up to the resume", p.display());
        }
        None => warn!(
            "the best epoch up to step {} ({:.2}% validation top-1 error) has no checkpoint in {} (pruned by --keep, or not copied with the run){}: best.safetensors is written again by the first epoch that beats it",
            state.progress.step,
            100.0 * err,
            dir.display(),
            match checkpoint::step_of(&dir.join("best.safetensors")) {
                Some(s) => format!("; until then best.safetensors stays the checkpoint of step {s}, which is not it"),
                None => String::new(),
            }
        ),
    }
    Ok(())
}

/// What a run told its folder is locked does: a resume waits for the run
/// there (a job stopped a moment ago may still be writing its last
/// checkpoint, which the resume would then take), a new run goes elsewhere.
pub fn lock_fix(resumed: bool) -> &'static str {
    match resumed {
        true => "wait for it to end (a job stopped a moment ago may still be writing its checkpoint), then run this command again",
        false => fsutil::ELSEWHERE,
    }
}

/// A resumed run writes in its own folder (--out does not go with
/// --resume): where that folder cannot be written, the way on is a copy.
fn unwritable(e: Error, dir: &Path, resumed: bool) -> Error {
    use std::io::ErrorKind::{PermissionDenied, ReadOnlyFilesystem};
    match &e {
        Error::Io { err, .. } if resumed && matches!(err.kind(), ReadOnlyFilesystem | PermissionDenied) => {
            Error::Config(format!(
                "{e}; a resumed run goes on writing in its folder: copy {} to a disk you can write to (cp -a) and resume from the copy",
                dir.display()
            ))
        }
        _ => e,
    }
}

/// Whether `name` is a file a run writes in its folder: only their
/// temporary files are swept, not those of a user's own files beside, and
/// other commands' outputs may not take these names there.
pub fn is_run_file(name: &str) -> bool {
    const NAMES: [&str; 7] = [
        "steps.csv",
        "steps.jsonl",
        "epochs.csv",
        "epochs.jsonl",
        "best.safetensors",
        "curves.png",
        // Replaced, a running train would hold the lock on the old file
        // and a second one could take the new.
        ".lock",
    ];
    // TensorBoard's names go on with the time, host and program; a
    // resume keeps the metrics cut back aside as NAME.before-resume-STEP.
    let aside = name.split_once(".before-resume-").map(|(n, _)| n);
    NAMES.contains(&name)
        || aside.is_some_and(|n| NAMES[..4].contains(&n))
        || checkpoint::step_in_name(name).is_some()
        || name.starts_with(crate::tensorboard::PREFIX)
}

/// A fresh run never writes into another run's folder, nor over the
/// results of one whose checkpoints were removed (its best.safetensors, and
/// its metrics files, would be replaced).
fn refuse_existing_run(dir: &Path) -> Result<()> {
    if let Some((_, p)) = checkpoint::list(dir)?.last() {
        return Err(Error::Config(format!(
            "{} already holds a run ({}); continue it with --resume {}{} or pass another --out",
            dir.display(),
            p.display(),
            shell::word(dir),
            checkpoint::device_flags(p)
        )));
    }
    if let Some(f) = earlier_results(dir) {
        return Err(Error::Config(format!(
            "{} holds an earlier run's results ({}) and no checkpoint to continue; a new run would replace them: pass another --out, or move them away",
            dir.display(),
            f.display()
        )));
    }
    match crate::metrics::foreign_file(dir) {
        Some(f) => Err(Error::Config(format!(
            "{} holds {}, which train did not write (its first line is not train's); a new run would replace it: pass another --out, or move the file away",
            dir.display(),
            f.display()
        ))),
        None => Ok(()),
    }
}

/// A run's results in `dir`: its best.safetensors, or an epoch log of two
/// epochs or more (a failed checkpoint stops a run, so the first epoch's
/// was written: its checkpoints were removed). A log of one epoch alone is
/// not (a first checkpoint that failed or was killed leaves one, and its
/// error says to run the same command again).
fn earlier_results(dir: &Path) -> Option<PathBuf> {
    let best = dir.join("best.safetensors");
    if best.exists() {
        return Some(best);
    }
    [("epochs.csv", 1), ("epochs.jsonl", 0)]
        .into_iter()
        .map(|(name, header)| (dir.join(name), header))
        .find(|(p, header)| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            text.lines().filter(|l| !l.trim().is_empty()).count() >= header + 2
        })
        .map(|(p, _)| p)
}

/// Refuse a run whose checkpoints would not fit on the run folder's disk:
/// the newest `keep`, `best.safetensors` (a link to one of them, or the
/// last of its own once they move on) and the one being written, less
/// what the folder's checkpoints hold already (a resume's up to its step
/// `upto`: later ones are moved aside, still on the disk). Hours in is the
/// wrong time to find out.
fn check_room(
    dir: &Path,
    topo: &Topology,
    image_size: usize,
    keep: usize,
    upto: Option<u64>,
) -> Result<()> {
    let each = checkpoint::estimated_size(topo, image_size)?;
    let need = (keep.max(1) as u64)
        .saturating_add(2)
        .saturating_mul(each)
        .saturating_sub(checkpoint_bytes(dir, upto)?)
        .max(each);
    let Some(free) = fsutil::short_of_room(dir, need)? else {
        return Ok(());
    };
    // --keep 1 only where it keeps fewer; a resume takes no --out.
    let fewer = if keep > 1 { ", pass --keep 1" } else { "" };
    let elsewhere = match upto {
        Some(_) => format!(
            "copy {} to a disk with room (cp -a) and resume from the copy",
            dir.display()
        ),
        None => "--out a folder on another disk".into(),
    };
    Err(Error::Data(format!(
        "run folder {}: its disk has {} free, and the run's checkpoints need about {} more ({} kept by --keep, best.safetensors and the one being written, about {} each); free space{fewer}, or {elsewhere}",
        dir.display(),
        fsutil::size(free),
        fsutil::size(need),
        keep.max(1),
        fsutil::size(each)
    )))
}

/// Bytes the checkpoints in `dir` up to step `upto` (all for None) hold
/// (none when it is not a folder yet), `best.safetensors` among them when
/// it is a file of its own (its checkpoint pruned): its room is taken
/// already.
fn checkpoint_bytes(dir: &Path, upto: Option<u64>) -> Result<u64> {
    if !dir.is_dir() {
        return Ok(0);
    }
    let kept = |s: Option<u64>| s.zip(upto).is_none_or(|(s, u)| s <= u);
    let all: Vec<_> = checkpoint::list(dir)?
        .into_iter()
        .filter(|(s, _)| kept(Some(*s)))
        .collect();
    let best = dir.join("best.safetensors");
    let own_best = best.is_file()
        && kept(checkpoint::step_of(&best))
        && !all.iter().any(|(_, p)| fsutil::same_file(p, &best));
    let files = all.iter().map(|(_, p)| p.as_path());
    Ok(files
        .chain(own_best.then_some(best.as_path()))
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum())
}

impl RunDir {
    /// Open `opts.out` for the run `state` (None when the run keeps no
    /// folder). A resumed run keeps its step rows up to the checkpoint; a
    /// fresh one refuses a folder that holds checkpoints.
    pub fn open(
        opts: &TrainOptions,
        topo: &Topology,
        state: &RunState,
        resumed: bool,
    ) -> Result<Option<RunDir>> {
        let Some(dir) = &opts.out else {
            return Ok(None);
        };
        fsutil::refuse_file_in_the_way(dir, "the run")?;
        fsutil::create_dir_durably(dir).map_err(|e| {
            Error::Config(format!(
                "run folder {}: could not create it ({e}); pass --out a folder you can write to",
                dir.display()
            ))
        })?;
        // Before anything in the folder is touched: the temporary files
        // removed next could be another run's.
        let lock = fsutil::lock_folder(dir, TRAINING, lock_fix(resumed))
            .map_err(|e| unwritable(e, dir, resumed))?;
        fsutil::remove_abandoned_temps(dir, is_run_file, true)?;
        let upto = resumed.then_some(state.progress.step);
        // Before the later checkpoints move: a refusal leaves all in place.
        if resumed {
            refuse_other_runs(dir, state)?;
        }
        check_room(dir, topo, state.preprocess.image_size, opts.keep, upto)?;
        if resumed {
            set_aside_later(dir, state)?;
            check_best(dir, state)?;
        }
        // Again under the lock: a run may have started since the check.
        if !resumed {
            refuse_existing_run(dir)?;
        }
        let resume_step = resumed.then_some(state.progress.step);
        let (metrics, rows) =
            MetricsWriter::open(dir, opts.metrics_format, resume_step, &state.history)?;
        let p = &state.progress;
        let validates = p.epoch_batches > 0 && p.batches_done == p.epoch_batches && !p.epoch_done;
        for f in tensorboard::cut_earlier(dir, resume_step, resumed && validates)? {
            let path = f.path.display();
            match (resume_step, &f.aside) {
                (Some(s), Some(aside)) => warn!(
                    "{path}: cut back to step {s}, the checkpoint's; {} bytes of it are damaged (a record failing its checksum, and where its length fails, the records after it) and were dropped; the file as it was is kept as {}",
                    f.unread,
                    aside.display()
                ),
                (Some(s), None) if f.unread > 0 => warn!(
                    "{path}: cut back to step {s}, the checkpoint's; its last {} bytes, a record a stopped process left half-written, were dropped",
                    f.unread
                ),
                (Some(s), None) => info!("{path}: cut back to step {s}, the checkpoint's"),
                (None, _) => info!("{path}: removed, an attempt with no checkpoint"),
            }
        }
        let events = EventWriter::create(dir, state.progress.elapsed_s, resume_step)?;
        Ok(Some(RunDir {
            _lock: lock,
            dir: dir.clone(),
            keep: opts.keep,
            last: opts.resume.as_ref().map(|c| c.path.clone()),
            go_on: GoOn::of(opts),
            metrics,
            events,
            rows,
            // The demo's folder is temporary, and another on each resume.
            title: match opts.run.demo {
                true => format!("{} on the demo's images", topo.name),
                false => format!("{} on {}", topo.name, opts.data.display()),
            },
        }))
    }

    /// Where steps read back from the device go: both metrics files and
    /// the plot's rows.
    pub fn sink(&mut self) -> StepSink<'_> {
        StepSink {
            metrics: Some(&mut self.metrics),
            events: Some(&mut self.events),
            rows: &mut self.rows,
        }
    }

    /// An epoch's row in both metrics files, and conv1's kernels as they
    /// are after it.
    pub fn epoch(&mut self, step: u64, stats: &EpochStats, net: &dyn Model) -> Result<()> {
        self.metrics.epoch(stats)?;
        self.events.epoch(step, stats)?;
        self.events.filters(step, net)?;
        self.events.flush()
    }

    /// The metrics and events files on disk through to the rows written
    /// so far: before a checkpoint, whose steps they then hold after any
    /// crash (a resume keeps what is there up to its step).
    pub fn sync_metrics(&mut self) -> Result<()> {
        self.metrics.sync()?;
        self.events.sync()
    }

    /// Each layer's weight RMS and update ratio at an epoch's end, from
    /// the tensors its checkpoint is written with (`sync_metrics` puts
    /// them on disk).
    pub fn layers(&mut self, step: u64, tensors: &[Tensor]) -> Result<()> {
        self.events.layers(step, tensors)
    }

    /// Where the checkpoint of `state` goes. A checkpoint is a point to go
    /// back to: none is written of a diverged run (a tensor not finite).
    pub fn checkpoint_path(&self, state: &RunState, tensors: &[Tensor]) -> Result<PathBuf> {
        if let Some(t) = tensors
            .iter()
            .find(|t| t.data.iter().any(|v| !v.is_finite()))
        {
            return Err(Error::Diverged {
                what: format!(
                    "step {}: {} holds values that are not finite numbers, so no checkpoint was written",
                    state.progress.step, t.name
                ),
                fix: self.after_divergence(state.progress.lr),
            });
        }
        Ok(self
            .dir
            .join(checkpoint::checkpoint_name(state.progress.step)))
    }

    /// After a checkpoint's write (`writer`): a failed one says how to
    /// continue from the previous checkpoint, whole on disk; a finished one
    /// is logged, marked best when it is, and the checkpoints past `keep`
    /// pruned. Returns its path.
    pub fn written(&mut self, w: Written) -> Result<PathBuf> {
        let Written {
            about: About {
                path, best, mb, lr, ..
            },
            result,
            secs,
        } = w;
        if let Err(e) = result {
            return Err(self.write_failed(&path, e, lr));
        }
        info!(
            "checkpoint {} ({mb:.0} MB) written in {secs:.2} s",
            path.display()
        );
        // The newest whole checkpoint from here on, also when marking it
        // best or pruning fails: the way on named then must not be the one
        // before, whose resume would set this one aside.
        self.last = Some(path.clone());
        if best {
            checkpoint::mark_best(&self.dir, &path)?;
        }
        for e in checkpoint::prune(&self.dir, self.keep)? {
            warn!(
                "could not delete an old checkpoint (--keep {}): {}; the run goes on, delete it by hand before the disk fills",
                self.keep.max(1),
                e.brief()
            );
        }
        Ok(path)
    }

    /// The error for a failed write of `path` (of a run at rate `lr`),
    /// with the way on.
    fn write_failed(&self, path: &Path, e: Error, lr: f32) -> Error {
        if let Error::Diverged { what, .. } = e {
            return Error::Diverged {
                what,
                fix: self.after_divergence(lr),
            };
        }
        let then = self.then(&e, "the previous checkpoint");
        // The OS's reason alone: the fix that follows is this one's.
        let why = match e {
            Error::Io { err, .. } => err.to_string(),
            other => other.to_string(),
        };
        Error::Data(format!(
            "could not write checkpoint {} ({why}); {then}",
            path.display()
        ))
    }

    /// After a failed write `e`: which checkpoint (`which`) is whole, and
    /// the way on from it.
    fn then(&self, e: &Error, which: &str) -> String {
        let fix = way_on(e);
        match &self.last {
            Some(p) => format!(
                "{which} {} is intact: {fix} and continue with `{}`",
                p.display(),
                self.resume_command(p, None)
            ),
            // The folder named: without --out, the same command would
            // start a new one and leave this one's logs apart.
            None => format!(
                "no checkpoint of this run was written yet: {fix} and run the same command again, with --out {}",
                shell::word(&self.dir)
            ),
        }
    }

    /// A run stopped by its data (`e`: a damaged store entry, an image the
    /// loader could not read) or by another process of the run
    /// (`Error::Peer`), its steps saved (`saved`, else the warning before
    /// said why not): the fix, in `e`, then the resume.
    pub fn with_steps_kept(&self, e: Error, saved: bool) -> Error {
        let Some(p) = &self.last else {
            return e;
        };
        let held = match saved {
            true => "every step trained before it is in",
            false => "the run's newest checkpoint is",
        };
        let (resume, p) = (self.resume_command(p, None), p.display());
        match e {
            Error::Peer(m) => Error::Peer(format!(
                "{m}; {held} {p}: once every process can run, start them all again with `{resume}`"
            )),
            e => Error::Data(format!(
                "{e}; {held} {p}: once the data is whole again, continue with `{resume}`"
            )),
        }
    }

    /// The newest whole checkpoint (the one resumed from, or the last
    /// written), if any.
    pub fn newest(&self) -> Option<&Path> {
        self.last.as_deref()
    }

    /// The flags that continue the run from [`RunDir::newest`] as it went
    /// on, beside `--resume` and the device flags (`TrainReport::go_on`).
    pub fn go_on_flags(&self) -> String {
        self.newest()
            .map_or(String::new(), |p| self.go_on.changes(p, true))
    }

    /// [`RunDir::newest`] where it is of `step`: the state then is saved.
    pub fn newest_at(&self, step: u64) -> Option<&Path> {
        self.newest()
            .filter(|p| checkpoint::step_of(p) == Some(step))
    }

    /// A run stopped by a failed write in its folder other than a
    /// checkpoint's (the metrics files, TensorBoard's, best.safetensors):
    /// the same way on as after a checkpoint's. Other errors are
    /// left as they are.
    pub fn after_failure(&self, e: Error) -> Error {
        match &e {
            Error::Io { path, err } if self.holds(path) => Error::Data(format!(
                "could not write {} ({err}); {}",
                path.display(),
                self.then(&e, "the run's last checkpoint")
            )),
            _ => e,
        }
    }

    /// `path` is a file of the run folder (a bare name is one of the
    /// current folder's, as a folder given as "" is the current one).
    fn holds(&self, path: &Path) -> bool {
        let (folder, run) = (fsutil::folder_of(path), fsutil::dir_or_here(&self.dir));
        fsutil::same_file(folder, run)
    }

    /// How to go on after the run diverged at learning rate `lr`: at a
    /// tenth of the rate from the newest checkpoint (from before: `save`
    /// writes none with a non-finite value), or from the best epoch's,
    /// whose weights validation has seen work.
    pub fn after_divergence(&self, lr: f32) -> String {
        let lower = crate::lr::tenth(lr);
        let Some(newest) = &self.last else {
            return format!(
                "no checkpoint was written before it: {}",
                Error::lower_rate(lr)
            );
        };
        let mut fix = format!(
            "continue at a lower rate from the newest checkpoint, {} (`{}`)",
            newest.display(),
            self.resume_command(newest, Some(lower))
        );
        // The best at the newest's step is the newest: a link or a copy.
        let best = self.dir.join("best.safetensors");
        let best_step = checkpoint::step_of(&best);
        if best_step.is_some() && best_step != checkpoint::step_of(newest) {
            fix += &format!(
                ", or, if the loss had been climbing for a while, from the epoch with the lowest validation error (`{}`)",
                self.resume_command(&best, Some(lower))
            );
        }
        fix
    }

    /// The command that continues the run from `ckpt`, at rate `lr` from
    /// there where given.
    fn resume_command(&self, ckpt: &Path, lr: Option<f32>) -> String {
        let changes = self.go_on.changes(ckpt, lr.is_none());
        // The shortest form that reads back to the rate (1.25e-3, not 1.2e-3).
        let lr = lr.map_or(String::new(), |lr| format!(" --lr {lr:e}"));
        format!(
            "alexnet-cuda train --resume {}{}{changes}{lr}",
            resume_arg(&self.dir, ckpt),
            self.go_on.device_flags
        )
    }

    /// Redraw `curves.png` from the step rows and `epochs`. A failed plot
    /// is logged, never fatal: the numbers are in the metrics files.
    pub fn plot(&self, epochs: &[EpochStats]) {
        let steps: Vec<StepPoint> = self
            .rows
            .iter()
            .map(|r| StepPoint {
                step: r.step,
                epoch: r.epoch,
                loss: r.loss,
                lr: r.lr,
            })
            .collect();
        let epochs: Vec<EpochPoint> = epochs
            .iter()
            .map(|e| EpochPoint {
                epoch: e.epoch,
                train_loss: e.train_loss,
                train_err: 1.0 - e.train_top1,
                val_loss: e.val_loss,
                val_top1_err: 1.0 - e.val_top1,
                val_top5_err: 1.0 - e.val_top5,
                lr: e.lr as f64,
            })
            .collect();
        let path = self.dir.join("curves.png");
        if let Err(e) = render_png(&path, &self.title, &steps, &epochs) {
            warn!("could not draw the training curves: {e}");
        }
    }
}

/// What to do before continuing after a failed checkpoint write `e`: the
/// cause's own remedy, where the OS says what it was.
fn way_on(e: &Error) -> &'static str {
    use std::io::ErrorKind;
    let Error::Io { err, .. } = e else {
        return "fix that";
    };
    match err.kind() {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => "free disk space",
        ErrorKind::FileTooLarge => "raise the file-size limit",
        ErrorKind::PermissionDenied => "let this user write in the run folder",
        ErrorKind::ReadOnlyFilesystem => "make its file system writable",
        _ => "fix that",
    }
}

#[cfg(test)]
mod tests {
    use super::{checkpoint_bytes, unwritable, way_on};
    use crate::error::Error;
    use std::io::ErrorKind;

    /// A resume whose folder cannot be written is told to copy the run
    /// (it cannot write elsewhere: --out does not go with --resume); a
    /// fresh run, or another fault, keeps the error as it was.
    #[test]
    fn a_resume_in_a_folder_it_cannot_write_is_told_to_copy_it() {
        let dir = std::path::Path::new("runs/r");
        let io = |k: ErrorKind| Error::io(dir.join(".lock"), std::io::Error::from(k));
        let e = unwritable(io(ErrorKind::ReadOnlyFilesystem), dir, true).to_string();
        assert!(
            e.contains("read-only") && e.contains("copy runs/r to a disk you can write to"),
            "{e}"
        );
        let e = unwritable(io(ErrorKind::PermissionDenied), dir, true).to_string();
        assert!(e.contains("resume from the copy"), "{e}");
        let e = unwritable(io(ErrorKind::ReadOnlyFilesystem), dir, false).to_string();
        assert!(!e.contains("copy"), "{e}");
        let e = unwritable(io(ErrorKind::StorageFull), dir, true).to_string();
        assert!(!e.contains("copy"), "{e}");
    }

    /// The room a folder's checkpoints hold counts best.safetensors once:
    /// not when it is a link to a checkpoint, and whole when it is a file
    /// of its own (its checkpoint pruned), which a resume would otherwise
    /// ask room for twice.
    #[test]
    fn best_counts_as_held_room_only_as_a_file_of_its_own() {
        let t = tempfile::tempdir().unwrap();
        let ck = t.path().join("ckpt-0000000010.safetensors");
        std::fs::write(&ck, [0u8; 1000]).unwrap();
        let best = t.path().join("best.safetensors");
        std::fs::hard_link(&ck, &best).unwrap();
        assert_eq!(checkpoint_bytes(t.path(), None).unwrap(), 1000);
        std::fs::remove_file(&best).unwrap();
        std::fs::write(&best, [0u8; 700]).unwrap();
        assert_eq!(checkpoint_bytes(t.path(), None).unwrap(), 1700);
        // A resume from step 5 moves the later one aside: it holds none
        // of the run's room (this best has no step: it stays).
        assert_eq!(checkpoint_bytes(t.path(), Some(5)).unwrap(), 700);
        assert_eq!(checkpoint_bytes(t.path(), Some(10)).unwrap(), 1700);
    }

    /// A failed write's advice follows its cause: free space only for a
    /// full disk or quota.
    #[test]
    fn the_way_on_after_a_failed_write_follows_its_cause() {
        let io = |k: ErrorKind| Error::io(std::path::Path::new("c"), std::io::Error::from(k));
        assert_eq!(way_on(&io(ErrorKind::StorageFull)), "free disk space");
        assert_eq!(way_on(&io(ErrorKind::QuotaExceeded)), "free disk space");
        assert_eq!(
            way_on(&io(ErrorKind::FileTooLarge)),
            "raise the file-size limit"
        );
        assert_eq!(
            way_on(&io(ErrorKind::PermissionDenied)),
            "let this user write in the run folder"
        );
        assert_eq!(
            way_on(&io(ErrorKind::ReadOnlyFilesystem)),
            "make its file system writable"
        );
        assert_eq!(way_on(&io(ErrorKind::Other)), "fix that");
        assert_eq!(way_on(&Error::Data("x".into())), "fix that");
    }
}
