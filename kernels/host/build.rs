//! Build script of alexnet-kernels-host: compiles launch.cpp (every
//! kernels/*.cu through shim.h, and the prelude once) with the C++ compiler
//! into a static library that this crate links. No fast-math: results must
//! match the CPU reference.
fn main() {
    // The kernel files and the prelude one folder up, and this folder.
    println!("cargo:rerun-if-changed=..");
    cc::Build::new()
        .cpp(true)
        .file("launch.cpp")
        .opt_level(2)
        .flag("-std=c++17")
        // No fused multiply-add contraction: the host results are compared with
        // the CPU reference bit for bit where the arithmetic is the same.
        .flag_if_supported("-ffp-contract=off")
        .warnings(true)
        .compile("alexnet_host_kernels");
}
