//! `bench-step --per-layer`: a few more steps with every op timed on its
//! own (`model::laps`), as a table of each op's time, its FLOPs and least
//! bytes, and the rates and share of the card's peak they give
//! (`model::profile`); the card's peaks are looked up for the GPUs we
//! know, or passed in.
use anyhow::{bail, Result};
use clap::Args;

use alexnet_cuda::backend::{Backend, SgdParams};
use alexnet_cuda::model::net::{Mode, Network};
use alexnet_cuda::model::profile::{table, CostBasis, Peaks, Row};

use crate::cli::common::positive_number;
use crate::cli::device::{DeviceArgs, PrecisionFlag};

#[derive(Args, Clone)]
pub struct PerLayerArgs {
    /// After the timed steps, time every op of --phase-steps more (on a GPU by events in its stream, elsewhere after a wait for each op) and print the per-layer table before the JSON line.
    #[arg(long)]
    pub per_layer: bool,
    /// The device's peak compute, TFLOP/s, for the table's share column (default: looked up for H200, H100 and A100 at the run's precision).
    #[arg(
        long,
        value_name = "TFLOPS",
        value_parser = positive_number,
        requires = "peak_gbps",
        requires = "per_layer"
    )]
    pub peak_tflops: Option<f64>,
    /// The device's peak memory bandwidth, GB/s, with --peak-tflops.
    #[arg(
        long,
        value_name = "GBPS",
        value_parser = positive_number,
        requires = "peak_tflops",
        requires = "per_layer"
    )]
    pub peak_gbps: Option<f64>,
}

/// The table's rows, and the peaks its shares are of with where they came from.
pub struct PerLayer {
    pub rows: Vec<Row>,
    pub peaks: Option<(Peaks, &'static str)>,
}

/// Time every op of `steps` steps of `model` on the batch, then stop timing.
pub fn per_layer<B: Backend>(
    model: &mut Network<'_, B>,
    (x, labels): (&[f32], &[u32]),
    hp: &SgdParams,
    steps: usize,
    (args, dev): (&PerLayerArgs, &DeviceArgs),
    device: &str,
) -> Result<PerLayer> {
    let peaks = peaks(args, dev, device)?;
    model.time_ops(true);
    // Queued as in training: reading the loss back would make the GPU wait
    // for the host in every step's loss lap.
    for _ in 0..steps.max(1) {
        model.forward_queued(x, labels, Mode::Train)?;
        model.backward()?;
        model.sgd_step(hp)?;
    }
    let laps = model.take_laps()?;
    model.time_ops(false);
    let basis = CostBasis {
        batch: model.batch(),
        act_bytes: match dev.precision {
            PrecisionFlag::Fp32 => 4,
            PrecisionFlag::Fp16 | PrecisionFlag::Bf16 => 2,
        },
    };
    let rows = table(model.topology(), &laps, basis, peaks.map(|p| p.0))?;
    Ok(PerLayer { rows, peaks })
}

/// --peak-tflops and --peak-gbps, else the known card `device` names.
fn peaks(
    args: &PerLayerArgs,
    dev: &DeviceArgs,
    device: &str,
) -> Result<Option<(Peaks, &'static str)>> {
    if let (Some(tflops), Some(gb_per_s)) = (args.peak_tflops, args.peak_gbps) {
        if !(tflops > 0.0 && gb_per_s > 0.0 && tflops.is_finite() && gb_per_s.is_finite()) {
            bail!("--peak-tflops and --peak-gbps must be positive numbers");
        }
        return Ok(Some((
            Peaks { tflops, gb_per_s },
            "--peak-tflops, --peak-gbps",
        )));
    }
    Ok(known_peaks(device, dev.precision, dev.tf32))
}

/// Dense peaks (no 2:4 sparsity) of the cards in NVIDIA's datasheets (H200,
/// H100 and A100 Tensor Core GPU datasheets): FP32 on CUDA cores for strict
/// fp32, TF32 tensor cores with --tf32, FP16/BF16 tensor cores for 16-bit.
pub fn known_peaks(device: &str, p: PrecisionFlag, tf32: bool) -> Option<(Peaks, &'static str)> {
    let d = device.to_lowercase();
    // A GH200's name holds "h200", but its Hopper GPU has HBM3 or HBM3e of
    // its own rates, in none of these datasheets: its peaks are passed in.
    // A MIG instance has a slice of the card's SMs and memory bandwidth:
    // the whole card's peaks would read its shares several times too low.
    if d.contains("gh200") || d.split_whitespace().any(|w| w == "mig") {
        return None;
    }
    // (fp32, tf32, 16-bit) TFLOP/s, GB/s.
    let (rates, gb_per_s, card) = if d.contains("h200") && d.contains("nvl") {
        ((60.0, 417.5, 835.5), 4800.0, "H200 NVL")
    } else if d.contains("h200") {
        ((67.0, 494.5, 989.5), 4800.0, "H200 SXM")
    } else if d.contains("h100") && d.contains("nvl") {
        ((60.0, 417.5, 835.5), 3900.0, "H100 NVL")
    } else if d.contains("h100") && d.contains("pcie") {
        ((51.0, 378.0, 756.0), 2000.0, "H100 PCIe")
    } else if d.contains("h100") {
        ((67.0, 494.5, 989.5), 3350.0, "H100 SXM")
    } else if d.contains("a100") && d.contains("80gb") && d.contains("pcie") {
        ((19.5, 156.0, 312.0), 1935.0, "A100 80GB PCIe")
    } else if d.contains("a100") && d.contains("80gb") {
        ((19.5, 156.0, 312.0), 2039.0, "A100 80GB SXM")
    } else if d.contains("a100") {
        ((19.5, 156.0, 312.0), 1555.0, "A100 40GB")
    } else {
        return None;
    };
    let tflops = match (p, tf32) {
        (PrecisionFlag::Fp32, false) => rates.0,
        (PrecisionFlag::Fp32, true) => rates.1,
        _ => rates.2,
    };
    Some((Peaks { tflops, gb_per_s }, card))
}

/// The table as Markdown, and what its rows add up to beside the step.
/// "of rows" is a row's share of the rows' sum, which the last line sets
/// beside the step's own time.
pub fn print(t: &PerLayer, step_s: f64) -> Result<()> {
    let total: f64 = t.rows.iter().map(|r| r.ms).sum();
    let peak_col = t.peaks.is_some();
    outln!(
        "| layer | part | ms | of rows | GFLOP | MB | TFLOP/s | GB/s |{}",
        if peak_col { " of peak |" } else { "" }
    )?;
    outln!(
        "|---|---|---:|---:|---:|---:|---:|---:|{}",
        if peak_col { "---:|" } else { "" }
    )?;
    for r in &t.rows {
        let share = match (peak_col, r.peak_share) {
            (true, Some(s)) => format!(" {:.1}% |", 100.0 * s),
            (true, None) => " |".into(), // the upload: no peak of its own
            (false, _) => String::new(),
        };
        outln!(
            "| {} | {} | {:.3} | {:.1}% | {:.2} | {:.1} | {:.2} | {:.1} |{share}",
            r.layer,
            r.part,
            r.ms,
            100.0 * r.ms / total,
            r.gflop,
            r.mb,
            r.tflop_per_s,
            r.gb_per_s
        )?;
    }
    outln!(
        "rows add up to {total:.3} ms; the step without waits took {:.3} ms (rows / step = {:.2}){}",
        step_s * 1e3,
        total / (step_s * 1e3),
        t.peaks.map_or(String::new(), |(p, src)| format!(
            "; peaks {} TFLOP/s, {} GB/s ({src})",
            p.tflops, p.gb_per_s
        ))
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The datasheets' dense figures, by the names CUDA gives the cards.
    #[test]
    fn known_cards_by_their_cuda_names() {
        let p = |name, prec, tf32| {
            known_peaks(name, prec, tf32).map(|(p, c)| (p.tflops, p.gb_per_s, c))
        };
        assert_eq!(
            p(
                "cuda:0 NVIDIA H200 (sm_90, 139.8 GiB) bf16",
                PrecisionFlag::Bf16,
                false
            ),
            Some((989.5, 4800.0, "H200 SXM"))
        );
        assert_eq!(
            p("NVIDIA H200", PrecisionFlag::Fp32, false),
            Some((67.0, 4800.0, "H200 SXM"))
        );
        assert_eq!(p("NVIDIA GH200 480GB", PrecisionFlag::Bf16, false), None);
        assert_eq!(
            p(
                "NVIDIA H100 80GB HBM3 MIG 1g.10gb",
                PrecisionFlag::Bf16,
                false
            ),
            None
        );
        assert_eq!(
            p("NVIDIA H200 NVL", PrecisionFlag::Fp16, false),
            Some((835.5, 4800.0, "H200 NVL"))
        );
        assert_eq!(
            p("NVIDIA H100 80GB HBM3", PrecisionFlag::Fp32, true),
            Some((494.5, 3350.0, "H100 SXM"))
        );
        assert_eq!(
            p("NVIDIA H100 PCIe", PrecisionFlag::Bf16, false),
            Some((756.0, 2000.0, "H100 PCIe"))
        );
        assert_eq!(
            p("NVIDIA A100-SXM4-80GB", PrecisionFlag::Fp32, true),
            Some((156.0, 2039.0, "A100 80GB SXM"))
        );
        assert_eq!(
            p("NVIDIA A100 80GB PCIe", PrecisionFlag::Fp16, false),
            Some((312.0, 1935.0, "A100 80GB PCIe"))
        );
        assert_eq!(
            p("NVIDIA A100-SXM4-40GB", PrecisionFlag::Fp32, false),
            Some((19.5, 1555.0, "A100 40GB"))
        );
        assert_eq!(p("cpu (2 threads)", PrecisionFlag::Fp32, false), None);
        assert_eq!(
            p("NVIDIA GeForce RTX 4090", PrecisionFlag::Bf16, false),
            None
        );
    }
}
