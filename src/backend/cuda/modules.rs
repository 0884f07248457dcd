//! Loading the kernels (kernels/*.cu, embedded by the alexnet-kernels crate as
//! `alexnet_kernels::MODULES`) into one CUDA context. This file owns the
//! choice between the two ways a module gets onto the device:
//!   1. the embedded fatbin (PTX for a base architecture + SASS for common
//!      cards), when the build had nvcc and the driver accepts it;
//!   2. otherwise NVRTC at run time, compiling the embedded source for the
//!      device's own architecture. This is also the way out when the fatbin's
//!      PTX is newer than the driver (CUDA_ERROR_UNSUPPORTED_PTX_VERSION).
//!
//! Which path each module took is logged, and a failure names both causes.
use std::collections::HashMap;
use std::sync::Arc;

use alexnet_kernels::{Module, MODULES, NVRTC_OPTIONS};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};

use crate::error::{Error, Result};

/// How a module was loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadPath {
    Fatbin,
    Nvrtc,
}

/// Every kernel function of every module, by entry-point name.
pub struct Kernels {
    funcs: HashMap<&'static str, CudaFunction>,
    /// (module name, path taken), in MODULES order.
    pub loaded: Vec<(&'static str, LoadPath)>,
}

impl Kernels {
    /// The function for entry point `name` (kernels/README.md lists them).
    pub fn get(&self, name: &'static str) -> Result<&CudaFunction> {
        self.funcs.get(name).ok_or_else(|| Error::Cuda {
            op: "kernel lookup",
            detail: format!(
                "kernel {name} is not in the embedded kernel table ({} modules); the build's \
                 kernels/*.cu do not define it",
                MODULES.len()
            ),
        })
    }
}

/// True when NVRTC's library can be loaded (cudarc panics on first use otherwise).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen candidate names; calls no NVRTC function.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Load every module of `MODULES` into `ctx`. `cc` is the device's compute
/// capability, the NVRTC target.
pub fn load_all(ctx: &Arc<CudaContext>, cc: (i32, i32)) -> Result<Kernels> {
    let mut funcs = HashMap::new();
    let mut loaded = Vec::with_capacity(MODULES.len());
    for m in MODULES {
        let (module, path) = load_one(ctx, m, cc)?;
        for &name in m.kernels {
            let f = module.load_function(name).map_err(|e| Error::Cuda {
                op: "kernel load",
                detail: format!("module {}: function {name}: {e:?}", m.name),
            })?;
            funcs.insert(name, f);
        }
        loaded.push((m.name, path));
    }
    let from_fatbin = loaded
        .iter()
        .filter(|(_, p)| matches!(p, LoadPath::Fatbin))
        .count();
    tracing::info!(
        "kernels: {} modules, {from_fatbin} from the embedded fatbin, {} compiled by NVRTC",
        loaded.len(),
        loaded.len() - from_fatbin
    );
    Ok(Kernels { funcs, loaded })
}

fn load_one(
    ctx: &Arc<CudaContext>,
    m: &Module,
    cc: (i32, i32),
) -> Result<(Arc<CudaModule>, LoadPath)> {
    // Why the fatbin was not used, for the log and for the error if NVRTC fails too.
    let fatbin_problem = match m.fatbin {
        Some(bin) => {
            // cuModuleLoadData reads the fatbin header in place; a fresh Vec
            // from the global allocator is at least 8-byte aligned in
            // practice, unlike the `include_bytes!` static.
            match ctx.load_module(Ptx::from_binary(bin.to_vec())) {
                Ok(module) => {
                    tracing::debug!(module = m.name, "kernels: loaded the embedded fatbin");
                    return Ok((module, LoadPath::Fatbin));
                }
                Err(e) => format!("the embedded fatbin did not load ({e:?})"),
            }
        }
        None => "the build had no nvcc, so no fatbin is embedded".to_string(),
    };
    if !nvrtc_present() {
        return Err(Error::Cuda {
            op: "kernel load",
            detail: format!(
                "module {}: {fatbin_problem}, and NVRTC (libnvrtc.so) is not found to \
                 compile the source at run time: {}",
                m.name,
                super::probe::library_fix(
                    "nvrtc",
                    "install the CUDA runtime compiler (nvidia-cuda-nvrtc) or a driver new \
                     enough for the embedded PTX"
                )
            ),
        });
    }
    tracing::info!(
        module = m.name,
        "kernels: {fatbin_problem}; compiling the source with NVRTC for sm_{}{}",
        cc.0,
        cc.1
    );
    let (ptx, arch) = nvrtc(m, cc).map_err(|nvrtc_err| Error::Cuda {
        op: "kernel load",
        detail: format!(
            "module {}: {fatbin_problem}, and NVRTC failed: {nvrtc_err}",
            m.name
        ),
    })?;
    // Below compute_75 the PTX may have been compiled for compute_75 (CUDA
    // 13's NVRTC targets nothing older), which no driver runs on such a
    // card; PTX for the card's own arch points at the driver.
    let fix = match cc < (7, 5) && arch == "compute_75" {
        true => format!(
            "sm_{}{} is older than CUDA 13, and so this build, supports (compute \
             capability 7.5 and newer); run on a newer GPU, or with --cpu",
            cc.0, cc.1
        ),
        false => "the driver is older than NVRTC, update the NVIDIA driver".into(),
    };
    let module = ctx.load_module(ptx).map_err(|e| Error::Cuda {
        op: "kernel load",
        detail: format!(
            "module {}: {fatbin_problem}; NVRTC compiled it but the driver rejected the PTX \
             ({e:?}): {fix}",
            m.name
        ),
    })?;
    Ok((module, LoadPath::Nvrtc))
}

/// Compile every module's embedded source with NVRTC for compute capability
/// `cc`, as a machine without the fatbin would, and return each module's
/// PTX. Needs only libnvrtc, no GPU or driver (`alexnet-cuda nvrtc-check`).
pub fn nvrtc_compile_all(cc: (i32, i32)) -> Result<Vec<(&'static Module, String)>> {
    if !nvrtc_present() {
        return Err(Error::NoDevice(format!(
            "NVRTC (libnvrtc.so) not found: {}",
            super::probe::library_fix(
                "nvrtc",
                "put it on LD_LIBRARY_PATH (scripts/setup-nvcc installs it into .cuda/)"
            )
        )));
    }
    MODULES
        .iter()
        .map(|m| {
            let (ptx, _) = nvrtc(m, cc).map_err(|e| Error::Cuda {
                op: "nvrtc",
                detail: format!("module {}: {e}", m.name),
            })?;
            Ok((m, ptx.to_src()))
        })
        .collect()
}

/// Compile a module's source for the device's virtual architecture; when this
/// NVRTC does not know that architecture (a card newer than the toolkit), fall
/// back to compute_75, whose PTX the driver JIT-compiles for any newer card.
/// Returns the PTX and the architecture it was compiled for.
fn nvrtc(m: &Module, (major, minor): (i32, i32)) -> std::result::Result<(Ptx, String), String> {
    // NVRTC_OPTIONS (no fused multiply-add, as the nvcc build), for `arch`.
    let opts = |arch: String| CompileOptions {
        options: NVRTC_OPTIONS
            .iter()
            .map(|o| match o.starts_with("--gpu-architecture=") {
                true => format!("--gpu-architecture={arch}"),
                false => o.to_string(),
            })
            .collect(),
        name: Some(format!("{}.cu", m.name)),
        ..Default::default()
    };
    let native = format!("compute_{major}{minor}");
    match compile_ptx_with_opts(m.source, opts(native.clone())) {
        Ok(ptx) => Ok((ptx, native)),
        Err(first) => {
            tracing::warn!(
                module = m.name,
                "kernels: NVRTC could not compile for {native} ({first}); retrying for compute_75"
            );
            compile_ptx_with_opts(m.source, opts("compute_75".into()))
                .map(|ptx| (ptx, "compute_75".into()))
                .map_err(|e| format!("{native}: {first}; compute_75: {e}"))
        }
    }
}
