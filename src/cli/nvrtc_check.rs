//! `nvrtc-check`: the run-time compile path, checked without a GPU: every
//! kernel module's source through NVRTC, every entry point of
//! kernels/README.md in the PTX, and no fused multiply-add in the SGD
//! update (compiled with --fmad=false, so it rounds as the CPU's does).
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
    let want = format!("sm_{}{}", cc.0, cc.1);
    let mut missing = Vec::new();
    for (m, ptx) in modules::nvrtc_compile_all(cc)? {
        // The loader falls back to compute_75 when NVRTC refuses the
        // device's architecture; a check of --arch must not pass that way.
        let target = ptx_target(&ptx).unwrap_or("none");
        if target != want {
            bail!(
                "module {}: the PTX targets {target}, not the {want} of --arch {}: NVRTC could not compile it for compute_{}{} (the warning above says why)",
                m.name,
                args.arch,
                cc.0,
                cc.1
            );
        }
        let entries = ptx_entries(&ptx);
        let absent: Vec<&str> = m
            .kernels
            .iter()
            .copied()
            .filter(|k| !entries.contains(k))
            .collect();
        outln!(
            "{:<14} compute_{}{} (PTX for {target}): {:>7} bytes, {} of {} entry points",
            m.name,
            cc.0,
            cc.1,
            ptx.len(),
            m.kernels.len() - absent.len(),
            m.kernels.len()
        )?;
        missing.extend(absent.iter().map(|k| format!("{}: {k}", m.name)));
        // The SGD update calls no library function whose own code fuses.
        if m.name == "sgd" {
            if let Some(op) = contractible(&ptx) {
                bail!("sgd's PTX has {op}, which ptxas may fuse into a multiply-add: NVRTC was not given --fmad=false");
            }
        }
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

/// The first f32 instruction of `ptx` that is, or may become, a fused
/// multiply-add: `fma`, or a `mul` / `add` / `sub` without `.rn`, which
/// ptxas may contract (--fmad=false writes them with `.rn`).
fn contractible(ptx: &str) -> Option<&str> {
    ptx.split_whitespace().find(|t| {
        t.starts_with("fma.") && t.ends_with(".f32")
            || matches!(*t, "mul.f32" | "add.f32" | "sub.f32")
    })
}

/// The architecture of a PTX text's `.target` directive ("sm_90" of
/// ".target sm_90" or ".target sm_90, debug"; PTX ISA, "Module Directives").
fn ptx_target(ptx: &str) -> Option<&str> {
    ptx.lines()
        .find_map(|l| l.trim_start().strip_prefix(".target "))
        .and_then(|t| t.split(',').next())
        .map(str::trim)
}

/// The names of the kernels a PTX text defines.
fn ptx_entries(ptx: &str) -> Vec<&str> {
    ptx.lines()
        .filter_map(|l| l.trim_start().strip_prefix(".visible .entry "))
        .map(|l| l.split('(').next().unwrap_or("").trim())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{contractible, ptx_target};

    #[test]
    fn the_target_is_read_from_its_directive() {
        let ptx = "//\n.version 8.8\n.target sm_90\n.address_size 64\n";
        assert_eq!(ptx_target(ptx), Some("sm_90"));
        assert_eq!(ptx_target(".target sm_75, debug\n"), Some("sm_75"));
        assert_eq!(ptx_target(".version 8.8\n"), None);
    }

    /// PTX's rounding modifiers: `.rn` pins an f32 operation's rounding, so
    /// ptxas may not fuse it (PTX ISA, "Floating Point Instructions").
    #[test]
    fn only_unrounded_f32_arithmetic_may_be_fused() {
        let fused = "\tfma.rn.f32 \t%f3, %f1, %f2, %f3;";
        let loose = "\tmul.f32 \t%f3, %f1, %f2;\n\tadd.f32 \t%f4, %f3, %f5;";
        let pinned = "\tmul.rn.f32 \t%f3, %f1, %f2;\n\tsub.rn.f32 \t%f4, %f3, %f5;";
        assert_eq!(contractible(fused), Some("fma.rn.f32"));
        assert_eq!(contractible(loose), Some("mul.f32"));
        assert_eq!(contractible(pinned), None);
        assert_eq!(contractible("\tadd.s64 \t%rd2, %rd1, 1;"), None);
    }
}
