//! `gpu-ops` (hidden): run every op on the GPU and on the CPU reference and
//! compare, as a table or one JSON line per op (scripts/gpu-check).
use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;
use tracing::info;

use alexnet_cuda::backend::cuda::probe;
use alexnet_cuda::backend::cuda::{parity, CudaBackend};
use alexnet_cuda::backend::Backend;
use alexnet_cuda::dist::device;
use alexnet_cuda::model::topology::Topology;

use super::device::DeviceArgs;

#[derive(Args)]
pub struct GpuOpsArgs {
    #[command(flatten)]
    device: DeviceArgs,
    /// One JSON line per op instead of a table.
    #[arg(long)]
    json: bool,
}

/// Every parity check, then the steady-state allocation check; fails if
/// any check did.
pub fn run(args: GpuOpsArgs) -> Result<()> {
    let req = args.device.request_one()?;
    let Some(list) = req.gpus.as_deref().filter(|_| !req.cpu) else {
        bail!("gpu-ops compares a GPU with the CPU: it needs a CUDA GPU (--gpus 0)");
    };
    let id = device::one_gpu(list)?;
    probe::require(&[id])?;
    let be = CudaBackend::new(id, req.cuda)?;
    info!("{}", be.name());
    let mut failed = 0;
    let mut rows = parity::run_all(&be)?;
    rows.extend(parity::towers_vs_grouped(&be)?);
    rows.extend(parity::replicas_vs_grouped(&be)?);
    for r in rows {
        failed += usize::from(!r.pass);
        if args.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!("{r}");
        }
    }
    failed += usize::from(!steady_state(&be, args.json)?);
    if failed > 0 {
        bail!("{failed} GPU checks failed");
    }
    Ok(())
}

/// The allocation check's JSON line, with the keys of a parity row
/// (scripts/gpu-check reads them): max_abs is the allocations the steps
/// after the first made.
#[derive(Serialize)]
struct AllocationRow {
    op: &'static str,
    path: &'static str,
    max_abs: i64,
    max_rel: u32,
    atol: u32,
    rtol: u32,
    pass: bool,
}

/// The network sizes its buffers once: steps after the first allocate
/// nothing. Prints the check's row; true when it passed.
fn steady_state(be: &CudaBackend, json: bool) -> Result<bool> {
    let (first, last) = parity::steady_state_allocations(be, &Topology::cifar(), 32, 5)?;
    let steady = first == last;
    if json {
        let row = AllocationRow {
            op: "allocations after step 1 / step 5",
            path: "-",
            max_abs: last as i64 - first as i64,
            max_rel: 0,
            atol: 0,
            rtol: 0,
            pass: steady,
        };
        println!("{}", serde_json::to_string(&row)?);
    } else {
        println!("allocations: {first} after the first step, {last} after the fifth");
    }
    Ok(steady)
}
