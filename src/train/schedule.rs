//! The learning-rate schedule: the paper's (section 5: divide by 10 when
//! validation error stops improving, at most three times) or drops at
//! fixed epochs (`--lr-milestones`). Both change only `Progress`, so a
//! checkpoint carries the schedule's state and a resume continues it.
//! An optional linear warm-up (`--warmup`) scales the rate of the first
//! steps; it is a function of the step, so a resume continues it too.
use tracing::info;

use crate::lr::tenth;
use crate::run_state::{Progress, Schedule};

/// The paper's schedule's defaults: a drop after 2 epochs without
/// improvement (our choice; the paper does not say how long it waited), at
/// most 3 drops (section 5: "reduced three times prior to termination").
pub const PATIENCE: usize = 2;
pub const MAX_DROPS: usize = 3;

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
            p.lr = tenth(p.lr);
            info!(
                "epoch {}: learning rate milestone, lr now {:e}",
                p.epoch, p.lr
            );
        }
    }
}

/// A rate set by hand (`--resume --lr`): the plateau count starts again,
/// as after a drop, since the paper divides when the error stops improving
/// "with the current learning rate" (section 5); the best error stays.
pub fn set_by_hand(p: &mut Progress, lr: f32) {
    p.lr = lr;
    p.since_best = 0;
}

/// [`record`] for an epoch left only to validate when `--resume --lr` set
/// `lr`: its error counts (a best is kept), and the plateau count starts
/// again at `lr` instead of dropping the rate the epoch trained at.
pub fn record_by_hand(p: &mut Progress, err: f64, best: bool, lr: f32) {
    if best {
        p.best_err = Some(err);
    }
    set_by_hand(p, lr);
}

/// What the schedule does with a rate set by hand at `p`: the plateau
/// count starts again; the milestones after the first epoch that trains
/// divide it (not that epoch's own: the rate given is the one it trains at).
pub fn after_hand(p: &Progress, schedule: &Schedule) -> String {
    match schedule {
        Schedule::Plateau { max_drops, .. } if p.drops >= *max_drops => {
            format!("all {max_drops} drops of --max-drops are taken, so it stays")
        }
        Schedule::Plateau { .. } => "the epochs without improvement count from here".into(),
        Schedule::Milestones(m) => {
            // An epoch whose steps are all done trains no more.
            let trained = p.epoch_done || p.batches_done >= p.epoch_batches;
            let next = p.epoch + usize::from(trained);
            let mut after: Vec<usize> = m.iter().copied().filter(|&e| e > next).collect();
            after.sort_unstable();
            let left: Vec<String> = after.iter().map(|e| e.to_string()).collect();
            match left.len() {
                0 => "no milestone is left to divide it".into(),
                1 => format!("the milestone at epoch {} divides it", left[0]),
                _ => format!("the milestones at epochs {} divide it", left.join(", ")),
            }
        }
    }
}

/// Record an epoch's validation error in the schedule state: returns
/// whether it is the best so far. The paper's schedule (section 5): divide
/// the learning rate by 10 when the error has not improved for `patience`
/// epochs, at most `max_drops` times; the count restarts after each drop.
pub fn after_validation(p: &mut Progress, schedule: &Schedule, err: f64) -> bool {
    let best = improves(p, err);
    record(p, schedule, err, best, false, false);
    best
}

/// Whether the rate is still ramping at the end of the steps done
/// (`step_lr`: the last one, `step` - 1, trained below the schedule's).
pub fn warming_up(step: u64, warmup: f64, epoch_batches: usize) -> bool {
    (step as f64) < warmup * epoch_batches as f64
}

/// Whether `err` is the best validation error so far.
pub fn improves(p: &Progress, err: f64) -> bool {
    p.best_err.is_none_or(|b| err < b)
}

/// [`after_validation`] with whether the epoch is the best decided already
/// (in a run of several processes, by rank 0 for all). An epoch that ends
/// while the rate is `warming` up (`warming_up`) is not counted against
/// the plateau: the schedule's rate has not been tried yet, and a patience
/// of 1 would otherwise spend every drop inside the ramp. After the `last`
/// epoch a drop is kept for epochs a resume adds, and said so.
pub fn record(
    p: &mut Progress,
    schedule: &Schedule,
    err: f64,
    best: bool,
    warming: bool,
    last: bool,
) {
    if best {
        p.best_err = Some(err);
        p.since_best = 0;
    } else if !warming {
        p.since_best += 1;
    }
    if let Schedule::Plateau {
        patience,
        max_drops,
    } = *schedule
    {
        if !best && !warming && p.since_best >= patience && p.drops < max_drops {
            p.lr = tenth(p.lr);
            p.drops += 1;
            p.since_best = 0;
            let from = match last {
                true => "for any epochs a resume adds",
                false => "now",
            };
            info!(
                "validation error has not improved for {patience} epochs: lr {from} {:e} (drop {} of {max_drops})",
                p.lr, p.drops
            );
        }
    }
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
