//! Which device a command runs on. `--cpu` asks for the CPU backend, `--gpus
//! LIST` for CUDA; with neither, CUDA is used when the driver library and a
//! GPU are present, and the choice is logged (ARCHITECTURE.md, "Backends and stages"). The
//! CUDA probe checks for libcuda before calling into it: cudarc panics when
//! the library is absent, so absence must become an error or the CPU here.
use tracing::info;

use crate::backend::cuda::probe;
use crate::error::{Error, Result};

/// Parse `--gpus`: comma-separated device ordinals, e.g. `0` or `0,1`.
pub fn parse_gpus(list: &str) -> Result<Vec<usize>> {
    let ids = list
        .split(',')
        .map(|part| {
            part.trim().parse::<usize>().map_err(|_| {
                Error::Config(format!(
                    "--gpus {list}: '{part}' is not a GPU index; write e.g. --gpus 0 or --gpus 0,1"
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if ids.is_empty() {
        return Err(Error::Config("--gpus: give at least one GPU index".into()));
    }
    Ok(ids)
}

/// `--gpus` for a command that runs one network: exactly one ordinal.
pub fn one_gpu(list: &str) -> Result<usize> {
    let ids = parse_gpus(list)?;
    if ids.len() > 1 {
        return Err(Error::Config(format!(
            "--gpus {list}: this command runs on one GPU; pass one, e.g. --gpus {} (train and bench-step take several, with --parallel)",
            ids[0]
        )));
    }
    Ok(ids[0])
}

/// The GPUs when neither `--cpu` nor `--gpus` was given: every ordinal
/// found, in order, when the driver and a GPU are there, else `None` (the
/// CPU); the reason for the CPU is logged.
pub fn automatic() -> Option<Vec<usize>> {
    match probe::devices() {
        Ok(list) if !list.is_empty() => Some(list.iter().map(|d| d.ordinal).collect()),
        Ok(_) => {
            info!("no --cpu or --gpus given: no CUDA GPU found, using the CPU");
            None
        }
        Err(e) => {
            if probe::driver_present() {
                info!("no --cpu or --gpus given: using the CPU (CUDA: {e})");
            } else {
                info!("no --cpu or --gpus given: using the CPU (no CUDA driver library found)");
            }
            None
        }
    }
}
