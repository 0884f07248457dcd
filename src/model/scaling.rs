//! `alexnet-cuda scaling`: the bytes each GPU sends per training step under
//! the paper's model parallelism (two towers), data parallelism (N replicas,
//! ring all-reduce of the gradients) and the hybrid (model-parallel pairs,
//! data-parallel across pairs), and the step time and speed-up those bytes
//! allow on a given link, all derived from the topology table. docs/scaling.md
//! prints its output.
//!
//! Model of a step (an estimate, not a measurement): compute time is the
//! one-GPU step time `t1` at the whole batch times the share of the work a
//! GPU does (1/N of the images; half of every layer for a tower), as if
//! throughput did not depend on the per-GPU batch. Communication time is the
//! bytes a GPU sends divided by the link's one-direction bandwidth. The step
//! takes between max(compute, comm) (communication fully overlapped) and
//! compute + comm (none overlapped).
//!
//! Ring all-reduce of G bytes over N GPUs: each sends 2 (N - 1) / N * G
//! (reduce-scatter, then all-gather; Patarasuk and Yuan, J. Parallel Distrib.
//! Comput. 69(2), 2009, the algorithm NCCL's ring uses).
use std::fmt::Write;

use super::summary::thousands;
use super::topology::Topology;
use crate::error::Result;

/// A link between GPUs, with its bandwidth per direction.
pub struct Link {
    pub name: &'static str,
    pub gb_per_s: f64,
    pub source: &'static str,
}

/// The links the table is computed for.
pub const LINKS: [Link; 4] = [
    Link {
        name: "NVLink 4",
        gb_per_s: 450.0,
        source: "H100/H200 SXM: 900 GB/s total, 450 each way (NVIDIA H100 datasheet)",
    },
    Link {
        name: "PCIe 5.0 x16",
        gb_per_s: 63.0,
        source: "32 GT/s x 16 lanes, 128b/130b coding (PCI Express 5.0 specification)",
    },
    Link {
        name: "PCIe 4.0 x16",
        gb_per_s: 31.5,
        source: "16 GT/s x 16 lanes, 128b/130b coding (PCI Express 4.0 specification)",
    },
    Link {
        name: "InfiniBand NDR (across nodes)",
        gb_per_s: 50.0,
        source: "400 Gb/s per port, one port per GPU (as in NVIDIA's DGX H100)",
    },
];

/// How the GPUs share the work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// The paper's two towers.
    Model,
    /// N replicas, each on batch/N.
    Data,
    /// N/2 model-parallel pairs, data-parallel across pairs.
    Hybrid,
}

/// One row: what a GPU sends per step and the time that leaves.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub scheme: Scheme,
    pub gpus: usize,
    /// Bytes each GPU sends per step: activations (towers) and gradients (all-reduce).
    pub activation_bytes: u64,
    pub gradient_bytes: u64,
    /// Share of the one-GPU step's compute each GPU does.
    pub compute_share: f64,
}

impl Row {
    pub fn bytes(&self) -> u64 {
        self.activation_bytes + self.gradient_bytes
    }
    /// (communication ms, best step ms, worst step ms, best speed-up, worst speed-up).
    pub fn times(&self, t1_ms: f64, link_gb_s: f64) -> (f64, f64, f64, f64, f64) {
        let comm = self.bytes() as f64 / (link_gb_s * 1e9) * 1e3;
        let compute = t1_ms * self.compute_share;
        let (best, worst) = (compute.max(comm), compute + comm);
        (comm, best, worst, t1_ms / best, t1_ms / worst)
    }
}

/// Ring all-reduce: bytes each of `n` GPUs sends to reduce `g` bytes.
pub fn ring_bytes(g: u64, n: usize) -> u64 {
    if n <= 1 {
        return 0;
    }
    2 * (n as u64 - 1) * g / n as u64
}

/// The rows for `gpus` GPUs at a global batch of `batch` images; a
/// scheme whose replicas the batch does not split over evenly (as `train`
/// requires: `replicas::shard_size`) has no row.
pub fn rows(t: &Topology, batch: usize, gpus: usize) -> Result<Vec<Row>> {
    let params = t.param_count()? as u64;
    let f32_bytes = std::mem::size_of::<f32>() as u64;
    let mut out = Vec::new();
    if gpus == 2 && t.towers == 2 {
        // Each tower sends its half of every exchange (forward) and of every
        // exchange's gradient (backward): half the table's total.
        out.push(Row {
            scheme: Scheme::Model,
            gpus,
            activation_bytes: t.exchange_bytes_per_step(batch)? / 2,
            gradient_bytes: 0,
            compute_share: 0.5,
        });
    }
    if gpus >= 2 && batch.is_multiple_of(gpus) {
        out.push(Row {
            scheme: Scheme::Data,
            gpus,
            activation_bytes: 0,
            gradient_bytes: ring_bytes(params * f32_bytes, gpus),
            compute_share: 1.0 / gpus as f64,
        });
    }
    if gpus >= 4 && gpus.is_multiple_of(2) && t.towers == 2 && batch.is_multiple_of(gpus / 2) {
        let pairs = gpus / 2;
        // A tower's parameters: its rows of every layer (about half).
        let tower0: u64 = t
            .shapes()?
            .iter()
            .zip(&t.layers)
            .map(|(s, l)| {
                let rows = l.out_channels();
                let mine = t.tower_split(rows)[0];
                ((s.weight_params / rows + 1) * mine) as u64
            })
            .sum();
        out.push(Row {
            scheme: Scheme::Hybrid,
            gpus,
            activation_bytes: t.exchange_bytes_per_step(batch / pairs)? / 2,
            gradient_bytes: ring_bytes(tower0 * f32_bytes, pairs),
            compute_share: 0.5 / pairs as f64,
        });
    }
    Ok(out)
}

fn mb(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1e6)
}

/// The markdown tables `alexnet-cuda scaling` prints.
pub fn render(t: &Topology, batch: usize, t1_ms: f64) -> Result<String> {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "config {}: {} parameters ({} MB of f32 gradients), global batch {batch}, one-GPU step {t1_ms} ms\n",
        t.name,
        thousands(t.param_count()? as u64),
        mb(t.param_count()? as u64 * 4)
    );
    let _ = writeln!(s, "| scheme | GPUs | MB sent per GPU per step (activations + gradients) | link | comm ms | step ms (overlapped .. not) | speed-up (overlapped .. not) |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    let mut none = true;
    for gpus in [2, 4, 8, 16] {
        for r in rows(t, batch, gpus)? {
            none = false;
            // Within a node: NVLink and PCIe. 16 GPUs are two nodes of 8,
            // where the ring crosses InfiniBand.
            let links: Vec<&Link> = if gpus > 8 {
                LINKS
                    .iter()
                    .filter(|l| l.name.starts_with("InfiniBand"))
                    .collect()
            } else {
                LINKS
                    .iter()
                    .filter(|l| !l.name.starts_with("InfiniBand"))
                    .collect()
            };
            for l in links {
                let (comm, best, worst, up_best, up_worst) = r.times(t1_ms, l.gb_per_s);
                let _ = writeln!(
                    s,
                    "| {:?} | {gpus} | {} ({} + {}) | {} | {comm:.2} | {best:.2} .. {worst:.2} | {up_best:.2}x .. {up_worst:.2}x |",
                    r.scheme,
                    mb(r.bytes()),
                    mb(r.activation_bytes),
                    mb(r.gradient_bytes),
                    l.name
                );
            }
        }
    }
    if none {
        let _ = writeln!(s, "(no scheme runs a batch of {batch} on 2 to 16 GPUs: data parallelism splits the batch evenly over them, and model and hybrid parallelism need a two-tower config)");
    }
    let _ = writeln!(s, "\nLinks (bandwidth one way):");
    for l in &LINKS {
        let _ = writeln!(s, "- {}: {} GB/s; {}", l.name, l.gb_per_s, l.source);
    }
    Ok(s)
}
