//! Why the paper's starting recipe fails on a small real data set, measured:
//! the same first steps of `alexnet` with one suspect changed at a time.
//! For each variant it prints the loss of every step, how far one SGD step
//! moved the logits of the first batch, and, after the last step, how much
//! the logits still differ between images (zero: the output no longer
//! depends on the input). docs/training.md reports the results;
//! scripts/recipe-probe runs it.
//!
//! Usage: recipe_probe STORE_TRAIN_DIR [STEPS] [VARIANT...]
use std::path::PathBuf;
use std::sync::Arc;

use alexnet_cuda::backend::cpu::CpuBackend;
use alexnet_cuda::backend::SgdParams;
use alexnet_cuda::data::{batches, ImageSource, Lighting, LoaderConfig, PackedStore, Pca};
use alexnet_cuda::model::net::{Mode, Network};
use alexnet_cuda::model::topology::{InitRecipe, Topology};
use alexnet_cuda::Result;

const VARIANTS: [&str; 7] = [
    "paper",
    "caffe",
    "paper-fc-0.1",
    "paper-conv-0.1",
    "paper-1000-classes",
    "paper-unit-input",
    "paper-lr-0.001",
];

/// The table and learning rate of one variant: the paper's recipe with one change.
fn variant(name: &str, classes: usize) -> Result<(Topology, f32, bool)> {
    let paper = Topology::alexnet()
        .with_classes(classes)?
        .with_init(InitRecipe::Paper);
    let mut t = paper.clone();
    let (mut lr, mut unit) = (0.01, false);
    match name {
        "paper" => {}
        "caffe" => {
            t = Topology::alexnet()
                .with_classes(classes)?
                .with_init(InitRecipe::Caffe)
        }
        "paper-fc-0.1" | "paper-conv-0.1" => {
            let fc = name == "paper-fc-0.1";
            for l in &mut t.layers {
                if l.bias == 1.0 && l.is_fc() == fc {
                    l.bias = 0.1;
                }
            }
        }
        "paper-1000-classes" => t = paper.with_classes(1000)?,
        "paper-unit-input" => unit = true,
        "paper-lr-0.001" => lr = 0.001,
        _ => {
            return Err(alexnet_cuda::Error::Config(format!(
                "unknown variant {name}; choose from {VARIANTS:?}"
            )))
        }
    }
    Ok((t, lr, unit))
}

/// Mean over classes of the standard deviation of a logit across images.
fn spread(logits: &[f32], classes: usize) -> f64 {
    let n = logits.len() / classes;
    let mut total = 0.0;
    for c in 0..classes {
        let col: Vec<f64> = (0..n).map(|i| logits[i * classes + c] as f64).collect();
        let mean = col.iter().sum::<f64>() / n as f64;
        total += (col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
    }
    total / classes as f64
}

fn probe(store: &Arc<PackedStore>, name: &str, steps: usize) -> Result<()> {
    let meta = store.meta().clone();
    let classes = meta.classes.len();
    let (topo, lr, unit) = variant(name, classes)?;
    let be = CpuBackend::new();
    let batch = 128;
    let mut net = Network::new(&be, &topo, batch, 1)?;
    let st = &meta.stats;
    let mut cfg = LoaderConfig::new(batch, topo.crop, true);
    cfg.seed = 1;
    cfg.workers = 1;
    cfg.drop_last = true;
    cfg.mean = st.channel_mean.map(|v| v as f32);
    if unit {
        cfg.std = Some(st.channel_std.map(|v| v as f32));
    } else {
        cfg.mean_image = Some(Arc::new(store.mean_image().to_vec()));
    }
    cfg.lighting = Some(Lighting {
        pca: Pca::from_covariance(st.rgb_cov),
        sigma: topo.lighting,
    });
    let hp = SgdParams {
        lr,
        momentum: 0.9,
        weight_decay: 5e-4,
    };
    let set: Arc<dyn ImageSource> = store.clone();
    let idx: Vec<usize> = (0..set.len()).collect();
    let mut it = batches(set, &idx, &cfg, 1)?;
    let mut losses = Vec::new();
    let mut first = None;
    let mut moved = f64::NAN;
    while let Some(b) = it.next() {
        let b = b?;
        if first.is_none() {
            net.forward(&b.x, &b.labels, Mode::Eval)?;
            first = Some((b.x.to_vec(), b.labels.clone(), net.logits()?));
        }
        losses.push(net.forward(&b.x, &b.labels, Mode::Train)?);
        net.backward()?;
        net.sgd_step(&hp)?;
        if let (1, Some((x, y, before))) = (losses.len(), &first) {
            net.forward(x, y, Mode::Eval)?;
            let after = net.logits()?;
            let d: f64 = before
                .iter()
                .zip(&after)
                .map(|(a, b)| (a - b).abs() as f64)
                .sum();
            moved = d / before.len() as f64;
        }
        it.recycle(b);
        if losses.len() == steps {
            break;
        }
    }
    let (x, y, init_logits) = first.expect("at least one batch");
    net.forward(&x, &y, Mode::Eval)?;
    let last = net.logits()?;
    let c = topo.classes;
    let fmt: Vec<String> = losses.iter().map(|l| format!("{l:.3}")).collect();
    println!(
        "{{\"variant\":\"{name}\",\"lr\":{lr},\"logit_spread_init\":{:.4},\"logit_move_step1\":{moved:.4},\"logit_spread_last\":{:.5},\"loss\":[{}]}}",
        spread(&init_logits, c),
        spread(&last, c),
        fmt.join(",")
    );
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first() else {
        eprintln!(
            "usage: recipe_probe STORE_TRAIN_DIR [STEPS] [VARIANT...]; variants: {VARIANTS:?}"
        );
        std::process::exit(2);
    };
    // A variant in STEPS' place is an error, not 30 steps of the others.
    let steps = match args.get(1).map(|s| s.parse::<usize>()) {
        None => 30,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            eprintln!("error: STEPS {:?} is not a number; usage: recipe_probe STORE_TRAIN_DIR [STEPS] [VARIANT...]", args[1]);
            std::process::exit(2);
        }
    };
    let names: Vec<&str> = if args.len() > 2 {
        args[2..].iter().map(|s| s.as_str()).collect()
    } else {
        VARIANTS.to_vec()
    };
    let store = Arc::new(PackedStore::open(&PathBuf::from(dir))?);
    for n in names {
        probe(&store, n, steps)?;
    }
    Ok(())
}
