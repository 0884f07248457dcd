//! `nccl-check`: find and load NCCL as a multi-GPU run would, then print its
//! version and file (scripts/check-nccl; needs no GPU).
use anyhow::{bail, Result};

use alexnet_cuda::backend::cuda::nccl_lib;
use alexnet_cuda::dist::placement::NcclUse;

use super::nccl::make_nccl_loadable;

/// NCCL found and loaded the way a multi-GPU run loads it.
pub fn run() -> Result<()> {
    make_nccl_loadable(NcclUse::Required)?;
    let code = match nccl_lib::loaded_version() {
        Some(v) => v.map_err(anyhow::Error::msg)?,
        None => bail!("{}", nccl_lib::unavailable_message()),
    };
    let (major, minor, patch) = nccl_lib::decode_version(code);
    outln!("NCCL {major}.{minor}.{patch} (ncclGetVersion {code})")?;
    match nccl_lib::loaded_path() {
        Some(p) => outln!("loaded from {}", p.display())?,
        None => outln!("loaded from an unknown file (no /proc/self/maps)")?,
    }
    if let Some(found) = std::env::var_os(nccl_lib::RESTART_GUARD) {
        outln!(
            "through a restart with a libnccl.so link to {}",
            found.to_string_lossy()
        )?;
    }
    Ok(())
}
