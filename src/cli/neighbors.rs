//! `neighbors`: the k training images nearest to query images by fc7
//! Euclidean distance, as a picture (the paper's Figure 4, right) and a
//! tab-separated table.
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;

use alexnet_cuda::backend::Backend;
use alexnet_cuda::dist::{run_on_one, OnDevice};
use alexnet_cuda::features;
use alexnet_cuda::fsutil::{self, tsv_field};

use super::common::{
    existing_file, image_files, image_or_folder, named_as, not_a_run_file, not_among_images,
    path_parser, positive,
};
use super::device::CheckpointRunArgs;

#[derive(Args)]
pub struct NeighborsArgs {
    #[command(flatten)]
    run: CheckpointRunArgs,
    /// The images searched: a store folder, a `prepare` output folder (its train/), or class sub-folders.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Query images, or folders of them (every image under a folder, in path order): resized and centre-cropped as predict does.
    #[arg(long, value_name = "IMAGE", num_args = 1.., required = true, value_parser = path_parser(image_or_folder))]
    query: Vec<PathBuf>,
    /// Neighbours per query.
    #[arg(long, default_value_t = 6, value_parser = positive)]
    k: u64,
    /// The picture (PNG): one row per query, the query then its neighbours with class and distance.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// The set's fc7 from `features --layer fc7` (default: computed and written beside --out, its extension replaced: grid.png gets grid.fc7.npy).
    #[arg(long, value_name = "FILE", value_parser = path_parser(existing_file))]
    features: Option<PathBuf>,
    /// Side of each picture in the grid, pixels, 16 to 1024.
    #[arg(long, default_value_t = 96, value_parser = clap::value_parser!(u64).range(16..=1024))]
    cell: u64,
    /// Images per batch.
    #[arg(long, default_value_t = 64, value_parser = positive)]
    batch: u64,
    /// Search N images spread evenly over the set (as `features --limit N`).
    #[arg(long, value_parser = positive)]
    limit: Option<u64>,
}

/// Find the neighbours, draw them, and print them as a table.
pub fn run(mut args: NeighborsArgs) -> Result<()> {
    // Through a link, the file it names is the one written (and checked).
    args.out = alexnet_cuda::fsutil::through_links(&args.out);
    not_a_run_file("--out", &args.out)?;
    named_as("--out", &args.out, "png", "a PNG picture")?;
    not_among_images("--out", &args.out, &args.data)?;
    let queries = image_files(&args.query)?;
    not_a_query(&args.out, &args.query, &queries)?;
    let (request, ck) = args.run.start()?;
    let job = features::NeighborsJob {
        ck: &ck,
        data: &args.data,
        queries: &queries,
        k: args.k as usize,
        out: &args.out,
        features: args.features.as_deref(),
        batch: args.batch as usize,
        limit: args.limit.map(|l| l as usize),
        workers: args.run.host.workers(!request.cpu),
        progress: args.run.host.progress(),
        cell: args.cell as usize,
    };
    let r = run_on_one(&request, NeighborsOn(&job))?;
    print_table(&r)?;
    outln!(
        "{}: {} queries x {} neighbours among {} images ({} {})",
        args.out.display(),
        r.results.len(),
        args.k,
        r.set_rows,
        if r.computed {
            "fc7 written to"
        } else {
            "fc7 read from"
        },
        r.features.display()
    )?;
    super::features::left_out(r.unread, r.images, r.set_rows)
}

/// Refuse an `--out` that is a query image (the picture would replace
/// it) or lies inside a `--query` folder (the next run would query it).
fn not_a_query(out: &Path, query: &[PathBuf], queries: &[PathBuf]) -> Result<()> {
    if let Some(q) = queries.iter().find(|q| fsutil::same_file(q, out)) {
        bail!(
            "--out {}: the query image {}, which the picture would replace; write it elsewhere",
            out.display(),
            q.display()
        );
    }
    let at = fsutil::resolved(out);
    if let Some(dir) = query
        .iter()
        .find(|d| d.is_dir() && at.starts_with(fsutil::resolved(d)))
    {
        bail!(
            "--out {}: inside the query folder {}, where the next run would take the picture for a query; write it outside it",
            out.display(),
            dir.display()
        );
    }
    Ok(())
}

/// One tab-separated line per neighbour of each query.
fn print_table(r: &features::NeighborsReport) -> Result<()> {
    outln!("query\trank\tclass\tdistance\tindex\tsource")?;
    for q in &r.results {
        let query = q.query.display().to_string();
        let query = tsv_field(&query);
        for n in &q.neighbors {
            outln!(
                "{query}\t{}\t{}\t{:.3}\t{}\t{}",
                n.rank,
                tsv_field(&n.class),
                n.dist,
                n.index,
                tsv_field(n.source.as_deref().unwrap_or("-"))
            )?;
        }
    }
    Ok(())
}

/// `features::neighbors` on the requested device.
struct NeighborsOn<'a>(&'a features::NeighborsJob<'a>);

impl OnDevice for NeighborsOn<'_> {
    type Out = features::NeighborsReport;
    type Err = alexnet_cuda::Error;
    fn run<B: Backend>(self, be: &B) -> alexnet_cuda::Result<Self::Out> {
        features::neighbors(be, self.0)
    }
}
