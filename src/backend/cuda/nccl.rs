//! NCCL all-reduce for data parallelism on GPUs (ARCHITECTURE.md, "Distribution"): the
//! transport `model::replicas` uses where `dist::HostAllReduce` serves CPU
//! replicas. One process drives its local GPUs; one communicator per tensor
//! part (a tower's half under hybrid parallelism) spans that part's device
//! in every replica of every process.
//!
//! Each communicator runs on its own stream per GPU. cudarc orders a
//! buffer's users across streams with events, so a bucket's all-reduce
//! starts once its gradients are written and runs while the compute stream
//! goes on with the layers below; the SGD kernels wait for it the same way
//! (the events that mark the reduction's end are recorded after
//! ncclGroupEnd: see `mean`).
//!
//! libnccl is loaded at run time like the other CUDA libraries, under the
//! names cudarc tries; nccl_lib.rs finds it where it is installed under
//! libnccl.so.2, and without it the caller gets `NO_NCCL`.
use std::sync::Arc;

use cudarc::driver::{CudaStream, DevicePtrMut};
use cudarc::nccl::safe::{group_end, group_start, Comm, Id, ReduceOp};

use super::{storage16, CudaBackend, CudaBuf};
use crate::dist::allreduce::AllReduce;
use crate::dist::world::World;
use crate::error::{Error, Result};

/// What to do when libnccl is nowhere (nccl_lib.rs searches).
pub const NO_NCCL: &str = "NCCL (libnccl.so.2) not found: install it with `pip install nvidia-nccl-cu12` (nvidia-nccl-cu13 for CUDA 13) into the python3 on PATH or the active virtualenv, or with `sudo apt install libnccl2`, and run again; if it is installed elsewhere (another Python), put the folder holding libnccl.so.2 on LD_LIBRARY_PATH: export LD_LIBRARY_PATH=/path/to/site-packages/nvidia/nccl/lib:$LD_LIBRARY_PATH (that Python prints the folder: python -c 'import os, nvidia.nccl as n; print(os.path.join(list(n.__path__)[0], \"lib\"))')";

/// True when libnccl can be opened. Loads nothing else.
pub fn nccl_present() -> bool {
    // SAFETY: only tries to dlopen the candidate names; calls no NCCL function.
    unsafe { cudarc::nccl::sys::is_culib_present() }
}

/// A GPU that holds two of `list` (NCCL allows one rank per GPU), if any.
pub fn shared_gpu(list: &[&CudaBackend]) -> Option<usize> {
    let mut ords: Vec<usize> = list.iter().map(|b| b.info.ordinal).collect();
    ords.sort_unstable();
    ords.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}

fn nccl_err(op: &'static str) -> impl Fn(cudarc::nccl::result::NcclError) -> Error {
    move |e| Error::Cuda {
        op,
        detail: format!("NCCL {e:?}"),
    }
}

/// NCCL communicators: `comms[part][r]` belongs to local replica r.
pub struct NcclAllReduce {
    comms: Vec<Vec<Comm>>,
    first: usize,
}

impl NcclAllReduce {
    /// Communicators for `devs[part][r]` (replica r's device holding
    /// `part`), across all processes of `world`. In one process NCCL
    /// needs no rendezvous (ncclCommInitAll); across processes each part's
    /// communicator meets at `World::nccl_comm_id(part)`.
    pub fn new(devs: &[Vec<&CudaBackend>], world: &World) -> Result<NcclAllReduce> {
        if !nccl_present() {
            return Err(Error::NoDevice(NO_NCCL.into()));
        }
        let mut comms = Vec::with_capacity(devs.len());
        for (part, list) in devs.iter().enumerate() {
            let streams = list
                .iter()
                .map(|be| be.ctx.new_stream())
                .collect::<std::result::Result<Vec<Arc<CudaStream>>, _>>()
                .map_err(super::cuda_err("NCCL stream"))?;
            if let Some(gpu) = shared_gpu(list) {
                return Err(Error::Config(format!(
                    "NCCL needs a different GPU for each replica, and GPU {gpu} holds two; list each GPU once in --gpus"
                )));
            }
            let part_comms = match world.nccl_comm_id(part) {
                None => Comm::from_devices(streams).map_err(nccl_err("ncclCommInitAll"))?,
                Some(addr) => {
                    // SAFETY: set before any thread of ours reads the
                    // environment concurrently (NCCL reads it in the calls
                    // below, on this thread).
                    std::env::set_var("NCCL_COMM_ID", &addr);
                    let id = Id::new().map_err(nccl_err("ncclGetUniqueId"))?;
                    let (ranks, total) = world.ranks(list.len());
                    group_start().map_err(nccl_err("ncclGroupStart"))?;
                    let made: Vec<_> = list
                        .iter()
                        .zip(streams)
                        .zip(ranks)
                        .map(|((be, stream), rank)| {
                            be.bind("NCCL init")?;
                            Comm::from_rank(stream, rank, total, id)
                                .map_err(nccl_err("ncclCommInitRank"))
                        })
                        .collect();
                    // Inside a group the ranks meet at ncclGroupEnd, so a
                    // failed rendezvous surfaces there as often as at init.
                    let ended = group_end().map_err(nccl_err("ncclGroupEnd"));
                    let made = made.into_iter().collect::<Result<Vec<_>>>();
                    made.and_then(|c| ended.map(|_| c)).map_err(|e| {
                        Error::Config(format!(
                            "NCCL rendezvous at {addr} failed ({e}): check that every process has the same WORLD_SIZE, MASTER_ADDR and MASTER_PORT and drives the same number of GPUs, and that rank 0's machine accepts connections on that port"
                        ))
                    })?
                }
            };
            comms.push(part_comms);
        }
        let first = world.ranks(devs.first().map_or(0, Vec::len)).0.start;
        Ok(NcclAllReduce { comms, first })
    }
}

impl AllReduce<CudaBackend> for NcclAllReduce {
    /// Every local replica's buffer averaged in place, as one NCCL group
    /// (one thread driving several GPUs must group their calls).
    fn mean(
        &mut self,
        part: usize,
        _devs: &[&CudaBackend],
        bufs: &mut [&mut CudaBuf<f32>],
    ) -> Result<()> {
        const OP: &str = "all-reduce";
        let comms = self.comms.get(part).ok_or_else(|| Error::Shape {
            op: OP,
            detail: format!("no communicator for part {part}"),
        })?;
        if comms.len() != bufs.len() {
            return Err(Error::Shape {
                op: OP,
                detail: format!("{} buffers for {} local replicas", bufs.len(), comms.len()),
            });
        }
        for b in bufs.iter() {
            storage16::check_master(OP, "gradient", b)?;
        }
        group_start().map_err(nccl_err("ncclGroupStart"))?;
        let mut status = Ok(());
        for (comm, buf) in comms.iter().zip(bufs.iter_mut()) {
            let len = buf.len();
            let mut view = buf.data.slice_mut(0..len);
            if let Err(e) = comm.all_reduce_in_place(&mut view, &ReduceOp::Avg) {
                status = Err(nccl_err("ncclAllReduce")(e));
                break;
            }
        }
        group_end().map_err(nccl_err("ncclGroupEnd"))?;
        status?;
        // Inside a group NCCL only records the calls; ncclGroupEnd is what
        // enqueues them on the streams (NCCL user guide, "Group Calls").
        // cudarc records a buffer's write event when `all_reduce_in_place`
        // returns, inside the group, so that event would mark a point before
        // the reduction: the SGD kernel, the overflow check and the next
        // backward would not wait for it. Record the events again now, after
        // the reductions are on the streams.
        for (comm, buf) in comms.iter().zip(bufs.iter_mut()) {
            let stream = comm.stream();
            let (_ptr, written) = buf.data.device_ptr_mut(&stream);
            drop(written);
        }
        Ok(())
    }

    fn first_replica(&self) -> usize {
        self.first
    }
}
