//! Stand-in for the generated kernels table (kernels/*.cu as build.rs embeds
//! them): the same public API with no modules, so the CUDA backend compiles
//! before the kernels land. The real file replaces this one.

/// One kernels/*.cu file.
#[derive(Clone, Copy, Debug)]
pub struct Module {
    /// The file stem, e.g. "lrn" for kernels/lrn.cu.
    pub name: &'static str,
    /// The CUDA source, for NVRTC.
    pub source: &'static str,
    /// nvcc's fatbin (PTX + SASS), or None when the build had no nvcc.
    pub fatbin: Option<&'static [u8]>,
    /// The `extern "C" __global__` entry points defined in the file.
    pub kernels: &'static [&'static str],
}

/// nvcc's version at build time; None without nvcc.
pub const NVCC_VERSION: Option<&str> = None;

/// One per kernels/*.cu file (none in this stand-in).
pub const MODULES: &[Module] = &[];

/// Threads per block for every kernel launch.
const BLOCK: u32 = 256;
/// The most blocks a launch uses; kernels are grid-stride loops.
const MAX_GRID: u32 = 65535;

/// (grid, block) for a kernel with one logical thread per `threads` items:
/// block 256, grid ceil(threads / 256) capped at 65535, and at least 1.
pub fn launch_1d(threads: usize) -> (u32, u32) {
    let blocks = threads.div_ceil(BLOCK as usize).clamp(1, MAX_GRID as usize);
    (blocks as u32, BLOCK)
}
