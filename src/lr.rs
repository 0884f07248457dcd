//! A learning rate's decimal arithmetic: a tenth of a rate, as the schedule
//! drops it and as the fixes in error messages suggest it, so both name the
//! same number.

/// A tenth of `lr`, as a decimal: its shortest decimal form (what `--lr`
/// was given as) with the exponent lowered by one, read back to the nearest
/// f32. Dividing the f32 by 10 lands an ulp off (0.02 / 10 is
/// 1.9999999e-3), which the metrics files would then show; PyTorch's
/// schedulers scale the rate in double precision, which rounds to this.
pub fn tenth(lr: f32) -> f32 {
    let s = format!("{lr:e}");
    let tenth = s
        .split_once('e')
        .and_then(|(m, e)| Some(format!("{m}e{}", e.parse::<i32>().ok()? - 1)))
        .and_then(|t| t.parse().ok());
    tenth.unwrap_or(lr / 10.0)
}

#[cfg(test)]
mod tests {
    use super::tenth;

    /// The paper's three drops from 0.01 and other rates a user may give:
    /// each a tenth as the decimal literal reads (Rust's literals round
    /// correctly, so `1e-3f32` is the f32 nearest 0.001).
    #[test]
    fn a_tenth_of_a_rate_is_the_nearest_f32_to_the_decimal_tenth() {
        let mut lr = 0.01f32;
        for want in [1e-3f32, 1e-4, 1e-5] {
            lr = tenth(lr);
            assert_eq!(lr, want);
        }
        let cases = [(0.02f32, 2e-3f32), (0.05, 5e-3), (0.3, 3e-2), (3e-4, 3e-5)];
        for (lr, want) in cases {
            assert_eq!(tenth(lr), want, "a tenth of {lr}");
        }
        assert_eq!(tenth(0.02).to_string(), "0.002");
        // Plain f32 division is an ulp off here: the case this exists for.
        assert_ne!(0.02f32 / 10.0, 2e-3f32);
    }
}
