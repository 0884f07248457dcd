//! What the trainer, evaluation, checkpoints and export need of a network
//! (including step metrics the trainer reads back in groups, `StepMetrics`),
//! whichever executor runs it: the grouped network on one device
//! (`net::Network`), the paper's two towers on two (`towers::TowerNetwork`),
//! or replicas of either (`replicas::DataParallel`).
//! Parameters are always whole tensors with PyTorch names and layouts, so a
//! checkpoint written by one executor loads into the other.
use super::loss_scale::LossScale;
use super::net::{Mode, Network};
use super::replicas::{AllReduce, DataParallel};
use super::topology::Topology;
use super::towers::TowerNetwork;
use crate::backend::Backend;
use crate::error::Result;

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

/// How a run lays the network over its devices; `build` makes the `Model`.
pub enum Layout<'a, B: Backend> {
    /// The grouped network on one device.
    One(&'a B),
    /// The paper's two towers on two devices (model parallel).
    Towers([&'a B; 2]),
    /// One grouped replica per device (data parallel).
    Data(Vec<&'a B>, Box<dyn AllReduce<B> + 'a>),
    /// Two towers per pair of devices, data-parallel across the pairs.
    Hybrid(Vec<[&'a B; 2]>, Box<dyn AllReduce<B> + 'a>),
}

/// Gradient buckets of about this many bytes (PyTorch DDP's default, 25 MiB).
pub const BUCKET_BYTES: usize = 25 << 20;

impl<'a, B: Backend> Layout<'a, B> {
    /// The device that holds replica 0's first part (its pinned memory
    /// serves the loader; its precision decides loss scaling).
    pub fn first(&self) -> &'a B {
        match self {
            Layout::One(b) => b,
            Layout::Towers(t) => t[0],
            Layout::Data(d, _) => d[0],
            Layout::Hybrid(p, _) => p[0][0],
        }
    }

    /// How many devices, and how they are used, for the log.
    pub fn describe(&self) -> String {
        let names = |d: &[&B]| d.iter().map(|b| b.name()).collect::<Vec<_>>().join(", ");
        match self {
            Layout::One(b) => b.name(),
            Layout::Towers(t) => format!("two towers: {}", names(t)),
            Layout::Data(d, _) => format!(
                "{} data-parallel replica{}: {}",
                d.len(),
                if d.len() == 1 { "" } else { "s" },
                names(d)
            ),
            Layout::Hybrid(p, _) => format!(
                "{} data-parallel pair{} of towers: {}",
                p.len(),
                if p.len() == 1 { "" } else { "s" },
                p.iter()
                    .map(|t| format!("[{}]", names(t)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// The model for batches of `batch` images, initial weights from `seed`.
    pub fn build(self, topo: &Topology, batch: usize, seed: u64) -> Result<Box<dyn Model + 'a>> {
        Ok(match self {
            Layout::One(b) => Box::new(Network::new(b, topo, batch, seed)?),
            Layout::Towers(t) => Box::new(TowerNetwork::new(t, topo, batch, seed)?),
            Layout::Data(d, r) => Box::new(DataParallel::grouped(
                d,
                topo,
                batch,
                seed,
                BUCKET_BYTES,
                r,
            )?),
            Layout::Hybrid(p, r) => {
                Box::new(DataParallel::hybrid(p, topo, batch, seed, BUCKET_BYTES, r)?)
            }
        })
    }
}
