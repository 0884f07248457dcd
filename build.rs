//! Build script. The CUDA backend's kernels (kernels/*.cu: LRN, dropout,
//! softmax cross-entropy, SGD, grouped-conv fallback) will be compiled here
//! with nvcc into embedded PTX, or embedded as source for NVRTC where nvcc is
//! absent (DESIGN.md, "Kernels and build.rs"). This build has the CPU backend
//! only, so there is nothing to compile yet; the script only tells cargo to
//! rerun when the kernels folder changes.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
}
