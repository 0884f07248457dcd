//! From the command line's `--cpu` / `--gpus` / `--parallel` / `--replicas`
//! to devices and a `Layout` (DESIGN.md, Multi-GPU): how many backends to
//! open, which pairs hold the two towers, and which all-reduce sums the
//! replicas' gradients (NCCL on GPUs; on CPU devices in process, or over
//! TCP across processes).
//!
//! Backends have associated types, so code that runs on a layout is a
//! `OnLayout` value whose generic `run` is called with the CPU or CUDA one.
use tracing::{info, warn};

use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::{nccl, probe, CudaBackend, CudaOptions};
use crate::backend::Backend;
use crate::device::parse_gpus;
use crate::error::{Error, Result};
use crate::model::replicas::{tower_parts, AllReduce, HostAllReduce};
use crate::model::tcp_reduce::TcpAllReduce;
use crate::model::trainable::Layout;
use crate::world::World;

/// How several devices share the work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parallel {
    /// One device (the grouped network).
    None,
    /// The paper's two towers on two devices.
    Model,
    /// One replica per device, gradients averaged.
    Data,
    /// Towers on each pair of devices, data-parallel across the pairs.
    Hybrid,
}

impl std::str::FromStr for Parallel {
    type Err = Error;
    fn from_str(s: &str) -> Result<Parallel> {
        match s {
            "none" => Ok(Parallel::None),
            "model" => Ok(Parallel::Model),
            "data" => Ok(Parallel::Data),
            "hybrid" => Ok(Parallel::Hybrid),
            _ => Err(Error::Config(format!(
                "--parallel {s}: use model (the paper's two towers), data or hybrid"
            ))),
        }
    }
}

/// What the flags asked for.
#[derive(Clone, Debug)]
pub struct Request {
    pub cpu: bool,
    pub gpus: Option<String>,
    pub parallel: Option<Parallel>,
    /// CPU devices for --cpu --parallel data, pairs for hybrid.
    pub replicas: usize,
    pub cuda: CudaOptions,
}

/// Code to run on whichever backend the request resolves to.
pub trait OnLayout {
    type Out;
    fn run<B: Backend>(self, layout: Layout<'_, B>) -> Result<Self::Out>;
}

/// The parallelism `--gpus LIST` implies without `--parallel`: none for one
/// GPU, the paper's towers for two; more must say which.
fn implied(n: usize, list: &str) -> Result<Parallel> {
    match n {
        1 => Ok(Parallel::None),
        2 => Ok(Parallel::Model),
        _ => Err(Error::Config(format!(
            "--gpus {list}: {n} GPUs; say how to use them: --parallel data (a replica per GPU) or --parallel hybrid (the two towers on each pair)"
        ))),
    }
}

/// How many devices a parallelism needs, given `n` listed, or an error.
fn check_count(p: Parallel, n: usize, what: &str) -> Result<()> {
    let ok = match p {
        Parallel::None => n == 1,
        Parallel::Model => n == 2,
        Parallel::Data => n >= 1,
        Parallel::Hybrid => n >= 2 && n.is_multiple_of(2),
    };
    if ok {
        return Ok(());
    }
    Err(Error::Config(match p {
        Parallel::None => format!("{what}: {n} devices for one network; add --parallel data or hybrid"),
        Parallel::Model => format!("{what}: --parallel model runs the paper's two towers on exactly two devices (e.g. --gpus 0,1, or 0,0 for both on GPU 0), not {n}"),
        Parallel::Data => format!("{what}: --parallel data needs at least one device"),
        Parallel::Hybrid => format!("{what}: --parallel hybrid puts two towers on each pair of devices and needs an even number, not {n}"),
    }))
}

/// Pairs of consecutive devices: (0, 1), (2, 3), ...
fn pairs<B>(devs: &[B]) -> Vec<[&B; 2]> {
    devs.chunks_exact(2).map(|p| [&p[0], &p[1]]).collect()
}

/// Resolve `req` in `world` and run `f` on the layout. CPU devices are
/// threads of this process; GPUs must be there (probed first).
pub fn run_on<F: OnLayout>(req: &Request, world: &World, f: F) -> Result<F::Out> {
    if req.cpu {
        let p = req.parallel.unwrap_or(Parallel::None);
        check_world(p, world)?;
        let n = match p {
            Parallel::None => 1,
            Parallel::Model => 2,
            Parallel::Data => req.replicas,
            Parallel::Hybrid => 2 * req.replicas,
        };
        check_count(p, n, "--cpu")?;
        let devs: Vec<CpuBackend> = (0..n).map(|_| CpuBackend::new()).collect();
        // Across processes, the replicas meet over TCP (tcp_reduce.rs).
        let layout = layout(p, &devs, |parts| {
            Ok(if world.is_single() {
                Box::new(HostAllReduce::default())
            } else {
                Box::new(TcpAllReduce::connect(world, parts[0].len())?)
            })
        })?;
        return f.run(layout);
    }
    let list = match (&req.gpus, world.is_single()) {
        (Some(l), _) => l.clone(),
        (None, false) => world.local_rank.to_string(),
        (None, true) => {
            return Err(Error::Config(
                "name the GPUs with --gpus (e.g. --gpus 0,1), or train on the CPU with --cpu"
                    .into(),
            ))
        }
    };
    let ids = parse_gpus(&list)?;
    let p = match req.parallel {
        Some(p) => p,
        None => implied(ids.len(), &list)?,
    };
    check_count(p, ids.len(), &format!("--gpus {list}"))?;
    check_world(p, world)?;
    if p == Parallel::Hybrid {
        check_hybrid_gpus(&ids, &list)?;
    }
    let mut distinct = ids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    for d in probe::require(&distinct)? {
        info!("using {d}");
    }
    let devs = ids
        .iter()
        .map(|&i| CudaBackend::new(i, req.cuda))
        .collect::<Result<Vec<_>>>()?;
    if matches!(p, Parallel::Model | Parallel::Hybrid) {
        for pair in devs.chunks_exact(2) {
            for (x, y) in [(&pair[0], &pair[1]), (&pair[1], &pair[0])] {
                if !x.enable_peer_access(y)? {
                    warn!(
                        "no peer access from {} to {}: the towers' copies are staged through host memory by the driver",
                        x.info(),
                        y.info()
                    );
                }
            }
        }
    }
    let layout = layout(p, &devs, |parts| gpu_reduce(parts, world))?;
    f.run(layout)
}

/// Hybrid on GPUs reduces each tower's half in its own NCCL communicator
/// (one per tower, over the pairs). A GPU that holds tower 0 of one pair
/// and tower 1 of another would be in both, on two streams, and NCCL warns
/// that concurrent communicators on one device can deadlock (NCCL user
/// guide, "Using multiple NCCL communicators concurrently"). Refused, unless
/// a tower's list repeats a GPU: then NCCL is not used at all (`gpu_reduce`).
fn check_hybrid_gpus(ids: &[usize], list: &str) -> Result<()> {
    let tower = |t: usize| ids.iter().skip(t).step_by(2).copied().collect::<Vec<_>>();
    let (t0, t1) = (tower(0), tower(1));
    let repeats = |v: &[usize]| (1..v.len()).any(|i| v[..i].contains(&v[i]));
    if repeats(&t0) || repeats(&t1) {
        return Ok(());
    }
    match t0.iter().find(|g| t1.contains(g)) {
        None => Ok(()),
        Some(g) => Err(Error::Config(format!(
            "--gpus {list} --parallel hybrid: GPU {g} holds tower 0 of one pair and tower 1 of another, so it would be in both towers' NCCL communicators at once, which can deadlock; list the pairs so that each GPU holds one tower only (e.g. --gpus 0,1,2,3)"
        ))),
    }
}

/// Several processes share the work data-parallel only.
fn check_world(p: Parallel, world: &World) -> Result<()> {
    if !world.is_single() && matches!(p, Parallel::None | Parallel::Model) {
        return Err(Error::Config(format!(
            "WORLD_SIZE={}: processes share the work data-parallel; add --parallel data (or hybrid)",
            world.size
        )));
    }
    Ok(())
}

/// The layout `p` over `devs` (as many as `check_count` allowed); `reduce`
/// makes the all-reduce from the devices of each tensor part.
fn layout<'a, B: Backend>(
    p: Parallel,
    devs: &'a [B],
    reduce: impl FnOnce(&[Vec<&'a B>]) -> Result<Box<dyn AllReduce<B> + 'a>>,
) -> Result<Layout<'a, B>> {
    Ok(match p {
        Parallel::None => Layout::One(&devs[0]),
        Parallel::Model => Layout::Towers([&devs[0], &devs[1]]),
        Parallel::Data => {
            let all: Vec<&B> = devs.iter().collect();
            let r = reduce(std::slice::from_ref(&all))?;
            Layout::Data(all, r)
        }
        Parallel::Hybrid => {
            let ps = pairs(devs);
            let r = reduce(&tower_parts(&ps))?;
            Layout::Hybrid(ps, r)
        }
    })
}

/// NCCL where it can serve (the library is there and each part's replicas
/// are on different GPUs); else, in one process, the in-process all-reduce
/// through host memory, with a warning; across processes NCCL is required.
fn gpu_reduce<'a>(
    parts: &[Vec<&'a CudaBackend>],
    world: &World,
) -> Result<Box<dyn AllReduce<CudaBackend> + 'a>> {
    let why = if parts.iter().any(|list| nccl::shared_gpu(list).is_some()) {
        "two replicas share a GPU, which NCCL does not allow"
    } else if !nccl::nccl_present() {
        nccl::NO_NCCL
    } else {
        let r = nccl::NcclAllReduce::new(parts, world)?;
        info!("gradients averaged by NCCL all-reduce");
        return Ok(Box::new(r));
    };
    if !world.is_single() {
        return Err(Error::NoDevice(format!(
            "a multi-process run averages gradients with NCCL, but {why}"
        )));
    }
    warn!(
        "{why}: gradients are averaged through host memory instead (correct, but slower than NCCL)"
    );
    Ok(Box::new(HostAllReduce::default()))
}
