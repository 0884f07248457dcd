//! GPU check: every backend op on the GPU against the CPU reference (through
//! cuDNN and through the im2col + cuBLAS fallback), then a few training steps
//! of the cifar network to show that steady-state steps allocate nothing.
//! Usage: cargo run --release --example cuda_parity [-- GPU_ORDINAL]
//! Exits with status 1 when any op is out of tolerance.
use alexnet_cuda::backend::cuda::{parity, CudaBackend, CudaOptions};
use alexnet_cuda::backend::Backend;
use alexnet_cuda::model::topology::Topology;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let ordinal: usize = match std::env::args().nth(1) {
        Some(s) => s.parse()?,
        None => 0,
    };
    let be = CudaBackend::new(ordinal, CudaOptions::default())?;
    println!("{}", be.name());
    let rows = parity::run_all(&be)?;
    let mut failed = 0;
    for r in &rows {
        println!("{r}");
        failed += usize::from(!r.pass);
    }
    let (first, last) = parity::steady_state_allocations(&be, &Topology::cifar(), 32, 5)?;
    println!("allocations: {first} after the first step, {last} after the fifth");
    if last != first {
        println!("FAIL: steps after the first allocated device memory");
        failed += 1;
    }
    println!("{} checks, {failed} failed", rows.len() + 1);
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
