//! Finding GPUs without panicking: this file owns the checks that run before
//! any other CUDA call (is the driver library there? how many devices?) and
//! `DeviceInfo`, what the rest of the program prints and chooses from.
//!
//! cudarc loads libcuda lazily and panics when a symbol's library is missing,
//! so every entry point here first asks whether the library can be opened at
//! all, and turns absence into `Error::NoDevice` with a message that says
//! what to install or which flag to use instead.
use std::path::PathBuf;

use cudarc::driver::{result, sys};

use crate::error::{Error, Result};

/// The message for a machine without the NVIDIA driver.
pub const NO_DRIVER: &str = "no CUDA driver library (libcuda.so) found: install the NVIDIA driver, or run on the CPU with --cpu";

/// One GPU as the driver reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// (major, minor), e.g. (9, 0) for an H100.
    pub compute_capability: (i32, i32),
    /// Total device memory in bytes.
    pub total_memory: usize,
}

impl std::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (major, minor) = self.compute_capability;
        write!(
            f,
            "cuda:{} {} (sm_{major}{minor}, {:.1} GiB)",
            self.ordinal,
            self.name,
            self.total_memory as f64 / (1u64 << 30) as f64
        )
    }
}

/// True when the CUDA driver library can be loaded. Cheap; loads nothing else.
pub fn driver_present() -> bool {
    // SAFETY: is_culib_present only tries to dlopen the candidate library
    // names and drops the handles; it calls no CUDA function.
    unsafe { sys::is_culib_present() }
}

/// Map a driver error to the crate's error, naming the step.
fn drv(op: &'static str, e: result::DriverError) -> Error {
    Error::Cuda {
        op,
        detail: format!("{e:?}"),
    }
}

/// Every GPU the driver sees. Errors (never panics) when the driver library is
/// missing, when cuInit fails (for example a driver too old for this build),
/// or when there is no GPU.
pub fn devices() -> Result<Vec<DeviceInfo>> {
    if !driver_present() {
        return Err(Error::NoDevice(NO_DRIVER.into()));
    }
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    result::init().map_err(|e| Error::NoDevice(init_failed(e.0, visible.as_deref())))?;
    let count = result::device::get_count().map_err(|e| drv("device count", e))?;
    if count <= 0 {
        return Err(Error::NoDevice(no_gpu(visible.as_deref())));
    }
    (0..count).map(|i| info(i as usize)).collect()
}

/// Why cuInit failed, and what to do. With no GPU visible it fails with
/// CUDA_ERROR_NO_DEVICE, so CUDA_VISIBLE_DEVICES (which nvidia-smi does
/// not read) is the first suspect; a stub library (the toolkit's
/// `stubs/` folder on LD_LIBRARY_PATH) cannot run anything.
pub fn init_failed(code: sys::CUresult, visible: Option<&str>) -> String {
    match code {
        sys::CUresult::CUDA_ERROR_NO_DEVICE => no_gpu(visible),
        sys::CUresult::CUDA_ERROR_STUB_LIBRARY => format!(
            "the CUDA driver library loaded is the toolkit's stub ({code:?}): take the CUDA \
             toolkit's stubs/ folder off LD_LIBRARY_PATH so the driver's libcuda.so.1 is found, \
             or run on the CPU with --cpu"
        ),
        _ => format!(
            "the CUDA driver is installed but failed to initialise ({code:?}); check the driver \
             (nvidia-smi), or run on the CPU with --cpu"
        ),
    }
}

/// The driver sees no GPU: with CUDA_VISIBLE_DEVICES set (`visible`), it
/// is the likely cause.
fn no_gpu(visible: Option<&str>) -> String {
    match visible {
        Some(v) => format!(
            "the CUDA driver found no GPU among CUDA_VISIBLE_DEVICES={v:?}: set it to GPUs that \
             nvidia-smi lists (it does not read the variable), e.g. CUDA_VISIBLE_DEVICES=0, or \
             unset it, or run on the CPU with --cpu"
        ),
        None => {
            "the CUDA driver found no GPU: check nvidia-smi, or run on the CPU with --cpu".into()
        }
    }
}

/// One device's properties, through the driver API (no context is created).
fn info(ordinal: usize) -> Result<DeviceInfo> {
    use sys::CUdevice_attribute::{
        CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR as MAJOR,
        CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR as MINOR,
    };
    let dev = result::device::get(ordinal as i32).map_err(|e| drv("device get", e))?;
    let name = result::device::get_name(dev).map_err(|e| drv("device name", e))?;
    // SAFETY: `dev` is a valid device handle just returned by cuDeviceGet
    // after a successful cuInit.
    let (major, minor, total_memory) = unsafe {
        (
            result::device::get_attribute(dev, MAJOR).map_err(|e| drv("device attribute", e))?,
            result::device::get_attribute(dev, MINOR).map_err(|e| drv("device attribute", e))?,
            result::device::total_mem(dev).map_err(|e| drv("device memory", e))?,
        )
    };
    Ok(DeviceInfo {
        ordinal,
        name,
        compute_capability: (major, minor),
        total_memory,
    })
}

/// The devices for `ordinals` (as `--gpus 0,1` gives them; repeats allowed,
/// `--gpus 0,0` runs two contexts on one GPU). Errors when an ordinal does not
/// exist, naming how many GPUs were found.
pub fn require(ordinals: &[usize]) -> Result<Vec<DeviceInfo>> {
    require_in(&devices()?, ordinals)
}

/// [`require`] among `all`, the devices already listed.
pub fn require_in(all: &[DeviceInfo], ordinals: &[usize]) -> Result<Vec<DeviceInfo>> {
    ordinals
        .iter()
        .map(|&o| {
            all.get(o).cloned().ok_or_else(|| {
                Error::NoDevice(format!(
                    "GPU {o} was asked for but {} GPU{} found ({}{})",
                    all.len(),
                    if all.len() == 1 { " was" } else { "s were" },
                    match all.len() {
                        1 => "only GPU 0".to_string(),
                        n => format!("GPUs 0 to {}", n - 1),
                    },
                    within_visible()
                ))
            })
        })
        .collect()
}

/// How ordinals count where CUDA_VISIBLE_DEVICES is set: within its list.
fn within_visible() -> String {
    match std::env::var("CUDA_VISIBLE_DEVICES") {
        Ok(v) => format!(", numbered from 0 within CUDA_VISIBLE_DEVICES={v:?}"),
        Err(_) => String::new(),
    }
}

/// A CUDA library `lib{name}.so.N` on LD_LIBRARY_PATH under a major past
/// those cudarc opens (0.19 tries the plain name, `.so.12` to `.so.9`
/// and `.so.1`): CUDA 13's wheels install `libcublas.so.13`, `libnvrtc.so.13`.
pub fn unopened_name(name: &str) -> Option<PathBuf> {
    let ld = std::env::var_os("LD_LIBRARY_PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&ld)
        .filter(|d| !d.as_os_str().is_empty())
        .collect();
    unopened_in(&dirs, name)
}

/// [`unopened_name`] among `dirs`, the first folder first.
pub fn unopened_in(dirs: &[PathBuf], name: &str) -> Option<PathBuf> {
    let prefix = format!("lib{name}.so.");
    let past_12 = |file: &str| {
        let major = file.strip_prefix(&prefix).and_then(|v| v.split('.').next());
        major
            .and_then(|m| m.parse::<u32>().ok())
            .is_some_and(|m| m > 12)
    };
    dirs.iter().find_map(|d| {
        let mut files: Vec<String> = std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| past_12(f))
            .collect();
        files.sort();
        files.first().map(|f| d.join(f))
    })
}

/// What to do about the CUDA library `name` that cudarc did not find:
/// where LD_LIBRARY_PATH holds it under a name cudarc does not open, the
/// link that fixes it; else `otherwise`.
pub fn library_fix(name: &str, otherwise: &str) -> String {
    match unopened_name(name) {
        Some(p) => format!(
            "{} is on LD_LIBRARY_PATH under a name cudarc does not open: make a link \
             lib{name}.so to it in a folder on LD_LIBRARY_PATH (ln -s {} DIR/lib{name}.so; \
             docs/cuda.md, \"Running: the libraries\")",
            p.display(),
            crate::shell::word(&p)
        ),
        None => otherwise.to_string(),
    }
}
