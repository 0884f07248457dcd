//! The measurements under `bench-step`: `warmup + steps` training steps on
//! one fixed random batch, the last `steps` timed; the time of each phase
//! of a step; and the batch and SGD settings they use.
use std::time::Instant;

use anyhow::{bail, Result};
use serde::Serialize;

use alexnet_cuda::backend::{Backend, SgdParams};
use alexnet_cuda::data::hostmem::HostBuf;
use alexnet_cuda::model::net::Mode;
use alexnet_cuda::model::profile::median;
use alexnet_cuda::model::topology::Topology;
use alexnet_cuda::model::trainable::Model;
use alexnet_cuda::rng::Rng;

/// What `timed_steps` measured: every step's loss, and the timed steps'
/// count and mean and median seconds.
pub struct Timed {
    pub losses: Vec<f32>,
    pub steps: usize,
    pub mean: f64,
    pub median: f64,
}

impl Timed {
    /// The step time to quote: the median on the CPU, where each step's
    /// own time is known; the mean on a GPU, where work is queued.
    pub fn step_s(&self, cpu: bool) -> f64 {
        if cpu {
            self.median
        } else {
            self.mean
        }
    }
}

/// Median milliseconds of each phase of a step, each ended by a wait for
/// the device (null where no phase steps ran): bench-step's "phases".
#[derive(Serialize)]
pub struct Phases {
    pub upload_ms: Option<f64>,
    pub forward_ms: Option<f64>,
    pub backward_ms: Option<f64>,
    pub sgd_ms: Option<f64>,
}

/// `warmup + steps` training steps on one batch, the last `steps` timed,
/// queued as `train` queues them: the loss stays on the device
/// (`record_step`) and is read back when the metrics buffer is full and at
/// the end, not after each forward, which would make a GPU wait for the
/// host every step. The logits' download waits for the queued work:
/// before the clock starts, so the last warm-up step's backward and update
/// are not counted, and at the end, so the last timed step's are.
/// Per-step times (the median) only mean something on the CPU, where
/// nothing is queued.
pub fn timed_steps(
    model: &mut dyn Model,
    x: &[f32],
    labels: &[u32],
    hp: &SgdParams,
    warmup: usize,
    steps: usize,
) -> Result<Timed> {
    let mut losses = Vec::with_capacity(warmup + steps);
    let mut times = Vec::with_capacity(steps);
    let slots = model.step_slots().max(1);
    let mut recorded = 0;
    let mut t0 = Instant::now();
    for i in 0..warmup + steps {
        if i == warmup {
            if warmup > 0 {
                model.logits()?;
            }
            t0 = Instant::now();
        }
        let t = Instant::now();
        model.forward_queued(x, labels, Mode::Train)?;
        model.record_step(recorded)?;
        recorded += 1;
        model.backward()?;
        model.sgd_step(hp)?;
        if recorded == slots {
            read_losses(model, &mut recorded, &mut losses)?;
        }
        if i >= warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    model.logits()?;
    let mean = t0.elapsed().as_secs_f64() / steps as f64;
    read_losses(model, &mut recorded, &mut losses)?;
    let median = median(&mut times).unwrap_or(f64::NAN);
    Ok(Timed {
        losses,
        steps,
        mean,
        median,
    })
}

/// The `recorded` steps' losses from the device onto `losses`.
fn read_losses(model: &mut dyn Model, recorded: &mut usize, losses: &mut Vec<f32>) -> Result<()> {
    let read = model.read_steps(*recorded)?;
    losses.extend(read.iter().map(|m| m.loss));
    *recorded = 0;
    Ok(())
}

/// Where a step's time goes: `n` more steps with a wait after each phase
/// (forward includes the upload and the loss read-back), and the upload
/// alone. Medians, in milliseconds.
pub fn phase_times<B: Backend>(
    be: &B,
    model: &mut dyn Model,
    x: &[f32],
    labels: &[u32],
    hp: &SgdParams,
    n: usize,
) -> Result<Phases> {
    let mut phases = [const { Vec::new() }; 4];
    // The upload timed alone, into a buffer of its own (bench-step's plan
    // counts it): empty when no phases are timed, so that a run with
    // --phase-steps 0 measures the network's memory alone.
    let mut probe = be.alloc(if n > 0 { x.len() } else { 0 })?;
    let waited = |t: Instant| -> Result<f64> {
        be.synchronize()?;
        Ok(t.elapsed().as_secs_f64())
    };
    for _ in 0..n {
        let t = Instant::now();
        be.upload(x, &mut probe)?;
        phases[0].push(waited(t)?);
        let t = Instant::now();
        model.forward(x, labels, Mode::Train)?;
        phases[1].push(waited(t)?);
        let t = Instant::now();
        model.backward()?;
        phases[2].push(waited(t)?);
        let t = Instant::now();
        model.sgd_step(hp)?;
        phases[3].push(waited(t)?);
    }
    let [upload, forward, backward, sgd] = phases.map(|mut v| median(&mut v).map(|s| s * 1e3));
    Ok(Phases {
        upload_ms: upload,
        forward_ms: forward,
        backward_ms: backward,
        sgd_ms: sgd,
    })
}

/// bench-step's fixed random batch, in the memory the trainer's loader
/// would use (pinned on a GPU), so the upload costs what it costs in training.
pub fn bench_batch<B: Backend>(
    be: &B,
    topo: &Topology,
    batch: usize,
) -> Result<(HostBuf, Vec<u32>)> {
    let mut rng = Rng::new(7);
    let mut x = HostBuf::default();
    x.resize(
        batch * topo.channels * topo.crop * topo.crop,
        be.host_alloc().as_ref(),
    )?;
    for v in x.iter_mut() {
        *v = rng.normal() as f32;
    }
    let labels = (0..batch).map(|_| rng.below(topo.classes) as u32).collect();
    Ok((x, labels))
}

/// The paper's SGD settings at bench-step's --lr.
pub fn bench_hp(lr: f32) -> Result<SgdParams> {
    if !(lr >= 0.0 && lr.is_finite()) {
        bail!("--lr must be a non-negative number, not {lr}");
    }
    Ok(SgdParams {
        lr,
        momentum: 0.9,
        weight_decay: 5e-4,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alexnet_cuda::backend::cpu::CpuBackend;
    use alexnet_cuda::model::net::Network;

    /// The queued steps' losses, read back a buffer at a time, are the
    /// losses each forward returns when read at once: every step's, in
    /// order, across the metrics buffer's wrap.
    #[test]
    fn queued_losses_are_each_steps_loss_in_order() {
        let be = CpuBackend::new();
        let topo = Topology::cifar();
        let (x, labels) = bench_batch(&be, &topo, 2).expect("batch");
        // bench-step's own rate: 0.01 on one fixed random batch of two
        // diverges within ten steps, and NaN losses never compare equal.
        let hp = bench_hp(1e-4).expect("hp");
        let mut net = Network::new(&be, &topo, 2, 3).expect("net");
        let (warmup, steps) = (2, net.step_slots() + 3);
        let timed = timed_steps(&mut net, &x, &labels, &hp, warmup, steps).expect("timed");
        let mut by_hand = Network::new(&be, &topo, 2, 3).expect("net");
        let want: Vec<f32> = (0..warmup + steps)
            .map(|_| {
                let loss = by_hand.forward(&x, &labels, Mode::Train).expect("forward");
                by_hand.backward().expect("backward");
                by_hand.sgd_step(&hp).expect("sgd");
                loss
            })
            .collect();
        assert!(want.iter().all(|l| l.is_finite()), "{want:?}");
        assert_eq!(timed.losses, want);
    }
}
