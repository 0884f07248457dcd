//! The learning-rate schedule: the paper's (section 5: divide by 10 when
//! validation error stops improving, at most three times) or drops at
//! fixed epochs (`--lr-milestones`). Both change only `Progress`, so a
//! checkpoint carries the schedule's state and a resume continues it.
use tracing::info;

use crate::run_state::{Progress, Schedule};

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
