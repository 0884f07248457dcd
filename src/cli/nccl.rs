//! Making NCCL loadable for a run that averages gradients with it, before
//! anything else is opened: if need be, this process starts itself again
//! with NCCL's library on LD_LIBRARY_PATH.
use std::path::PathBuf;

use anyhow::Result;
use tracing::{info, warn};

use alexnet_cuda::backend::cuda::nccl_lib::{self, NcclLibError, Plan};
use alexnet_cuda::dist::placement::NcclUse;

/// Make NCCL loadable for a run that uses it, before anything else is
/// opened. cudarc does not try libnccl.so.2, the name NCCL's packages
/// install, and the loader reads LD_LIBRARY_PATH only at start-up: when the
/// search finds the file, this process starts again (same arguments, same
/// pid) with a folder holding a link libnccl.so to it first on
/// LD_LIBRARY_PATH. Returns when NCCL loads, or when the run can do without
/// it (logged); otherwise an error saying how to install it. Without the
/// CUDA driver it returns at once: opening the GPUs fails with that error.
pub fn ensure_nccl(need: NcclUse) -> Result<()> {
    if need == NcclUse::No || !alexnet_cuda::backend::cuda::probe::driver_present() {
        return Ok(());
    }
    make_nccl_loadable(need)
}

/// `ensure_nccl` past its checks (nccl-check, which needs no GPU, starts here).
pub fn make_nccl_loadable(need: NcclUse) -> Result<()> {
    let failed = match nccl_lib::plan_here() {
        Plan::Ready => return Ok(()),
        Plan::Restart(found) => restart_with_nccl(&found),
        Plan::Unavailable(e) => e,
    };
    if need == NcclUse::Required {
        return Err(failed.into());
    }
    warn!("{failed}");
    Ok(())
}

/// Start this program again with a link to `found` on LD_LIBRARY_PATH;
/// returns only the error if that fails.
fn restart_with_nccl(found: &nccl_lib::Found) -> NcclLibError {
    use std::os::unix::process::CommandExt;
    let dir = match nccl_lib::make_link(&found.path) {
        Ok(d) => d,
        Err(e) => return e,
    };
    let mut cmd = match nccl_lib::restart_command(found, &dir) {
        Ok(c) => c,
        Err(e) => return e,
    };
    info!(
        "NCCL is {} (found in {}), a name cudarc does not open: restarting with {} (libnccl.so -> it) first on LD_LIBRARY_PATH",
        found.path.display(),
        found.place,
        dir.display()
    );
    let source = cmd.exec();
    NcclLibError::Exec {
        exe: PathBuf::from(cmd.get_program()),
        source,
    }
}
