//! The `alexnet-cuda` command line: `summary`, `prepare`, `train`, and the
//! hidden `bench-step`, `bench-loader` and the check commands. A run that
//! averages gradients with NCCL may start itself again first, with NCCL's
//! library on LD_LIBRARY_PATH (`ensure_nccl`).
//! Flags are parsed here; everything else lives in the library. Errors end
//! as one line on stderr and a non-zero exit.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::ProgressBar;
use tracing::{info, warn};

use alexnet_cuda::backend::cpu::CpuBackend;
use alexnet_cuda::backend::cuda::nccl_lib::{self, NcclLibError, Plan};
use alexnet_cuda::backend::cuda::{modules, parity, CudaBackend, CudaOptions, Precision};
use alexnet_cuda::backend::Backend;
use alexnet_cuda::backend::SgdParams;
use alexnet_cuda::checkpoint;
use alexnet_cuda::data::hostmem::HostBuf;
use alexnet_cuda::data::prepare::{prepare, PrepareOptions};
use alexnet_cuda::data::{
    batches, workers_for, write_demo_dataset, Encoding, Lighting, LoaderConfig, PackedStore,
};
use alexnet_cuda::data::{decode_file, ImageSet, ImageSource};
use alexnet_cuda::device::{self, Device};
use alexnet_cuda::eval::{
    average_crops, evaluate, forward_rows, loader_for, open_eval_data, top_k,
};
use alexnet_cuda::export::onnx::write_onnx;
use alexnet_cuda::export::{network_tensors, write_safetensors};
use alexnet_cuda::features;
use alexnet_cuda::metrics::MetricsFormat;
use alexnet_cuda::model::loss_scale::LossScale;
use alexnet_cuda::model::net::{Mode, Network};
use alexnet_cuda::model::scaling;
use alexnet_cuda::model::spec::NetSpec;
use alexnet_cuda::model::summary;
use alexnet_cuda::model::topology::{InitRecipe, Topology};
use alexnet_cuda::model::trainable::{Layout, Model};
use alexnet_cuda::npy::{read_npy_f32, write_npy_f32};
use alexnet_cuda::parallel::{self, NcclUse, OnLayout, Parallel, Request};
use alexnet_cuda::rng::Rng;
use alexnet_cuda::train::{resume_options, train, Schedule, TrainOptions, TrainReport};
use alexnet_cuda::viz::filters;
use alexnet_cuda::world::World;

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
    fn spec(&self, default: &str) -> NetSpec {
        NetSpec {
            config: self.config.clone().unwrap_or_else(|| default.to_string()),
            no_lrn: self.no_lrn,
            pool: self.pool,
            classes: None,
        }
    }

    fn topology(&self, default: &str) -> Result<Topology> {
        Ok(self.spec(default).topology()?)
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
    /// Bytes each GPU sends per step and the speed-up that allows, for model, data and hybrid parallelism on 2 to 16 GPUs (docs/scaling.md).
    Scaling {
        #[command(flatten)]
        net: NetArgs,
        /// Global batch size.
        #[arg(long, default_value_t = 128, value_parser = positive)]
        batch: u64,
        /// One GPU's training step at that batch, in ms (default: ours in fp32 on one H200, docs/cuda.md).
        #[arg(long, default_value_t = 14.05)]
        step_ms: f64,
    },
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
    DemoData {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 10)]
        classes: usize,
        #[arg(long, default_value_t = 4)]
        per_class: usize,
        #[arg(long, default_value_t = 256)]
        size: usize,
    },
    /// Time the training loader over a prepared store (used by scripts/bench-data); prints one JSON line.
    #[command(hide = true)]
    BenchLoader {
        /// A store folder (out/train from `prepare`).
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        #[arg(long, default_value_t = 128)]
        batch: usize,
        #[arg(long, default_value_t = 227)]
        crop: usize,
        #[arg(long, default_value_t = 20)]
        batches: usize,
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
    /// Write a synthetic store of COUNT copies of a few encoded images (memory benchmarks); prints one JSON line.
    #[command(hide = true)]
    SynthStore {
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 256)]
        size: usize,
    },
    /// Time training steps on one fixed random batch (scripts/bench-cpu, scripts/gpu-check); prints one JSON line.
    #[command(hide = true)]
    BenchStep(BenchStepArgs),
    /// Compile every kernel's embedded source with NVRTC (no GPU needed) and check its entry points.
    #[command(hide = true)]
    NvrtcCheck {
        /// Compute capability to compile for, e.g. 9.0 (H100) or 7.5.
        #[arg(long, default_value = "9.0")]
        arch: String,
    },
    /// Find and load NCCL as a multi-GPU run would, then print its version and file (scripts/check-nccl; no GPU needed).
    #[command(hide = true)]
    NcclCheck,
    /// Run every op on the GPU and on the CPU reference and compare (scripts/gpu-check).
    #[command(hide = true)]
    GpuOps {
        #[command(flatten)]
        device: DeviceArgs,
        /// One JSON line per op instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct BenchStepArgs {
    #[command(flatten)]
    net: NetArgs,
    #[command(flatten)]
    device: DeviceArgs,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Outputs of the last layer (default: the config's); scripts/bench-train matches a data set's.
    #[arg(long, value_parser = positive)]
    classes: Option<u64>,
    #[arg(long, default_value_t = 5)]
    steps: usize,
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Learning rate of the SGD step (the batch is fixed, so a real rate makes the loss fall).
    #[arg(long, default_value_t = 1e-4)]
    lr: f32,
    /// Extra steps, after the timed ones, with a wait after each phase: the
    /// JSON's "phases" (median ms of upload, forward, backward, SGD).
    #[arg(long, default_value_t = 3)]
    phase_steps: usize,
    #[command(flatten)]
    parallel: ParallelArgs,
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args)]
struct PrepareArgs {
    /// Training images: one sub-folder per class (train/<synset>/*.JPEG).
    #[arg(long, value_name = "DIR")]
    train: PathBuf,
    /// Validation images: class sub-folders, or flat with --val-labels.
    #[arg(long, value_name = "DIR")]
    val: Option<PathBuf>,
    /// Labels of a flat val folder: a `file,synset` CSV, or the devkit's ILSVRC2012_validation_ground_truth.txt (with --val-synsets).
    #[arg(long, value_name = "FILE", requires = "val")]
    val_labels: Option<PathBuf>,
    /// The synsets in devkit ID order, one per line (for devkit ground truth).
    #[arg(long, value_name = "FILE", requires = "val_labels")]
    val_synsets: Option<PathBuf>,
    /// Class names: lines of `synset name` (LOC_synset_mapping.txt or synset_words.txt).
    #[arg(long, value_name = "FILE")]
    names: Option<PathBuf>,
    /// Output folder: gets train/ and val/ stores.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Side of the stored images (the paper: 256).
    #[arg(long, default_value_t = 256, value_parser = positive)]
    size: u64,
    /// Storage: jpeg (about 40 KB per 256x256 image) or raw (196 KB, no decoding).
    #[arg(long, default_value = "jpeg", value_parser = ["jpeg", "raw"])]
    format: String,
    /// JPEG quality, 1 to 100.
    #[arg(long, default_value_t = 90)]
    quality: u8,
    /// Take only this many training images, balanced over classes.
    #[arg(long, value_parser = positive)]
    limit: Option<u64>,
    /// Threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Hide the progress bar.
    #[arg(long)]
    no_progress: bool,
}

/// Where the ops run: shared by every command that computes.
#[derive(Args, Clone)]
struct DeviceArgs {
    /// Run on the CPU.
    #[arg(long, conflicts_with = "gpus")]
    cpu: bool,
    /// GPUs to run on, e.g. 0 (default: GPU 0 when a CUDA driver and GPU are present, else the CPU).
    #[arg(long, value_name = "LIST")]
    gpus: Option<String>,
    /// Storage of activations and the weights the GPU libraries read: fp32 (the reference), or fp16 / bf16 (mixed precision: fp32 master weights and momentum, fp32 accumulation; fp16 with dynamic loss scaling). GPU only.
    #[arg(long, default_value = "fp32", value_parser = ["fp32", "fp16", "bf16"])]
    precision: String,
    /// CUDA: use the built-in im2col + cuBLAS grouped convolution even where cuDNN is installed.
    #[arg(long)]
    fallback_conv: bool,
    /// CUDA: let cuDNN and cuBLAS use TF32 tensor cores for fp32 work (10-bit mantissa products; PyTorch's default for convolutions).
    #[arg(long)]
    tf32: bool,
}

/// How several devices share the work (train and bench-step).
#[derive(Args, Clone)]
struct ParallelArgs {
    /// model: the paper's two towers on two devices (the default for --gpus with two; 0,0 puts both on GPU 0). data: a replica per device, gradients averaged by all-reduce (NCCL on GPUs). hybrid: the two towers on each pair of devices, data-parallel across the pairs. Across machines, one process per machine with torchrun's variables (docs/scaling.md).
    #[arg(long, value_parser = ["model", "data", "hybrid"])]
    parallel: Option<String>,
    /// With --cpu: CPU replicas for --parallel data, pairs of towers for hybrid (default 2).
    #[arg(long, value_parser = positive, requires = "parallel")]
    replicas: Option<u64>,
}

impl DeviceArgs {
    /// The devices and parallelism asked for, as `parallel::run_on` takes
    /// them. Without --cpu or --gpus, the probe picks GPU 0 or the CPU.
    fn request(&self, par: &ParallelArgs, world: &World) -> Result<Request> {
        let parallel = par
            .parallel
            .as_deref()
            .map(str::parse::<Parallel>)
            .transpose()?;
        let (cpu, gpus) = if self.cpu || self.gpus.is_some() || !world.is_single() {
            (self.cpu, self.gpus.clone())
        } else {
            match device::choose(false, None)? {
                Device::Cpu => (true, None),
                Device::Cuda(ids) => (false, Some(ids[0].to_string())),
            }
        };
        if cpu {
            self.check_cpu_flags()?;
        } else if par.replicas.is_some() {
            bail!(
                "--replicas counts CPU devices (with --cpu); with GPUs, list them: --gpus 0,1,2,3"
            );
        }
        Ok(Request {
            cpu,
            gpus,
            parallel,
            replicas: par.replicas.unwrap_or(2) as usize,
            cuda: self.cuda_options()?,
        })
    }

    /// The device flags as given, for a command line to repeat.
    fn flags(&self, par: &ParallelArgs) -> String {
        let mut f = String::new();
        if self.cpu {
            f += " --cpu";
        }
        if let Some(g) = &self.gpus {
            f += &format!(" --gpus {g}");
        }
        if let Some(p) = &par.parallel {
            f += &format!(" --parallel {p}");
            if let Some(r) = par.replicas {
                f += &format!(" --replicas {r}");
            }
        }
        f
    }

    /// Probe and resolve the flags into a device, refusing what is not built.
    fn resolve(&self) -> Result<Device> {
        let dev = device::choose(self.cpu, self.gpus.as_deref())?;
        if dev == Device::Cpu {
            self.check_cpu_flags()?;
        }
        Ok(dev)
    }

    /// On the CPU, the GPU-only flags are errors that say what to do.
    fn check_cpu_flags(&self) -> Result<()> {
        if self.precision != "fp32" {
            bail!(
                "--precision {}: the CPU backend computes in fp32 only; use --precision fp32, or a GPU (--gpus 0)",
                self.precision
            );
        }
        if self.fallback_conv || self.tf32 {
            bail!(
                "--{} selects how CUDA computes; it has no meaning with the CPU backend",
                if self.fallback_conv {
                    "fallback-conv"
                } else {
                    "tf32"
                }
            );
        }
        Ok(())
    }

    fn cuda_options(&self) -> Result<CudaOptions> {
        Ok(CudaOptions {
            precision: self.precision.parse::<Precision>()?,
            force_fallback_conv: self.fallback_conv,
            allow_tf32: self.tf32,
        })
    }
}

/// Run `$body` with `$be` bound to the backend `$dev` names (the trait has
/// associated types, so each backend gets its own copy of the body).
macro_rules! on_device {
    ($dev:expr, $args:expr, |$be:ident| $body:expr) => {
        match $dev {
            Device::Cpu => {
                let $be = CpuBackend::new();
                $body
            }
            Device::Cuda(ids) => {
                let $be = CudaBackend::new(ids[0], $args.cuda_options()?)?;
                $body
            }
        }
    };
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    net: NetArgs,
    /// Data: a store from `prepare` (its output folder), or a folder with one sub-folder of images per class.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Generate a small synthetic data set and train the cifar config on it for about a minute.
    #[arg(long, conflicts_with = "data")]
    demo: bool,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    parallel: ParallelArgs,
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
    /// Crop side when smaller than the network input, zero-padded to it: 224 is the paper's text (227 inputs, the default, need no padding).
    #[arg(long, value_parser = positive)]
    crop: Option<u64>,
    /// The run folder: checkpoints, steps.csv, epochs.csv, curves.png (default: runs/<config>-N, the first N not taken).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Continue a run: its folder (the newest checkpoint) or one checkpoint file. The run's own options apply; --epochs extends it.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["demo", "config", "no_lrn", "pool", "batch", "lr", "val", "limit", "lr_milestones", "patience", "max_drops", "crop", "seed", "init_from", "out", "recipe"])]
    resume: Option<PathBuf>,
    /// Starting biases: caffe (default) starts the paper's biases of 1 (conv2, conv4, conv5, fc6, fc7) at 0.1, as Caffe's AlexNet, because 1 diverges and then sits at chance on real photos (docs/training.md); paper: the literal 1.
    #[arg(long, value_parser = ["caffe", "paper"])]
    recipe: Option<String>,
    /// Start from these weights: a safetensors file with PyTorch names (from `export` or a checkpoint).
    #[arg(long, value_name = "FILE")]
    init_from: Option<PathBuf>,
    /// Write a checkpoint every N steps, besides the one at each epoch end (0: epoch ends only).
    #[arg(long, default_value_t = 1000, value_name = "N")]
    checkpoint_every: u64,
    /// Checkpoints to keep (the newest; best.safetensors is kept besides).
    #[arg(long, default_value_t = 3, value_parser = positive)]
    keep: u64,
    /// Metrics files: csv or jsonl.
    #[arg(long, default_value = "csv", value_parser = ["csv", "jsonl"])]
    metrics_format: String,
    /// The paper's schedule: at most this many drops of the learning rate.
    #[arg(long, default_value_t = 3)]
    max_drops: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Loader threads; 0 decodes on the training thread (default: the cores the compute threads leave free, at least 1; on a GPU, every core but one).
    #[arg(long)]
    workers: Option<usize>,
    /// Compute threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Hide the progress bar.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Args)]
struct EvalArgs {
    /// A checkpoint (ckpt-*.safetensors or best.safetensors in a run folder).
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,
    #[command(flatten)]
    device: DeviceArgs,
    /// Images: a `prepare` output folder (its val/), a store folder, or class sub-folders of images.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Average the softmax over the paper's 10 crops (4 corners, centre, and their mirror images).
    #[arg(long)]
    ten_crop: bool,
    /// Images per batch (default: the run's training batch).
    #[arg(long, value_parser = positive)]
    batch: Option<u64>,
    /// Evaluate N images spread evenly over the set.
    #[arg(long, value_parser = positive)]
    limit: Option<u64>,
    /// Loader threads; 0 decodes on the training thread (default: the cores the compute threads leave free, at least 1; on a GPU, every core but one).
    #[arg(long)]
    workers: Option<usize>,
    /// Compute threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print one JSON line instead of text.
    #[arg(long)]
    json: bool,
    /// Hide the progress bar.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Args)]
struct PredictArgs {
    /// A checkpoint (ckpt-*.safetensors or best.safetensors in a run folder).
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,
    /// Images (JPEG, PNG): resized, centre-cropped and normalised as in evaluation.
    #[arg(
        value_name = "IMAGE",
        required_unless_present = "input_npy",
        conflicts_with = "input_npy"
    )]
    images: Vec<PathBuf>,
    /// Instead of images: an already preprocessed float32 NCHW batch (.npy) of the network's input size.
    #[arg(long, value_name = "FILE")]
    input_npy: Option<PathBuf>,
    /// Write the raw logits (rows x classes, float32) to this .npy file.
    #[arg(long, value_name = "FILE")]
    logits: Option<PathBuf>,
    /// Average the softmax over the paper's 10 crops (the logits file then has 10 rows per image).
    #[arg(long, conflicts_with = "input_npy")]
    ten_crop: bool,
    /// Classes to list per input.
    #[arg(long, default_value_t = 5, value_parser = positive)]
    top: u64,
    /// Compute threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args)]
struct FeaturesArgs {
    /// A checkpoint (ckpt-*.safetensors or best.safetensors in a run folder).
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,
    #[command(flatten)]
    device: DeviceArgs,
    /// Images: a store folder, a `prepare` output folder (its val/), or class sub-folders of images.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Layer: fc6 or fc7 (after the ReLU), pool5 (flattened C, H, W), or any layer of the config.
    #[arg(long, default_value = "fc7")]
    layer: String,
    /// The features, [images, values] float32 .npy; F.rows.csv beside it says what each row is.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Images per batch.
    #[arg(long, default_value_t = 64, value_parser = positive)]
    batch: u64,
    /// N images spread evenly over the set.
    #[arg(long, value_parser = positive)]
    limit: Option<u64>,
    /// Loader threads (default: as eval).
    #[arg(long)]
    workers: Option<usize>,
    /// Compute threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Hide the progress bar.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Args)]
struct NeighborsArgs {
    /// A checkpoint (ckpt-*.safetensors or best.safetensors in a run folder).
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,
    #[command(flatten)]
    device: DeviceArgs,
    /// The images searched: a store folder, a `prepare` output folder (its train/), or class sub-folders.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Query images (JPEG, PNG): resized and centre-cropped as predict does.
    #[arg(long, value_name = "IMAGE", num_args = 1.., required = true)]
    query: Vec<PathBuf>,
    /// Neighbours per query.
    #[arg(long, default_value_t = 6, value_parser = positive)]
    k: u64,
    /// The picture (PNG): one row per query, the query then its neighbours with class and distance.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// The set's fc7 from `features --layer fc7` (default: computed and written beside --out as OUT.fc7.npy).
    #[arg(long, value_name = "FILE")]
    features: Option<PathBuf>,
    /// Side of each picture in the grid, pixels.
    #[arg(long, default_value_t = 96, value_parser = positive)]
    cell: u64,
    /// Images per batch.
    #[arg(long, default_value_t = 64, value_parser = positive)]
    batch: u64,
    /// Search N images spread evenly over the set (as `features --limit N`).
    #[arg(long, value_parser = positive)]
    limit: Option<u64>,
    /// Loader threads (default: as eval).
    #[arg(long)]
    workers: Option<usize>,
    /// Compute threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Hide the progress bar.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Args)]
struct ExportArgs {
    /// A checkpoint (ckpt-*.safetensors or best.safetensors in a run folder).
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,
    /// safetensors: the weights with PyTorch names and layouts; onnx: the inference graph with its weights.
    #[arg(long, value_parser = ["safetensors", "onnx"])]
    format: String,
    /// Output file.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Args)]
struct FiltersArgs {
    /// A checkpoint (ckpt-*.safetensors or best.safetensors in a run folder) or an exported safetensors file.
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,
    /// The PNG to write.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// The config, for a safetensors file whose metadata names none (written by PyTorch, say).
    #[arg(long)]
    config: Option<String>,
    /// One JSON line instead of the table.
    #[arg(long)]
    json: bool,
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

/// `runs/<name>-N` for the first N not taken.
fn default_run_dir(name: &str) -> PathBuf {
    (1..)
        .map(|n| PathBuf::from("runs").join(format!("{name}-{n}")))
        .find(|p| !p.exists())
        .unwrap_or_else(|| PathBuf::from("runs").join(name))
}

/// SIGINT and SIGTERM set `stop` (training finishes its step, writes a
/// checkpoint and returns); a second SIGINT ends the process at once.
/// Returns the flag and the exit status the signal asks for (128 + signo).
fn stop_on_signals() -> Result<(Arc<AtomicBool>, Arc<AtomicUsize>)> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    use signal_hook::flag;
    let stop = Arc::new(AtomicBool::new(false));
    let status = Arc::new(AtomicUsize::new(0));
    for sig in [SIGINT, SIGTERM] {
        // Registered first, so it sees the flag as it was before this signal.
        flag::register_conditional_shutdown(sig, 128 + sig, Arc::clone(&stop))
            .context("could not install signal handlers")?;
        flag::register(sig, Arc::clone(&stop)).context("could not install signal handlers")?;
        flag::register_usize(sig, Arc::clone(&status), 128 + sig as usize)
            .context("could not install signal handlers")?;
    }
    Ok((stop, status))
}

fn cmd_train(args: TrainArgs) -> Result<()> {
    let world = World::from_env()?;
    let request = args.device.request(&args.parallel, &world)?;
    ensure_nccl(parallel::nccl_use(&request, &world)?)?;
    set_threads(args.threads)?;
    let resume = match &args.resume {
        Some(p) => Some(Box::new(checkpoint::load_latest(p)?)),
        None => None,
    };
    let spec = match &resume {
        Some(ck) => ck.state.net.clone(),
        None => args.net.spec(if args.demo { "cifar" } else { "alexnet" }),
    };
    let topo = spec.topology()?;
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
        match (&args.data, &resume) {
            (Some(d), _) => d.clone(),
            (None, Some(ck)) => PathBuf::from(&ck.state.data),
            (None, None) => bail!("train: pass --data DIR (a store from `prepare`, or one sub-folder of images per class) or --demo"),
        }
    };
    let mut opts = TrainOptions::for_topology(&topo, data);
    if args.demo {
        opts.run.val = 500;
        opts.run.epochs = 14;
        opts.time_limit = Some(Duration::from_secs(80));
        opts.run.schedule = Schedule::Milestones(vec![11]);
    }
    if let Some(e) = args.epochs {
        opts.run.epochs = e as usize;
    } else if let Some(ck) = &resume {
        opts.run.epochs = ck.state.options.epochs;
    }
    if let Some(b) = args.batch {
        opts.run.batch = b as usize;
    }
    if let Some(lr) = args.lr {
        if !(lr > 0.0 && lr.is_finite()) {
            bail!("--lr must be a positive number, not {lr}");
        }
        opts.run.lr = lr;
    }
    if !args.demo {
        opts.run.val = args.val;
    }
    opts.run.limit = args.limit.map(|l| l as usize);
    if let Some(m) = args.lr_milestones {
        opts.run.schedule = Schedule::Milestones(m);
    } else if !args.demo {
        opts.run.schedule = Schedule::Plateau {
            patience: args.patience as usize,
            max_drops: args.max_drops,
        };
    }
    if let Some(t) = args.time_limit {
        if !(t > 0.0 && t.is_finite()) {
            bail!("--time-limit must be a positive number of seconds, not {t}");
        }
        opts.time_limit = Some(Duration::from_secs_f64(t));
    }
    opts.run.crop = args.crop.map(|c| c as usize);
    opts.run.seed = args.seed;
    opts.workers = args.workers;
    opts.progress = !args.no_progress;
    opts.checkpoint_every = args.checkpoint_every;
    opts.keep = args.keep as usize;
    opts.metrics_format = if args.metrics_format == "jsonl" {
        MetricsFormat::Jsonl
    } else {
        MetricsFormat::Csv
    };
    if let Some(r) = &args.recipe {
        if !topo.has_one_biases() {
            bail!(
                "--recipe {r}: config {} has no biases of 1 (it starts from He init and zero biases), so the recipes are the same; leave --recipe out",
                topo.name
            );
        }
        opts.run.init = if r == "paper" {
            InitRecipe::Paper
        } else {
            InitRecipe::Caffe
        };
    }
    opts.init_from = args.init_from;
    opts.out = Some(match (&resume, args.out) {
        (Some(ck), _) => ck
            .path
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(".")),
        (None, Some(o)) => o,
        (None, None) => default_run_dir(if args.demo { "demo" } else { &topo.name }),
    });
    if let Some(ck) = resume {
        opts = resume_options(opts, &ck);
        opts.resume = Some(ck);
    }
    let (stop, signal_status) = stop_on_signals()?;
    opts.stop = Some(stop);
    if !world.is_writer() {
        info!(
            "process {} of {}: rank 0 writes the run folder; this one keeps nothing",
            world.rank, world.size
        );
        opts.out = None;
    }
    opts.world = world;

    struct TrainOn<'a>(&'a NetSpec, &'a TrainOptions);
    impl OnLayout for TrainOn<'_> {
        type Out = TrainReport;
        fn run<B: Backend>(self, layout: Layout<'_, B>) -> alexnet_cuda::Result<TrainReport> {
            train(layout, self.0, self.1)
        }
    }
    let report = parallel::run_on(&request, &opts.world, TrainOn(&spec, &opts))?;
    let run_dir = opts.out.as_deref().unwrap_or(std::path::Path::new("."));
    if report.interrupted {
        println!(
            "stopped at a signal; {}; continue with: alexnet-cuda train --resume {}{}",
            match &report.checkpoint {
                Some(p) => format!("checkpoint {}", p.display()),
                None => "no checkpoint written".into(),
            },
            run_dir.display(),
            // Dropout masks are drawn per tower and replica: the same layout resumes exactly.
            args.device.flags(&args.parallel)
        );
        let code = signal_status.load(Ordering::Relaxed);
        std::process::exit(if code == 0 { 130 } else { code as i32 });
    }
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
    if let Some(p) = &report.checkpoint {
        println!(
            "run folder {}: last checkpoint {}; evaluate with: alexnet-cuda eval --checkpoint {} --data DIR",
            run_dir.display(),
            p.display(),
            run_dir.join("best.safetensors").display()
        );
    }
    Ok(())
}

fn cmd_eval(args: EvalArgs) -> Result<()> {
    set_threads(args.threads)?;
    let ck = checkpoint::load(&args.checkpoint)?;
    let topo = ck.state.net.topology()?;
    let device = args.device.resolve()?;
    let batch = args
        .batch
        .map(|b| b as usize)
        .unwrap_or(ck.state.options.batch);
    let set = open_eval_data(&args.data, &ck, !args.no_progress)?;
    let n = set.len();
    let idx: Vec<usize> = match args.limit {
        Some(k) if (k as usize) < n => (0..k as usize).map(|i| i * n / k as usize).collect(),
        _ => (0..n).collect(),
    };
    // Ten crops make ten rows per image: keep the rows per step near `batch`.
    let per_step = if args.ten_crop {
        (batch / 10).max(1)
    } else {
        batch
    };
    let workers = workers_for(args.workers, matches!(device, Device::Cuda(_)));
    let cfg = loader_for(&ck, per_step, args.ten_crop, workers);
    let pb = if args.no_progress {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(idx.len() as u64)
    };
    let t0 = Instant::now();
    let r = on_device!(&device, args.device, |be| {
        let mut net = Network::new(&be, &topo, per_step * cfg_rows(args.ten_crop), 0)?;
        ck.restore(&mut net, false)?;
        evaluate(&mut net, &set, &idx, &cfg, |done| {
            pb.set_position(done as u64)
        })?
    });
    pb.finish_and_clear();
    let mode = if args.ten_crop {
        "10-crop"
    } else {
        "centre-crop"
    };
    if args.json {
        println!(
            "{{\"checkpoint\": {:?}, \"data\": {:?}, \"mode\": \"{mode}\", \"images\": {}, \"top1_error\": {:.6}, \"top5_error\": {:.6}, \"loss\": {:.6}, \"seconds\": {:.2}}}",
            args.checkpoint.display().to_string(),
            args.data.display().to_string(),
            r.images,
            1.0 - r.top1,
            1.0 - r.top5,
            r.loss,
            t0.elapsed().as_secs_f64()
        );
    } else {
        println!(
            "{mode}: top-1 error {:.2}%, top-5 error {:.2}% on {} images (loss {:.4}, {:.0} images/s)",
            100.0 * (1.0 - r.top1),
            100.0 * (1.0 - r.top5),
            r.images,
            r.loss,
            r.images as f64 / t0.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn cmd_predict(args: PredictArgs) -> Result<()> {
    set_threads(args.threads)?;
    let ck = checkpoint::load(&args.checkpoint)?;
    let topo = ck.state.net.topology()?;
    let classes = topo.classes;
    let chunk = ck.state.options.batch.clamp(1, 64);
    let be = CpuBackend::new();
    let mut net = Network::new(&be, &topo, chunk, 0)?;
    ck.restore(&mut net, false)?;
    let side = topo.crop;
    let (labels, logits, probs): (Vec<String>, Vec<f32>, Vec<f32>) = match &args.input_npy {
        Some(path) => {
            let (shape, x) = read_npy_f32(path)?;
            let want = [topo.channels, side, side];
            if shape.len() != 4 || shape[1..] != want {
                bail!(
                    "{}: shape {shape:?}, but config {} takes [N, {}, {side}, {side}] (float32, NCHW, preprocessed as in training: mean subtracted)",
                    path.display(),
                    topo.name,
                    topo.channels
                );
            }
            let (logits, probs) = forward_rows(&mut net, &x, chunk)?;
            let names = (0..shape[0])
                .map(|i| format!("{} row {i}", path.display()))
                .collect();
            (names, logits, probs)
        }
        None => {
            let size = ck.state.preprocess.image_size;
            let mut pixels = Vec::with_capacity(args.images.len() * size * size * 3);
            for p in &args.images {
                pixels.extend(decode_file(p, size)?);
            }
            let n = args.images.len();
            let set = ImageSet::from_parts(size, pixels, vec![0; n], ck.state.classes.clone())?;
            let set: Arc<dyn ImageSource> = Arc::new(set);
            let rows = cfg_rows(args.ten_crop);
            let cfg = loader_for(&ck, (chunk / rows).max(1), args.ten_crop, 0);
            let idx: Vec<usize> = (0..n).collect();
            let (mut logits, mut probs) = (Vec::new(), Vec::new());
            for b in batches(Arc::clone(&set), &idx, &cfg, 0)? {
                let b = b?;
                let (l, p) = forward_rows(&mut net, &b.x, b.n * b.crops)?;
                logits.extend(l);
                probs.extend(average_crops(&p, b.crops, classes));
            }
            let names = args
                .images
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            (names, logits, probs)
        }
    };
    let names = &ck.state.names;
    for (label, row) in labels.iter().zip(probs.chunks_exact(classes)) {
        println!("{label}");
        for (rank, (c, p)) in top_k(row, args.top as usize).into_iter().enumerate() {
            let id = &ck.state.classes[c];
            match names.get(c).filter(|n| !n.is_empty() && *n != id) {
                Some(name) => println!("  {}. {:6.2}%  {id}  {name}", rank + 1, 100.0 * p),
                None => println!("  {}. {:6.2}%  {id}", rank + 1, 100.0 * p),
            }
        }
    }
    if let Some(path) = &args.logits {
        write_npy_f32(path, &[logits.len() / classes, classes], &logits)?;
        info!(
            "wrote {} logits rows to {}",
            logits.len() / classes,
            path.display()
        );
    }
    Ok(())
}

fn cmd_export(args: ExportArgs) -> Result<()> {
    let ck = checkpoint::load(&args.checkpoint)?;
    let topo = ck.state.net.topology()?;
    // The weights in table order, checked against the table's shapes.
    let be = CpuBackend::new();
    let mut net = Network::new(&be, &topo, 1, 0)?;
    ck.restore(&mut net, false)?;
    let tensors = network_tensors(&net)?;
    match args.format.as_str() {
        "onnx" => write_onnx(&topo, &tensors, &args.out)?,
        _ => {
            let mut meta = BTreeMap::new();
            meta.insert("config".to_string(), topo.name.clone());
            meta.insert(
                "classes".to_string(),
                serde_json::to_string(&ck.state.classes)?,
            );
            meta.insert("names".to_string(), serde_json::to_string(&ck.state.names)?);
            meta.insert(
                "preprocess".to_string(),
                serde_json::to_string(&ck.state.preprocess)?,
            );
            write_safetensors(&args.out, &tensors, &meta)?;
        }
    }
    println!(
        "wrote {} ({} tensors, {} parameters, config {}) to {}",
        args.format,
        tensors.len(),
        tensors.iter().map(|t| t.data.len()).sum::<usize>(),
        topo.name,
        args.out.display()
    );
    Ok(())
}

fn cmd_filters(args: FiltersArgs) -> Result<()> {
    filters::check_out(&args.out)?;
    let conv1 = filters::load(&args.checkpoint, args.config.as_deref())?;
    let layout = filters::write_png(&conv1, &args.out)?;
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
        println!("{line}");
    } else {
        println!(
            "conv1 of {}: {} kernels of {k}x{k}x3 on {} tower(s); wrote {} ({}x{})",
            conv1.config,
            conv1.count(),
            conv1.towers.len(),
            args.out.display(),
            layout.width,
            layout.height,
            k = conv1.k,
        );
        println!("colour share: a kernel's energy off the grey axis (0 grey, 1 no grey pattern)");
        print!("{}", filters::render_table(&towers));
    }
    Ok(())
}

/// Network rows per image.
fn cmd_features(args: FeaturesArgs) -> Result<()> {
    set_threads(args.threads)?;
    let ck = checkpoint::load(&args.checkpoint)?;
    let device = args.device.resolve()?;
    let job = features::FeaturesJob {
        ck: &ck,
        data: &args.data,
        layer: &args.layer,
        out: &args.out,
        batch: args.batch as usize,
        limit: args.limit.map(|l| l as usize),
        workers: workers_for(args.workers, matches!(device, Device::Cuda(_))),
        progress: !args.no_progress,
    };
    let t0 = Instant::now();
    let r = on_device!(&device, args.device, |be| features::features(&be, &job)?);
    println!(
        "{}: {} rows x {} values ({}) in {:.0}s; rows described in {}",
        args.out.display(),
        r.rows,
        r.width,
        args.layer,
        t0.elapsed().as_secs_f64(),
        r.rows_csv.display()
    );
    Ok(())
}

fn cmd_neighbors(args: NeighborsArgs) -> Result<()> {
    set_threads(args.threads)?;
    let ck = checkpoint::load(&args.checkpoint)?;
    let device = args.device.resolve()?;
    let job = features::NeighborsJob {
        ck: &ck,
        data: &args.data,
        queries: &args.query,
        k: args.k as usize,
        out: &args.out,
        features: args.features.as_deref(),
        batch: args.batch as usize,
        limit: args.limit.map(|l| l as usize),
        workers: workers_for(args.workers, matches!(device, Device::Cuda(_))),
        progress: !args.no_progress,
        cell: args.cell as usize,
    };
    let r = on_device!(&device, args.device, |be| features::neighbors(&be, &job)?);
    println!("query\trank\tclass\tdistance\tindex\tsource");
    for q in &r.results {
        for n in &q.neighbors {
            println!(
                "{}\t{}\t{}\t{:.3}\t{}\t{}",
                q.query.display(),
                n.rank,
                n.class,
                n.dist,
                n.index,
                n.source.as_deref().unwrap_or("-")
            );
        }
    }
    println!(
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
    );
    Ok(())
}

fn cfg_rows(ten_crop: bool) -> usize {
    if ten_crop {
        10
    } else {
        1
    }
}

fn cmd_bench(args: BenchStepArgs) -> Result<()> {
    set_threads(args.threads)?;
    let mut topo = args.net.topology("alexnet")?;
    if let Some(c) = args.classes {
        topo = topo.with_classes(c as usize)?;
    }
    let several = args.device.gpus.as_deref().is_some_and(|g| g.contains(','));
    if args.parallel.parallel.is_some() || several {
        let world = World::single();
        let request = args.device.request(&args.parallel, &world)?;
        ensure_nccl(parallel::nccl_use(&request, &world)?)?;
        struct BenchOn<'a>(&'a Topology, &'a BenchStepArgs);
        impl OnLayout for BenchOn<'_> {
            type Out = ();
            fn run<B: Backend>(self, layout: Layout<'_, B>) -> alexnet_cuda::Result<()> {
                bench_layout(layout, self.0, self.1)
                    .map_err(|e| alexnet_cuda::Error::Backend(format!("{e:#}")))
            }
        }
        return Ok(parallel::run_on(&request, &world, BenchOn(&topo, &args))?);
    }
    let device = args.device.resolve()?;
    let cpu = device == Device::Cpu;
    on_device!(&device, args.device, |be| bench_steps(
        &be, &topo, &args, cpu
    ))
}

/// `bench_steps` for several devices (towers, replicas or both): step time
/// (median on CPUs; on GPUs the mean, ended by a download that waits for
/// the queued work), the losses, and the bytes exchanged between towers per
/// step beside the table's prediction.
fn bench_layout<B: Backend>(
    layout: Layout<'_, B>,
    topo: &Topology,
    args: &BenchStepArgs,
) -> Result<()> {
    let (batch, steps) = (args.batch.max(1), args.steps.max(1));
    let first = layout.first();
    let pairs = match &layout {
        Layout::Towers(_) => 1,
        Layout::Hybrid(p, _) => p.len(),
        _ => 0,
    };
    let replicas = match &layout {
        Layout::Data(d, _) => d.len(),
        Layout::Hybrid(p, _) => p.len(),
        _ => 1,
    };
    let devices = layout.describe();
    let mut model = layout.build(topo, batch, 1)?;
    if first.needs_loss_scaling() {
        model.set_loss_scale(Some(LossScale::dynamic()));
    }
    let (x, labels) = bench_batch(first, topo, batch)?;
    let hp = bench_hp(args.lr)?;
    let t = timed_steps(&mut *model, &x, &labels, &hp, args.warmup, steps)?;
    let (losses, mean, median) = (t.losses, t.mean, t.median);
    let on_cpu = first.host_alloc().is_none();
    let step = if on_cpu { median } else { mean };
    let predicted = pairs as u64 * topo.exchange_bytes_per_step(batch / replicas)?;
    info!(
        "between towers: {} bytes per step (the table predicts {predicted})",
        model.exchanged_bytes()
    );
    println!(
        "{{\"impl\":\"alexnet-cuda\",\"device\":\"{}\",\"config\":\"{}\",\"batch\":{batch},\"steps\":{steps},\"mean_s\":{mean:.6},\"median_s\":{median:.6},\"images_per_s\":{:.2},\"loss_first\":{},\"loss_last\":{},\"exchanged_bytes_per_step\":{},\"predicted_bytes_per_step\":{predicted}}}",
        devices.replace('"', "'"),
        topo.name,
        batch as f64 / step,
        json_f32(losses.first().copied().unwrap_or(f32::NAN)),
        json_f32(losses.last().copied().unwrap_or(f32::NAN)),
        model.exchanged_bytes()
    );
    Ok(())
}

/// Train `warmup + steps` steps on one fixed random batch. images/s comes
/// from the median step on the CPU and from the mean over the timed steps,
/// ended by a download that waits for queued work, on a GPU. The first and
/// last losses show the net learning the batch.
fn bench_steps<B: Backend>(be: &B, topo: &Topology, args: &BenchStepArgs, cpu: bool) -> Result<()> {
    let batch = args.batch.max(1);
    let steps = args.steps.max(1);
    let mut model = Network::new(be, topo, batch, 1)?;
    if be.needs_loss_scaling() {
        model.set_loss_scale(Some(LossScale::dynamic()));
    }
    let (x, labels) = bench_batch(be, topo, batch)?;
    let hp = bench_hp(args.lr)?;
    let t = timed_steps(&mut model, &x, &labels, &hp, args.warmup, steps)?;
    let (losses, mean, median) = (t.losses, t.mean, t.median);
    // Where a step's time goes: a few more steps with a wait after each
    // phase (forward includes the upload and the loss read-back), and the
    // upload alone. Medians, in milliseconds.
    let mut phases = [const { Vec::new() }; 4];
    let mut probe = be.alloc(x.len())?;
    for _ in 0..args.phase_steps {
        let t = Instant::now();
        be.upload(&x, &mut probe)?;
        be.synchronize()?;
        phases[0].push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        model.forward(&x, &labels, Mode::Train)?;
        be.synchronize()?;
        phases[1].push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        model.backward()?;
        be.synchronize()?;
        phases[2].push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        model.sgd_step(&hp)?;
        be.synchronize()?;
        phases[3].push(t.elapsed().as_secs_f64());
    }
    let ms = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2)
            .map_or("null".to_string(), |m| format!("{:.3}", m * 1e3))
    };
    let phase_json = format!(
        "{{\"upload_ms\":{},\"forward_ms\":{},\"backward_ms\":{},\"sgd_ms\":{}}}",
        ms(&mut phases[0]),
        ms(&mut phases[1]),
        ms(&mut phases[2]),
        ms(&mut phases[3])
    );
    let first = losses.first().copied().unwrap_or(f32::NAN);
    let last = losses.last().copied().unwrap_or(f32::NAN);
    println!(
        "{{\"impl\":\"alexnet-cuda\",\"device\":\"{}\",\"config\":\"{}\",\"batch\":{batch},\"steps\":{steps},\"mean_s\":{mean:.6},\"median_s\":{median:.6},\"images_per_s\":{:.2},\"loss_first\":{},\"loss_last\":{},\"phases\":{phase_json}}}",
        be.name(),
        topo.name,
        batch as f64 / if cpu { median } else { mean },
        json_f32(first),
        json_f32(last)
    );
    Ok(())
}

/// What `timed_steps` measured: every step's loss, and the timed steps'
/// mean and median seconds.
struct Timed {
    losses: Vec<f32>,
    mean: f64,
    median: f64,
}

/// `warmup + steps` training steps on one batch, the last `steps` timed.
/// The logits' download at the end waits for the last step's queued work,
/// so the mean counts all of it; per-step times (the median) only mean
/// something on the CPU, where nothing is queued.
fn timed_steps(
    model: &mut dyn Model,
    x: &[f32],
    labels: &[u32],
    hp: &SgdParams,
    warmup: usize,
    steps: usize,
) -> Result<Timed> {
    let mut losses = Vec::with_capacity(warmup + steps);
    let mut times = Vec::with_capacity(steps);
    let mut t0 = Instant::now();
    for i in 0..warmup + steps {
        if i == warmup {
            t0 = Instant::now();
        }
        let t = Instant::now();
        losses.push(model.forward(x, labels, Mode::Train)?);
        model.backward()?;
        model.sgd_step(hp)?;
        if i >= warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    model.logits()?;
    let mean = t0.elapsed().as_secs_f64() / steps as f64;
    times.sort_by(f64::total_cmp);
    let median = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
    Ok(Timed {
        losses,
        mean,
        median,
    })
}

/// bench-step's fixed random batch, in the memory the trainer's loader
/// would use (pinned on a GPU), so the upload costs what it costs in training.
fn bench_batch<B: Backend>(be: &B, topo: &Topology, batch: usize) -> Result<(HostBuf, Vec<u32>)> {
    let mut rng = Rng::new(7);
    let mut x = HostBuf::default();
    x.resize(
        batch * topo.channels * topo.crop * topo.crop,
        be.host_alloc().as_ref(),
    )?;
    for v in x.iter_mut() {
        *v = rng.normal() as f32;
    }
    let labels = (0..batch).map(|_| rng.below(topo.classes) as u32).collect();
    Ok((x, labels))
}

/// The paper's SGD settings at bench-step's --lr.
fn bench_hp(lr: f32) -> Result<SgdParams> {
    if !(lr >= 0.0 && lr.is_finite()) {
        bail!("--lr must be a non-negative number, not {lr}");
    }
    Ok(SgdParams {
        lr,
        momentum: 0.9,
        weight_decay: 5e-4,
    })
}

/// A float as JSON (NaN and infinities have no JSON form: null).
fn json_f32(v: f32) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "null".into()
    }
}

fn cmd_gpu_ops(device: DeviceArgs, json: bool) -> Result<()> {
    let ids = match device.resolve()? {
        Device::Cuda(ids) => ids,
        Device::Cpu => bail!("gpu-ops compares a GPU with the CPU: it needs a CUDA GPU (--gpus 0)"),
    };
    let be = CudaBackend::new(ids[0], device.cuda_options()?)?;
    info!("{}", be.name());
    let mut failed = 0;
    let mut rows = parity::run_all(&be)?;
    rows.extend(parity::towers_vs_grouped(&be)?);
    rows.extend(parity::replicas_vs_grouped(&be)?);
    for r in rows {
        failed += usize::from(!r.pass);
        if json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!("{r}");
        }
    }
    // The network sizes its buffers once: steps after the first allocate nothing.
    let (first, last) = parity::steady_state_allocations(&be, &Topology::cifar(), 32, 5)?;
    let steady = first == last;
    failed += usize::from(!steady);
    if json {
        println!(
            "{{\"op\":\"allocations after step 1 / step 5\",\"path\":\"-\",\"max_abs\":{},\"max_rel\":0,\"atol\":0,\"rtol\":0,\"pass\":{steady}}}",
            last - first
        );
    } else {
        println!("allocations: {first} after the first step, {last} after the fifth");
    }
    if failed > 0 {
        bail!("{failed} GPU checks failed");
    }
    Ok(())
}

/// Make NCCL loadable for a run that uses it, before anything else is
/// opened. cudarc does not try libnccl.so.2, the name NCCL's packages
/// install, and the loader reads LD_LIBRARY_PATH only at start-up: when the
/// search finds the file, this process starts again (same arguments, same
/// pid) with a folder holding a link libnccl.so to it first on
/// LD_LIBRARY_PATH. Returns when NCCL loads, or when the run can do without
/// it (logged); otherwise an error saying how to install it. Without the
/// CUDA driver it returns at once: opening the GPUs fails with that error.
fn ensure_nccl(need: NcclUse) -> Result<()> {
    if need == NcclUse::No || !alexnet_cuda::backend::cuda::probe::driver_present() {
        return Ok(());
    }
    make_nccl_loadable(need)
}

/// `ensure_nccl` past its checks (nccl-check, which needs no GPU, starts here).
fn make_nccl_loadable(need: NcclUse) -> Result<()> {
    let failed = match nccl_lib::plan_here() {
        Plan::Ready => return Ok(()),
        Plan::Restart(found) => restart_with_nccl(&found),
        Plan::Unavailable(e) => e,
    };
    if need == NcclUse::Required {
        return Err(failed.into());
    }
    warn!("{failed}");
    Ok(())
}

/// Start this program again with a link to `found` on LD_LIBRARY_PATH;
/// returns only the error if that fails.
fn restart_with_nccl(found: &nccl_lib::Found) -> NcclLibError {
    use std::os::unix::process::CommandExt;
    let dir = match nccl_lib::make_link(&found.path) {
        Ok(d) => d,
        Err(e) => return e,
    };
    let mut cmd = match nccl_lib::restart_command(found, &dir) {
        Ok(c) => c,
        Err(e) => return e,
    };
    info!(
        "NCCL is {} (found in {}), a name cudarc does not open: restarting with {} (libnccl.so -> it) first on LD_LIBRARY_PATH",
        found.path.display(),
        found.place,
        dir.display()
    );
    let source = cmd.exec();
    NcclLibError::Exec {
        exe: PathBuf::from(cmd.get_program()),
        source,
    }
}

/// NCCL found and loaded the way a multi-GPU run loads it; needs no GPU.
fn cmd_nccl_check() -> Result<()> {
    make_nccl_loadable(NcclUse::Required)?;
    let code = match nccl_lib::loaded_version() {
        Some(v) => v.map_err(anyhow::Error::msg)?,
        None => bail!("{}", nccl_lib::unavailable_message()),
    };
    let (major, minor, patch) = nccl_lib::decode_version(code);
    println!("NCCL {major}.{minor}.{patch} (ncclGetVersion {code})");
    match nccl_lib::loaded_path() {
        Some(p) => println!("loaded from {}", p.display()),
        None => println!("loaded from an unknown file (no /proc/self/maps)"),
    }
    if let Some(found) = std::env::var_os(nccl_lib::RESTART_GUARD) {
        println!(
            "through a restart with a libnccl.so link to {}",
            found.to_string_lossy()
        );
    }
    Ok(())
}

/// The run-time compile path, checked without a GPU: every module's source
/// through NVRTC, and every entry point of kernels/README.md in the PTX.
fn cmd_nvrtc_check(arch: &str) -> Result<()> {
    let cc = arch
        .split_once('.')
        .and_then(|(a, b)| Some((a.parse::<i32>().ok()?, b.parse::<i32>().ok()?)))
        .with_context(|| format!("--arch {arch}: write a compute capability such as 9.0"))?;
    let mut missing = Vec::new();
    for (m, ptx) in modules::nvrtc_compile_all(cc)? {
        let entries: Vec<&str> = ptx
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix(".visible .entry "))
            .map(|l| l.split('(').next().unwrap_or("").trim())
            .collect();
        let absent: Vec<&str> = m
            .kernels
            .iter()
            .copied()
            .filter(|k| !entries.contains(k))
            .collect();
        println!(
            "{:<14} sm_{}{}: {:>7} bytes of PTX, {} of {} entry points",
            m.name,
            cc.0,
            cc.1,
            ptx.len(),
            m.kernels.len() - absent.len(),
            m.kernels.len()
        );
        missing.extend(absent.iter().map(|k| format!("{}: {k}", m.name)));
    }
    if !missing.is_empty() {
        bail!(
            "entry points missing from NVRTC's PTX: {}",
            missing.join(", ")
        );
    }
    Ok(())
}

fn cmd_prepare(args: PrepareArgs) -> Result<()> {
    set_threads(args.threads)?;
    let mut opts = PrepareOptions::new(args.train, args.out);
    opts.val = args.val;
    opts.val_labels = args.val_labels;
    opts.val_synsets = args.val_synsets;
    opts.names = args.names;
    opts.size = args.size as usize;
    opts.encoding = if args.format == "raw" {
        Encoding::Raw
    } else {
        Encoding::Jpeg
    };
    opts.quality = args.quality;
    opts.limit = args.limit.map(|v| v as usize);
    opts.progress = !args.no_progress;
    let r = prepare(&opts)?;
    let line = |what: &str, m: &alexnet_cuda::data::StoreMeta| {
        println!(
            "{what}: {} images of {} classes, {} skipped, {:.1} MB",
            m.count,
            m.classes.len(),
            m.skipped,
            m.data_bytes as f64 / 1e6
        )
    };
    line("train", &r.train);
    if let Some(v) = &r.val {
        line("val", v);
    }
    println!(
        "wrote {} in {:.1} s; train with --data {}",
        opts.out.display(),
        r.seconds,
        opts.out.display()
    );
    Ok(())
}

fn cmd_bench_loader(
    data: &std::path::Path,
    batch: usize,
    crop: usize,
    n: usize,
    workers: usize,
) -> Result<()> {
    let store = std::sync::Arc::new(PackedStore::open(data)?);
    let meta = store.meta().clone();
    let light = Lighting {
        pca: meta.stats.pca,
        sigma: 0.1,
    };
    let cfg = LoaderConfig {
        mean_image: Some(std::sync::Arc::new(store.mean_image().to_vec())),
        seed: 1,
        workers,
        drop_last: true,
        lighting: Some(light),
        ..LoaderConfig::new(batch, crop, true)
    };
    let idx: Vec<usize> = (0..meta.count).collect();
    // Peak private (anonymous) memory, sampled once per batch: VmHWM also
    // counts the store's file pages, which are page cache the kernel can
    // drop at any time.
    let anon_kb = || -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("RssAnon:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let mut peak_anon = anon_kb();
    let (mut images, mut epoch) = (0usize, 0u64);
    let start = Instant::now();
    'outer: loop {
        let mut it = batches(store.clone(), &idx, &cfg, epoch)?;
        if it.num_batches() == 0 {
            bail!(
                "{}: fewer than {batch} images; pass a smaller --batch",
                data.display()
            );
        }
        while let Some(b) = it.next() {
            let b = b?;
            images += b.n;
            peak_anon = peak_anon.max(anon_kb());
            it.recycle(b);
            if images >= n * batch {
                break 'outer;
            }
        }
        epoch += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |key: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    println!(
        "{{\"images\": {images}, \"seconds\": {secs:.4}, \"images_per_s\": {:.1}, \"workers\": {workers}, \"store_images\": {}, \"peak_rss_mb\": {:.1}, \"peak_anon_mb\": {:.1}, \"rss_file_mb\": {:.1}}}",
        images as f64 / secs,
        meta.count,
        kb("VmHWM:") as f64 / 1024.0,
        peak_anon as f64 / 1024.0,
        kb("RssFile:") as f64 / 1024.0,
    );
    Ok(())
}

fn cmd_synth_store(out: &std::path::Path, count: usize, size: usize) -> Result<()> {
    use alexnet_cuda::data::packed::{Stats, StoreWriter};
    let classes: Vec<String> = (0..1000).map(|c| format!("n{c:08}")).collect();
    // 16 distinct images, each encoded once and repeated.
    let mut encoded = Vec::new();
    for k in 0..16u32 {
        let px: Vec<u8> = (0..size * size * 3)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(k * 977) >> 24) as u8 / 2 + 64
            })
            .collect();
        let mut e = Vec::new();
        alexnet_cuda::data::decode::encode_jpeg(&px, size, 90, &mut e)?;
        encoded.push(e);
    }
    let mut w = StoreWriter::create(out, size, Encoding::Jpeg)?;
    for i in 0..count {
        w.push(&encoded[i % 16], (i % 1000) as u32, "synthetic")?;
    }
    let cov = [[400.0, 0.0, 0.0], [0.0, 400.0, 0.0], [0.0, 0.0, 400.0]];
    let meta = alexnet_cuda::data::StoreMeta {
        format: String::new(),
        version: 0,
        generation: String::new(),
        size,
        encoding: Encoding::Jpeg,
        quality: Some(90),
        count: 0,
        classes,
        names: Vec::new(),
        class_counts: vec![(count / 1000) as u64; 1000],
        stats: Stats {
            images: count as u64,
            channel_mean: [127.0; 3],
            channel_std: [20.0; 3],
            rgb_cov: cov,
            pca: alexnet_cuda::data::Pca::from_covariance(cov),
        },
        skipped: 0,
        source: "synthetic".into(),
        data_bytes: 0,
        data_crc: 0,
        index_crc: 0,
        mean_crc: 0,
        sources_crc: 0,
    };
    let m = w.finish(meta, &vec![127.0; size * size * 3])?;
    println!(
        "{{\"images\": {}, \"data_mb\": {:.1}}}",
        m.count,
        m.data_bytes as f64 / 1e6
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
        Command::Scaling {
            net,
            batch,
            step_ms,
        } => {
            if !(step_ms > 0.0 && step_ms.is_finite()) {
                bail!("--step-ms must be a positive number of milliseconds, not {step_ms}");
            }
            print!(
                "{}",
                scaling::render(&net.topology("alexnet")?, batch as usize, step_ms)?
            );
            Ok(())
        }
        Command::Prepare(args) => cmd_prepare(args),
        Command::Train(args) => cmd_train(*args),
        Command::Eval(args) => cmd_eval(args),
        Command::Predict(args) => cmd_predict(args),
        Command::Export(args) => cmd_export(args),
        Command::Filters(args) => cmd_filters(args),
        Command::Features(args) => cmd_features(args),
        Command::Neighbors(args) => cmd_neighbors(args),
        Command::DemoData {
            out,
            classes,
            per_class,
            size,
        } => {
            write_demo_dataset(&out, classes, per_class, size, 1)?;
            Ok(())
        }
        Command::BenchLoader {
            data,
            batch,
            crop,
            batches,
            workers,
        } => cmd_bench_loader(&data, batch, crop, batches, workers),
        Command::SynthStore { out, count, size } => cmd_synth_store(&out, count, size),
        Command::BenchStep(args) => cmd_bench(args),
        Command::GpuOps { device, json } => cmd_gpu_ops(device, json),
        Command::NvrtcCheck { arch } => cmd_nvrtc_check(&arch),
        Command::NcclCheck => cmd_nccl_check(),
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
