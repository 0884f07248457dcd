//! `scaling`: bytes each GPU sends per step and the speed-up that allows,
//! for model, data and hybrid parallelism on 2 to 16 GPUs (docs/scaling.md).
use anyhow::{bail, Result};
use clap::Args;

use alexnet_cuda::model::scaling;
use alexnet_cuda::model::topology::Topology;

use super::common::{figured_batch, positive_number, NetArgs};

#[derive(Args)]
pub struct ScalingArgs {
    #[command(flatten)]
    net: NetArgs,
    /// Global batch size.
    #[arg(long, default_value_t = 128, value_parser = figured_batch)]
    batch: u64,
    /// One GPU's training step at that batch, in ms [default for alexnet at batch 128: 11.82, ours in strict fp32 on one H200, docs/cuda.md's speed table].
    #[arg(long, value_parser = positive_number)]
    step_ms: Option<f64>,
}

/// The step our default is: `alexnet`'s strict fp32 step at batch 128 on
/// one H200 (docs/cuda.md).
const ALEXNET_128_MS: f64 = 11.82;

/// Print the table.
pub fn run(args: ScalingArgs) -> Result<()> {
    let topo = args.net.topology("alexnet")?;
    let step_ms = match args.step_ms {
        Some(ms) => ms,
        None if topo == Topology::alexnet() && args.batch == 128 => ALEXNET_128_MS,
        None => bail!(
            "--step-ms: the default one-GPU step ({ALEXNET_128_MS} ms) is alexnet's at batch 128; for {} at batch {} pass the step's time, as bench-step {} --batch {} measures it",
            topo.name,
            args.batch,
            args.net.flags("alexnet"),
            args.batch
        ),
    };
    out!("{}", scaling::render(&topo, args.batch as usize, step_ms)?)?;
    Ok(())
}
