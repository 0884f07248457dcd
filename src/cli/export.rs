//! `export`: write a checkpoint's weights for other tools: safetensors
//! (PyTorch names and layouts, with the run's classes and preprocessing as
//! metadata) or ONNX (the inference graph with its weights).
use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};

use alexnet_cuda::backend::cpu::CpuBackend;
use alexnet_cuda::checkpoint::{self, Checkpoint};
use alexnet_cuda::export::onnx::write_onnx;
use alexnet_cuda::export::{network_tensors, write_safetensors};

use super::common::flag_value;

#[derive(Args)]
pub struct ExportArgs {
    /// A checkpoint (ckpt-*.safetensors or best.safetensors), or a run folder for its best.safetensors.
    #[arg(long, value_name = "PATH")]
    checkpoint: PathBuf,
    /// safetensors: the weights with PyTorch names and layouts; onnx: the inference graph with its weights.
    #[arg(long, value_enum)]
    format: ExportFormat,
    /// Output file.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

/// --format's values.
#[derive(Clone, Copy, ValueEnum)]
enum ExportFormat {
    Safetensors,
    Onnx,
}

/// Write the file and say what went in.
pub fn run(args: ExportArgs) -> Result<()> {
    if checkpoint::is_checkpoint_file(&args.out) {
        bail!(
            "--out {}: a training checkpoint, which the export would replace (a run resumes from it); write the export elsewhere",
            args.out.display()
        );
    }
    let ck = checkpoint::load_resolved(&args.checkpoint)?;
    let topo = ck.state.net.topology()?;
    // The weights in table order, checked against the table's shapes.
    let be = CpuBackend::new();
    let net = ck.network(&be, &topo, 1)?;
    let tensors = network_tensors(&net)?;
    match args.format {
        ExportFormat::Onnx => write_onnx(&topo, &tensors, &args.out)?,
        ExportFormat::Safetensors => {
            write_safetensors(&args.out, &tensors, &metadata(&ck, &topo.name)?)?
        }
    }
    outln!(
        "wrote {} ({} tensors, {} parameters, config {}) to {}",
        flag_value(&args.format),
        tensors.len(),
        tensors.iter().map(|t| t.data.len()).sum::<usize>(),
        topo.name,
        args.out.display()
    )?;
    Ok(())
}

/// The safetensors metadata: the config, the classes and their names, and
/// the preprocessing (JSON values).
fn metadata(ck: &Checkpoint, config: &str) -> Result<BTreeMap<String, String>> {
    let mut meta = BTreeMap::new();
    meta.insert("config".to_string(), config.to_string());
    meta.insert(
        "classes".to_string(),
        serde_json::to_string(&ck.state.classes)?,
    );
    meta.insert("names".to_string(), serde_json::to_string(&ck.state.names)?);
    meta.insert(
        "preprocess".to_string(),
        serde_json::to_string(&ck.state.preprocess)?,
    );
    Ok(meta)
}
