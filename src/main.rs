//! The `alexnet-cuda` command line: `summary`, `train` and `bench-step`.
//! Flags are parsed here; everything else lives in the library. Errors end
//! as one line on stderr and a non-zero exit.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use tracing::info;

use alexnet_cuda::backend::cpu::CpuBackend;
use alexnet_cuda::backend::SgdParams;
use alexnet_cuda::data::write_demo_dataset;
use alexnet_cuda::model::net::{Mode, Network};
use alexnet_cuda::model::summary;
use alexnet_cuda::model::topology::Topology;
use alexnet_cuda::rng::Rng;
use alexnet_cuda::train::{train, Schedule, TrainOptions};

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

#[derive(Args, Clone)]
struct NetArgs {
    /// Network: alexnet (the paper), alexnet-half (its one-GPU ablation), cifar (small, 32x32 images).
    #[arg(long)]
    config: Option<String>,
    /// Ablation: no local response normalisation.
    #[arg(long)]
    no_lrn: bool,
    /// Pooling window: 3 (overlapping, the paper) or 2 (non-overlapping ablation).
    #[arg(long, value_name = "SIZE")]
    pool: Option<usize>,
}

impl NetArgs {
    fn topology(&self, default: &str) -> Result<Topology> {
        let mut t = Topology::by_name(self.config.as_deref().unwrap_or(default))?;
        if self.no_lrn {
            t = t.without_lrn();
        }
        if let Some(p) = self.pool {
            t = t.with_pool_size(p)?;
        }
        Ok(t)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Print every layer's shape, groups, tower split, parameters, FLOPs and exchanges.
    Summary {
        #[command(flatten)]
        net: NetArgs,
        /// Batch size for the per-step exchange figure.
        #[arg(long, default_value_t = 128, value_parser = positive)]
        batch: u64,
    },
    /// Train on a folder of class sub-folders of images.
    Train(TrainArgs),
    /// Time training steps on random data (used by scripts/bench-cpu); prints one JSON line.
    #[command(hide = true)]
    BenchStep {
        #[command(flatten)]
        net: NetArgs,
        #[arg(long, default_value_t = 16)]
        batch: usize,
        #[arg(long, default_value_t = 5)]
        steps: usize,
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        #[arg(long)]
        threads: Option<usize>,
    },
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    net: NetArgs,
    /// Data: a folder with one sub-folder of images per class (ImageNet's train layout).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Generate a small synthetic data set and train the cifar config on it for about a minute.
    #[arg(long, conflicts_with = "data")]
    demo: bool,
    /// Train on the CPU.
    #[arg(long, conflicts_with = "gpus")]
    cpu: bool,
    /// GPUs to train on, e.g. 0 or 0,1 (the paper's two towers).
    #[arg(long, value_name = "LIST")]
    gpus: Option<String>,
    /// Epochs (default: the config's recipe).
    #[arg(long, value_parser = positive)]
    epochs: Option<u64>,
    /// Images per step (default: the config's recipe; the paper: 128).
    #[arg(long, value_parser = positive)]
    batch: Option<u64>,
    /// Initial learning rate (default: the config's recipe; the paper: 0.01).
    #[arg(long)]
    lr: Option<f32>,
    /// Images held out for validation.
    #[arg(long, default_value_t = 5000)]
    val: usize,
    /// Use only this many images, balanced over classes.
    #[arg(long, value_parser = positive)]
    limit: Option<u64>,
    /// Divide the learning rate by 10 at these epochs (e.g. 10,15) instead of on plateaus.
    #[arg(long, value_delimiter = ',', value_name = "EPOCHS")]
    lr_milestones: Option<Vec<usize>>,
    /// Epochs without validation improvement before the learning rate drops (paper's schedule).
    #[arg(long, default_value_t = 2, value_parser = positive)]
    patience: u64,
    /// Stop after the epoch that would run past this many seconds.
    #[arg(long, value_name = "SECONDS")]
    time_limit: Option<f64>,
    /// Write one CSV row per epoch to this file.
    #[arg(long, value_name = "FILE")]
    metrics: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Loader threads.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Compute threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Hide the progress bar.
    #[arg(long)]
    no_progress: bool,
}

/// Flag parser for counts that must be at least 1.
fn positive(s: &str) -> std::result::Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(v) => Ok(v),
        Err(_) => Err(format!("'{s}' is not a whole number")),
    }
}

fn set_threads(threads: Option<usize>) -> Result<()> {
    if let Some(n) = threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("--threads: could not start the thread pool")?;
    }
    Ok(())
}

/// The backend the flags ask for. This build has the CPU backend only.
fn check_device(args: &TrainArgs) -> Result<()> {
    if let Some(list) = &args.gpus {
        for part in list.split(',') {
            part.trim().parse::<usize>().with_context(|| {
                format!("--gpus: '{part}' is not a GPU index; write e.g. --gpus 0 or --gpus 0,1")
            })?;
        }
        bail!("--gpus {list}: this build has no CUDA backend yet; train on the CPU with --cpu");
    }
    if !args.cpu {
        info!("no --cpu or --gpus given: using the CPU (this build has no CUDA backend yet)");
    }
    Ok(())
}

fn cmd_train(args: TrainArgs) -> Result<()> {
    check_device(&args)?;
    set_threads(args.threads)?;
    let topo = args
        .net
        .topology(if args.demo { "cifar" } else { "alexnet" })?;
    // The demo's data lives as long as this guard.
    let mut _demo_dir = None;
    let data = if args.demo {
        let dir = tempfile::Builder::new()
            .prefix("alexnet-demo-")
            .tempdir()
            .context("--demo: could not create a temporary folder")?;
        info!(
            "demo: writing a synthetic data set of 10 visible classes to {}",
            dir.path().display()
        );
        write_demo_dataset(dir.path(), 10, 400, topo.image_size, args.seed)?;
        let path = dir.path().to_path_buf();
        _demo_dir = Some(dir);
        path
    } else {
        match &args.data {
            Some(d) => d.clone(),
            None => bail!("train: pass --data DIR (one sub-folder of images per class) or --demo"),
        }
    };
    let mut opts = TrainOptions::for_topology(&topo, data);
    if args.demo {
        opts.val = 500;
        opts.epochs = 14;
        opts.time_limit = Some(Duration::from_secs(80));
        opts.schedule = Schedule::Milestones(vec![11]);
    }
    if let Some(e) = args.epochs {
        opts.epochs = e as usize;
    }
    if let Some(b) = args.batch {
        opts.batch = b as usize;
    }
    if let Some(lr) = args.lr {
        if !(lr > 0.0 && lr.is_finite()) {
            bail!("--lr must be a positive number, not {lr}");
        }
        opts.lr = lr;
    }
    if !args.demo {
        opts.val = args.val;
    }
    opts.limit = args.limit.map(|l| l as usize);
    if let Some(m) = args.lr_milestones {
        opts.schedule = Schedule::Milestones(m);
    } else if !args.demo {
        opts.schedule = Schedule::Plateau {
            patience: args.patience as usize,
            max_drops: 3,
        };
    }
    if let Some(t) = args.time_limit {
        if !(t > 0.0 && t.is_finite()) {
            bail!("--time-limit must be a positive number of seconds, not {t}");
        }
        opts.time_limit = Some(Duration::from_secs_f64(t));
    }
    opts.metrics_csv = args.metrics;
    opts.seed = args.seed;
    opts.workers = args.workers;
    opts.progress = !args.no_progress;

    let backend = CpuBackend::new();
    let report = train(&backend, &topo, &opts)?;
    if let (Some(first), Some(last)) = (report.epochs.first(), report.epochs.last()) {
        println!(
            "validation top-1: {:.1}% after epoch 1, {:.1}% after epoch {} (chance {:.1}%); {:.0} img/s; {:.0}s",
            100.0 * first.val_top1,
            100.0 * last.val_top1,
            last.epoch,
            100.0 / report.classes.len() as f64,
            last.images_per_s,
            last.elapsed_s
        );
    }
    Ok(())
}

fn cmd_bench(
    net: NetArgs,
    batch: usize,
    steps: usize,
    warmup: usize,
    threads: Option<usize>,
) -> Result<()> {
    set_threads(threads)?;
    let topo = net.topology("alexnet")?;
    let be = CpuBackend::new();
    let mut model = Network::new(&be, &topo, batch, 1)?;
    let mut rng = Rng::new(7);
    let x: Vec<f32> = (0..batch * topo.channels * topo.crop * topo.crop)
        .map(|_| rng.normal() as f32)
        .collect();
    let labels: Vec<u32> = (0..batch).map(|_| rng.below(topo.classes) as u32).collect();
    let hp = SgdParams {
        lr: 1e-4,
        momentum: 0.9,
        weight_decay: 5e-4,
    };
    let mut times = Vec::new();
    for i in 0..warmup + steps {
        let t0 = Instant::now();
        model.forward(&x, &labels, Mode::Train)?;
        model.backward()?;
        model.sgd_step(&hp)?;
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
    println!(
        "{{\"impl\":\"alexnet-cuda\",\"config\":\"{}\",\"batch\":{batch},\"steps\":{steps},\"median_s\":{median:.5},\"images_per_s\":{:.2}}}",
        topo.name,
        batch as f64 / median
    );
    Ok(())
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Command::Summary { net, batch } => {
            print!(
                "{}",
                summary::render(&net.topology("alexnet")?, batch as usize)?
            );
            Ok(())
        }
        Command::Train(args) => cmd_train(args),
        Command::BenchStep {
            net,
            batch,
            steps,
            warmup,
            threads,
        } => cmd_bench(net, batch, steps.max(1), warmup, threads),
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
