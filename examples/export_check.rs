//! examples/export_check.rs: owns the Rust half of the export check
//! (scripts/check-export runs it, scripts/check_export.py compares).
//! Builds a network from a config at its initial parameters, runs a random
//! batch forward in evaluation mode, and writes into --out:
//!   input.npy           the batch, [n, channels, crop, crop] float32
//!   logits.npy          our logits for it, [n, classes]
//!   weights.safetensors every parameter (PyTorch names and layouts)
//!   model.onnx          the inference graph with those parameters
//! The Python side loads the weights into the PyTorch reference model and
//! the ONNX file into onnxruntime, and both must reproduce logits.npy.
//!
//! Usage: cargo run --release --example export_check -- --config cifar --out DIR
//!        [--batch N] [--seed S] [--widths 6,16,24,24,16,32,32 --classes 10]
use std::collections::BTreeMap;
use std::path::PathBuf;

use alexnet_cuda::backend::cpu::CpuBackend;
use alexnet_cuda::error::{Error, Result};
use alexnet_cuda::export::{network_tensors, onnx::write_onnx, write_safetensors};
use alexnet_cuda::model::net::{Mode, Network};
use alexnet_cuda::model::topology::{Normalize, Topology};
use alexnet_cuda::npy::write_npy_f32;
use alexnet_cuda::rng::Rng;
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// One of the named configs (alexnet, alexnet-half, cifar).
    #[arg(long, default_value = "cifar")]
    config: String,
    /// Instead of --config: the paper's net at these seven widths
    /// (conv1..conv5, fc6, fc7), comma separated.
    #[arg(long, value_delimiter = ',')]
    widths: Option<Vec<usize>>,
    /// Classes for --widths.
    #[arg(long, default_value_t = 10)]
    classes: usize,
    #[arg(long, default_value_t = 4)]
    batch: usize,
    #[arg(long, default_value_t = 2012)]
    seed: u64,
    #[arg(long)]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    run(&args)?;
    Ok(())
}

fn run(args: &Args) -> Result<()> {
    let topo = match &args.widths {
        Some(w) => {
            let w: [usize; 7] = w
                .as_slice()
                .try_into()
                .map_err(|_| Error::Config("--widths: give seven comma-separated widths".into()))?;
            Topology::alexnet_widths(w, args.classes)
        }
        None => Topology::by_name(&args.config)?,
    };
    if args.batch == 0 {
        return Err(Error::Config("--batch must be at least 1".into()));
    }
    std::fs::create_dir_all(&args.out).map_err(|e| Error::io(&args.out, e))?;

    let be = CpuBackend::new();
    let mut net = Network::new(&be, &topo, args.batch, args.seed)?;
    // Inputs on the scale the loader feeds this config: mean-subtracted
    // pixels (+-127.5, where the LRN's sum term matters) or standardised.
    let mut rng = Rng::derive(args.seed, 1);
    let len = args.batch * topo.channels * topo.crop * topo.crop;
    let x: Vec<f32> = (0..len)
        .map(|_| match topo.normalize {
            Normalize::Mean => ((rng.uniform() - 0.5) * 255.0) as f32,
            Normalize::MeanStd => rng.normal() as f32,
        })
        .collect();
    net.forward(&x, &vec![0; args.batch], Mode::Eval)?;
    let logits = net.logits()?;

    let tensors = network_tensors(&net)?;
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert("config".to_string(), topo.name.clone());
    meta.insert("seed".to_string(), args.seed.to_string());
    let out = &args.out;
    write_npy_f32(
        &out.join("input.npy"),
        &[args.batch, topo.channels, topo.crop, topo.crop],
        &x,
    )?;
    write_npy_f32(
        &out.join("logits.npy"),
        &[args.batch, topo.classes],
        &logits,
    )?;
    write_safetensors(&out.join("weights.safetensors"), &tensors, &meta)?;
    write_onnx(&topo, &tensors, &out.join("model.onnx"))?;
    println!("{}: wrote {}", topo.name, out.display());
    Ok(())
}
