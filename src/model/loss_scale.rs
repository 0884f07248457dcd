//! Dynamic loss scaling for 16-bit training (Micikevicius et al., "Mixed
//! Precision Training", ICLR 2018, section 3.2). Gradients of a 16-bit
//! backward pass would flush to zero below f16's smallest value, so the loss
//! gradient is multiplied by a scale S before the backward pass and the f32
//! gradients are divided by S before the update. When a scaled gradient
//! overflows, the step is skipped and S halves; after `growth_interval`
//! clean steps S doubles. The defaults are PyTorch's GradScaler's (2^16,
//! x2 every 2000 steps, x0.5 on overflow). Powers of two keep the scaling
//! exact in floating point: with no overflow, a scaled f32 run computes the
//! same bits as an unscaled one.
use crate::error::Error;
use serde::{Deserialize, Serialize};

/// The scaler's state; checkpoints keep it so a resumed run scales alike.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScale {
    /// The current scale S.
    pub scale: f32,
    /// Clean steps since the last change of S.
    pub good_steps: u32,
    /// Steps skipped because a gradient overflowed, over the whole run.
    pub skipped: u64,
    /// Clean steps before S doubles.
    pub growth_interval: u32,
}

impl LossScale {
    /// PyTorch's GradScaler defaults.
    pub fn dynamic() -> LossScale {
        LossScale::with_scale(65536.0)
    }

    pub fn with_scale(scale: f32) -> LossScale {
        LossScale {
            scale,
            good_steps: 0,
            skipped: 0,
            growth_interval: 2000,
        }
    }

    /// Whether a state read back (from a checkpoint) can go on: the scale a
    /// finite, positive, normal power of two, as halving and doubling from
    /// 2^16 keep it (so unscaling stays exact), and a growth interval of at
    /// least one step, not yet reached (`update` resets the count there; a
    /// count at u32's end would overflow).
    pub fn is_usable(&self) -> bool {
        let power_of_two = self.scale.to_bits() & 0x007f_ffff == 0;
        self.scale.is_finite()
            && self.scale >= f32::MIN_POSITIVE
            && power_of_two
            && self.growth_interval >= 1
            && self.good_steps < self.growth_interval
    }

    /// After a step's gradients were checked: `finite` when none overflowed.
    /// Returns whether the update may be applied; an error where skipping
    /// cannot help (`cannot_cure`).
    pub fn update(&mut self, finite: bool, step: u64, lr: f32) -> Result<bool, Error> {
        if self.cannot_cure(finite) {
            return Err(Error::Diverged {
                what: format!(
                    "step {step}: a gradient is not finite even at the smallest loss scale ({:e}), so no scaling caused it: a weight, or an activation past fp16's range, is not finite",
                    self.scale
                ),
                fix: Error::lower_rate(lr),
            });
        }
        Ok(self.apply(finite))
    }

    /// A gradient that is not finite at the smallest scale: scaled by
    /// 2^-126, the loss gradient is far below f16's smallest value, so no
    /// scaled gradient can overflow and halving again would skip every
    /// step that follows.
    fn cannot_cure(&self, finite: bool) -> bool {
        !finite && self.scale <= f32::MIN_POSITIVE
    }

    fn apply(&mut self, finite: bool) -> bool {
        if !finite {
            // Halve, down to the smallest normal f32 (the scale stays usable).
            self.scale = (self.scale * 0.5).max(f32::MIN_POSITIVE);
            self.good_steps = 0;
            self.skipped += 1;
            return false;
        }
        self.good_steps += 1;
        if self.good_steps >= self.growth_interval {
            // Double unless that would overflow f32 itself.
            if (self.scale * 2.0).is_finite() {
                self.scale *= 2.0;
            }
            self.good_steps = 0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_on_overflow_and_doubles_after_the_interval() {
        let mut s = LossScale::dynamic();
        s.growth_interval = 3;
        assert!(!s.apply(false));
        assert_eq!((s.scale, s.skipped, s.good_steps), (32768.0, 1, 0));
        assert!(s.apply(true));
        assert!(s.apply(true));
        assert_eq!(s.scale, 32768.0);
        assert!(s.apply(true));
        assert_eq!((s.scale, s.good_steps), (65536.0, 0));
        // An overflow mid-interval restarts the count.
        s.apply(true);
        s.apply(false);
        s.apply(true);
        s.apply(true);
        assert_eq!(s.scale, 32768.0);
    }

    #[test]
    fn only_a_normal_positive_power_of_two_with_an_interval_is_usable() {
        for scale in [1.0, 65536.0, 0.5, f32::MIN_POSITIVE, 2f32.powi(127)] {
            assert!(LossScale::with_scale(scale).is_usable(), "{scale}");
        }
        let odd = [
            0.0,
            -2.0,
            3.0,
            65535.0,
            f32::MIN_POSITIVE / 2.0,
            f32::INFINITY,
            f32::NAN,
        ];
        for scale in odd {
            assert!(!LossScale::with_scale(scale).is_usable(), "{scale}");
        }
        let mut never_grows = LossScale::dynamic();
        never_grows.growth_interval = 0;
        assert!(!never_grows.is_usable());
        // update() doubles and resets at the interval: a count past it
        // (an edited checkpoint) would climb to u32's end.
        let mut past = LossScale::dynamic();
        past.good_steps = past.growth_interval;
        assert!(!past.is_usable());
        past.good_steps -= 1;
        assert!(past.is_usable());
    }

    #[test]
    fn stays_finite_and_positive_at_the_extremes() {
        let mut s = LossScale::with_scale(f32::MAX);
        s.growth_interval = 1;
        s.apply(true);
        assert_eq!(s.scale, f32::MAX);
        let mut s = LossScale::with_scale(f32::MIN_POSITIVE * 2.0);
        assert!(!s.update(false, 7, 0.01).unwrap());
        assert_eq!(s.scale, f32::MIN_POSITIVE);
    }

    #[test]
    fn an_overflow_at_the_smallest_scale_stops_the_run() {
        let mut s = LossScale::with_scale(f32::MIN_POSITIVE);
        // A clean step there is fine...
        assert!(s.update(true, 6, 0.01).unwrap());
        // ...but a gradient no scale can bring into range is an error that
        // names the step and leaves the state as it was.
        match s.update(false, 7, 0.01) {
            Err(Error::Diverged { what, .. }) => assert!(what.starts_with("step 7:"), "{what}"),
            other => panic!("expected Diverged, got {other:?}"),
        }
        assert_eq!((s.scale, s.skipped), (f32::MIN_POSITIVE, 0));
    }
}
