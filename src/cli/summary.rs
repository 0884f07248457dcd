//! `summary`: every layer's shape, groups, tower split, parameters, FLOPs
//! and exchanges, as a table.
use anyhow::Result;
use clap::Args;

use alexnet_cuda::model::summary;

use super::common::{figured_batch, NetArgs};

#[derive(Args)]
pub struct SummaryArgs {
    #[command(flatten)]
    net: NetArgs,
    /// Batch size for the per-step exchange figure.
    #[arg(long, default_value_t = 128, value_parser = figured_batch)]
    batch: u64,
}

/// Print the table.
pub fn run(args: SummaryArgs) -> Result<()> {
    let topo = args.net.topology("alexnet")?;
    out!("{}", summary::render(&topo, args.batch as usize)?)?;
    Ok(())
}
