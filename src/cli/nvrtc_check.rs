//! `nvrtc-check`: the run-time compile path, checked without a GPU: every
//! kernel module's source through NVRTC, and every entry point of
//! kernels/README.md in the PTX.
use anyhow::{bail, Context, Result};
use clap::Args;

use alexnet_cuda::backend::cuda::modules;

#[derive(Args)]
pub struct NvrtcCheckArgs {
    /// Compute capability to compile for, e.g. 9.0 (H100) or 7.5.
    // A string: any compute capability NVRTC knows, not a fixed list.
    #[arg(long, default_value = "9.0")]
    arch: String,
}

/// Compile every module for `--arch` and list the entry points missing.
pub fn run(args: NvrtcCheckArgs) -> Result<()> {
    let cc = parse_arch(&args.arch)?;
    let mut missing = Vec::new();
    for (m, ptx) in modules::nvrtc_compile_all(cc)? {
        let entries = ptx_entries(&ptx);
        let absent: Vec<&str> = m
            .kernels
            .iter()
            .copied()
            .filter(|k| !entries.contains(k))
            .collect();
        outln!(
            "{:<14} sm_{}{}: {:>7} bytes of PTX, {} of {} entry points",
            m.name,
            cc.0,
            cc.1,
            ptx.len(),
            m.kernels.len() - absent.len(),
            m.kernels.len()
        )?;
        missing.extend(absent.iter().map(|k| format!("{}: {k}", m.name)));
    }
    if !missing.is_empty() {
        bail!(
            "entry points missing from NVRTC's PTX: {}",
            missing.join(", ")
        );
    }
    Ok(())
}

/// "9.0" as (9, 0).
fn parse_arch(arch: &str) -> Result<(i32, i32)> {
    arch.split_once('.')
        .and_then(|(a, b)| Some((a.parse::<i32>().ok()?, b.parse::<i32>().ok()?)))
        .with_context(|| format!("--arch {arch}: write a compute capability such as 9.0"))
}

/// The names of the kernels a PTX text defines.
fn ptx_entries(ptx: &str) -> Vec<&str> {
    ptx.lines()
        .filter_map(|l| l.trim_start().strip_prefix(".visible .entry "))
        .map(|l| l.split('(').next().unwrap_or("").trim())
        .collect()
}
