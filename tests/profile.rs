//! `bench-step --per-layer`: the op-by-op clock sees every op of a step once,
//! in the order the paper's layers imply, without changing a number; the
//! table's FLOPs and bytes are the paper's layer arithmetic done here by
//! hand; the command prints a row per op, its rates its work over its
//! time, with shares of the peaks it is given.
use alexnet_cuda::backend::cpu::CpuBackend;
use alexnet_cuda::backend::SgdParams;
use alexnet_cuda::model::laps::Part;
use alexnet_cuda::model::net::{Mode, Network};
use alexnet_cuda::model::profile::{median, op_cost, CostBasis};
use alexnet_cuda::model::topology::Topology;

use crate::common::{batch, cli};

const HP: SgdParams = SgdParams {
    lr: 0.01,
    momentum: 0.9,
    weight_decay: 5e-4,
};

/// The ops of one training step, from the layer table as the paper reads:
/// each layer's op, LRN, pooling, dropout; the loss; back down through
/// dropout, pooling, LRN and ReLU to the bias, weight and input gradients
/// (none for the input of the first layer); then each layer's update.
fn expected_ops(topo: &Topology) -> Vec<(Option<usize>, Part)> {
    let mut ops = vec![(None, Part::Upload)];
    for (i, l) in topo.layers.iter().enumerate() {
        ops.push((Some(i), Part::Forward));
        if l.lrn {
            ops.push((Some(i), Part::Lrn));
        }
        if l.pool.is_some() {
            ops.push((Some(i), Part::Pool));
        }
        if l.dropout > 0.0 {
            ops.push((Some(i), Part::Dropout));
        }
    }
    ops.push((None, Part::Loss));
    ops.push((None, Part::LossBackward));
    for (i, l) in topo.layers.iter().enumerate().rev() {
        let mut push = |on: bool, p| on.then(|| ops.push((Some(i), p)));
        push(l.dropout > 0.0, Part::DropoutBackward);
        push(l.pool.is_some(), Part::PoolBackward);
        push(l.lrn, Part::LrnBackward);
        push(l.relu, Part::ReluBackward);
        push(true, Part::BackwardBias);
        push(true, Part::BackwardFilter);
        push(i > 0, Part::BackwardData);
    }
    ops.extend((0..topo.layers.len()).map(|i| (Some(i), Part::Sgd)));
    ops
}

#[test]
fn laps_see_every_op_once_and_change_nothing() {
    let topo = Topology::cifar();
    let (x, labels) = batch(&topo, 8, 3);
    let be = CpuBackend::new();
    let mut timed = Network::new(&be, &topo, 8, 11).unwrap();
    let mut plain = Network::new(&be, &topo, 8, 11).unwrap();
    timed.time_ops(true);
    for step in 0..2 {
        let t0 = std::time::Instant::now();
        let a = timed.forward(&x, &labels, Mode::Train).unwrap();
        timed.backward().unwrap();
        timed.sgd_step(&HP).unwrap();
        let wall = t0.elapsed().as_secs_f64();
        let b = plain.forward(&x, &labels, Mode::Train).unwrap();
        plain.backward().unwrap();
        plain.sgd_step(&HP).unwrap();
        assert_eq!(a.to_bits(), b.to_bits(), "step {step}: the loss");
        let laps = timed.take_laps().unwrap();
        let seen: Vec<_> = laps.iter().map(|l| (l.layer, l.part)).collect();
        assert_eq!(seen, expected_ops(&topo), "step {step}");
        // The laps are back to back inside the step: together no longer
        // than it (how much of it they cover is the machine's, not tested).
        let sum: f64 = laps.iter().map(|l| l.seconds).sum();
        assert!(sum <= wall, "laps {sum} s in a step of {wall} s");
    }
    for name in timed.param_names() {
        assert_eq!(
            timed.param(&name).unwrap(),
            plain.param(&name).unwrap(),
            "{name}"
        );
    }
    // Off again: no laps kept.
    timed.time_ops(false);
    timed.forward(&x, &labels, Mode::Train).unwrap();
    assert!(timed.take_laps().unwrap().is_empty());
}

/// The paper's layers (section 3.5, figure 2) at batch 128, by hand.
#[test]
fn op_costs_are_the_papers_layer_arithmetic() {
    let topo = Topology::alexnet();
    let n = 128u64;
    let fp32 = CostBasis {
        batch: 128,
        act_bytes: 4,
    };
    let cost = |layer, part| op_cost(&topo, Some(layer), part, fp32).unwrap();
    // conv1: 96 kernels 11x11x3 over 55x55 outputs of a 227x227x3 input.
    let conv1 = 2 * n * 96 * 55 * 55 * (11 * 11 * 3);
    assert_eq!(cost(0, Part::Forward).flops, conv1);
    assert_eq!(cost(0, Part::BackwardFilter).flops, conv1);
    let (x1, w1, y1) = (n * 3 * 227 * 227, 96 * 3 * 11 * 11, n * 96 * 55 * 55);
    assert_eq!(cost(0, Part::Forward).bytes, 4 * (x1 + w1 + y1) + 4 * 96);
    // conv2: 256 kernels 5x5 over 48 channels (two groups) on 27x27.
    let conv2 = 2 * n * 256 * 27 * 27 * (5 * 5 * 48);
    assert_eq!(cost(1, Part::BackwardData).flops, conv2);
    // LRN after conv1: n = 5 window, on 55x55x96; pooling 3x3 to 27x27.
    assert_eq!(cost(0, Part::Lrn).flops, (2 * 5 + 3) * y1);
    assert_eq!(cost(0, Part::Lrn).bytes, 3 * 4 * y1);
    let p1 = n * 96 * 27 * 27;
    assert_eq!(cost(0, Part::Pool).flops, 8 * p1);
    assert_eq!(cost(0, Part::Pool).bytes, 4 * y1 + 8 * p1);
    // fc6: 4096 x (6x6x256); its update reads w, g, v and writes w, v.
    let fc6 = 4096 * 256 * 6 * 6;
    assert_eq!(cost(5, Part::Forward).flops, 2 * n * fc6);
    assert_eq!(cost(5, Part::Sgd).bytes, 20 * (fc6 + 4096));
    // 16-bit activations halve the activation bytes, not the f32 update's,
    // which also writes the weights' 16-bit copy (sgd_update_f32_store_H).
    let bf16 = CostBasis {
        act_bytes: 2,
        ..fp32
    };
    let half = |l, p| op_cost(&topo, Some(l), p, bf16).unwrap();
    assert_eq!(half(0, Part::Lrn).bytes, 3 * 2 * y1);
    assert_eq!(half(5, Part::Sgd).bytes, (20 + 2) * (fc6 + 4096));
    // The loss reads the logits and writes the probabilities, both
    // activations: 1000 of each per image.
    let net = |p, b| op_cost(&topo, None, p, b).unwrap().bytes;
    assert_eq!(net(Part::Loss, fp32), 2 * 4 * n * 1000);
    assert_eq!(net(Part::Loss, bf16), 2 * 2 * n * 1000);
    assert_eq!(net(Part::LossBackward, bf16), 2 * 2 * n * 1000);
    // The whole forward: summary's 1.45 GFLOP per image.
    let fwd: u64 = (0..8).map(|i| cost(i, Part::Forward).flops).sum();
    let by_hand = 2
        * (96 * 55 * 55 * 363
            + 256 * 27 * 27 * 1200
            + 384 * 13 * 13 * 2304
            + 384 * 13 * 13 * 1728
            + 256 * 13 * 13 * 1728
            + 9216 * 4096
            + 4096 * 4096
            + 4096 * 1000);
    assert_eq!(fwd, n * by_hand);
    assert!(op_cost(&topo, Some(8), Part::Forward, fp32).is_err());
}

/// `bench-step` with `args`.
fn bench(args: &[&str]) -> (bool, String, String) {
    cli(&[&["bench-step"], args].concat())
}

#[test]
fn per_layer_table_from_the_command_line() {
    let base = ["--cpu", "--config", "cifar", "--batch", "8", "--steps", "2"];
    let peaks = ["--per-layer", "--peak-tflops", "0.5", "--peak-gbps", "20"];
    let (ok, out, err) = bench(&[&base[..], &peaks[..]].concat());
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let rows = json["per_layer"].as_array().unwrap();
    let topo = Topology::cifar();
    assert_eq!(rows.len(), expected_ops(&topo).len());
    for (r, (layer, part)) in rows.iter().zip(expected_ops(&topo)) {
        let name = layer.map_or("net", |i| topo.layers[i].name);
        assert_eq!(
            (r["layer"].as_str(), r["part"].as_str()),
            (Some(name), Some(part.name()))
        );
        let f = |k: &str| r[k].as_f64().unwrap();
        // Rates are the row's work over its time; the share is of the
        // rate that bounds the op: FLOPs for conv and fc passes.
        assert!(
            (f("tflop_per_s") - f("gflop") / f("ms")).abs() <= 1e-9 * f("tflop_per_s").max(1.0)
        );
        // The upload crosses PCIe, not the memory the GB/s peak is of.
        if part == Part::Upload {
            assert!(r["peak_share"].is_null(), "{r}");
            continue;
        }
        let compute = matches!(
            part,
            Part::Forward | Part::BackwardFilter | Part::BackwardData
        );
        let share = if compute {
            f("tflop_per_s") / 0.5
        } else {
            f("gb_per_s") / 20.0
        };
        assert!(
            (f("peak_share") - share).abs() <= 1e-9 * share.max(1.0),
            "{r}"
        );
    }
    // The Markdown table has a row per op, then what they add up to.
    assert_eq!(
        out.lines().filter(|l| l.starts_with("| ")).count(),
        rows.len() + 1
    );
    let total = out
        .lines()
        .find(|l| l.starts_with("rows add up to"))
        .unwrap();
    assert!(total.contains("(--peak-tflops, --peak-gbps)"), "{total}");

    // Without peaks on the CPU: no share column; bad flags name themselves.
    let (ok, out, _) = bench(&[&base[..], &["--per-layer"]].concat());
    assert!(ok && !out.contains("of peak") && !out.contains("peak_share"));
    let (ok, _, err) = bench(&[&base[..], &["--per-layer", "--peak-tflops", "1"]].concat());
    assert!(!ok && err.contains("--peak-gbps"), "{err}");
    let (ok, _, err) = bench(
        &[
            &base[..],
            &["--per-layer", "--peak-tflops", "0", "--peak-gbps", "1"],
        ]
        .concat(),
    );
    assert!(!ok && err.contains("positive"), "{err}");
    let (ok, _, err) = bench(&[&base[..], &["--per-layer", "--parallel", "data"]].concat());
    assert!(
        !ok && err.contains("--per-layer times the ops of one device"),
        "{err}"
    );
    // Flags that would change nothing are refused, not dropped: peaks
    // without the table, phases on several devices.
    let (ok, _, err) = bench(&[&base[..], &peaks[1..]].concat());
    assert!(!ok && err.contains("--per-layer"), "{err}");
    let several = ["--phase-steps", "2", "--parallel", "data"];
    let (ok, _, err) = bench(&[&base[..], &several[..]].concat());
    assert!(
        !ok && err.contains("--phase-steps 2 times the phases of one device"),
        "{err}"
    );
    // --phase-steps 0 asks for nothing, and scripts/bench-train passes it
    // whatever the devices.
    let none = ["--phase-steps", "0", "--parallel", "data"];
    let (ok, _, err) = bench(&[&base[..], &none[..]].concat());
    assert!(ok, "{err}");
}

/// The PyTorch side of bench-cpu's ratios takes Python's statistics.median:
/// an even count gives the mean of its two middle values, not the upper.
#[test]
fn the_median_is_pythons() {
    assert_eq!(median(&mut []), None);
    assert_eq!(median(&mut [5.0]), Some(5.0));
    assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
    assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
    assert_eq!(median(&mut [0.010, 0.030]), Some(0.020));
}
