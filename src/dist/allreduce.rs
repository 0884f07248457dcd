//! The all-reduce that averages a buffer across data-parallel replicas
//! (ARCHITECTURE.md, "Distribution"): the `AllReduce` trait and
//! `HostAllReduce`, which sums in process (CPU replicas, or replicas sharing
//! a GPU). `tcp` is the transport across processes on CPU devices,
//! `backend::cuda::nccl` the one on GPUs. Every host-side reduction here
//! sums in replica order, so their results agree bit for bit.
use crate::backend::Backend;
use crate::error::Result;

/// Averages one buffer across replicas: afterwards every replica's buffer
/// holds the mean of what they held. `part` says which share of a tensor
/// the buffers are (a tower's half under hybrid parallelism; 0 otherwise),
/// for transports that keep one communicator per part.
pub trait AllReduce<B: Backend> {
    fn mean(&mut self, part: usize, devs: &[&B], bufs: &mut [&mut B::Buf]) -> Result<()>;
    /// The index of this process's first replica among all processes'
    /// (0 in a one-process run): it picks the replicas' dropout streams.
    fn first_replica(&self) -> usize {
        0
    }
    /// The f32s of host memory this transport keeps to average buffers of
    /// up to `len` values (the memory plan counts them): none where the
    /// devices reduce among themselves.
    fn host_floats(&self, _len: usize) -> usize {
        0
    }
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
    fn mean(&mut self, _part: usize, devs: &[&B], bufs: &mut [&mut B::Buf]) -> Result<()> {
        let Some(first) = bufs.first() else {
            return Ok(());
        };
        self.sum.clear();
        self.sum.resize(devs[0].buf_len(first), 0.0);
        add_replicas(devs, bufs, &mut self.sum, &mut self.part)?;
        scale(&mut self.sum, bufs.len());
        upload_all(devs, bufs, &self.sum)
    }

    /// The sum and the replica being added to it.
    fn host_floats(&self, len: usize) -> usize {
        2 * len
    }
}

/// sum += each replica's buffer, in replica order: the one order every
/// host-side all-reduce here sums in, so their results agree bit for bit.
pub(crate) fn add_replicas<B: Backend>(
    devs: &[&B],
    bufs: &[&mut B::Buf],
    sum: &mut [f32],
    scratch: &mut Vec<f32>,
) -> Result<()> {
    scratch.resize(sum.len(), 0.0);
    for (dev, buf) in devs.iter().zip(bufs) {
        dev.download(buf, scratch)?;
        add(sum, scratch);
    }
    Ok(())
}

/// s += p, element by element.
pub(crate) fn add(s: &mut [f32], p: &[f32]) {
    for (a, b) in s.iter_mut().zip(p) {
        *a += b;
    }
}

/// A sum of `k` buffers into their mean.
pub(crate) fn scale(sum: &mut [f32], k: usize) {
    let inv = 1.0 / k as f32;
    sum.iter_mut().for_each(|s| *s *= inv);
}

/// Every replica's buffer set to `values`.
pub(crate) fn upload_all<B: Backend>(
    devs: &[&B],
    bufs: &mut [&mut B::Buf],
    values: &[f32],
) -> Result<()> {
    for (dev, buf) in devs.iter().zip(bufs.iter_mut()) {
        dev.upload(values, buf)?;
    }
    Ok(())
}
