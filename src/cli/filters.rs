//! `filters`: draw conv1's kernels per tower (the paper's figure 3) to a
//! PNG and print how colour-specific each tower is, as a table or JSON.
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};

use alexnet_cuda::viz::filters::{self, Scale};

use super::common::{named_as, not_a_run_file};

#[derive(Args)]
pub struct FiltersArgs {
    /// A checkpoint (ckpt-*.safetensors or best.safetensors), a run folder for its best.safetensors, or an exported safetensors file.
    #[arg(long, value_name = "PATH")]
    checkpoint: PathBuf,
    /// The PNG to write.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// The config, for a safetensors file whose metadata names none (written by PyTorch, say).
    // A string, as train's --config: the library resolves and lists the names.
    #[arg(long)]
    config: Option<String>,
    /// How weights map to grey levels: kernel (each kernel's own min..max, every pattern visible) or layer (one range for all, as cuda-convnet's shownet.py draws filters: weak kernels look faint).
    #[arg(long, value_enum, default_value_t = ScaleFlag::Kernel)]
    scale: ScaleFlag,
    /// One JSON line instead of the table.
    #[arg(long)]
    json: bool,
}

/// --scale's values: the library's `Scale`.
#[derive(Clone, Copy, ValueEnum)]
enum ScaleFlag {
    Kernel,
    Layer,
}

impl From<ScaleFlag> for Scale {
    fn from(f: ScaleFlag) -> Scale {
        match f {
            ScaleFlag::Kernel => Scale::Kernel,
            ScaleFlag::Layer => Scale::Layer,
        }
    }
}

/// Draw the picture and print the towers' colour table.
pub fn run(mut args: FiltersArgs) -> Result<()> {
    // Through a link, the file it names is the one written (and checked).
    args.out = alexnet_cuda::fsutil::through_links(&args.out);
    named_as("--out", &args.out, "png", "a PNG picture")?;
    not_a_run_file("--out", &args.out)?;
    filters::check_out(&args.out)?;
    let conv1 = filters::load(&args.checkpoint, args.config.as_deref())?;
    let layout = filters::write_png(&conv1, &args.out, args.scale.into())?;
    let towers = filters::tower_colour(&conv1);
    if args.json {
        let line = serde_json::json!({
            "checkpoint": args.checkpoint.display().to_string(),
            "out": args.out.display().to_string(),
            "config": conv1.config,
            "kernels": conv1.count(),
            "k": conv1.k,
            "width": layout.width,
            "height": layout.height,
            "towers": towers,
        });
        outln!("{line}")?;
    } else {
        outln!(
            "conv1 of {}: {} kernels of {k}x{k}x3 on {} tower(s); wrote {} ({}x{})",
            conv1.config,
            conv1.count(),
            conv1.towers.len(),
            args.out.display(),
            layout.width,
            layout.height,
            k = conv1.k,
        )?;
        outln!("colour share: a kernel's energy off the grey axis (0 grey, 1 no grey pattern)")?;
        out!("{}", filters::render_table(&towers))?;
    }
    Ok(())
}
