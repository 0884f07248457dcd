//! `scaling`: bytes each GPU sends per step and the speed-up that allows,
//! for model, data and hybrid parallelism on 2 to 16 GPUs (docs/scaling.md).
use anyhow::Result;
use clap::Args;

use alexnet_cuda::model::scaling;

use super::common::{figured_batch, positive_number, NetArgs};

#[derive(Args)]
pub struct ScalingArgs {
    #[command(flatten)]
    net: NetArgs,
    /// Global batch size.
    #[arg(long, default_value_t = 128, value_parser = figured_batch)]
    batch: u64,
    /// One GPU's training step at that batch, in ms (default: ours in strict fp32 on one H200, docs/cuda.md's speed table).
    #[arg(long, default_value_t = 11.82, value_parser = positive_number)]
    step_ms: f64,
}

/// Print the table.
pub fn run(args: ScalingArgs) -> Result<()> {
    let step_ms = args.step_ms;
    let topo = args.net.topology("alexnet")?;
    out!("{}", scaling::render(&topo, args.batch as usize, step_ms)?)?;
    Ok(())
}
