//! Distribution: how a run spreads over devices and processes
//! (ARCHITECTURE.md, "Distribution"). `device` picks the device from
//! `--cpu` / `--gpus` (probing CUDA first); `placement` turns the flags into
//! a `Layout` and runs a command's code on it, the one way every command
//! reaches a backend; `layout` says which executor of `model` runs on which
//! devices; `allreduce` averages gradients across replicas in process, `tcp`
//! across processes (NCCL's is in `backend::cuda::nccl`); `world` places
//! this process among the processes of a multi-machine run.
pub mod allreduce;
pub mod device;
pub mod layout;
pub mod placement;
pub mod tcp;
pub mod world;

pub use allreduce::{AllReduce, HostAllReduce};
pub use layout::Layout;
pub use placement::{run_on, run_on_one, OnDevice, OnLayout, Parallel, Request};
pub use world::World;
