//! What the trainer, evaluation, checkpoints and export need of a network,
//! whichever executor runs it: the grouped network on one device
//! (`net::Network`) or the paper's two towers on two (`towers::TowerNetwork`).
//! Parameters are always whole tensors with PyTorch names and layouts, so a
//! checkpoint written by one executor loads into the other.
use super::loss_scale::LossScale;
use super::net::Mode;
use super::topology::Topology;
use crate::error::Result;

pub trait Model {
    fn topology(&self) -> &Topology;
    /// Forward a batch (NCHW f32); returns the mean cross-entropy loss.
    fn forward(&mut self, x: &[f32], labels: &[u32], mode: Mode) -> Result<f32>;
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
    fn set_momentum(&mut self, name: &str, values: &[f32]) -> Result<()>;
}

/// `impl Model for $t` by forwarding to its inherent methods of the same names.
macro_rules! forward_model {
    ($t:ty) => {
        impl<B: crate::backend::Backend> crate::model::trainable::Model for $t {
            fn topology(&self) -> &crate::model::topology::Topology {
                <$t>::topology(self)
            }
            fn forward(
                &mut self,
                x: &[f32],
                labels: &[u32],
                mode: crate::model::net::Mode,
            ) -> crate::error::Result<f32> {
                <$t>::forward(self, x, labels, mode)
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
            fn set_momentum(&mut self, name: &str, values: &[f32]) -> crate::error::Result<()> {
                <$t>::set_momentum(self, name, values)
            }
        }
    };
}

forward_model!(super::net::Network<'_, B>);
forward_model!(super::towers::TowerNetwork<'_, B>);
