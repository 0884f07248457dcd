//! The time limit (`--time-limit`) within an epoch: how many seconds must
//! be left after a step to go on training. A run stops while the rest still
//! fits, so its last checkpoint is whole before the limit; when the epoch
//! ends within the steps looked ahead, its validation is part of the rest,
//! or a scheduler's kill at the limit would fall in the validation or the
//! epoch's checkpoint and lose the steps since the last one.

/// What the seconds needed after a step depend on.
#[derive(Debug, Clone, Copy)]
pub struct Ahead {
    /// Steps looked ahead: 1, or the steps between two agreements of the
    /// processes of a run.
    pub steps: u64,
    /// Steps left in the epoch after this one.
    pub left: usize,
    /// Seconds per step so far.
    pub per_step: f64,
    /// Seconds of the epoch's validation.
    pub val_s: f64,
    /// Checkpoints to write before a stop returns (a write in flight and
    /// the stop's own), and seconds per checkpoint.
    pub saves: f64,
    pub save_s: f64,
}

impl Ahead {
    /// Seconds that must be left to train on: the steps ahead (no more
    /// than the epoch has left), the epoch's validation when the epoch ends
    /// within them, and the checkpoints.
    pub fn needed(&self) -> f64 {
        let steps = self.steps.min(self.left as u64);
        let validation = match self.reaches_validation() {
            true => self.val_s,
            false => 0.0,
        };
        steps as f64 * self.per_step + validation + self.saves * self.save_s
    }

    /// Whether the validation is within the steps looked ahead.
    fn reaches_validation(&self) -> bool {
        (self.left as u64) < self.steps
    }

    /// The rest in words, for a stop's log line.
    pub fn told(&self) -> String {
        let steps = self.steps.min(self.left as u64);
        match (self.reaches_validation(), steps) {
            (true, 0) => "the epoch's validation and a checkpoint".into(),
            (true, n) => format!("the epoch's last {n} steps, its validation and a checkpoint"),
            (false, 1) => "another step and a checkpoint".into(),
            (false, n) => format!("{n} more steps and a checkpoint"),
        }
    }
}

/// Seconds the epoch's validation is assumed to take before one is timed:
/// one training step's seconds per validation batch. A validation batch
/// runs the forward pass only, so this errs long, and a run near its limit
/// stops with a checkpoint rather than validating past it.
pub fn first_val_secs(val_images: usize, batch: usize, per_step: f64) -> f64 {
    val_images.div_ceil(batch.max(1)) as f64 * per_step
}

#[cfg(test)]
mod tests {
    use super::{first_val_secs, Ahead};

    fn ahead(steps: u64, left: usize) -> Ahead {
        Ahead {
            steps,
            left,
            per_step: 0.5,
            val_s: 30.0,
            saves: 2.0,
            save_s: 4.0,
        }
    }

    /// Mid-epoch: one step and the checkpoints. After the epoch's last
    /// step: its validation and the checkpoints, no step.
    #[test]
    fn one_step_ahead_needs_the_validation_only_after_the_last_step() {
        assert_eq!(ahead(1, 5).needed(), 0.5 + 8.0);
        assert_eq!(ahead(1, 1).needed(), 0.5 + 8.0);
        assert_eq!(ahead(1, 1).told(), "another step and a checkpoint");
        assert_eq!(ahead(1, 0).needed(), 30.0 + 8.0);
        assert_eq!(
            ahead(1, 0).told(),
            "the epoch's validation and a checkpoint"
        );
    }

    /// Ten steps ahead (processes agreeing every ten steps): the steps the
    /// epoch has left, and its validation when that is fewer than ten.
    #[test]
    fn many_steps_ahead_count_the_steps_left_and_the_validation() {
        assert_eq!(ahead(10, 25).needed(), 10.0 * 0.5 + 8.0);
        assert_eq!(ahead(10, 10).needed(), 10.0 * 0.5 + 8.0);
        assert_eq!(ahead(10, 3).needed(), 3.0 * 0.5 + 30.0 + 8.0);
        // The agreement right after the epoch's last step: no step is left,
        // the validation and the checkpoints are.
        assert_eq!(ahead(10, 0).needed(), 30.0 + 8.0);
        assert_eq!(
            ahead(10, 0).told(),
            "the epoch's validation and a checkpoint"
        );
        assert_eq!(ahead(10, 25).told(), "10 more steps and a checkpoint");
        assert_eq!(
            ahead(10, 3).told(),
            "the epoch's last 3 steps, its validation and a checkpoint"
        );
    }

    #[test]
    fn an_untimed_validation_is_a_step_per_batch() {
        assert_eq!(first_val_secs(944, 128, 0.25), 8.0 * 0.25);
        assert_eq!(first_val_secs(1024, 128, 0.25), 8.0 * 0.25);
        assert_eq!(first_val_secs(0, 128, 0.25), 0.0);
    }
}
