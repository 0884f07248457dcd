//! Which executor runs on which devices: `Layout` names one device, the
//! paper's two towers, data-parallel replicas or pairs of towers, and
//! `build` makes the `Model` for it.
use super::allreduce::AllReduce;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::memory::MemoryNeed;
use crate::model::net::Network;
use crate::model::replicas::DataParallel;
use crate::model::topology::{LayerShape, Topology};
use crate::model::towers::TowerNetwork;
use crate::model::trainable::Model;

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

/// The most f32s one all-reduce averages: a layer's weight gradient
/// (fc6's in `alexnet`), or with `towers` the larger tower's share of it,
/// split by output as the towers split it (`Topology::tower_split`).
fn largest_part(topo: &Topology, towers: bool) -> Result<usize> {
    let part = |s: &LayerShape| {
        let out = s.op_out.c.max(1);
        let share = match towers {
            true => topo.tower_split(out).into_iter().max().unwrap_or(out),
            false => out,
        };
        s.weight_params / out * share
    };
    Ok(topo.shapes()?.iter().map(part).max().unwrap_or(0))
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

    /// What the layout's networks take: in host memory and in its devices'
    /// (`MemoryNeed::network`, `on_device`), two towers' own buffers with
    /// them (model, hybrid), and on the CPU the compute threads' scratch.
    pub fn memory_needs(&self, topo: &Topology) -> Result<(MemoryNeed, MemoryNeed)> {
        let first = self.first();
        let threads = rayon::current_num_threads();
        let mut host = MemoryNeed::network(first, topo, self.copies())?
            .with_compute_threads(first, topo, threads)?;
        let reduce = match self {
            Layout::Data(_, r) => r.host_floats(largest_part(topo, false)?),
            Layout::Hybrid(_, r) => r.host_floats(largest_part(topo, true)?),
            _ => 0,
        };
        host.reduce = 4 * reduce as u64;
        let device = MemoryNeed::on_device(first, topo, self.copies())?;
        match self {
            Layout::Towers(_) | Layout::Hybrid(..) => Ok((
                host.with_towers(first, topo, false)?,
                device.with_towers(first, topo, true)?,
            )),
            _ => Ok((host, device)),
        }
    }

    /// Copies of the network's weights: one per replica (the two towers
    /// hold one copy between them).
    pub fn copies(&self) -> usize {
        match self {
            Layout::One(_) | Layout::Towers(_) => 1,
            Layout::Data(d, _) => d.len(),
            Layout::Hybrid(p, _) => p.len(),
        }
    }

    /// Every device of the layout, in order (one named twice appears twice).
    pub fn devices(&self) -> Vec<&'a B> {
        match self {
            Layout::One(b) => vec![*b],
            Layout::Towers(t) => t.to_vec(),
            Layout::Data(d, _) => d.clone(),
            Layout::Hybrid(p, _) => p.iter().flatten().copied().collect(),
        }
    }

    /// The device of a one-device layout, for commands that run one
    /// network (evaluation, prediction, features).
    pub fn one(&self) -> Result<&'a B> {
        match self {
            Layout::One(b) => Ok(b),
            _ => Err(Error::Config(format!(
                "this command runs on one device, not on {}; pass one, e.g. --gpus 0, or --cpu",
                self.describe()
            ))),
        }
    }

    /// The layout without its devices' names, which may differ between
    /// the machines of one run: what each process of a run must share.
    pub fn shape(&self) -> String {
        match self {
            Layout::One(_) => "one device".into(),
            Layout::Towers(_) => "two towers".into(),
            Layout::Data(d, _) => format!("--parallel data --replicas {}", d.len()),
            Layout::Hybrid(p, _) => format!("--parallel hybrid --replicas {}", p.len()),
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
