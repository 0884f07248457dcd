//! From the command line's `--cpu` / `--gpus` / `--parallel` / `--replicas`
//! to devices and a `Layout` (ARCHITECTURE.md, "Distribution"): how many backends to
//! open, which pairs hold the two towers, and which all-reduce sums the
//! replicas' gradients (NCCL on GPUs; on CPU devices in process, or over
//! TCP across processes).
//!
//! Backends have associated types, so code that runs on a layout is a
//! `OnLayout` value whose generic `run` is called with the CPU or CUDA one.
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tracing::{info, warn};

use super::allreduce::{AllReduce, HostAllReduce};
use super::device::parse_gpus;
use super::layout::Layout;
use super::tcp::TcpAllReduce;
use super::world::World;
use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::{nccl, nccl_lib, probe, CudaBackend, CudaOptions};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::replicas::tower_parts;

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
    /// Set by a signal: a wait for the other processes of a run (the CPU
    /// rendezvous, tcp.rs) gives up. NCCL's own rendezvous does not look.
    pub stop: Option<Arc<AtomicBool>>,
}

/// Code to run on whichever backend the request resolves to: every command
/// that computes reaches its devices through `run_on` with one of these.
pub trait OnLayout {
    type Out;
    /// The code's error: the library's `Error`, or the command line's.
    type Err: From<Error>;
    fn run<B: Backend>(self, layout: Layout<'_, B>) -> std::result::Result<Self::Out, Self::Err>;
}

/// Code that runs one network on one device (evaluation, prediction,
/// features): `run_on_one` calls it with the device of a one-device layout.
pub trait OnDevice {
    type Out;
    type Err: From<Error>;
    fn run<B: Backend>(self, be: &B) -> std::result::Result<Self::Out, Self::Err>;
}

/// An `OnDevice` as the `OnLayout` that `run_on` takes.
struct One<F>(F);

impl<F: OnDevice> OnLayout for One<F> {
    type Out = F::Out;
    type Err = F::Err;
    fn run<B: Backend>(self, layout: Layout<'_, B>) -> std::result::Result<F::Out, F::Err> {
        self.0.run(layout.one()?)
    }
}

/// `run_on` for code that runs on one device, in this process alone; a
/// request for several devices is an error that says to pass one.
pub fn run_on_one<F: OnDevice>(req: &Request, f: F) -> std::result::Result<F::Out, F::Err> {
    run_on(req, &World::single(), One(f))
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

/// The most CPU devices one process makes: each is a thread with its own
/// copy of the network, and each replica needs an image of every batch
/// (the paper's is 128), so more only exhaust the memory.
pub const MAX_CPU_DEVICES: usize = 1024;

/// Refuse more CPU devices (`n`, for `replicas`) than `MAX_CPU_DEVICES`
/// before any is made.
fn check_cpu_devices(n: usize, replicas: usize) -> Result<()> {
    if n <= MAX_CPU_DEVICES {
        return Ok(());
    }
    Err(Error::Config(format!(
        "--replicas {replicas}: one process makes at most {MAX_CPU_DEVICES} CPU devices (each holds its own copy of the network, and needs an image of every batch); pass a smaller --replicas, or run several processes (docs/scaling.md)"
    )))
}

/// Pairs of consecutive devices: (0, 1), (2, 3), ...
fn pairs<B>(devs: &[B]) -> Vec<[&B; 2]> {
    devs.chunks_exact(2).map(|p| [&p[0], &p[1]]).collect()
}

/// Resolve `req` in `world` and run `f` on the layout. CPU devices are
/// threads of this process; GPUs must be there (probed first).
pub fn run_on<F: OnLayout>(
    req: &Request,
    world: &World,
    f: F,
) -> std::result::Result<F::Out, F::Err> {
    if req.cpu {
        let p = req.parallel.unwrap_or(Parallel::None);
        check_world(p, world)?;
        let n = cpu_devices(p, req.replicas)?;
        let devs: Vec<CpuBackend> = (0..n).map(|_| CpuBackend::new()).collect();
        // Across processes, the replicas meet over TCP (tcp.rs).
        let layout = layout(p, &devs, |parts| {
            Ok(if world.is_single() {
                Box::new(HostAllReduce::default())
            } else {
                Box::new(TcpAllReduce::connect(
                    world,
                    parts[0].len(),
                    req.stop.as_ref(),
                )?)
            })
        })?;
        return f.run(layout);
    }
    let (ids, p) = gpu_plan(req, world)?;
    for d in require_gpus(req, &ids, world)? {
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

/// The copies of the network this process trains under `req` (replicas;
/// two towers are one copy), from the flags alone: a batch is checked
/// against them before any data is read or device opened.
pub fn copies_here(req: &Request, world: &World) -> Result<usize> {
    let (p, n) = if req.cpu {
        let p = req.parallel.unwrap_or(Parallel::None);
        cpu_devices(p, req.replicas)?;
        (p, req.replicas)
    } else {
        let (ids, p) = gpu_plan(req, world)?;
        let pairs = if p == Parallel::Hybrid {
            ids.len() / 2
        } else {
            ids.len()
        };
        (p, pairs)
    };
    Ok(match p {
        Parallel::Data | Parallel::Hybrid => n,
        Parallel::None | Parallel::Model => 1,
    })
}

/// What `req` comes to in `world`, in words, with the implied defaults
/// applied (two GPUs are the two towers, CPU replicas 2): the processes,
/// the CPU or how many GPUs (not which), and how they share the work. A
/// resume compares it with its run's.
pub fn setup(req: &Request, world: &World) -> Result<String> {
    let (p, n, devices) = if req.cpu {
        let p = req.parallel.unwrap_or(Parallel::None);
        (p, cpu_devices(p, req.replicas)?, "the CPU".to_string())
    } else {
        let (ids, p) = gpu_plan(req, world)?;
        let gpus = match ids.len() {
            1 => "1 GPU".to_string(),
            n => format!("{n} GPUs"),
        };
        (p, ids.len(), gpus)
    };
    let how = match p {
        Parallel::None => "one network".to_string(),
        Parallel::Model => "the two towers".to_string(),
        Parallel::Data if n == 1 => "1 data-parallel replica".to_string(),
        Parallel::Data => format!("{n} data-parallel replicas"),
        Parallel::Hybrid => format!("{} data-parallel pairs of towers", n / 2),
    };
    let processes = match world.size {
        1 => "1 process".to_string(),
        k => format!("{k} processes"),
    };
    Ok(format!("{processes} on {devices}, {how}"))
}

/// A note when several processes share this machine and `--gpus` is given:
/// torchrun passes every process the same arguments, so unless each was
/// launched with its own list, they would drive the same GPUs, which NCCL
/// refuses ("Duplicate GPU") after the rendezvous.
pub fn shared_gpus_note(req: &Request, world: &World) -> Option<String> {
    let list = req
        .gpus
        .as_ref()
        .filter(|_| !req.cpu && world.local_size > 1)?;
    // A launcher that sets CUDA_VISIBLE_DEVICES per process gives each its own GPUs.
    let own = match &world.visible_gpus {
        Some(v) => format!(" (--gpus counts within CUDA_VISIBLE_DEVICES={v:?}: where each process was given its own, as srun --gpus-per-task does, they do not)"),
        None => String::new(),
    };
    Some(format!(
        "--gpus {list} with LOCAL_WORLD_SIZE={}: unless each process on this machine was given its own list, they drive the same GPUs, which NCCL refuses{own}; under torchrun, leave --gpus out and each process drives the GPU of its LOCAL_RANK",
        world.local_size
    ))
}

/// The CPU devices `p` over `replicas` makes, checked against the limit
/// and the layout's count.
fn cpu_devices(p: Parallel, replicas: usize) -> Result<usize> {
    let n = match p {
        Parallel::None => 1,
        Parallel::Model => 2,
        Parallel::Data => replicas,
        Parallel::Hybrid => replicas.saturating_mul(2),
    };
    check_cpu_devices(n, replicas)?;
    check_count(p, n, "--cpu")?;
    Ok(n)
}

/// Check, without opening them, that the devices `req` asks for are
/// there: a command calls it before long work such as writing a data set,
/// so a missing GPU is reported first. `run_on` checks again.
pub fn check_devices(req: &Request, world: &World) -> Result<()> {
    if req.cpu {
        return Ok(());
    }
    let (ids, _) = gpu_plan(req, world)?;
    require_gpus(req, &ids, world).map(|_| ())
}

/// The distinct GPUs of `ids`, each probed; a missing one taken from
/// LOCAL_RANK says so (more processes on a machine than it has GPUs).
fn require_gpus(req: &Request, ids: &[usize], world: &World) -> Result<Vec<probe::DeviceInfo>> {
    let mut distinct = ids.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let all = probe::devices()?;
    let missing = distinct.iter().find(|&&g| g >= all.len());
    if let (None, Some(&g)) = (&req.gpus, missing) {
        return Err(Error::NoDevice(local_rank_missing(
            req,
            g,
            all.len(),
            world,
        )));
    }
    probe::require_in(&all, &distinct)
}

/// GPU `g`, taken from LOCAL_RANK, is past the `found` this process sees:
/// too many processes on the machine, or (CUDA_VISIBLE_DEVICES set and one
/// GPU seen) a launcher that gave each process its own GPU, numbered 0.
fn local_rank_missing(req: &Request, g: usize, found: usize, world: &World) -> String {
    let named = gpus_named(req, &g.to_string());
    match &world.visible_gpus {
        Some(v) if found == 1 => format!(
            "GPU {g} was asked for but this process sees 1 (CUDA_VISIBLE_DEVICES={v:?}, numbered from 0): {named}; where the launcher gives each process its own GPU (srun --gpus-per-task 1), pass --gpus 0, else launch at most one process per GPU"
        ),
        Some(v) => format!(
            "GPU {g} was asked for but this process sees {found} (CUDA_VISIBLE_DEVICES={v:?}, numbered from 0): {named}; launch at most one process per GPU it lists, or pass --gpus"
        ),
        None => format!(
            "GPU {g} was asked for but this machine has {found}: {named}; launch at most one process per GPU on each machine (torchrun --nproc-per-node), or pass --gpus"
        ),
    }
}

/// Hybrid on GPUs reduces each tower's half in its own NCCL communicator
/// (one per tower, over the pairs). A GPU that holds tower 0 of one pair
/// and tower 1 of another would be in both, on two streams, and NCCL warns
/// that concurrent communicators on one device can deadlock (NCCL user
/// guide, "Using multiple NCCL communicators concurrently"). Refused, unless
/// a tower's list repeats a GPU: then NCCL is not used at all (`gpu_reduce`).
/// Several processes always reduce through NCCL (`check_shared_in_world`),
/// so there the second way out is not offered.
fn check_hybrid_gpus(ids: &[usize], list: &str, world: &World) -> Result<()> {
    let parts = hybrid_parts(ids);
    if nccl_rule(&parts, true) == NcclUse::No {
        return Ok(());
    }
    let or = match world.is_single() {
        true => ", or repeat a GPU within one tower's list (e.g. --gpus 0,1,0,1, or 0,0,0,0 on one GPU), which reduces without NCCL",
        false => " (a run of several processes always reduces through NCCL)",
    };
    match parts[0].iter().find(|g| parts[1].contains(g)) {
        None => Ok(()),
        Some(g) => Err(Error::Config(format!(
            "--gpus {list} --parallel hybrid: GPU {g} holds a tower 0 and a tower 1 (of one pair or of two), so it would be in both towers' NCCL communicators at once, which can deadlock; list the pairs so that each GPU holds one tower only (e.g. --gpus 0,1,2,3){or}"
        ))),
    }
}

/// Hybrid's tensor parts on GPUs: tower t of every pair (`tower_parts`, on
/// ordinals).
fn hybrid_parts(ids: &[usize]) -> Vec<Vec<usize>> {
    (0..2)
        .map(|t| ids.chunks_exact(2).map(|pair| pair[t]).collect())
        .collect()
}

/// The GPU ordinals of a GPU request (`--gpus`, else LOCAL_RANK in a
/// multi-process run) and the parallelism, checked against each other and
/// the world.
fn gpu_plan(req: &Request, world: &World) -> Result<(Vec<usize>, Parallel)> {
    if world.listen_fd.is_some() {
        // NCCL's rendezvous listens at MASTER_PORT + 1, the port that socket holds.
        return Err(Error::Config(
            "ALEXNET_LISTEN_FD hands rank 0 the socket of the CPU all-reduce; GPUs meet through NCCL, which listens at that port itself (MASTER_PORT + 1): unset ALEXNET_LISTEN_FD, or train with --cpu".into(),
        ));
    }
    if req.gpus.is_none() && req.parallel == Some(Parallel::Hybrid) && !world.is_single() {
        let r = world.local_rank;
        return Err(Error::Config(format!(
            "--parallel hybrid without --gpus: each process would drive only the GPU of its LOCAL_RANK ({r}), and hybrid puts two towers on each pair; give each process its pairs with --gpus (e.g. --gpus {},{} for LOCAL_RANK {r}, one process per pair of GPUs)",
            2 * r,
            2 * r + 1
        )));
    }
    let list = match (&req.gpus, world.is_single()) {
        (Some(l), _) => l.clone(),
        (None, false) if world.local_size > 1 && !world.local_rank_set => {
            return Err(Error::Config(format!(
                "LOCAL_WORLD_SIZE={n} but no LOCAL_RANK: without --gpus each process drives the GPU of its LOCAL_RANK, so all {n} processes on this machine would drive GPU 0; set LOCAL_RANK (0 to {}) in each process, launch with torchrun, which sets it, or give each process its GPUs with --gpus",
                world.local_size - 1,
                n = world.local_size
            )))
        }
        (None, false) => world.local_rank.to_string(),
        (None, true) => {
            return Err(Error::Config(
                "name the GPUs with --gpus (e.g. --gpus 0,1), or run on the CPU with --cpu".into(),
            ))
        }
    };
    let ids = parse_gpus(&list)?;
    let p = match req.parallel {
        Some(p) => p,
        None => implied(ids.len(), &list)?,
    };
    check_count(p, ids.len(), &gpus_named(req, &list))?;
    check_world(p, world)?;
    if p == Parallel::Hybrid {
        check_hybrid_gpus(&ids, &list, world)?;
    }
    check_shared_in_world(&ids, p, world, &list)?;
    Ok((ids, p))
}

/// How the GPUs were named, for errors: `--gpus LIST`, or LOCAL_RANK's
/// GPU in a multi-process run without --gpus.
fn gpus_named(req: &Request, list: &str) -> String {
    match req.gpus {
        Some(_) => format!("--gpus {list}"),
        None => format!("without --gpus, each process drives the GPU of its LOCAL_RANK ({list})"),
    }
}

/// Replicas that share a GPU are averaged through this process's memory
/// (NCCL allows one rank per GPU), which other processes never see: in a
/// run of several processes each would train a model of its own.
fn check_shared_in_world(ids: &[usize], p: Parallel, world: &World, list: &str) -> Result<()> {
    let parts = match p {
        Parallel::Data => vec![ids.to_vec()],
        Parallel::Hybrid => hybrid_parts(ids),
        Parallel::None | Parallel::Model => return Ok(()),
    };
    if world.is_single() || nccl_rule(&parts, false) != NcclUse::No {
        return Ok(());
    }
    Err(Error::Config(format!(
        "WORLD_SIZE={}: --gpus {list} gives two replicas one GPU, whose gradients would meet only within this process, not across the run (NCCL allows one rank per GPU); list each GPU once per tower, e.g. --gpus {}",
        world.size,
        (0..ids.len()).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
    )))
}

/// Whether a run averages gradients with NCCL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NcclUse {
    /// No all-reduce across GPUs: CPU devices, one network, the towers, or
    /// replicas sharing a GPU in a one-process run (NCCL allows one rank
    /// per GPU; those go through host memory).
    No,
    /// One replica in one process: NCCL when it loads, else the host
    /// reduction, which for one replica changes nothing.
    IfPresent,
    /// Several replicas on different GPUs, or several processes: NCCL or an error.
    Required,
}

/// The rule `gpu_reduce` applies, on the GPU ordinals of each tensor part's
/// replicas.
fn nccl_rule(parts: &[Vec<usize>], single_process: bool) -> NcclUse {
    let shared = parts.iter().any(|ords| {
        let mut o = ords.clone();
        o.sort_unstable();
        o.windows(2).any(|w| w[0] == w[1])
    });
    if shared {
        NcclUse::No
    } else if !single_process || parts.iter().any(|ords| ords.len() > 1) {
        NcclUse::Required
    } else {
        NcclUse::IfPresent
    }
}

/// Whether running `req` in `world` will use NCCL, decided before any
/// device is opened (the command line makes NCCL loadable first, which may
/// restart the process). Errors are those `run_on` would give.
pub fn nccl_use(req: &Request, world: &World) -> Result<NcclUse> {
    if req.cpu {
        return Ok(NcclUse::No);
    }
    let (ids, p) = gpu_plan(req, world)?;
    let parts: Vec<Vec<usize>> = match p {
        Parallel::None | Parallel::Model => return Ok(NcclUse::No),
        Parallel::Data => vec![ids],
        Parallel::Hybrid => hybrid_parts(&ids),
    };
    Ok(nccl_rule(&parts, world.is_single()))
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

/// NCCL where `nccl_rule` says it serves. Otherwise (replicas sharing a
/// GPU, or one replica in one process without NCCL) the in-process
/// all-reduce through host memory, with a warning. Several replicas on
/// different GPUs, or several processes, without NCCL are an error that
/// says how to install it: a silent slow path would hide a fixable setup.
fn gpu_reduce<'a>(
    parts: &[Vec<&'a CudaBackend>],
    world: &World,
) -> Result<Box<dyn AllReduce<CudaBackend> + 'a>> {
    let ords: Vec<Vec<usize>> = parts
        .iter()
        .map(|list| list.iter().map(|b| b.info().ordinal).collect())
        .collect();
    let why = match nccl_rule(&ords, world.is_single()) {
        NcclUse::No => "two replicas share a GPU, which NCCL does not allow",
        _ if nccl::nccl_present() => {
            let r = nccl::NcclAllReduce::new(parts, world)?;
            info!("gradients averaged by NCCL all-reduce");
            return Ok(Box::new(r));
        }
        NcclUse::IfPresent => "NCCL does not load and there is one replica",
        NcclUse::Required => {
            return Err(Error::NoDevice(format!(
                "averaging gradients across GPUs needs NCCL: {}",
                nccl_lib::unavailable_message()
            )))
        }
    };
    warn!(
        "{why}: gradients are averaged through host memory instead (correct, but slower than NCCL)"
    );
    Ok(Box::new(HostAllReduce::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rank 1 of a run of two processes.
    fn second_of_two() -> World {
        World {
            rank: 1,
            size: 2,
            master: Some(("h".into(), 29500)),
            ..World::single()
        }
    }

    /// A GPU in both towers' NCCL communicators is refused, with a list
    /// that works; where a tower's list repeats a GPU, NCCL is not used
    /// and nothing is refused. In a run of several processes, which
    /// refuses a repeated GPU (`check_shared_in_world`), the error offers
    /// distinct GPUs only.
    #[test]
    fn hybrid_gpus_holding_both_towers_are_refused_with_a_list_that_works() {
        let one = World::single();
        let two = second_of_two();
        for (ids, gpu) in [(vec![0, 0], 0), (vec![0, 1, 1, 0], 0)] {
            let e = check_hybrid_gpus(&ids, "L", &one).unwrap_err().to_string();
            let said = format!("GPU {gpu} holds a tower 0 and a tower 1");
            assert!(
                e.contains(&said) && e.contains("--gpus 0,1,0,1"),
                "{ids:?}: {e}"
            );
            let e = check_hybrid_gpus(&ids, "L", &two).unwrap_err().to_string();
            assert!(
                e.contains(&said) && e.contains("--gpus 0,1,2,3") && !e.contains("0,1,0,1"),
                "{ids:?}: {e}"
            );
            let repeated = [0, 1, 0, 1];
            assert!(check_shared_in_world(&repeated, Parallel::Hybrid, &two, "L").is_err());
        }
        for ids in [vec![0, 1, 2, 3], vec![0, 1, 0, 1], vec![0, 0, 0, 0]] {
            assert!(check_hybrid_gpus(&ids, "L", &one).is_ok(), "{ids:?}");
        }
    }

    /// Processes sharing a machine (LOCAL_WORLD_SIZE) without --gpus each
    /// drive the GPU of their LOCAL_RANK: without it, all would drive GPU 0.
    #[test]
    fn processes_sharing_a_machine_need_their_local_rank_without_gpus() {
        let mut r = gpus("", Some(Parallel::Data));
        r.gpus = None;
        let unset = World {
            rank: 1,
            size: 4,
            local_size: 2,
            master: Some(("h".into(), 29500)),
            ..World::single()
        };
        let e = gpu_plan(&r, &unset).unwrap_err().to_string();
        assert!(
            e.starts_with("LOCAL_WORLD_SIZE=2 but no LOCAL_RANK")
                && e.contains("set LOCAL_RANK (0 to 1)"),
            "{e}"
        );
        // Given --gpus, LOCAL_RANK picks nothing.
        let named = gpus("0", Some(Parallel::Data));
        assert!(!format!("{:?}", gpu_plan(&named, &unset)).contains("LOCAL_RANK"));
    }

    #[test]
    fn nccl_rule_by_layout() {
        // Replicas sharing a GPU: host memory, whatever the world.
        assert_eq!(nccl_rule(&[vec![0, 0]], true), NcclUse::No);
        assert_eq!(nccl_rule(&[vec![0, 2], vec![1, 1]], false), NcclUse::No);
        // Several replicas on different GPUs, or several processes: required.
        assert_eq!(nccl_rule(&[vec![0, 1]], true), NcclUse::Required);
        assert_eq!(nccl_rule(&[vec![0]], false), NcclUse::Required);
        // One replica in one process: NCCL if it loads.
        assert_eq!(nccl_rule(&[vec![3]], true), NcclUse::IfPresent);
    }

    fn gpus(list: &str, parallel: Option<Parallel>) -> Request {
        Request {
            cpu: false,
            gpus: Some(list.into()),
            parallel,
            replicas: 2,
            cuda: CudaOptions::default(),
            stop: None,
        }
    }

    /// A batch is split over the replicas the flags name: a GPU each
    /// (data), a pair each (hybrid), one for one device or the towers.
    #[test]
    fn copies_counted_from_the_flags() {
        let one = World::single();
        let copies = |r: &Request| copies_here(r, &one).unwrap();
        assert_eq!(copies(&gpus("0,1,2", Some(Parallel::Data))), 3);
        assert_eq!(copies(&gpus("0,1,2,3,4,5", Some(Parallel::Hybrid))), 3);
        assert_eq!(copies(&gpus("0,1", None)), 1);
        assert_eq!(copies(&gpus("3", None)), 1);
        let mut cpu = gpus("", Some(Parallel::Hybrid));
        (cpu.cpu, cpu.replicas) = (true, 5);
        assert_eq!(copies(&cpu), 5);
        cpu.parallel = Some(Parallel::Model);
        assert_eq!(copies(&cpu), 1);
        // Past the device limit, that limit is the error (not a batch
        // multiple of 10^11).
        (cpu.parallel, cpu.replicas) = (Some(Parallel::Data), 100_000_000_000);
        let e = copies_here(&cpu, &one).unwrap_err().to_string();
        assert!(e.contains("at most 1024"), "{e}");
    }

    /// A resume compares setups: the same for other GPUs of the same
    /// number and for defaults left implied, other for another layout.
    #[test]
    fn setups_name_what_the_flags_come_to() {
        let one = World::single();
        let setup = |r: &Request, w: &World| setup(r, w).unwrap();
        let towers = "1 process on 2 GPUs, the two towers";
        assert_eq!(setup(&gpus("0,1", None), &one), towers);
        assert_eq!(setup(&gpus("2,3", Some(Parallel::Model)), &one), towers);
        let data = setup(&gpus("0,1", Some(Parallel::Data)), &one);
        assert_eq!(data, "1 process on 2 GPUs, 2 data-parallel replicas");
        // torchrun without --gpus: each process its LOCAL_RANK's GPU.
        let mut r = gpus("", Some(Parallel::Data));
        r.gpus = None;
        let two = World {
            size: 2,
            master: Some(("h".into(), 29500)),
            ..World::single()
        };
        assert_eq!(
            setup(&r, &two),
            "2 processes on 1 GPU, 1 data-parallel replica"
        );
        let mut cpu = gpus("", Some(Parallel::Hybrid));
        cpu.cpu = true;
        assert_eq!(
            setup(&cpu, &one),
            "1 process on the CPU, 2 data-parallel pairs of towers"
        );
    }

    #[test]
    fn the_same_gpus_for_every_process_of_a_machine_are_noted() {
        let shared = World {
            rank: 1,
            size: 4,
            local_size: 2,
            master: Some(("h".into(), 29500)),
            ..World::single()
        };
        let note = shared_gpus_note(&gpus("0,1", Some(Parallel::Data)), &shared).unwrap();
        assert!(
            note.starts_with("--gpus 0,1 with LOCAL_WORLD_SIZE=2")
                && note.contains("leave --gpus out"),
            "{note}"
        );
        let alone = World {
            local_size: 1,
            ..shared.clone()
        };
        assert_eq!(
            shared_gpus_note(&gpus("0,1", Some(Parallel::Data)), &alone),
            None
        );
        let mut local = gpus("", Some(Parallel::Data));
        local.gpus = None;
        assert_eq!(shared_gpus_note(&local, &shared), None);
        let mut cpu = gpus("0", Some(Parallel::Data));
        cpu.cpu = true;
        assert_eq!(shared_gpus_note(&cpu, &shared), None);
        // Under a launcher that sets CUDA_VISIBLE_DEVICES per process, the
        // same --gpus may be each process's own GPU: the note says so.
        let visible = World {
            visible_gpus: Some("3".into()),
            ..shared.clone()
        };
        let note = shared_gpus_note(&gpus("0", Some(Parallel::Data)), &visible).unwrap();
        assert!(
            note.contains("CUDA_VISIBLE_DEVICES=\"3\"") && note.contains("srun"),
            "{note}"
        );
        assert!(!shared_gpus_note(&gpus("0", None), &shared)
            .unwrap()
            .contains("CUDA_VISIBLE"));
    }

    /// LOCAL_RANK past the GPUs a process sees: too many processes, or,
    /// with CUDA_VISIBLE_DEVICES set, each given its own GPU (--gpus 0).
    #[test]
    fn a_local_rank_past_the_gpus_seen_names_the_likely_cause() {
        let mut r = gpus("", Some(Parallel::Data));
        r.gpus = None;
        let w = World {
            local_rank: 1,
            local_rank_set: true,
            ..World::single()
        };
        let e = local_rank_missing(&r, 1, 1, &w);
        assert!(
            e.contains("this machine has 1") && e.contains("--nproc-per-node"),
            "{e}"
        );
        let w = World {
            visible_gpus: Some("5".into()),
            ..w
        };
        let e = local_rank_missing(&r, 1, 1, &w);
        assert!(
            e.contains("this process sees 1 (CUDA_VISIBLE_DEVICES=\"5\"")
                && e.contains("pass --gpus 0"),
            "{e}"
        );
        // Seeing several, it is too many processes, not one GPU each.
        let e = local_rank_missing(&r, 3, 2, &w);
        assert!(e.contains("sees 2") && !e.contains("--gpus 0"), "{e}");
    }

    #[test]
    fn nccl_use_from_the_flags() {
        let one = World::single();
        let two = second_of_two();
        let use_of = |r: &Request, w: &World| nccl_use(r, w).unwrap();
        assert_eq!(use_of(&gpus("0,1", None), &one), NcclUse::No);
        assert_eq!(
            use_of(&gpus("0,1,2", Some(Parallel::Data)), &one),
            NcclUse::Required
        );
        assert_eq!(
            use_of(&gpus("0,0", Some(Parallel::Data)), &one),
            NcclUse::No
        );
        assert_eq!(
            use_of(&gpus("0", Some(Parallel::Data)), &one),
            NcclUse::IfPresent
        );
        assert_eq!(
            use_of(&gpus("0", Some(Parallel::Data)), &two),
            NcclUse::Required
        );
        // Hybrid: towers 0,1 and 2,3 reduce over GPUs {0,2} and {1,3}.
        assert_eq!(
            use_of(&gpus("0,1,2,3", Some(Parallel::Hybrid)), &one),
            NcclUse::Required
        );
        // Towers 0,1 and 0,1 again: GPU 0 holds tower 0 twice.
        assert_eq!(
            use_of(&gpus("0,1,0,1", Some(Parallel::Hybrid)), &one),
            NcclUse::No
        );
        // One pair in one process: each part has one replica.
        assert_eq!(
            use_of(&gpus("0,1", Some(Parallel::Hybrid)), &one),
            NcclUse::IfPresent
        );
        // Several processes: replicas sharing a GPU would never meet the
        // other processes' replicas, so they are refused.
        for (list, p) in [("0,0", Parallel::Data), ("0,1,0,1", Parallel::Hybrid)] {
            let e = nccl_use(&gpus(list, Some(p)), &two)
                .unwrap_err()
                .to_string();
            assert!(e.contains("WORLD_SIZE=2: --gpus"), "{e}");
            assert!(e.contains("list each GPU once per tower"), "{e}");
        }
        let mut cpu = gpus("0", Some(Parallel::Data));
        cpu.cpu = true;
        assert_eq!(use_of(&cpu, &two), NcclUse::No);
        // A multi-process run without --gpus drives GPU LOCAL_RANK.
        let mut local = gpus("", Some(Parallel::Data));
        local.gpus = None;
        assert_eq!(use_of(&local, &two), NcclUse::Required);
        // Which is one GPU: hybrid needs a pair, named per process.
        local.parallel = Some(Parallel::Hybrid);
        let third = World {
            local_rank: 1,
            ..two.clone()
        };
        let e = nccl_use(&local, &third).unwrap_err().to_string();
        assert!(e.contains("e.g. --gpus 2,3 for LOCAL_RANK 1"), "{e}");
        // The CPU all-reduce's inherited socket holds NCCL's port.
        let handed = World {
            rank: 0,
            listen_fd: Some(3),
            ..two.clone()
        };
        let e = nccl_use(&gpus("0", Some(Parallel::Data)), &handed)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unset ALEXNET_LISTEN_FD, or train with --cpu"),
            "{e}"
        );
        cpu.parallel = Some(Parallel::Data);
        assert_eq!(use_of(&cpu, &handed), NcclUse::No);
        // Flag errors are run_on's.
        assert!(nccl_use(&gpus("0,1,2", None), &one).is_err());
    }
}
