//! Where the ops run: the device flags (`DeviceArgs`) and the parallelism
//! flags (`ParallelArgs`), turned into the `Request` that `dist::run_on`
//! (or `run_on_one`) resolves: the one way every command picks its device.
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};

use alexnet_cuda::backend::cuda::{CudaOptions, Precision};
use alexnet_cuda::checkpoint::Checkpoint;
use alexnet_cuda::dist::device;
use alexnet_cuda::dist::placement::{self, Parallel, Request};
use alexnet_cuda::dist::world::World;
use alexnet_cuda::run_state::Compute;

use super::common::{flag_value, positive, HostArgs};

/// Where the ops run: shared by every command that computes.
#[derive(Args, Clone)]
pub struct DeviceArgs {
    /// Run on the CPU.
    #[arg(long, conflicts_with = "gpus")]
    pub cpu: bool,
    /// GPUs to run on, e.g. 0 or 0,1. Default, when a CUDA driver and GPU are present (else the CPU): GPU 0; with --parallel, the GPUs its layout needs (model: the first two, or GPU 0 twice; data: every GPU; hybrid: an even number); in a job of several processes (WORLD_SIZE above 1), the GPU LOCAL_RANK names, and CPU processes need --cpu.
    #[arg(long, value_name = "LIST")]
    pub gpus: Option<String>,
    /// Storage of activations and the weights the GPU libraries read: fp32 (the reference), or fp16 / bf16 (mixed precision: fp32 master weights and momentum, fp32 accumulation; fp16 with dynamic loss scaling). GPU only.
    #[arg(long, value_enum, default_value_t = PrecisionFlag::Fp32)]
    pub precision: PrecisionFlag,
    /// CUDA: use the built-in im2col + cuBLAS grouped convolution even where cuDNN is installed.
    #[arg(long)]
    pub fallback_conv: bool,
    /// CUDA: let cuDNN and cuBLAS use TF32 tensor cores for fp32 work (10-bit mantissa products; PyTorch's default for convolutions).
    #[arg(long)]
    pub tf32: bool,
    /// CUDA: only deterministic cuDNN algorithms, chosen by its heuristics rather than by timing, so that a run repeats bit for bit and a resumed run equals one run through (slower; the CPU always is).
    #[arg(long)]
    pub deterministic: bool,
}

/// What every command that runs a checkpoint's network on one device takes
/// (eval, features, neighbors): the checkpoint, where the ops run, and the
/// host's threads and bar.
#[derive(Args)]
pub struct CheckpointRunArgs {
    /// A checkpoint (ckpt-*.safetensors or best.safetensors), or a run folder for its best.safetensors.
    #[arg(long, value_name = "PATH")]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub host: HostArgs,
}

impl CheckpointRunArgs {
    /// The thread pool sized, then the flags and the GPU checked (a bad
    /// one is reported before any file is read), then the checkpoint loaded.
    pub fn start(&self) -> Result<(Request, Checkpoint)> {
        self.host.apply()?;
        let request = self.device.request_one()?;
        Ok((
            request,
            alexnet_cuda::checkpoint::load_resolved(&self.checkpoint)?,
        ))
    }
}

/// How several devices share the work (train and bench-step).
#[derive(Args, Clone, Default)]
pub struct ParallelArgs {
    /// model: the paper's two towers on two devices (the default for --gpus with two; 0,0 puts both on GPU 0). data: a replica per device, gradients averaged by all-reduce (NCCL on GPUs). hybrid: the two towers on each pair of devices, data-parallel across the pairs. Across machines, one process per machine with torchrun's variables (docs/scaling.md).
    #[arg(long, value_enum)]
    pub parallel: Option<ParallelFlag>,
    /// With --cpu: CPU replicas for --parallel data, pairs of towers for hybrid (default 2); model takes two devices, always.
    #[arg(long, value_parser = positive, requires = "parallel")]
    pub replicas: Option<u64>,
}

/// --precision's values: the library's `Precision`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PrecisionFlag {
    Fp32,
    Fp16,
    Bf16,
}

impl From<PrecisionFlag> for Precision {
    fn from(p: PrecisionFlag) -> Precision {
        match p {
            PrecisionFlag::Fp32 => Precision::F32,
            PrecisionFlag::Fp16 => Precision::F16,
            PrecisionFlag::Bf16 => Precision::Bf16,
        }
    }
}

/// --parallel's values: the library's `Parallel` for several devices.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ParallelFlag {
    Model,
    Data,
    Hybrid,
}

impl From<ParallelFlag> for Parallel {
    fn from(p: ParallelFlag) -> Parallel {
        match p {
            ParallelFlag::Model => Parallel::Model,
            ParallelFlag::Data => Parallel::Data,
            ParallelFlag::Hybrid => Parallel::Hybrid,
        }
    }
}

/// `--gpus` as taken without the flag, from the GPUs `found` (at least
/// one): the first for one network; for the paper's two towers the first
/// two, or the one GPU twice (both towers on it); for data parallelism every
/// GPU; for hybrid an even number of them, two at least, or two pairs on
/// the one GPU (a GPU holding both towers of one pair would be in both
/// towers' NCCL communicators; a repeat within each tower's list keeps the
/// reduce in host memory, `placement::check_hybrid_gpus`).
pub fn automatic_gpus(parallel: Option<Parallel>, found: &[usize]) -> String {
    let first = found[..1].to_vec();
    let ids = match parallel {
        None | Some(Parallel::None) => first,
        Some(Parallel::Data) => found.to_vec(),
        Some(Parallel::Model) if found.len() < 2 => vec![found[0]; 2],
        Some(Parallel::Model) => found[..2].to_vec(),
        Some(Parallel::Hybrid) if found.len() < 2 => vec![found[0]; 4],
        Some(Parallel::Hybrid) => found[..found.len() / 2 * 2].to_vec(),
    };
    let ids: Vec<String> = ids.iter().map(usize::to_string).collect();
    ids.join(",")
}

impl DeviceArgs {
    /// The devices and parallelism asked for, as `dist::run_on` takes
    /// them. Without --cpu or --gpus, the probe picks GPU 0 or the CPU.
    pub fn request(&self, par: &ParallelArgs, world: &World) -> Result<Request> {
        let parallel = par.parallel.map(Parallel::from);
        let (cpu, gpus) = if self.cpu || self.gpus.is_some() || !world.is_single() {
            (self.cpu, self.gpus.clone())
        } else {
            match device::automatic() {
                None => (true, None),
                Some(found) => {
                    let gpus = automatic_gpus(parallel, &found);
                    tracing::info!("no --cpu or --gpus given: using --gpus {gpus} (pass --cpu to run on the CPU)");
                    (false, Some(gpus))
                }
            }
        };
        if let (Some(ParallelFlag::Model), Some(n)) = (par.parallel, par.replicas) {
            bail!(
                "--replicas {n} with --parallel model: the paper's two towers take exactly two devices; drop --replicas, or pass --parallel hybrid --replicas {n} for {n} pairs of towers"
            );
        }
        if cpu {
            self.check_cpu_flags(!self.cpu)?;
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
            cuda: self.cuda_options(),
            stop: None,
        })
    }

    /// The device flags as given, for a command line to repeat.
    pub fn flags(&self, par: &ParallelArgs) -> String {
        let mut f = String::new();
        if self.cpu {
            f += " --cpu";
        }
        if let Some(g) = &self.gpus {
            // As parsed: "0, 1" would split into two words on a command line.
            let list: Vec<&str> = g.split(',').map(str::trim).collect();
            f += &format!(" --gpus {}", list.join(","));
        }
        f + &self.how_flags(par)
    }

    /// The run's `Compute`: its flags, and what they come to with
    /// `request` (the devices resolved) in `world`.
    pub fn compute(&self, par: &ParallelArgs, request: &Request, world: &World) -> Result<Compute> {
        Ok(Compute {
            flags: self.flags(par),
            setup: placement::setup(request, world)? + &self.cuda_flags(),
        })
    }

    /// The flags that change how the devices compute (not which ones).
    fn how_flags(&self, par: &ParallelArgs) -> String {
        let mut f = String::new();
        if let Some(p) = &par.parallel {
            f += &format!(" --parallel {}", flag_value(p));
            if let Some(r) = par.replicas {
                f += &format!(" --replicas {r}");
            }
        }
        f + &self.cuda_flags()
    }

    /// The flags of how a GPU computes. A resume does not take them from
    /// the checkpoint (it warns when they differ): without them an fp16
    /// run would go on in fp32.
    fn cuda_flags(&self) -> String {
        let mut f = String::new();
        if self.precision != PrecisionFlag::Fp32 {
            f += &format!(" --precision {}", flag_value(&self.precision));
        }
        for (on, name) in [
            (self.fallback_conv, "--fallback-conv"),
            (self.tf32, "--tf32"),
            (self.deterministic, "--deterministic"),
        ] {
            if on {
                f += &format!(" {name}");
            }
        }
        f
    }

    /// The request of a command that runs one network: one device, its
    /// GPU checked to be there.
    pub fn request_one(&self) -> Result<Request> {
        if let Some(list) = &self.gpus {
            device::one_gpu(list)?;
        }
        let request = self.request(&ParallelArgs::default(), &World::single())?;
        // Before any checkpoint or image is read: a missing GPU is said first.
        placement::check_devices(&request, &World::single())?;
        Ok(request)
    }

    /// On the CPU, the GPU-only flags are errors that say what to do; where
    /// the CPU was `chosen` because no GPU was found (no --cpu given), the
    /// missing GPU is the news.
    fn check_cpu_flags(&self, chosen: bool) -> Result<()> {
        let flag = if self.precision != PrecisionFlag::Fp32 {
            format!("--precision {}", flag_value(&self.precision))
        } else {
            let cuda_only = [
                (self.fallback_conv, "--fallback-conv"),
                (self.tf32, "--tf32"),
                (self.deterministic, "--deterministic"),
            ];
            match cuda_only.iter().find(|(on, _)| *on) {
                Some((_, name)) => name.to_string(),
                None => return Ok(()),
            }
        };
        if chosen {
            bail!("{flag} needs a GPU, and none was found (the log line above says why): run where one is, or drop {flag} to run on the CPU");
        }
        match flag.starts_with("--precision") {
            true => bail!("{flag}: the CPU backend computes in fp32 only; use --precision fp32, or a GPU (--gpus 0)"),
            false => bail!("{flag} selects how CUDA computes; it has no meaning with the CPU backend (which computes in strict fp32 and repeats bit for bit): drop it, or pass --gpus"),
        }
    }

    /// The CUDA backend's options the flags ask for.
    pub fn cuda_options(&self) -> CudaOptions {
        CudaOptions {
            precision: self.precision.into(),
            force_fallback_conv: self.fallback_conv,
            allow_tf32: self.tf32,
            deterministic: self.deterministic,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        device: DeviceArgs,
        #[command(flatten)]
        parallel: ParallelArgs,
    }

    fn parse(line: &str) -> Cli {
        let words = std::iter::once("x").chain(line.split_whitespace());
        Cli::try_parse_from(words).expect("flags parse")
    }

    /// `--gpus "0, 1"` is accepted (each number trimmed), and repeated as
    /// one word, which a shell passes back as one argument.
    #[test]
    fn a_gpu_list_with_spaces_is_repeated_as_one_word() {
        let given = Cli::try_parse_from(["x", "--gpus", "0, 1"]).expect("flags parse");
        assert_eq!(given.device.flags(&given.parallel), " --gpus 0,1");
    }

    /// The flags a stopped run prints to continue with say everything that
    /// sets how it computes: read back, they give the same devices and the
    /// same CUDA options, for each combination.
    #[test]
    fn the_repeated_flags_read_back_to_the_same_choices() {
        for line in [
            "--gpus 0",
            "--gpus 0,1 --parallel data --precision bf16",
            "--gpus 0 --precision fp16 --deterministic",
            "--gpus 0,0 --parallel model --tf32 --fallback-conv",
            "--cpu --parallel data --replicas 3",
        ] {
            let given = parse(line);
            let again = parse(&given.device.flags(&given.parallel));
            assert_eq!(
                again.device.cuda_options(),
                given.device.cuda_options(),
                "{line}"
            );
            assert_eq!(again.device.gpus, given.device.gpus, "{line}");
            assert_eq!(again.device.cpu, given.device.cpu, "{line}");
            assert_eq!(again.parallel.replicas, given.parallel.replicas, "{line}");
            assert_eq!(
                again.parallel.parallel.map(|p| flag_value(&p)),
                given.parallel.parallel.map(|p| flag_value(&p)),
                "{line}"
            );
        }
    }

    /// Without --gpus on a GPU machine: one GPU for one network, the towers
    /// on two (one GPU twice where there is one), data on every GPU,
    /// hybrid on an even number, two at least; each a layout `--gpus` takes.
    #[test]
    fn automatic_gpus_fit_the_layout_asked_for() {
        let cases: [(Option<Parallel>, &[usize], &str); 10] = [
            (None, &[0, 1, 2], "0"),
            (Some(Parallel::None), &[0], "0"),
            (Some(Parallel::Model), &[0], "0,0"),
            (Some(Parallel::Model), &[0, 1, 2], "0,1"),
            (Some(Parallel::Data), &[0], "0"),
            (Some(Parallel::Data), &[0, 1, 2], "0,1,2"),
            (Some(Parallel::Hybrid), &[0], "0,0,0,0"),
            (Some(Parallel::Hybrid), &[0, 1, 2], "0,1"),
            (Some(Parallel::Hybrid), &[0, 1, 2, 3], "0,1,2,3"),
            (Some(Parallel::Hybrid), &[0, 1, 2, 3, 4], "0,1,2,3"),
        ];
        for (parallel, found, want) in cases {
            let got = automatic_gpus(parallel, found);
            assert_eq!(got, want, "{found:?}");
            let n = device::parse_gpus(&got).unwrap().len();
            let needs = match parallel {
                Some(Parallel::Model) => n == 2,
                Some(Parallel::Hybrid) => n >= 2 && n.is_multiple_of(2),
                Some(Parallel::Data) => n == found.len(),
                _ => n == 1,
            };
            assert!(needs, "{got}");
            // And the placement's own checks take it (the GPUs aside).
            let req = Request {
                cpu: false,
                gpus: Some(got.clone()),
                parallel,
                replicas: 1,
                cuda: CudaOptions::default(),
                stop: None,
            };
            if let Err(e) = placement::nccl_use(&req, &World::single()) {
                panic!("{got} {parallel:?}: {e}");
            }
        }
    }
}
