//! The run's metrics files: one row per training step (`steps.csv` or
//! `steps.jsonl`) and one per epoch (`epochs.csv` / `epochs.jsonl`) in the
//! run folder. Rows are appended as training goes (step rows flushed each
//! time the trainer reads a group of steps back from the device); a resumed
//! run first cuts the files back to its checkpoint, so the files read as
//! one uninterrupted run.
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil::{write_aside, write_atomic};
use crate::run_state::EpochStats;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetricsFormat {
    Csv,
    Jsonl,
}

impl MetricsFormat {
    /// The files' extension: `csv` or `jsonl`.
    pub fn ext(self) -> &'static str {
        match self {
            MetricsFormat::Csv => "csv",
            MetricsFormat::Jsonl => "jsonl",
        }
    }
}

/// One training step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRow {
    pub step: u64,
    /// Fractional epoch at the end of this step (1.0 = end of epoch 1).
    pub epoch: f64,
    pub loss: f64,
    /// Top-1 accuracy on this step's batch.
    pub top1: f64,
    /// Written as the f32 the step trained at, as `step_csv` writes it
    /// (0.02, not its widening 0.019999999552965164).
    #[serde(serialize_with = "as_f32")]
    pub lr: f64,
    pub elapsed_s: f64,
}

fn as_f32<S: serde::Serializer>(v: &f64, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f32(*v as f32)
}

const STEP_HEADER: &str = "step,epoch,loss,top1,lr,elapsed_s";
const EPOCH_HEADER: &str =
    "epoch,lr,train_loss,train_top1,val_loss,val_top1,val_top5,images_per_s,elapsed_s,data_wait";

/// The rate is written as the f32 the step trained at, in the shortest
/// form that reads back to it (`{:e}`), so a warm-up's ramp is exact.
fn step_csv(r: &StepRow) -> String {
    format!(
        "{},{:.5},{:.6},{:.5},{:e},{:.2}",
        r.step, r.epoch, r.loss, r.top1, r.lr as f32, r.elapsed_s
    )
}

fn epoch_csv(s: &EpochStats) -> String {
    format!(
        "{},{:e},{:.5},{:.5},{:.5},{:.5},{:.5},{:.1},{:.1},{:.4}",
        s.epoch,
        s.lr,
        s.train_loss,
        s.train_top1,
        s.val_loss,
        s.val_top1,
        s.val_top5,
        s.images_per_s,
        s.elapsed_s,
        s.data_wait
    )
}

fn parse_step_csv(line: &str) -> Option<StepRow> {
    let f: Vec<&str> = line.split(',').collect();
    if f.len() != 6 {
        return None;
    }
    Some(StepRow {
        step: f[0].parse().ok()?,
        epoch: f[1].parse().ok()?,
        loss: f[2].parse().ok()?,
        top1: f[3].parse().ok()?,
        lr: f[4].parse().ok()?,
        elapsed_s: f[5].parse().ok()?,
    })
}

/// Appends rows to the two files of a run folder.
pub struct MetricsWriter {
    format: MetricsFormat,
    steps_path: PathBuf,
    epochs_path: PathBuf,
    steps: BufWriter<File>,
    epochs: BufWriter<File>,
}

impl MetricsWriter {
    /// Open the files in `dir`. Fresh runs (`resume_step` None) start them
    /// anew. A resumed run keeps the step rows up to `resume_step` (a killed
    /// run may have written more, and a half line) and rewrites the epoch
    /// rows from the checkpoint's `history`. Returns the kept step rows.
    pub fn open(
        dir: &Path,
        format: MetricsFormat,
        resume_step: Option<u64>,
        history: &[EpochStats],
    ) -> Result<(MetricsWriter, Vec<StepRow>)> {
        let steps_path = dir.join(format!("steps.{}", format.ext()));
        let epochs_path = dir.join(format!("epochs.{}", format.ext()));
        if resume_step.is_none() {
            remove_other_format(dir, format)?;
        }
        let kept: Vec<StepRow> = match resume_step {
            Some(last) => {
                let bytes = read_if_there(&steps_path)?.unwrap_or_default();
                let (rows, unread) = step_lines(&String::from_utf8_lossy(&bytes), format);
                keep_unread_aside(&steps_path, &bytes, &unread, last)?;
                rows.into_iter().filter(|r| r.step <= last).collect()
            }
            None => Vec::new(),
        };
        if let Some(last) = resume_step {
            warn_of_lost_steps(&steps_path, &kept, last);
        }
        let mut text = String::new();
        if format == MetricsFormat::Csv {
            text.push_str(STEP_HEADER);
            text.push('\n');
        }
        for r in &kept {
            text.push_str(&row_text(format, r, step_csv)?);
        }
        write_atomic(&steps_path, text.as_bytes())?;
        let mut text = String::new();
        if format == MetricsFormat::Csv {
            text.push_str(EPOCH_HEADER);
            text.push('\n');
        }
        for s in history {
            text.push_str(&row_text(format, s, epoch_csv)?);
        }
        if let Some(last) = resume_step {
            keep_edited_epochs_aside(&epochs_path, &text, last)?;
        }
        write_atomic(&epochs_path, text.as_bytes())?;
        let append = |p: &Path| {
            OpenOptions::new()
                .append(true)
                .open(p)
                .map(BufWriter::new)
                .map_err(|e| Error::io(p, e))
        };
        Ok((
            MetricsWriter {
                format,
                steps: append(&steps_path)?,
                epochs: append(&epochs_path)?,
                steps_path,
                epochs_path,
            },
            kept,
        ))
    }

    /// Buffered: the trainer reads steps back from the device in groups
    /// (about once a second) and calls `flush` after each group, so `tail
    /// -f` follows the run.
    pub fn step(&mut self, r: &StepRow) -> Result<()> {
        let t = row_text(self.format, r, step_csv)?;
        self.steps
            .write_all(t.as_bytes())
            .map_err(|e| Error::io(&self.steps_path, e))
    }

    pub fn epoch(&mut self, s: &EpochStats) -> Result<()> {
        let t = row_text(self.format, s, epoch_csv)?;
        self.epochs
            .write_all(t.as_bytes())
            .map_err(|e| Error::io(&self.epochs_path, e))?;
        self.flush()
    }

    pub fn flush(&mut self) -> Result<()> {
        self.steps
            .flush()
            .map_err(|e| Error::io(&self.steps_path, e))?;
        self.epochs
            .flush()
            .map_err(|e| Error::io(&self.epochs_path, e))
    }

    /// Flush and fsync both files. Called before each checkpoint, so the
    /// rows up to its step outlast a crash of the machine (not only of the
    /// process) as the checkpoint itself does.
    pub fn sync(&mut self) -> Result<()> {
        self.flush()?;
        for (w, p) in [
            (&self.steps, &self.steps_path),
            (&self.epochs, &self.epochs_path),
        ] {
            w.get_ref().sync_data().map_err(|e| Error::io(p, e))?;
        }
        Ok(())
    }
}

/// A resumed run's step log that stops short of its checkpoint's step
/// (the file cut, edited or replaced): the missing steps stay missing, so
/// say which.
fn warn_of_lost_steps(path: &Path, kept: &[StepRow], last: u64) {
    let newest = kept.last().map_or(0, |r| r.step);
    if newest < last {
        let holds = match newest {
            0 => "holds none of the run's steps".to_string(),
            n => format!("holds steps up to {n} only"),
        };
        tracing::warn!(
            "{} {holds}: steps {} to {last}, before the checkpoint, are missing from it and stay missing",
            path.display(),
            newest + 1
        );
    }
}

fn row_text<T: Serialize>(format: MetricsFormat, r: &T, csv: fn(&T) -> String) -> Result<String> {
    Ok(match format {
        MetricsFormat::Csv => csv(r) + "\n",
        MetricsFormat::Jsonl => {
            serde_json::to_string(r).map_err(|e| Error::Data(format!("metrics row: {e}")))? + "\n"
        }
    })
}

/// A metrics file in `dir` that this program did not write (its first line
/// is not the header, or for jsonl a row, that `open` writes): a fresh run
/// would replace it. Empty files, and a killed attempt's, are its own.
pub fn foreign_file(dir: &Path) -> Option<PathBuf> {
    let starts = [
        ("steps.csv", STEP_HEADER),
        ("epochs.csv", EPOCH_HEADER),
        ("steps.jsonl", "{\"step\":"),
        ("epochs.jsonl", "{\"epoch\":"),
    ];
    starts.into_iter().find_map(|(name, start)| {
        let p = dir.join(name);
        // The first line only: a killed attempt's steps file can be long.
        let mut first = Vec::new();
        let file = File::open(&p).ok()?;
        std::io::BufRead::read_until(&mut std::io::BufReader::new(file), b'\n', &mut first).ok()?;
        let first = String::from_utf8_lossy(&first);
        let first = first.trim_end();
        (!first.is_empty() && !first.starts_with(start)).then_some(p)
    })
}

/// The step rows of a metrics file; lines that do not parse (the header, a
/// line cut short by a kill) are skipped. A missing file has no rows.
pub fn read_steps(path: &Path, format: MetricsFormat) -> Result<Vec<StepRow>> {
    let bytes = read_if_there(path)?.unwrap_or_default();
    Ok(step_lines(&String::from_utf8_lossy(&bytes), format).0)
}

/// A fresh run replaces the metrics of an earlier attempt in its folder
/// (one killed before its first checkpoint), those of the other format
/// too: a resume would take the files it finds for the run's own.
fn remove_other_format(dir: &Path, format: MetricsFormat) -> Result<()> {
    let other = match format {
        MetricsFormat::Csv => MetricsFormat::Jsonl,
        MetricsFormat::Jsonl => MetricsFormat::Csv,
    };
    for stem in ["steps", "epochs"] {
        let p = dir.join(format!("{stem}.{}", other.ext()));
        match std::fs::remove_file(&p) {
            Ok(()) => tracing::info!("{}: an earlier attempt's, removed", p.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&p, e)),
        }
    }
    Ok(())
}

/// A metrics file's bytes (None when there is none).
fn read_if_there(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// The step rows of a step log's `text`, and the numbers (from 1) of the
/// lines that did not parse besides the CSV header and a last line cut
/// short by a kill.
fn step_lines(text: &str, format: MetricsFormat) -> (Vec<StepRow>, Vec<usize>) {
    let (mut rows, mut unread) = (Vec::new(), Vec::new());
    let lines: Vec<&str> = text.lines().collect();
    let cut_short = !text.ends_with('\n');
    for (i, line) in lines.iter().enumerate() {
        let row = match format {
            MetricsFormat::Csv => parse_step_csv(line),
            MetricsFormat::Jsonl => serde_json::from_str(line).ok(),
        };
        let expected = (i == 0 && *line == STEP_HEADER) || (cut_short && i + 1 == lines.len());
        match row.filter(|r| follows(r, rows.last())) {
            Some(r) => rows.push(r),
            None if !expected => unread.push(i + 1),
            None => {}
        }
    }
    (rows, unread)
}

/// Whether `r` can be a row this program wrote after `prev`: a later step,
/// finite epoch and time, a finite loss (a step whose loss is not stops
/// the run before its row), a top-1 from 0 to 1, and a rate a run trains
/// at (a positive f32). Others (a log edited, joined from two runs, or
/// damaged) are not read.
fn follows(r: &StepRow, prev: Option<&StepRow>) -> bool {
    prev.is_none_or(|p| r.step > p.step)
        && r.epoch.is_finite()
        && r.elapsed_s.is_finite()
        && r.loss.is_finite()
        && (0.0..=1.0).contains(&r.top1)
        && is_f32_rate(r.lr)
}

/// A rate a run can train at: a positive f32, the trainer's type.
pub fn is_f32_rate(lr: f64) -> bool {
    (f64::from(f32::from_bits(1))..=f64::from(f32::MAX)).contains(&lr)
}

/// A resume rewrites the step log with the rows it can read: where others
/// did not parse (the file edited by hand, or saved by a spreadsheet with
/// `;` between fields), the file as it was is kept beside it first, so no
/// line is lost.
fn keep_unread_aside(path: &Path, bytes: &[u8], unread: &[usize], last: u64) -> Result<()> {
    let Some(first) = unread.first() else {
        return Ok(());
    };
    let aside = keep_aside(path, bytes, last)?;
    tracing::warn!(
        "{}: {} lines do not read as step rows (line {first} the first; edited by hand?); the file as it was is kept as {}, and the log goes on with the rows that do",
        path.display(),
        unread.len(),
        aside.display()
    );
    Ok(())
}

/// The epoch log is rewritten from the checkpoint's history on a resume:
/// a file that is neither the start of `text` (cut short) nor `text` with
/// rows after it (epochs past the checkpoint) was edited, and is kept
/// beside it first, as the step log is.
fn keep_edited_epochs_aside(path: &Path, text: &str, last: u64) -> Result<()> {
    let Some(was) = read_if_there(path)? else {
        return Ok(());
    };
    if was.starts_with(text.as_bytes()) || text.as_bytes().starts_with(&was) {
        return Ok(());
    }
    let aside = keep_aside(path, &was, last)?;
    tracing::warn!(
        "{}: its rows are not the checkpoint's epochs (edited by hand?); the file as it was is kept as {}, and the log is written again from the checkpoint",
        path.display(),
        aside.display()
    );
    Ok(())
}

/// A durable copy of `path`, whose `bytes` were read, as
/// `NAME.before-resume-STEP` (then `-2`, `-3` ... where one is there from
/// an earlier resume at the same step).
fn keep_aside(path: &Path, bytes: &[u8], last: u64) -> Result<PathBuf> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("log");
    write_aside(
        &path.with_extension(format!("{ext}.before-resume-{last}")),
        bytes,
    )
}
