//! Where a step's time goes, op by op (`bench-step --per-layer`): a clock
//! the network reads after every op of a step. Each reading first waits
//! for the device, so an op's lap is its own time and the laps of a step
//! add up to the step (plus the waits, which the step without laps lacks).
//! Off, as in training, a reading costs one branch.
use std::time::Instant;

use crate::backend::Backend;
use crate::error::Result;

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
    last: Option<Instant>,
    laps: Vec<Lap>,
}

impl Laps {
    /// A clock that waits and keeps laps.
    pub fn on() -> Laps {
        Laps {
            on: true,
            ..Laps::default()
        }
    }

    /// Start timing from here, once the device has finished what it has.
    pub fn start<B: Backend>(&mut self, be: &B) -> Result<()> {
        if self.on {
            be.synchronize()?;
            self.last = Some(Instant::now());
        }
        Ok(())
    }

    /// The layer the next laps belong to (None: the whole network).
    pub fn at(&mut self, layer: Option<usize>) {
        self.layer = layer;
    }

    /// The op just queued on `be` ends a lap: wait for it, keep its time.
    pub fn lap<B: Backend>(&mut self, be: &B, part: Part) -> Result<()> {
        if !self.on {
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

    /// The laps kept so far, leaving none.
    pub fn take(&mut self) -> Vec<Lap> {
        std::mem::take(&mut self.laps)
    }
}
