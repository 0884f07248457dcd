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
//! the same order. `AllReduce` is the transport: `HostAllReduce` sums in
//! process (CPU replicas); NCCL is the GPU one (not built yet).
use super::net::{Mode, Network};
use super::topology::Topology;
use crate::backend::{Backend, SgdParams};
use crate::error::{Error, Result};

/// Averages one buffer across replicas: afterwards every replica's buffer
/// holds the mean of what they held.
pub trait AllReduce<B: Backend> {
    fn mean(&mut self, devs: &[&B], bufs: &mut [&mut B::Buf]) -> Result<()>;
}

/// In-process all-reduce: each replica's buffer comes to the host, the sum
/// is taken in rank order (so the result is the same on every run), scaled
/// by 1/k, and written back to every replica.
#[derive(Default)]
pub struct HostAllReduce {
    sum: Vec<f32>,
    part: Vec<f32>,
}

impl<B: Backend> AllReduce<B> for HostAllReduce {
    fn mean(&mut self, devs: &[&B], bufs: &mut [&mut B::Buf]) -> Result<()> {
        let Some(first) = bufs.first() else {
            return Ok(());
        };
        let len = devs[0].buf_len(first);
        self.sum.clear();
        self.sum.resize(len, 0.0);
        self.part.resize(len, 0.0);
        for (dev, buf) in devs.iter().zip(bufs.iter()) {
            dev.download(buf, &mut self.part)?;
            for (s, p) in self.sum.iter_mut().zip(&self.part) {
                *s += p;
            }
        }
        let inv = 1.0 / bufs.len() as f32;
        for s in &mut self.sum {
            *s *= inv;
        }
        for (dev, buf) in devs.iter().zip(bufs.iter_mut()) {
            dev.upload(&self.sum, buf)?;
        }
        Ok(())
    }
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

/// k replicas training as one.
pub struct DataParallel<'a, B: Backend, R: AllReduce<B>> {
    nets: Vec<Network<'a, B>>,
    devs: Vec<&'a B>,
    reduce: R,
    buckets: Vec<Vec<Tensor>>,
    /// The buckets in the order the last backward reduced them, each with
    /// the layer whose backward had just finished everywhere.
    reduced: Vec<(usize, usize)>,
    shard: usize,
}

impl<'a, B: Backend, R: AllReduce<B>> DataParallel<'a, B, R> {
    /// One replica per device, each built for `batch / k` images with the
    /// same seed (so they start equal); `batch` must divide evenly.
    pub fn new(
        devs: Vec<&'a B>,
        topo: &Topology,
        batch: usize,
        seed: u64,
        bucket_bytes: usize,
        reduce: R,
    ) -> Result<Self> {
        let k = devs.len();
        if k == 0 || batch == 0 || !batch.is_multiple_of(k) {
            return Err(Error::Config(format!(
                "a batch of {batch} does not split evenly over {k} replicas; use a multiple of {k}"
            )));
        }
        let shard = batch / k;
        let nets = devs
            .iter()
            .map(|be| Network::new(*be, topo, shard, seed))
            .collect::<Result<Vec<_>>>()?;
        Ok(DataParallel {
            nets,
            devs,
            reduce,
            buckets: plan_buckets(topo, bucket_bytes)?,
            reduced: Vec::new(),
            shard,
        })
    }

    /// Forward each replica's shard (images r*B/k .. (r+1)*B/k); returns the
    /// batch's mean loss (the mean of the equal shards' means).
    pub fn forward(&mut self, x: &[f32], labels: &[u32], mode: Mode) -> Result<f32> {
        let k = self.nets.len();
        if labels.len() != self.shard * k {
            return Err(Error::Shape {
                op: "forward",
                detail: format!(
                    "a batch of {} images for {k} replicas of {} each",
                    labels.len(),
                    self.shard
                ),
            });
        }
        let per_image = x.len() / labels.len();
        let mut total = 0.0f64;
        for (r, net) in self.nets.iter_mut().enumerate() {
            let (a, b) = (r * self.shard, (r + 1) * self.shard);
            total += net.forward(&x[a * per_image..b * per_image], &labels[a..b], mode)? as f64;
        }
        Ok((total / k as f64) as f32)
    }

    /// Backward on every replica, layer by layer from the top, reducing each
    /// bucket as soon as its lowest layer is done everywhere.
    pub fn backward(&mut self) -> Result<()> {
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
            let mut bufs: Vec<&mut B::Buf> = self
                .nets
                .iter_mut()
                .map(|n| {
                    let (dw, db) = n.grads_mut(layer);
                    if is_w {
                        dw
                    } else {
                        db
                    }
                })
                .collect();
            self.reduce.mean(&self.devs, &mut bufs)?;
        }
        Ok(())
    }

    /// The same SGD step on every replica (their gradients are equal now).
    pub fn sgd_step(&mut self, hp: &SgdParams) -> Result<()> {
        for net in &mut self.nets {
            net.sgd_step(hp)?;
        }
        Ok(())
    }

    /// Replica `r`'s network (to read its parameters and gradients).
    pub fn replica(&self, r: usize) -> &Network<'a, B> {
        &self.nets[r]
    }

    pub fn buckets(&self) -> &[Vec<Tensor>] {
        &self.buckets
    }

    /// (bucket, layer just finished) for each reduction of the last backward.
    pub fn reduction_order(&self) -> &[(usize, usize)] {
        &self.reduced
    }

    /// The batch's logits, [B, classes]: the replicas' in shard order.
    pub fn logits(&self) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        for net in &self.nets {
            out.extend(net.logits()?);
        }
        Ok(out)
    }
}
