//! The learning-rate schedule: the paper's (section 5: divide by 10 when
//! validation error stops improving, at most three times) or drops at
//! fixed epochs (`--lr-milestones`). Both change only `Progress`, so a
//! checkpoint carries the schedule's state and a resume continues it.
//! An optional linear warm-up (`--warmup`) scales the rate of the first
//! steps; it is a function of the step, so a resume continues it too.
use tracing::info;

use crate::run_state::{Progress, Schedule};

/// The rate step `step` (0 for the first) trains at: the schedule's `lr`,
/// times (step + 1) / W over the first W = `warmup` x `epoch_batches`
/// steps. The gradual warm-up of Goyal et al., "Accurate, Large Minibatch
/// SGD" (2017), section 2.2, which ramps the rate linearly over the first
/// epochs; here from lr / W at the first step, so none is wasted at 0.
pub fn step_lr(lr: f32, step: u64, warmup: f64, epoch_batches: usize) -> f32 {
    let w = warmup * epoch_batches as f64;
    if (step as f64) + 1.0 >= w {
        return lr;
    }
    (lr as f64 * ((step + 1) as f64 / w)) as f32
}

/// At the start of an epoch (its first batch still to train): a milestone
/// divides the learning rate by 10.
pub fn at_epoch_start(p: &mut Progress, schedule: &Schedule) {
    if let (0, Schedule::Milestones(m)) = (p.batches_done, schedule) {
        if m.contains(&p.epoch) {
            p.lr /= 10.0;
            info!(
                "epoch {}: learning rate milestone, lr now {:.1e}",
                p.epoch, p.lr
            );
        }
    }
}

/// Record an epoch's validation error in the schedule state: returns
/// whether it is the best so far. The paper's schedule (section 5): divide
/// the learning rate by 10 when the error has not improved for `patience`
/// epochs, at most `max_drops` times; the count restarts after each drop.
pub fn after_validation(p: &mut Progress, schedule: &Schedule, err: f64) -> bool {
    let best = p.best_err.is_none_or(|b| err < b);
    if best {
        p.best_err = Some(err);
        p.since_best = 0;
    } else {
        p.since_best += 1;
    }
    if let Schedule::Plateau {
        patience,
        max_drops,
    } = *schedule
    {
        if !best && p.since_best >= patience && p.drops < max_drops {
            p.lr /= 10.0;
            p.drops += 1;
            p.since_best = 0;
            info!(
                "validation error has not improved for {patience} epochs: lr now {:.1e} (drop {} of {max_drops})",
                p.lr, p.drops
            );
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::step_lr;

    /// W = 1.5 epochs of 4 steps = 6 steps: lr x 1/6, 2/6, ... 6/6, then lr.
    #[test]
    fn the_warm_up_rises_by_lr_over_w_each_step_to_the_schedules_rate() {
        let got: Vec<f32> = (0..8).map(|s| step_lr(0.06, s, 1.5, 4)).collect();
        let want = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.06, 0.06];
        for (s, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= 1e-6 * w, "step {s}: {g}, want {w}");
        }
        // No warm-up, or one shorter than a step: the rate as scheduled.
        assert_eq!(step_lr(0.01, 0, 0.0, 20), 0.01);
        assert_eq!(step_lr(0.01, 0, 0.01, 20), 0.01);
        // W = 4: the first step at exactly a quarter (a power of two).
        assert_eq!(step_lr(0.01, 0, 0.2, 20), 0.01f32 / 4.0);
    }
}
