//! The `alexnet-cuda` command line: the commands and their dispatch, and
//! the log's set-up. Each command's flags and work live in its module
//! under `cli/`; everything else lives in the library. Errors end as one
//! line on stderr and a non-zero exit.
mod cli;

use std::io::Write;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use cli::bench::{
    feed::BenchFeedArgs, loader::BenchLoaderArgs, step::BenchStepArgs, synth_store::SynthStoreArgs,
};
use cli::{
    demo_data::DemoDataArgs, eval::EvalArgs, export::ExportArgs, features::FeaturesArgs,
    filters::FiltersArgs, neighbors::NeighborsArgs, nvrtc_check::NvrtcCheckArgs,
    predict::PredictArgs, prepare::PrepareArgs, scaling::ScalingArgs, summary::SummaryArgs,
    train::TrainArgs,
};

#[derive(Parser)]
#[command(
    name = "alexnet-cuda",
    version,
    about = "Train AlexNet (NIPS 2012) as the paper did"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print every layer's shape, groups, tower split, parameters, FLOPs and exchanges.
    Summary(SummaryArgs),
    /// Bytes each GPU sends per step and the speed-up that allows, for model, data and hybrid parallelism on 2 to 16 GPUs (docs/scaling.md).
    Scaling(ScalingArgs),
    /// Pack an ImageNet-style image tree into memory-mapped stores for training.
    Prepare(PrepareArgs),
    /// Train on a prepared store or a folder of class sub-folders of images.
    Train(Box<TrainArgs>),
    /// Top-1 and top-5 error of a checkpoint: centre crop, or the paper's 10 crops.
    Eval(EvalArgs),
    /// Top-5 classes of images (or of a preprocessed NCHW batch) under a checkpoint.
    Predict(PredictArgs),
    /// Write a checkpoint's weights for other tools: safetensors (PyTorch names and layouts) or ONNX.
    Export(ExportArgs),
    /// Draw conv1's kernels per tower (the paper's figure 3) and print how colour-specific each tower is.
    Filters(FiltersArgs),
    /// Hidden-layer activations (fc6, fc7 after ReLU; pool5) of every image of a set to a .npy file, one row per image.
    Features(FeaturesArgs),
    /// The k training images nearest to query images by fc7 Euclidean distance, as a picture (the paper's Figure 4, right).
    Neighbors(NeighborsArgs),
    /// Write the demo data set (class folders of JPEGs) to a folder (used by scripts/check-export).
    #[command(hide = true)]
    DemoData(DemoDataArgs),
    /// Time the training loader over a prepared store (used by scripts/bench-data); prints one JSON line.
    #[command(hide = true)]
    BenchLoader(BenchLoaderArgs),
    /// A run's epochs and validations fed by one loader per pass and by one feed queued ahead, the step a sleep (docs/data.md); prints one JSON line.
    #[command(hide = true)]
    BenchFeed(BenchFeedArgs),
    /// Write a synthetic store of COUNT copies of a few encoded images (memory benchmarks); prints one JSON line.
    #[command(hide = true)]
    SynthStore(SynthStoreArgs),
    /// Time training steps on one fixed random batch (scripts/bench-cpu, scripts/gpu-check); prints one JSON line.
    #[command(hide = true)]
    BenchStep(BenchStepArgs),
    /// Compile every kernel's embedded source with NVRTC (no GPU needed) and check its entry points.
    #[command(hide = true)]
    NvrtcCheck(NvrtcCheckArgs),
    /// Find and load NCCL as a multi-GPU run would, then print its version and file (scripts/check-nccl; no GPU needed).
    #[command(hide = true)]
    NcclCheck,
}

/// The command line's grammar, where every flag's value may be a negative
/// number: `--lr -1` then reaches the flag's own check ("invalid value '-1'
/// for '--lr <LR>': must be a positive number"), not clap's "unexpected
/// argument '-1'".
fn command() -> clap::Command {
    Cli::command().mut_subcommands(|sub| {
        sub.mut_args(|a| {
            let takes = a.get_action().takes_values();
            a.allow_negative_numbers(takes)
        })
    })
}

/// Parse the command line and run the command it names.
fn run() -> Result<()> {
    let cli = Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit());
    match cli.cmd {
        Command::Summary(args) => cli::summary::run(args),
        Command::Scaling(args) => cli::scaling::run(args),
        Command::Prepare(args) => cli::prepare::run(args),
        Command::Train(args) => cli::train::run(*args),
        Command::Eval(args) => cli::eval::run(args),
        Command::Predict(args) => cli::predict::run(args),
        Command::Export(args) => cli::export::run(args),
        Command::Filters(args) => cli::filters::run(args),
        Command::Features(args) => cli::features::run(args),
        Command::Neighbors(args) => cli::neighbors::run(args),
        Command::DemoData(args) => cli::demo_data::run(args),
        Command::BenchLoader(args) => cli::bench::loader::run(args),
        Command::BenchFeed(args) => cli::bench::feed::run(args),
        Command::SynthStore(args) => cli::bench::synth_store::run(args),
        Command::BenchStep(args) => cli::bench::step::run(args),
        Command::NvrtcCheck(args) => cli::nvrtc_check::run(args),
        Command::NcclCheck => cli::nccl_check::run(),
    }
}

/// Log to stderr above any progress bars (RUST_LOG, default info; colour on
/// a terminal), run, and end a failure as one error line and exit status 1.
/// A reader of standard output that stopped reading (`| head`) ends it
/// quietly with 141, the status of a C program killed by SIGPIPE.
fn main() {
    alexnet_cuda::progress::init_logs();
    alexnet_cuda::memory::one_arena_under_an_address_limit();
    catch_file_size_limit();
    if let Err(e) = run() {
        if stdout_closed(&e) {
            std::process::exit(141);
        }
        // Not eprintln!, which panics (status 101) when stderr is closed.
        let _ = writeln!(std::io::stderr(), "error: {e:#}");
        std::process::exit(1);
    }
}

/// A write past the file-size limit (`ulimit -f`) raises SIGXFSZ, whose
/// default action kills the process with no word; handled, the write fails
/// with EFBIG instead, which is named with the file and the fix.
fn catch_file_size_limit() {
    #[cfg(unix)]
    {
        use std::sync::atomic::AtomicBool;
        let seen = std::sync::Arc::new(AtomicBool::new(false));
        let caught = signal_hook::flag::register(signal_hook::consts::SIGXFSZ, seen);
        if let Err(e) = caught {
            tracing::debug!(
                "SIGXFSZ not handled ({e}): a file past the size limit ends the process"
            );
        }
    }
}

/// Whether `e` is a broken pipe. At this level that is a result write
/// (`outln!`) whose reader has gone: the library's I/O errors carry the OS
/// error in their message, not as a source, so none of them matches.
fn stdout_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    /// clap's own check of the grammar of every command: a flag that names
    /// an unknown one (`conflicts_with`, `requires`), two flags with one
    /// name or short letter, a positional after a variadic one.
    #[test]
    fn grammar_is_consistent() {
        super::command().debug_assert();
    }
}
