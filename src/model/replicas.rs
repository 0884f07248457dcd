//! Data parallelism: k replicas of the one-device network, one per device,
//! each taking its shard of every batch (B/k images), with the gradients
//! averaged across replicas by an all-reduce before the identical SGD step,
//! so the replicas stay equal and together compute the batch-B step.
//!
//! The all-reduce runs in buckets (the scheme of PyTorch's
//! DistributedDataParallel: Li et al., "PyTorch Distributed", VLDB 2020):
//! parameters are grouped, from the last layer down, into buckets of about
//! `bucket_bytes`; a bucket is reduced as soon as every replica has finished
//! the backward pass of its lowest layer, so on GPUs the reduction of the
//! upper layers overlaps the backward pass of the lower ones. Here the
//! replicas step through backward layer by layer in lockstep, which gives
//! the same order. `AllReduce` (in `dist`) is the transport.
//!
//! A replica is any executor that can run backward a layer at a time
//! (`Replica`): the grouped network on one device (data parallelism), or the
//! paper's two towers on two (hybrid: model-parallel pairs, data-parallel
//! across pairs). A tower's half of a tensor is reduced with the same half
//! on the other pairs ("part" 0 or 1), so no bytes cross between a pair's
//! devices for the reduction.
use super::loss_scale::LossScale;
use super::net::{no_forward, Mode, Network};
use super::step::StepMetrics;
use super::topology::Topology;
use super::towers::TowerNetwork;
use super::trainable::Model;
use crate::backend::{Backend, SgdParams};
use crate::dist::allreduce::AllReduce;
use crate::error::{Error, Result};
use crate::rng::hash_u64;

/// The devices of each tower across pairs: `[pairs' tower 0, pairs' tower 1]`
/// (the parts a hybrid run reduces separately).
pub fn tower_parts<'a, B>(pairs: &[[&'a B; 2]]) -> Vec<Vec<&'a B>> {
    (0..2)
        .map(|t| pairs.iter().map(|p| p[t]).collect())
        .collect()
}

/// One parameter tensor: (layer, weight or bias).
pub type Tensor = (usize, bool);

/// Buckets of parameter tensors from the last layer down, each closed once
/// it holds at least `bucket_bytes` (a tensor is never split).
pub fn plan_buckets(topo: &Topology, bucket_bytes: usize) -> Result<Vec<Vec<Tensor>>> {
    let shapes = topo.shapes()?;
    let mut buckets = Vec::new();
    let (mut cur, mut bytes) = (Vec::new(), 0usize);
    for i in (0..shapes.len()).rev() {
        for (is_w, len) in [
            (true, shapes[i].weight_params),
            (false, shapes[i].bias_params),
        ] {
            cur.push((i, is_w));
            bytes += len * std::mem::size_of::<f32>();
            if bytes >= bucket_bytes {
                buckets.push(std::mem::take(&mut cur));
                bytes = 0;
            }
        }
    }
    if !cur.is_empty() {
        buckets.push(cur);
    }
    Ok(buckets)
}

/// What data parallelism needs of an executor beyond `Model`: backward a
/// layer at a time, and each part of a parameter's gradient.
pub trait Replica<B: Backend>: Model {
    fn backward_begin(&mut self) -> Result<()>;
    fn backward_layer(&mut self, i: usize) -> Result<()>;
    /// How many devices hold a share of every tensor (1, or 2 for towers).
    fn parts(&self) -> usize;
    /// The gradient share of tensor (layer, weight or bias) on device `part`.
    fn grad_part(&mut self, layer: usize, is_w: bool, part: usize) -> &mut B::Buf;
    /// Where dropout masks come from (the initial weights keep `seed`).
    fn set_dropout_seed(&mut self, seed: u64);
    /// The last forward's mean loss, read from the device (waits for it).
    fn last_loss(&self) -> Result<f32>;
}

impl<B: Backend> Replica<B> for Network<'_, B> {
    fn backward_begin(&mut self) -> Result<()> {
        Network::backward_begin(self)
    }
    fn backward_layer(&mut self, i: usize) -> Result<()> {
        Network::backward_layer(self, i)
    }
    fn parts(&self) -> usize {
        1
    }
    fn grad_part(&mut self, layer: usize, is_w: bool, _part: usize) -> &mut B::Buf {
        self.grad_mut(layer, is_w)
    }
    fn set_dropout_seed(&mut self, seed: u64) {
        Network::set_dropout_seed(self, seed)
    }
    fn last_loss(&self) -> Result<f32> {
        Network::last_loss(self)
    }
}

impl<B: Backend> Replica<B> for TowerNetwork<'_, B> {
    fn backward_begin(&mut self) -> Result<()> {
        TowerNetwork::backward_begin(self)
    }
    fn backward_layer(&mut self, i: usize) -> Result<()> {
        TowerNetwork::backward_layer(self, i)
    }
    fn parts(&self) -> usize {
        2
    }
    fn grad_part(&mut self, layer: usize, is_w: bool, part: usize) -> &mut B::Buf {
        self.grad_mut(part, layer, is_w)
    }
    fn set_dropout_seed(&mut self, seed: u64) {
        TowerNetwork::set_dropout_seed(self, seed)
    }
    fn last_loss(&self) -> Result<f32> {
        TowerNetwork::last_loss(self)
    }
}

/// k replicas training as one: the trainer sees one `Model` at the whole
/// batch.
pub struct DataParallel<'a, B: Backend, M: Replica<B>> {
    nets: Vec<M>,
    /// Per part, each replica's device holding it.
    devs: Vec<Vec<&'a B>>,
    reduce: Box<dyn AllReduce<B> + 'a>,
    buckets: Vec<Vec<Tensor>>,
    /// The buckets in the order the last backward reduced them, each with
    /// the layer whose backward had just finished everywhere.
    reduced: Vec<(usize, usize)>,
    shard: usize,
    /// Images each replica took in the last forward.
    rows: Vec<usize>,
    /// Per step-metrics slot, `rows` as it was when the slot was recorded
    /// (the weights of the replicas' losses when they are combined).
    slot_rows: Vec<Vec<usize>>,
}

/// The images per replica, or an error when `batch` does not split evenly.
pub fn shard_size(batch: usize, k: usize) -> Result<usize> {
    if k == 0 || batch == 0 || !batch.is_multiple_of(k) {
        return Err(Error::Config(format!(
            "a batch of {batch} does not split evenly over {k} replicas; use a multiple of {k}"
        )));
    }
    Ok(batch / k)
}

impl<'a, B: Backend> DataParallel<'a, B, Network<'a, B>> {
    /// Data parallelism: one grouped network per device, each built for
    /// `batch / k` images with the same seed (so they start equal).
    pub fn grouped(
        devs: Vec<&'a B>,
        topo: &Topology,
        batch: usize,
        seed: u64,
        bucket_bytes: usize,
        reduce: Box<dyn AllReduce<B> + 'a>,
    ) -> Result<Self> {
        let shard = shard_size(batch, devs.len())?;
        let nets = devs
            .iter()
            .map(|be| Network::new(*be, topo, shard, seed))
            .collect::<Result<Vec<_>>>()?;
        DataParallel::new(nets, vec![devs], topo, seed, bucket_bytes, reduce)
    }
}

impl<'a, B: Backend> DataParallel<'a, B, TowerNetwork<'a, B>> {
    /// Hybrid parallelism: the paper's two towers on each pair of devices,
    /// data-parallel across the pairs.
    pub fn hybrid(
        pairs: Vec<[&'a B; 2]>,
        topo: &Topology,
        batch: usize,
        seed: u64,
        bucket_bytes: usize,
        reduce: Box<dyn AllReduce<B> + 'a>,
    ) -> Result<Self> {
        let shard = shard_size(batch, pairs.len())?;
        let nets = pairs
            .iter()
            .map(|p| TowerNetwork::new(*p, topo, shard, seed))
            .collect::<Result<Vec<_>>>()?;
        let devs = tower_parts(&pairs);
        DataParallel::new(nets, devs, topo, seed, bucket_bytes, reduce)
    }
}

impl<'a, B: Backend, M: Replica<B>> DataParallel<'a, B, M> {
    /// Replicas built alike (same table, shard size and seed), with
    /// `devs[part][r]` the device of replica r's share `part`. Each replica
    /// but the run's first draws its own dropout masks (the first keeps the
    /// seed's, so one replica is the plain network), numbered across
    /// processes so a run's masks do not depend on how it is spread.
    pub fn new(
        mut nets: Vec<M>,
        devs: Vec<Vec<&'a B>>,
        topo: &Topology,
        seed: u64,
        bucket_bytes: usize,
        reduce: Box<dyn AllReduce<B> + 'a>,
    ) -> Result<Self> {
        let parts = nets.first().map_or(0, |n| n.parts());
        if nets.is_empty() || devs.len() != parts || devs.iter().any(|d| d.len() != nets.len()) {
            return Err(Error::Config(format!(
                "data parallelism: {} replicas of {parts} parts each, but devices for {} parts",
                nets.len(),
                devs.len()
            )));
        }
        let first = reduce.first_replica();
        for (r, net) in nets.iter_mut().enumerate() {
            if first + r > 0 {
                net.set_dropout_seed(hash_u64(seed, (first + r) as u64));
            }
        }
        let shard = nets[0].batch();
        Ok(DataParallel {
            nets,
            devs,
            reduce,
            buckets: plan_buckets(topo, bucket_bytes)?,
            reduced: Vec::new(),
            shard,
            rows: Vec::new(),
            slot_rows: Vec::new(),
        })
    }

    /// Forward each replica's shard (images r*B/k .. (r+1)*B/k); returns the
    /// batch's mean loss. Training needs the whole batch (the gradients'
    /// mean over replicas is the batch's only for equal shards); evaluation
    /// splits any number of images as evenly as it can. Every replica's
    /// forward is queued before any loss is read: a read waits for its
    /// device, and the devices behind it would sit idle meanwhile.
    pub fn forward(&mut self, x: &[f32], labels: &[u32], mode: Mode) -> Result<f32> {
        self.forward_queued(x, labels, mode)?;
        // The replicas' losses weighted by their images, summed in replica
        // order in f64.
        let mut total = 0.0f64;
        for (net, &rows) in self.nets.iter().zip(&self.rows) {
            if rows > 0 {
                total += net.last_loss()? as f64 * rows as f64;
            }
        }
        Ok((total / labels.len() as f64) as f32)
    }

    /// `forward` with every replica's loss left on its device.
    pub fn forward_queued(&mut self, x: &[f32], labels: &[u32], mode: Mode) -> Result<()> {
        let (k, n) = (self.nets.len(), labels.len());
        if n == 0 || (mode == Mode::Train && n != self.shard * k) {
            return Err(Error::Shape {
                op: "forward",
                detail: format!(
                    "a training batch of {n} images for {k} replicas of {} each",
                    self.shard
                ),
            });
        }
        // Each replica checks its slice's shape; a remainder here would
        // fall between the slices unseen.
        if !x.len().is_multiple_of(n) {
            return Err(Error::Shape {
                op: "forward",
                detail: format!("an input of {} values is not {n} whole images", x.len()),
            });
        }
        let per_image = x.len() / n;
        self.rows = (0..k).map(|r| n / k + usize::from(r < n % k)).collect();
        let mut a = 0;
        for (net, &rows) in self.nets.iter_mut().zip(&self.rows) {
            if rows == 0 {
                continue;
            }
            let b = a + rows;
            net.forward_queued(&x[a * per_image..b * per_image], &labels[a..b], mode)?;
            a = b;
        }
        Ok(())
    }

    /// Each replica that took images records its step in slot `slot`.
    pub fn record_step(&mut self, slot: usize) -> Result<()> {
        if self.rows.is_empty() {
            return Err(no_forward("record_step"));
        }
        for (net, &rows) in self.nets.iter_mut().zip(&self.rows) {
            if rows > 0 {
                net.record_step(slot)?;
            }
        }
        if self.slot_rows.len() <= slot {
            self.slot_rows.resize(slot + 1, Vec::new());
        }
        self.slot_rows[slot].clone_from(&self.rows);
        Ok(())
    }

    /// The first `n` slots, the replicas combined as `forward` combines
    /// them: hits summed, losses weighted by images and summed in replica
    /// order in f64, then divided by the batch.
    pub fn read_steps(&mut self, n: usize) -> Result<Vec<StepMetrics>> {
        if n > self.slot_rows.len() {
            return Err(Error::Shape {
                op: "read_steps",
                detail: format!("{n} steps asked, {} recorded", self.slot_rows.len()),
            });
        }
        let per: Vec<Vec<StepMetrics>> = self
            .nets
            .iter_mut()
            .map(|net| net.read_steps(n))
            .collect::<Result<_>>()?;
        Ok((0..n)
            .map(|s| combine(per.iter().map(|p| p[s]), &self.slot_rows[s]))
            .collect())
    }

    /// Backward on every replica, layer by layer from the top, reducing each
    /// bucket as soon as its lowest layer is done everywhere.
    pub fn backward(&mut self) -> Result<()> {
        if self.rows.iter().any(|&r| r != self.shard) {
            return Err(Error::Shape {
                op: "backward",
                detail: "backward needs a training forward of the whole batch".into(),
            });
        }
        self.reduced.clear();
        for net in &mut self.nets {
            net.backward_begin()?;
        }
        let layers = self.nets[0].topology().layers.len();
        let mut next = 0;
        for i in (0..layers).rev() {
            for net in &mut self.nets {
                net.backward_layer(i)?;
            }
            while next < self.buckets.len() && self.buckets[next].iter().all(|&(l, _)| l >= i) {
                self.reduce_bucket(next)?;
                self.reduced.push((next, i));
                next += 1;
            }
        }
        Ok(())
    }

    fn reduce_bucket(&mut self, b: usize) -> Result<()> {
        for &(layer, is_w) in &self.buckets[b] {
            for part in 0..self.devs.len() {
                let mut bufs: Vec<&mut B::Buf> = self
                    .nets
                    .iter_mut()
                    .map(|n| n.grad_part(layer, is_w, part))
                    .collect();
                self.reduce.mean(part, &self.devs[part], &mut bufs)?;
            }
        }
        Ok(())
    }

    /// The same SGD step on every replica (their gradients are equal now,
    /// so with loss scaling they also agree on skipping).
    pub fn sgd_step(&mut self, hp: &SgdParams) -> Result<()> {
        for net in &mut self.nets {
            net.sgd_step(hp)?;
        }
        Ok(())
    }

    /// Replica `r` (to read its parameters and gradients).
    pub fn replica(&self, r: usize) -> &M {
        &self.nets[r]
    }

    pub fn replicas(&self) -> usize {
        self.nets.len()
    }

    pub fn buckets(&self) -> &[Vec<Tensor>] {
        &self.buckets
    }

    /// (bucket, layer just finished) for each reduction of the last backward.
    pub fn reduction_order(&self) -> &[(usize, usize)] {
        &self.reduced
    }

    /// For each flag, whether any replica of the run, in any process, says
    /// yes: each replica's 1s and 0s averaged by the gradients' all-reduce
    /// (part 0's), so the answer needs no transport of its own.
    pub fn any_process(&mut self, local: &[bool]) -> Result<Vec<bool>> {
        let devs = &self.devs[0];
        let say: Vec<f32> = local.iter().map(|&b| if b { 1.0 } else { 0.0 }).collect();
        let mut bufs = Vec::with_capacity(devs.len());
        for dev in devs {
            let mut b = dev.alloc_param(say.len())?;
            dev.upload(&say, &mut b)?;
            bufs.push(b);
        }
        let mut refs: Vec<&mut B::Buf> = bufs.iter_mut().collect();
        self.reduce.mean(0, devs, &mut refs)?;
        let mut mean = vec![0.0; say.len()];
        devs[0].download(&bufs[0], &mut mean)?;
        Ok(mean.iter().map(|&m| m > 0.0).collect())
    }

    /// Rows of every replica's `get` in shard order: [B, classes].
    fn concat(&self, get: impl Fn(&M) -> Result<Vec<f32>>) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        for (net, &rows) in self.nets.iter().zip(&self.rows) {
            if rows > 0 {
                out.extend(get(net)?);
            }
        }
        Ok(out)
    }
}

/// One step's metrics from each replica's (in replica order) with the
/// images each took: replicas without images are left out.
fn combine(each: impl Iterator<Item = StepMetrics>, rows: &[usize]) -> StepMetrics {
    let (mut total, mut hits, mut n) = (0.0f64, 0usize, 0usize);
    for (m, &r) in each.zip(rows) {
        if r == 0 {
            continue;
        }
        total += m.loss as f64 * r as f64;
        hits += m.hits;
        n += r;
    }
    StepMetrics {
        loss: (total / n as f64) as f32,
        hits,
    }
}

/// The replicas as one network: parameters are read from replica 0 (all
/// hold the same) and written to every replica.
impl<B: Backend, M: Replica<B>> Model for DataParallel<'_, B, M> {
    fn topology(&self) -> &Topology {
        self.nets[0].topology()
    }
    fn batch(&self) -> usize {
        self.shard * self.nets.len()
    }
    fn forward(&mut self, x: &[f32], labels: &[u32], mode: Mode) -> Result<f32> {
        DataParallel::forward(self, x, labels, mode)
    }
    fn forward_queued(&mut self, x: &[f32], labels: &[u32], mode: Mode) -> Result<()> {
        DataParallel::forward_queued(self, x, labels, mode)
    }
    fn record_step(&mut self, slot: usize) -> Result<()> {
        DataParallel::record_step(self, slot)
    }
    fn read_steps(&mut self, n: usize) -> Result<Vec<StepMetrics>> {
        DataParallel::read_steps(self, n)
    }
    /// Every replica's buffer has the same slots.
    fn step_slots(&self) -> usize {
        self.nets[0].step_slots()
    }
    fn backward(&mut self) -> Result<()> {
        DataParallel::backward(self)
    }
    fn sgd_step(&mut self, hp: &SgdParams) -> Result<()> {
        DataParallel::sgd_step(self, hp)
    }
    fn probs(&self) -> Result<Vec<f32>> {
        self.concat(|n| n.probs())
    }
    fn logits(&self) -> Result<Vec<f32>> {
        self.concat(|n| n.logits())
    }
    fn steps(&self) -> u64 {
        self.nets[0].steps()
    }
    fn set_steps(&mut self, step: u64) {
        self.nets.iter_mut().for_each(|n| n.set_steps(step));
    }
    fn set_loss_scale(&mut self, ls: Option<LossScale>) {
        self.nets
            .iter_mut()
            .for_each(|n| n.set_loss_scale(ls.clone()));
    }
    fn loss_scale(&self) -> Option<&LossScale> {
        self.nets[0].loss_scale()
    }
    fn last_step_skipped(&self) -> bool {
        self.nets[0].last_step_skipped()
    }
    fn param_names(&self) -> Vec<String> {
        self.nets[0].param_names()
    }
    fn param_shape(&self, name: &str) -> Result<Vec<usize>> {
        self.nets[0].param_shape(name)
    }
    fn param(&self, name: &str) -> Result<Vec<f32>> {
        self.nets[0].param(name)
    }
    fn set_param(&mut self, name: &str, values: &[f32]) -> Result<()> {
        self.nets
            .iter_mut()
            .try_for_each(|n| n.set_param(name, values))
    }
    fn momentum(&self, name: &str) -> Result<Vec<f32>> {
        self.nets[0].momentum(name)
    }
    fn grad(&self, name: &str) -> Result<Vec<f32>> {
        self.nets[0].grad(name)
    }
    fn set_momentum(&mut self, name: &str, values: &[f32]) -> Result<()> {
        self.nets
            .iter_mut()
            .try_for_each(|n| n.set_momentum(name, values))
    }
    /// Between each replica's towers (the all-reduce is not counted here).
    fn exchanged_bytes(&self) -> u64 {
        self.nets.iter().map(|n| n.exchanged_bytes()).sum()
    }
    fn any_process(&mut self, local: &[bool]) -> Result<Vec<bool>> {
        DataParallel::any_process(self, local)
    }
}
