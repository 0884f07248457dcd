//! One training step's metrics as the device records them (`StepMetrics`),
//! and how many steps a model's device-side buffer holds before the trainer
//! reads them back (`STEP_SLOTS`). A leaf module: every executor writes
//! these, and the `Model` trait reads them.

/// One training step as the device recorded it: the batch's mean loss (the
/// value `Model::forward` returns) and its top-1 hits (`eval::topk_hits`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepMetrics {
    pub loss: f32,
    pub hits: usize,
}

/// Steps a model's device-side metrics buffer holds; the trainer reads it
/// back before it fills.
pub const STEP_SLOTS: usize = 256;
