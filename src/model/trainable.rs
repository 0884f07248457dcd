//! What the trainer, evaluation, checkpoints and export need of a network
//! (the `Model` trait), whichever executor runs it: the grouped network on one device
//! (`net::Network`), the paper's two towers on two (`towers::TowerNetwork`),
//! or replicas of either (`replicas::DataParallel`).
//! Parameters are always whole tensors with PyTorch names and layouts, so a
//! checkpoint written by one executor loads into the other.
use super::loss_scale::LossScale;
use super::net::Mode;
use super::topology::Topology;
use crate::error::Result;

// Old path: the step metrics have a module of their own.
pub use super::step::{StepMetrics, STEP_SLOTS};

pub trait Model {
    fn topology(&self) -> &Topology;
    /// Images per step.
    fn batch(&self) -> usize;
    /// Forward a batch (NCHW f32); returns the mean cross-entropy loss.
    fn forward(&mut self, x: &[f32], labels: &[u32], mode: Mode) -> Result<f32>;
    /// `forward` without reading the loss back (a GPU need not finish the
    /// step): it stays on the device for `record_step`.
    fn forward_queued(&mut self, x: &[f32], labels: &[u32], mode: Mode) -> Result<()>;
    /// The last forward's mean loss and top-1 hits into slot `slot`
    /// (< `step_slots`) of the model's step-metrics buffer, on the device.
    fn record_step(&mut self, slot: usize) -> Result<()>;
    /// The first `n` recorded slots, in slot order (waits for the device).
    fn read_steps(&mut self, n: usize) -> Result<Vec<StepMetrics>>;
    /// How many slots the step-metrics buffer holds.
    fn step_slots(&self) -> usize;
    fn backward(&mut self) -> Result<()>;
    fn sgd_step(&mut self, hp: &crate::backend::SgdParams) -> Result<()>;
    /// Softmax probabilities and logits of the last forward, [n, classes].
    fn probs(&self) -> Result<Vec<f32>>;
    fn logits(&self) -> Result<Vec<f32>>;
    fn steps(&self) -> u64;
    fn set_steps(&mut self, step: u64);
    fn set_loss_scale(&mut self, ls: Option<LossScale>);
    fn loss_scale(&self) -> Option<&LossScale>;
    fn last_step_skipped(&self) -> bool;
    /// Parameter names in table order: conv1.weight, conv1.bias, ...
    fn param_names(&self) -> Vec<String>;
    fn param_shape(&self, name: &str) -> Result<Vec<usize>>;
    fn param(&self, name: &str) -> Result<Vec<f32>>;
    fn set_param(&mut self, name: &str, values: &[f32]) -> Result<()>;
    fn momentum(&self, name: &str) -> Result<Vec<f32>>;
    /// The gradient the last backward left (unscaled only after `sgd_step`).
    fn grad(&self, name: &str) -> Result<Vec<f32>>;
    fn set_momentum(&mut self, name: &str, values: &[f32]) -> Result<()>;
    /// Bytes copied between a model's towers by the last forward and
    /// backward (0 on one device).
    fn exchanged_bytes(&self) -> u64;
    /// For each of `local`'s flags (this process's say), whether any
    /// process of the run says yes: a collective, so every process asks at
    /// the same step, with as many flags (as each steps through the same
    /// all-reduces). One process is the whole run.
    fn any_process(&mut self, local: &[bool]) -> Result<Vec<bool>> {
        Ok(local.to_vec())
    }
}

/// `impl Model for $t` by forwarding to its inherent methods of the same names.
macro_rules! forward_model {
    ($t:ty) => {
        impl<B: crate::backend::Backend> crate::model::trainable::Model for $t {
            fn topology(&self) -> &crate::model::topology::Topology {
                <$t>::topology(self)
            }
            fn batch(&self) -> usize {
                <$t>::batch(self)
            }
            fn forward(
                &mut self,
                x: &[f32],
                labels: &[u32],
                mode: crate::model::net::Mode,
            ) -> crate::error::Result<f32> {
                <$t>::forward(self, x, labels, mode)
            }
            fn forward_queued(
                &mut self,
                x: &[f32],
                labels: &[u32],
                mode: crate::model::net::Mode,
            ) -> crate::error::Result<()> {
                <$t>::forward_queued(self, x, labels, mode)
            }
            fn record_step(&mut self, slot: usize) -> crate::error::Result<()> {
                <$t>::record_step(self, slot)
            }
            fn read_steps(
                &mut self,
                n: usize,
            ) -> crate::error::Result<Vec<crate::model::trainable::StepMetrics>> {
                <$t>::read_steps(self, n)
            }
            fn step_slots(&self) -> usize {
                <$t>::step_slots(self)
            }
            fn backward(&mut self) -> crate::error::Result<()> {
                <$t>::backward(self)
            }
            fn sgd_step(&mut self, hp: &crate::backend::SgdParams) -> crate::error::Result<()> {
                <$t>::sgd_step(self, hp)
            }
            fn probs(&self) -> crate::error::Result<Vec<f32>> {
                <$t>::probs(self)
            }
            fn logits(&self) -> crate::error::Result<Vec<f32>> {
                <$t>::logits(self)
            }
            fn steps(&self) -> u64 {
                <$t>::steps(self)
            }
            fn set_steps(&mut self, step: u64) {
                <$t>::set_steps(self, step)
            }
            fn set_loss_scale(&mut self, ls: Option<crate::model::loss_scale::LossScale>) {
                <$t>::set_loss_scale(self, ls)
            }
            fn loss_scale(&self) -> Option<&crate::model::loss_scale::LossScale> {
                <$t>::loss_scale(self)
            }
            fn last_step_skipped(&self) -> bool {
                <$t>::last_step_skipped(self)
            }
            fn param_names(&self) -> Vec<String> {
                <$t>::param_names(self)
            }
            fn param_shape(&self, name: &str) -> crate::error::Result<Vec<usize>> {
                <$t>::param_shape(self, name)
            }
            fn param(&self, name: &str) -> crate::error::Result<Vec<f32>> {
                <$t>::param(self, name)
            }
            fn set_param(&mut self, name: &str, values: &[f32]) -> crate::error::Result<()> {
                <$t>::set_param(self, name, values)
            }
            fn momentum(&self, name: &str) -> crate::error::Result<Vec<f32>> {
                <$t>::momentum(self, name)
            }
            fn grad(&self, name: &str) -> crate::error::Result<Vec<f32>> {
                <$t>::grad(self, name)
            }
            fn set_momentum(&mut self, name: &str, values: &[f32]) -> crate::error::Result<()> {
                <$t>::set_momentum(self, name, values)
            }
            fn exchanged_bytes(&self) -> u64 {
                <$t>::exchanged_bytes(self)
            }
        }
    };
}

forward_model!(super::net::Network<'_, B>);
forward_model!(super::towers::TowerNetwork<'_, B>);
