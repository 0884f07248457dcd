//! GPU parity: every op, the towers and the data-parallel replicas on a CUDA
//! GPU against the CPU reference (or the grouped network), and the steady
//! state's allocation count, in fp32, fp16 and bf16. Its own `main` (no
//! libtest harness): on a machine without a CUDA GPU it says it was skipped
//! and passes, so `cargo test` runs it everywhere; scripts/gpu-check runs
//! its executable on a GPU machine with flags:
//!
//!   --gpu N            the GPU (default 0); naming one makes a missing GPU
//!                      an error instead of a skip
//!   --precision P      fp32, fp16 or bf16 (repeatable; default all three)
//!   --json             one JSON object per row (the keys of `ParityRow`)
//!                      instead of a table
//!
//! Other arguments (libtest's, from `cargo test -- ...`) are ignored. The
//! exit status is 1 when a check failed. Logs go to stderr (RUST_LOG,
//! default info; `alexnet_cuda::backend::cuda::cudnn=debug` names the
//! algorithm cuDNN chose for each shape).
mod executors;
// The steady-state body tests/steady_state.rs runs on the CPU.
#[path = "../steady_state/fixed_shape.rs"]
mod fixed_shape;
mod ops;
mod rows;

use alexnet_cuda::backend::cuda::{probe, CudaBackend, CudaOptions, Precision};
use alexnet_cuda::backend::Backend;
use alexnet_cuda::model::net::Network;
use alexnet_cuda::model::topology::Topology;
use alexnet_cuda::rng::Rng;
use alexnet_cuda::Result;

use rows::random;

/// What the command line asks for.
struct Args {
    gpu: Option<usize>,
    precisions: Vec<Precision>,
    json: bool,
}

fn parse_args() -> std::result::Result<Args, String> {
    let mut args = Args {
        gpu: None,
        precisions: Vec::new(),
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--gpu" => {
                let v = it.next().ok_or("--gpu needs a GPU index")?;
                args.gpu = Some(v.parse().map_err(|_| format!("--gpu {v}: not an index"))?);
            }
            "--precision" => {
                let v = it.next().ok_or("--precision needs fp32, fp16 or bf16")?;
                args.precisions
                    .push(v.parse().map_err(|e| format!("--precision: {e}"))?);
            }
            "--json" => args.json = true,
            _ => {}
        }
    }
    if args.precisions.is_empty() {
        args.precisions = vec![Precision::F32, Precision::F16, Precision::Bf16];
    }
    Ok(args)
}

fn main() {
    alexnet_cuda::progress::init_logs();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("gpu_parity: {e}");
            std::process::exit(2);
        }
    };
    // cudarc panics where libcuda is missing: ask the probe first.
    let ordinal = args.gpu.unwrap_or(0);
    if let Err(e) = probe::require(&[ordinal]) {
        if args.gpu.is_some() {
            eprintln!("gpu_parity: GPU {ordinal} asked for: {e}");
            std::process::exit(1);
        }
        println!("gpu_parity: skipped, no CUDA GPU ({e})");
        return;
    }
    let mut failed = 0;
    for &precision in &args.precisions {
        match run(ordinal, precision, args.json) {
            Ok(n) => failed += n,
            Err(e) => {
                eprintln!("gpu_parity: {precision}: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        eprintln!("gpu_parity: {failed} GPU checks failed");
        std::process::exit(1);
    }
}

/// Every parity check in one precision, then the steady-state allocation
/// check; prints the rows and returns how many failed.
fn run(ordinal: usize, precision: Precision, json: bool) -> Result<usize> {
    let opts = CudaOptions {
        precision,
        ..CudaOptions::default()
    };
    let be = CudaBackend::new(ordinal, opts)?;
    tracing::info!("{}", be.name());
    let mut rows = ops::run_all(&be)?;
    rows.extend(executors::towers_vs_grouped(&be)?);
    rows.extend(executors::replicas_vs_grouped(&be)?);
    let mut failed = 0;
    for r in rows {
        failed += usize::from(!r.pass);
        if json {
            println!("{}", serde_json::to_string(&r).expect("a row serialises"));
        } else {
            println!("{r}");
        }
    }
    failed += usize::from(!steady_state(&be, json)?);
    Ok(failed)
}

/// The allocation check's JSON line, with the keys of a parity row
/// (scripts/gpu-check reads them): max_abs is the allocations the steps
/// after the first made.
#[derive(serde::Serialize)]
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
/// nothing (`cifar`, batch 32; the body tests/steady_state.rs runs on the
/// CPU). Prints the check's row; true when it passed.
fn steady_state(be: &CudaBackend, json: bool) -> Result<bool> {
    let topo = Topology::cifar();
    let batch = 32;
    let mut rng = Rng::new(7);
    let x = random(&mut rng, batch * topo.channels * topo.crop * topo.crop, 1.0);
    let labels: Vec<u32> = (0..batch).map(|_| rng.below(topo.classes) as u32).collect();
    let mut net = Network::new(be, &topo, batch, 1)?;
    let (first, last) = fixed_shape::allocations_first_and_fifth(be, &mut net, &x, &labels)?;
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
        println!("{}", serde_json::to_string(&row).expect("a row serialises"));
    } else {
        println!("allocations: {first} after the first step, {last} after the fifth");
    }
    Ok(steady)
}
