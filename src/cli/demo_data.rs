//! `demo-data` (hidden): write the demo data set, class folders of JPEGs,
//! to a folder (scripts/check-export uses it).
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use alexnet_cuda::data::write_demo_dataset;

use super::common::at_least_one;

#[derive(Args)]
pub struct DemoDataArgs {
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 10)]
    classes: usize,
    #[arg(long, default_value_t = 4, value_parser = at_least_one)]
    per_class: usize,
    #[arg(long, default_value_t = 256)]
    size: usize,
}

/// Write the set (seed 1).
pub fn run(args: DemoDataArgs) -> Result<()> {
    write_demo_dataset(&args.out, args.classes, args.per_class, args.size, 1)?;
    Ok(())
}
