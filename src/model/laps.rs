//! Where a step's time goes, op by op (`bench-step --per-layer`): a clock
//! the network reads after every op of a step. On a GPU a reading is a
//! timing event in the stream (`Backend::mark`), so an op's lap is the time
//! the device spent from the op before to this one, and the laps of a step
//! add up to the step as queued, with no waits in it; the host's launch
//! gaps show where the device outruns it. Elsewhere a reading waits for the
//! device and reads the host's clock. Off, as in training, a reading costs
//! one branch.
use std::time::Instant;

use crate::backend::Backend;
use crate::error::{Error, Result};

/// The part of a step an op is, in the order a step runs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    /// The batch and labels to the device.
    Upload,
    /// The conv or fc op with its bias and ReLU.
    Forward,
    Lrn,
    Pool,
    Dropout,
    /// Softmax and cross-entropy.
    Loss,
    /// The loss's gradient of the logits.
    LossBackward,
    DropoutBackward,
    PoolBackward,
    LrnBackward,
    ReluBackward,
    BackwardBias,
    /// The weights' gradient (conv: backward-filter).
    BackwardFilter,
    /// The input's gradient.
    BackwardData,
    /// 16-bit training: the gradients divided by the loss scale and checked.
    Unscale,
    /// The paper's update of the layer's weights and biases.
    Sgd,
}

impl Part {
    /// The name in tables and JSON (`profile::Row::part`).
    pub fn name(self) -> &'static str {
        match self {
            Part::Upload => "upload",
            Part::Forward => "forward",
            Part::Lrn => "lrn",
            Part::Pool => "pool",
            Part::Dropout => "dropout",
            Part::Loss => "loss",
            Part::LossBackward => "loss-backward",
            Part::DropoutBackward => "dropout-backward",
            Part::PoolBackward => "pool-backward",
            Part::LrnBackward => "lrn-backward",
            Part::ReluBackward => "relu-backward",
            Part::BackwardBias => "backward-bias",
            Part::BackwardFilter => "backward-filter",
            Part::BackwardData => "backward-data",
            Part::Unscale => "unscale",
            Part::Sgd => "sgd",
        }
    }
}

/// One op's time: its layer (None: the whole network's, as the upload and
/// the loss), its part, seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lap {
    pub layer: Option<usize>,
    pub part: Part,
    pub seconds: f64,
}

/// The clock. `Laps::default()` is off: nothing is waited for or kept.
#[derive(Debug, Default)]
pub struct Laps {
    on: bool,
    layer: Option<usize>,
    /// The host's clock at the last reading (a backend without marks).
    last: Option<Instant>,
    /// A backend with marks: one entry per mark since the last `take`, the
    /// lap it ends (None: a step's start, which ends no lap).
    marked: Vec<Option<(Option<usize>, Part)>>,
    laps: Vec<Lap>,
}

impl Laps {
    /// A clock that keeps laps.
    pub fn on() -> Laps {
        Laps {
            on: true,
            ..Laps::default()
        }
    }

    /// Start timing from here (on a backend without marks, once the device
    /// has finished what it has).
    pub fn start<B: Backend>(&mut self, be: &B) -> Result<()> {
        if !self.on {
            return Ok(());
        }
        if be.mark()? {
            self.marked.push(None);
        } else {
            be.synchronize()?;
            self.last = Some(Instant::now());
        }
        Ok(())
    }

    /// The layer the next laps belong to (None: the whole network).
    pub fn at(&mut self, layer: Option<usize>) {
        self.layer = layer;
    }

    /// The op just queued on `be` ends a lap.
    pub fn lap<B: Backend>(&mut self, be: &B, part: Part) -> Result<()> {
        if !self.on {
            return Ok(());
        }
        if be.mark()? {
            self.marked.push(Some((self.layer, part)));
            return Ok(());
        }
        be.synchronize()?;
        let now = Instant::now();
        let seconds = self.last.map_or(0.0, |t| (now - t).as_secs_f64());
        self.laps.push(Lap {
            layer: self.layer,
            part,
            seconds,
        });
        self.last = Some(now);
        Ok(())
    }

    /// The laps kept so far, leaving none: a marking backend's are read
    /// from `be` (which waits for the last mark).
    pub fn take<B: Backend>(&mut self, be: &B) -> Result<Vec<Lap>> {
        let marked = std::mem::take(&mut self.marked);
        if !marked.is_empty() {
            let seconds = be.marked_seconds()?;
            self.laps.extend(from_marks(&marked, &seconds)?);
        }
        Ok(std::mem::take(&mut self.laps))
    }
}

/// The laps that marks end: interval i runs from mark i to mark i + 1, and
/// is a lap where mark i + 1 ends one (not where it starts a step).
fn from_marks(marked: &[Option<(Option<usize>, Part)>], seconds: &[f64]) -> Result<Vec<Lap>> {
    if seconds.len() + 1 != marked.len() {
        return Err(Error::Shape {
            op: "laps",
            detail: format!(
                "{} intervals read back for {} marks",
                seconds.len(),
                marked.len()
            ),
        });
    }
    let ends = marked.iter().skip(1).zip(seconds);
    Ok(ends
        .filter_map(|(end, &seconds)| {
            end.map(|(layer, part)| Lap {
                layer,
                part,
                seconds,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_interval_is_the_lap_its_end_mark_names_and_step_starts_end_none() {
        // Two steps: start, upload, conv1 forward | start, loss.
        let marked = [
            None,
            Some((None, Part::Upload)),
            Some((Some(0), Part::Forward)),
            None,
            Some((None, Part::Loss)),
        ];
        let laps = from_marks(&marked, &[0.5, 1.5, 9.0, 2.5]).unwrap();
        let got: Vec<_> = laps.iter().map(|l| (l.layer, l.part, l.seconds)).collect();
        // 9.0 s ran between the first step's last op and the second's start.
        let want = [
            (None, Part::Upload, 0.5),
            (Some(0), Part::Forward, 1.5),
            (None, Part::Loss, 2.5),
        ];
        assert_eq!(got, want);
        assert!(from_marks(&marked, &[0.5]).is_err());
    }
}
