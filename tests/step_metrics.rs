//! The training loop keeps each step's loss and top-1 hits on the device and
//! reads them back in groups (at progress refreshes, checkpoints, stops and
//! epoch ends). On the CPU, a short real `train()` run must report exactly
//! what reading every step at once reports: the epochs' train loss and top-1,
//! and one steps.csv / steps.jsonl row per step in step order, are checked
//! against a per-step readout computed here with `Model::forward`,
//! `Model::probs` and `eval::topk_hits` on the same net, batches and seeds.
//! A run whose loss goes non-finite must name the first such step. Every
//! executor (one device, towers, replicas, pairs of towers) records what its
//! `forward` and `probs` give when read at once.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use alexnet_cuda::backend::cpu::CpuBackend;
use alexnet_cuda::backend::SgdParams;
use alexnet_cuda::data::{batches_from, write_demo_dataset};
use alexnet_cuda::dist::HostAllReduce;
use alexnet_cuda::dist::Layout;
use alexnet_cuda::eval::topk_hits;
use alexnet_cuda::metrics::MetricsFormat;
use alexnet_cuda::model::net::{Mode, Network};
use alexnet_cuda::model::spec::NetSpec;
use alexnet_cuda::model::topology::Topology;
use alexnet_cuda::model::trainable::{Model, StepMetrics};
use alexnet_cuda::rng::Rng;
use alexnet_cuda::train::{load_data, loader_config, train, Schedule, TrainOptions};

const EPOCHS: usize = 3;

/// 4 classes x 14 images, 16 held out: 40 training images, 5 steps of 8 per epoch.
fn demo(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    write_demo_dataset(&data, 4, 14, Topology::cifar().image_size, 3).expect("demo data");
    data
}

fn options(data: &Path) -> TrainOptions {
    let mut o = TrainOptions::for_topology(&Topology::cifar(), data.to_path_buf());
    o.run.epochs = EPOCHS;
    o.run.batch = 8;
    o.run.val = 16;
    o.run.lr = 0.02;
    // lr / 10 from epoch 3: the lr column changes within the run.
    o.run.schedule = Schedule::Milestones(vec![3]);
    o.progress = false;
    o
}

/// One step as read at once: (step, fractional epoch, loss, hits, images, lr).
#[derive(Clone, Copy, Debug)]
struct Step {
    step: u64,
    epoch: f64,
    loss: f32,
    hits: usize,
    n: usize,
    lr: f32,
}

/// The run of `opts` with every step read as it happens: its steps up to
/// and including the first non-finite loss, and each whole epoch's train
/// loss and top-1 summed as the trainer sums them.
fn per_step(opts: &TrainOptions) -> (Vec<Step>, Vec<(f64, f64)>) {
    let spec = NetSpec::new("cifar");
    let data = load_data(opts, spec.topology().unwrap().image_size).expect("data");
    let spec = NetSpec {
        classes: Some(data.classes.len()),
        ..spec
    };
    let topo = spec.topology().unwrap().with_init(opts.run.init);
    let cfg = loader_config(&topo, opts, &data, None);
    let be = CpuBackend::new();
    let mut net: Box<dyn Model> =
        Box::new(Network::new(&be, &topo, opts.run.batch, opts.run.seed).expect("net"));
    let (mut steps, mut epochs) = (Vec::new(), Vec::new());
    // The rate as PyTorch's schedulers keep it: the decimal given, in
    // double precision (they multiply by 0.1; here 0.02 / 10 and 0.02 * 0.1
    // are the same double), used as the nearest f32: 0.002, not the
    // 1.9999999e-3 of an f32 division.
    let mut lr64: f64 = opts.run.lr.to_string().parse().unwrap();
    let mut lr = opts.run.lr;
    let per_epoch = data.train_idx.len() / opts.run.batch;
    for epoch in 1..=opts.run.epochs {
        if let Schedule::Milestones(m) = &opts.run.schedule {
            if m.contains(&epoch) {
                lr64 /= 10.0;
                lr = lr64 as f32;
            }
        }
        let hp = SgdParams {
            lr,
            momentum: opts.run.momentum,
            weight_decay: opts.run.weight_decay,
        };
        let it = batches_from(
            Arc::clone(&data.train),
            &data.train_idx,
            &cfg,
            epoch as u64,
            0,
        )
        .expect("loader");
        let (mut loss_sum, mut hits, mut seen) = (0.0f64, 0usize, 0usize);
        for (k, b) in it.enumerate() {
            let b = b.expect("batch");
            let loss = net.forward(&b.x, &b.labels, Mode::Train).expect("forward");
            let (t1, _) = topk_hits(&net.probs().unwrap(), &b.labels, topo.classes);
            steps.push(Step {
                step: steps.len() as u64 + 1,
                epoch: (epoch - 1) as f64 + (k + 1) as f64 / per_epoch as f64,
                loss,
                hits: t1,
                n: b.n,
                lr,
            });
            if !loss.is_finite() {
                return (steps, epochs);
            }
            net.backward().expect("backward");
            net.sgd_step(&hp).expect("sgd");
            loss_sum += loss as f64 * b.n as f64;
            hits += t1;
            seen += b.n;
        }
        epochs.push((loss_sum / seen as f64, hits as f64 / seen as f64));
    }
    (steps, epochs)
}

/// `train()` on the CPU with `opts`.
fn run(opts: &TrainOptions) -> alexnet_cuda::Result<alexnet_cuda::train::TrainReport> {
    let cpu = CpuBackend::new();
    train(Layout::One(&cpu), &NetSpec::new("cifar"), &mut opts.clone())
}

fn check_epochs(report: &alexnet_cuda::train::TrainReport, want: &[(f64, f64)]) {
    assert_eq!(report.epochs.len(), want.len());
    for (e, &(loss, top1)) in report.epochs.iter().zip(want) {
        println!(
            "epoch {}: train loss {} top1 {} (per step: {loss} {top1}), data wait {:.4}",
            e.epoch, e.train_loss, e.train_top1, e.data_wait
        );
        assert_eq!(
            e.train_loss.to_bits(),
            loss.to_bits(),
            "epoch {} train_loss",
            e.epoch
        );
        assert_eq!(
            e.train_top1.to_bits(),
            top1.to_bits(),
            "epoch {} train_top1",
            e.epoch
        );
        assert!(
            (0.0..=1.0).contains(&e.data_wait),
            "data wait {}",
            e.data_wait
        );
    }
}

/// A number field of a JSON line, parsed by the standard library (correctly
/// rounded, so the f64 the file spells comes back exactly).
fn field(line: &str, name: &str) -> f64 {
    let key = format!("\"{name}\":");
    let at = line
        .find(&key)
        .unwrap_or_else(|| panic!("{name} in {line}"))
        + key.len();
    let text = line[at..].split([',', '}']).next().unwrap_or("");
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{name} = {text}: {e}"))
}

/// steps.jsonl holds full-precision values: each equal to the per-step
/// readout (the rate as the f32 it is).
fn check_jsonl(path: &Path, want: &[Step]) {
    let text = std::fs::read_to_string(path).expect("steps.jsonl");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), want.len(), "one row per step");
    for (l, s) in lines.iter().zip(want) {
        assert_eq!(field(l, "step"), s.step as f64, "rows in step order");
        assert_eq!(field(l, "loss"), s.loss as f64, "step {} loss", s.step);
        assert_eq!(
            field(l, "top1"),
            s.hits as f64 / s.n as f64,
            "step {} top1",
            s.step
        );
        // The rate in the shortest form that reads back to the f32 the step
        // trained at (0.02), as steps.csv has it, not its f64 widening.
        let shortest: f64 = format!("{:e}", s.lr).parse().unwrap();
        assert_eq!(field(l, "lr"), shortest, "step {} lr", s.step);
        assert_eq!(field(l, "epoch"), s.epoch, "step {} epoch", s.step);
    }
}

/// steps.csv's first five columns, as the per-step readout formats them.
fn check_csv(path: &Path, want: &[Step]) {
    let text = std::fs::read_to_string(path).expect("steps.csv");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("step,epoch,loss,top1,lr,elapsed_s"));
    let got: Vec<String> = lines
        .map(|l| l.split(',').take(5).collect::<Vec<_>>().join(","))
        .collect();
    let expect: Vec<String> = want
        .iter()
        .map(|s| {
            format!(
                "{},{:.5},{:.6},{:.5},{:e}",
                s.step,
                s.epoch,
                s.loss as f64,
                s.hits as f64 / s.n as f64,
                s.lr
            )
        })
        .collect();
    assert_eq!(got, expect);
}

/// Steps read back in groups (at the checkpoints every 3 steps and at the
/// epochs' ends; the refresh interval never comes) and one at a time
/// (refresh interval 0) both give the per-step numbers, digit for digit.
#[test]
fn grouped_readback_equals_per_step_readout() {
    let dir = tempfile::tempdir().unwrap();
    let data = demo(dir.path());
    let (want_steps, want_epochs) = per_step(&options(&data));
    assert_eq!(want_steps.len(), EPOCHS * 5);
    assert!(want_steps.iter().all(|s| s.loss.is_finite()));
    println!(
        "per step: losses {:?}",
        want_steps.iter().map(|s| s.loss).collect::<Vec<_>>()
    );

    let mut grouped = options(&data);
    grouped.out = Some(dir.path().join("grouped"));
    grouped.refresh = Duration::from_secs(3600);
    grouped.checkpoint_every = 3;
    let report = run(&grouped).expect("grouped run");
    check_epochs(&report, &want_epochs);
    check_csv(&dir.path().join("grouped/steps.csv"), &want_steps);
    let epochs_csv = std::fs::read_to_string(dir.path().join("grouped/epochs.csv")).unwrap();
    assert!(epochs_csv.starts_with(
        "epoch,lr,train_loss,train_top1,val_loss,val_top1,val_top5,images_per_s,elapsed_s,data_wait\n"
    ));
    assert_eq!(epochs_csv.lines().count(), EPOCHS + 1);

    let mut each = options(&data);
    each.out = Some(dir.path().join("each"));
    each.refresh = Duration::ZERO;
    each.checkpoint_every = 0;
    each.metrics_format = MetricsFormat::Jsonl;
    let report = run(&each).expect("per-step run");
    check_epochs(&report, &want_epochs);
    check_jsonl(&dir.path().join("each/steps.jsonl"), &want_steps);
}

/// A loss that goes non-finite is found at the next read (here the epoch's
/// end) and the error names the step where it first did.
#[test]
fn non_finite_loss_names_its_step() {
    let dir = tempfile::tempdir().unwrap();
    let data = demo(dir.path());
    let mut opts = options(&data);
    opts.run.lr = 1e30;
    opts.refresh = Duration::from_secs(3600);
    opts.checkpoint_every = 0;
    let (steps, _) = per_step(&opts);
    let bad = steps.last().expect("a step");
    assert!(
        !bad.loss.is_finite(),
        "lr 1e30 should overflow the loss within {EPOCHS} epochs"
    );
    let err = run(&opts).expect_err("a non-finite loss stops the run");
    println!("step {} has loss {}; the error: {err}", bad.step, bad.loss);
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("step {}: the loss is {}", bad.step, bad.loss)),
        "{msg}"
    );
}

/// `n` normalised images (unit normal values) and their labels.
fn batch(topo: &Topology, n: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = Rng::new(seed);
    let x = (0..n * topo.channels * topo.crop * topo.crop)
        .map(|_| rng.normal() as f32)
        .collect();
    (x, (0..n).map(|_| rng.below(topo.classes) as u32).collect())
}

/// Each executor on CPU devices, as `train()` would build it.
fn layout<'a>(name: &str, d: &'a [CpuBackend]) -> Layout<'a, CpuBackend> {
    let reduce = || Box::new(HostAllReduce::default());
    match name {
        "one" => Layout::One(&d[0]),
        "towers" => Layout::Towers([&d[0], &d[1]]),
        "data x2" => Layout::Data(vec![&d[0], &d[1]], reduce()),
        _ => Layout::Hybrid(vec![[&d[0], &d[1]], [&d[2], &d[3]]], reduce()),
    }
}

/// Five training steps with the metrics recorded on the device (slots 0..5)
/// against a twin read at every step: the same loss bit for bit (replicas:
/// combined as their `forward` combines them) and the same top-1 hits.
#[test]
fn every_executor_records_what_forward_and_probs_read() {
    let topo = Topology::cifar();
    let hp = SgdParams {
        lr: 0.01,
        momentum: 0.9,
        weight_decay: 5e-4,
    };
    let devs: Vec<CpuBackend> = (0..4).map(|_| CpuBackend::new()).collect();
    for name in ["one", "towers", "data x2", "hybrid x2"] {
        let mut queued = layout(name, &devs).build(&topo, 8, 5).unwrap();
        let mut read = layout(name, &devs).build(&topo, 8, 5).unwrap();
        assert!(
            queued.record_step(0).is_err(),
            "{name}: recording before a forward is an error"
        );
        let mut want = Vec::new();
        for step in 0..5 {
            let (x, labels) = batch(&topo, 8, 20 + step as u64);
            queued.forward_queued(&x, &labels, Mode::Train).unwrap();
            queued.record_step(step).unwrap();
            queued.backward().unwrap();
            queued.sgd_step(&hp).unwrap();
            let loss = read.forward(&x, &labels, Mode::Train).unwrap();
            let (hits, _) = topk_hits(&read.probs().unwrap(), &labels, topo.classes);
            want.push(StepMetrics { loss, hits });
            read.backward().unwrap();
            read.sgd_step(&hp).unwrap();
        }
        let got = queued.read_steps(5).unwrap();
        println!("{name}: {got:?}");
        let key = |m: &[StepMetrics]| -> Vec<(u32, usize)> {
            m.iter().map(|s| (s.loss.to_bits(), s.hits)).collect()
        };
        assert_eq!(key(&got), key(&want), "{name}");
        assert!(
            queued.read_steps(queued.step_slots() + 1).is_err(),
            "{name}"
        );
    }
}
