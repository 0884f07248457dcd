//! `export`: write a checkpoint's weights for other tools: safetensors
//! (PyTorch names and layouts, with the run's classes and preprocessing as
//! metadata) or ONNX (the inference graph with its weights).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use tracing::warn;

use alexnet_cuda::backend::cpu::CpuBackend;
use alexnet_cuda::checkpoint::{self, Checkpoint};
use alexnet_cuda::export::onnx::{write_onnx, PixelInput};
use alexnet_cuda::export::{network_tensors, write_safetensors};
use alexnet_cuda::fsutil::{check_writable, through_links};

use super::common::{flag_value, not_a_run_file};

#[derive(Args)]
pub struct ExportArgs {
    /// A checkpoint (ckpt-*.safetensors or best.safetensors), or a run folder for its best.safetensors.
    #[arg(long, value_name = "PATH")]
    checkpoint: PathBuf,
    /// safetensors: the weights with PyTorch names and layouts; onnx: the inference graph with its weights (default: from --out's extension, .safetensors or .onnx).
    #[arg(long, value_enum)]
    format: Option<ExportFormat>,
    /// Output file.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// ONNX only: the graph takes RGB pixels 0 to 255 (the centre crop of the image as `prepare` stores it) and does the run's preprocessing itself (mean or mean image, std, padding).
    #[arg(long)]
    pixels: bool,
}

/// --format's values.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ExportFormat {
    Safetensors,
    Onnx,
}

/// Write the file and say what went in.
pub fn run(mut args: ExportArgs) -> Result<()> {
    // Through a link, the file it names is the one written (and checked).
    args.out = through_links(&args.out);
    not_a_run_file("--out", &args.out)?;
    // Before the checkpoint is loaded (seconds for alexnet's 490 MB).
    check_writable(&args.out)?;
    let format = chosen_format(args.format, &args.out)?;
    if args.pixels && format != ExportFormat::Onnx {
        bail!("--pixels is for --format onnx: a safetensors export carries the preprocessing in its metadata (docs/runs.md, \"Export\")");
    }
    let ck = checkpoint::load_resolved(&args.checkpoint)?;
    let topo = ck.state.net.topology()?;
    // The weights in table order, checked against the table's shapes.
    let be = CpuBackend::new();
    let net = ck.network(&be, &topo, 1)?;
    let tensors = network_tensors(&net)?;
    match format {
        ExportFormat::Onnx => {
            let pixels = match args.pixels {
                true => Some(PixelInput::new(&ck.state.preprocess, ck.mean_image())?),
                false => None,
            };
            let meta = metadata(&ck, &topo.name)?;
            write_onnx(&topo, &tensors, pixels.as_ref(), &meta, &args.out)?
        }
        ExportFormat::Safetensors => {
            write_safetensors(&args.out, &tensors, &metadata(&ck, &topo.name)?)?
        }
    }
    outln!(
        "wrote {} ({} tensors, {} parameters, config {}) to {}",
        flag_value(&format),
        tensors.len(),
        tensors.iter().map(|t| t.data.len()).sum::<usize>(),
        topo.name,
        args.out.display()
    )?;
    let p = &ck.state.preprocess;
    if p.mean_image && !args.pixels {
        // "mean" in the metadata is not what the run subtracted.
        outln!(
            "the run subtracted a mean image, which this file does not hold: take data.mean_image from {} to preprocess its inputs, or export ONNX with --pixels",
            ck.path.display()
        )?;
    }
    if args.pixels {
        outln!(
            "input \"pixels\": [N, 3, {c}, {c}], RGB 0 to 255, the centre {c}x{c} of the image resized to {s} on its short side and centre-cropped to {s}x{s}",
            c = p.crop,
            s = p.image_size
        )?;
    }
    Ok(())
}

/// --format, or the one --out's extension names; a --format that another
/// extension contradicts (a known one, or `.pt`) is kept, with a warning
/// (tools pick a reader by it).
fn chosen_format(given: Option<ExportFormat>, out: &Path) -> Result<ExportFormat> {
    let ext = out.extension().map(|e| e.to_string_lossy().to_lowercase());
    let named = ExportFormat::value_variants()
        .iter()
        .copied()
        .find(|f| ext.as_deref() == Some(flag_value(f).as_str()));
    match (given, named) {
        (Some(f), Some(n)) if f != n => {
            warn!(
                "--out {} ends in .{} but holds {}; tools that go by the name will misread it",
                out.display(),
                flag_value(&n),
                flag_value(&f)
            );
            Ok(f)
        }
        (Some(f), None) if ext.is_some() => {
            warn!(
                "--out {} ends in .{}, not .{}; tools that go by the name will misread it{}",
                out.display(),
                ext.as_deref().unwrap_or_default(),
                flag_value(&f),
                match (f, ext.as_deref()) {
                    (ExportFormat::Safetensors, Some("pt" | "pth" | "bin")) =>
                        ": torch.load cannot read it, safetensors.torch.load_file can",
                    _ => "",
                }
            );
            Ok(f)
        }
        (Some(f), _) | (None, Some(f)) => Ok(f),
        (None, None) => {
            // `.onnx` alone is a hidden file's name without an extension.
            let bare = out.file_name().map(|n| n.to_string_lossy().to_lowercase());
            if matches!(bare.as_deref(), Some(".onnx" | ".safetensors")) {
                bail!(
                    "--out {}: a name that is only an extension; name the file, such as model{}",
                    out.display(),
                    bare.unwrap_or_default()
                );
            }
            bail!(
                "--out {}: its name says no format; end it in .safetensors or .onnx, or pass --format safetensors|onnx",
                out.display()
            )
        }
    }
}

/// The export's metadata (safetensors' header, ONNX's metadata_props): the
/// config, the classes and their names, and the preprocessing (JSON values).
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
