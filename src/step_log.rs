//! What the training loop keeps per step without waiting for the device:
//! the steps queued since it last read the model's step-metrics buffer
//! (`Model::record_step` / `read_steps`), when to read it next, and how the
//! read-back values enter the epoch's sums, `steps.csv` and the plot's rows
//! (in step order, as if each step had been read at once). Also the epoch's
//! clocks: compute, and the time spent waiting for the loader.
use std::time::{Duration, Instant};

use crate::checkpoint::Progress;
use crate::error::{Error, Result};
use crate::metrics::{MetricsWriter, StepRow};
use crate::model::trainable::Model;
use crate::run_state::EpochSoFar;
use crate::tensorboard::EventWriter;

/// What the host knows of a queued step; its loss and hits are on the device.
#[derive(Clone, Debug)]
struct Queued {
    epoch: usize,
    /// The step's number in `steps.csv` (steps taken after it).
    step: u64,
    /// Fractional epoch at the end of the step.
    epoch_frac: f64,
    lr: f32,
    images: usize,
    /// Run time when the host had queued the step.
    elapsed_s: f64,
}

/// The steps whose metrics the device holds and the host has not read.
pub struct StepLog {
    queued: Vec<Queued>,
    last_read: Instant,
    every: Duration,
}

/// Where read-back steps go: the run's metrics files and TensorBoard
/// events (when it keeps a run folder) and the rows the plot draws.
pub struct StepSink<'a> {
    pub metrics: Option<&'a mut MetricsWriter>,
    pub events: Option<&'a mut EventWriter>,
    pub rows: &'a mut Vec<StepRow>,
}

impl StepLog {
    /// A log read back at most every `every` (besides when it is full and
    /// when the loop needs the numbers: checkpoints, stops, epoch ends).
    pub fn new(every: Duration) -> StepLog {
        StepLog {
            queued: Vec::new(),
            last_read: Instant::now(),
            every,
        }
    }

    /// The device slot the next step records into.
    pub fn next_slot(&self) -> usize {
        self.queued.len()
    }

    /// Note a step, trained at `lr`, whose metrics went into slot `next_slot()`.
    pub fn push(&mut self, p: &Progress, lr: f32, images: usize, elapsed_s: f64) {
        self.queued.push(Queued {
            epoch: p.epoch,
            step: p.step,
            epoch_frac: (p.epoch - 1) as f64
                + p.batches_done as f64 / p.epoch_batches.max(1) as f64,
            lr,
            images,
            elapsed_s,
        });
    }

    /// Time for a read: the refresh interval has passed, or the device's
    /// buffer (`slots`) is full.
    pub fn due(&self, slots: usize) -> bool {
        !self.queued.is_empty()
            && (self.queued.len() >= slots || self.last_read.elapsed() >= self.every)
    }

    /// Read the queued steps back (one wait for the device) and account
    /// for them in step order: the epoch's sums in `p` (exactly as a
    /// per-step read would add them), a metrics row each. The first
    /// non-finite loss is an error naming its step (`Error::Diverged`).
    pub fn flush(&mut self, net: &mut dyn Model, p: &mut Progress, sink: StepSink) -> Result<()> {
        self.last_read = Instant::now();
        if self.queued.is_empty() {
            return Ok(());
        }
        let got = net.read_steps(self.queued.len())?;
        let StepSink {
            mut metrics,
            mut events,
            rows,
        } = sink;
        for (q, m) in self.queued.drain(..).zip(got) {
            if !m.loss.is_finite() {
                return Err(Error::Diverged {
                    what: format!("epoch {}, step {}: the loss is {}", q.epoch, q.step, m.loss),
                    fix: Error::lower_rate(q.lr),
                });
            }
            p.loss_sum += m.loss as f64 * q.images as f64;
            p.hits += m.hits;
            p.seen += q.images;
            let row = StepRow {
                step: q.step,
                epoch: q.epoch_frac,
                loss: m.loss as f64,
                top1: m.hits as f64 / q.images as f64,
                lr: q.lr as f64,
                elapsed_s: q.elapsed_s,
            };
            if let Some(w) = metrics.as_deref_mut() {
                w.step(&row)?;
            }
            if let Some(w) = events.as_deref_mut() {
                w.step(&row)?;
            }
            rows.push(row);
        }
        if let Some(w) = metrics {
            w.flush()?;
        }
        match events {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

/// Where one epoch's training time went.
#[derive(Clone, Copy, Debug, Default)]
pub struct EpochClock {
    /// Forward, backward and update as the host saw them (a GPU may still
    /// be running them when they return).
    pub compute: Duration,
    /// Blocked in the loader's `next()`, waiting for a batch.
    pub wait: Duration,
    /// Whole steps: the wait, the compute and the bookkeeping, without
    /// checkpoint writes.
    pub steps: Duration,
    /// Images trained, by all the run's processes.
    pub images: usize,
    /// The epoch's steps before this process's (a resumed epoch).
    pub earlier: EpochSoFar,
}

impl EpochClock {
    /// A clock for an epoch whose steps so far `earlier` timed.
    pub fn resumed(earlier: EpochSoFar) -> EpochClock {
        EpochClock {
            earlier,
            ..EpochClock::default()
        }
    }

    /// The epoch so far, this process's `train_s` of wall time included.
    pub fn so_far(&self, train_s: f64) -> EpochSoFar {
        let e = &self.earlier;
        EpochSoFar {
            images: e.images + self.images,
            train_s: e.train_s + train_s,
            compute_s: e.compute_s + self.compute.as_secs_f64(),
            wait_s: e.wait_s + self.wait.as_secs_f64(),
            step_s: e.step_s + self.steps.as_secs_f64(),
        }
    }

    /// Images a second of compute over the epoch so far.
    pub fn compute_rate(&self) -> f64 {
        let all = self.so_far(0.0);
        all.images as f64 / all.compute_s.max(1e-9)
    }

    /// The share of step time spent waiting for data (0 when no step ran).
    pub fn wait_share(&self) -> f64 {
        let all = self.so_far(0.0);
        if all.step_s > 0.0 {
            all.wait_s / all.step_s
        } else {
            0.0
        }
    }
}
