//! The two-tower executor (src/model/towers.rs) on two CPU devices against
//! the one-device network running the same table as grouped ops: logits,
//! loss, gradients and the parameters after SGD steps, and the bytes that
//! cross between the devices (and the table's prediction of them) against a
//! count worked out by hand from the layer shapes.
use crate::common::{batch, bits, dropped_fc6_units, max_nan, narrow, scaled_diff, wide_fc};
use alexnet_cuda::backend::cpu::CpuBackend;
use alexnet_cuda::backend::SgdParams;
use alexnet_cuda::model::net::{Mode, Network};
use alexnet_cuda::model::topology::Topology;
use alexnet_cuda::model::towers::TowerNetwork;

const HP: SgdParams = SgdParams {
    lr: 0.01,
    momentum: 0.9,
    weight_decay: 5e-4,
};

/// Run `steps` training steps on both and compare after each. Forward
/// (logits, loss) must be bit-identical at the start; afterwards, and for
/// gradients and parameters, the gap must stay below `tol` in units of each
/// tensor's scale. Returns the largest gap seen per tensor kind.
fn compare(topo: &Topology, n: usize, steps: usize, tol: f32) -> (f32, f32) {
    let (one, a, b) = (CpuBackend::new(), CpuBackend::new(), CpuBackend::new());
    let mut single = Network::new(&one, topo, n, 42).unwrap();
    let mut towers = TowerNetwork::new([&a, &b], topo, n, 42).unwrap();
    let names = single.param_names();
    for name in &names {
        assert_eq!(
            bits(&towers.param(name).unwrap()),
            bits(&single.param(name).unwrap()),
            "initial {name}: a tower's half is the same rows of the same tensor"
        );
    }
    let (x, labels) = batch(topo, n, 7);
    let (mut worst_grad, mut worst_param) = (0f32, 0f32);
    for step in 0..steps {
        let l1 = single.forward(&x, &labels, Mode::Train).unwrap();
        let l2 = towers.forward(&x, &labels, Mode::Train).unwrap();
        let (g1, g2) = (single.logits().unwrap(), towers.logits().unwrap());
        if step == 0 {
            assert_eq!(bits(&g2), bits(&g1), "logits at step 0 are bit-identical");
            assert_eq!(
                l2.to_bits(),
                l1.to_bits(),
                "loss at step 0 is bit-identical"
            );
        } else {
            let d = scaled_diff(&g2, &g1);
            assert!(d <= tol, "logits at step {step}: {d:e} of their scale");
            assert!(
                (l2 - l1).abs() <= tol * l1.abs(),
                "loss at step {step}: {l2} vs {l1}"
            );
        }
        single.backward().unwrap();
        towers.backward().unwrap();
        for name in &names {
            let (s, t) = (single.grad(name).unwrap(), towers.grad(name).unwrap());
            // The last layer's gradients see the same dlogits and inputs.
            if step == 0 && name.starts_with(&format!("{}.", topo.layers.last().unwrap().name)) {
                assert_eq!(
                    bits(&t),
                    bits(&s),
                    "step 0 gradient of {name} is bit-identical"
                );
            }
            let d = scaled_diff(&t, &s);
            assert!(
                d <= tol,
                "gradient of {name} at step {step}: {d:e} of its scale"
            );
            worst_grad = max_nan(worst_grad, d);
        }
        single.sgd_step(&HP).unwrap();
        towers.sgd_step(&HP).unwrap();
        for name in &names {
            let (s, t) = (single.param(name).unwrap(), towers.param(name).unwrap());
            let d = scaled_diff(&t, &s);
            assert!(d <= tol, "{name} after step {step}: {d:e} of its scale");
            worst_param = max_nan(worst_param, d);
            let (s, t) = (
                single.momentum(name).unwrap(),
                towers.momentum(name).unwrap(),
            );
            assert!(
                scaled_diff(&t, &s) <= tol,
                "momentum of {name} after step {step}"
            );
        }
    }
    (worst_grad, worst_param)
}

/// Below an exchange, the input gradient is the sum of the two towers'
/// partial sums where one device sums over all outputs at once: the same
/// terms in another order. In f32 that reorders a sum of a few hundred
/// terms, so the gap is a few units of 2^-24 times the terms' size, which
/// cancellation can lift relative to the result; 1e-4 of a tensor's scale
/// is far above that and far below any real mistake (a wrong or missing
/// term moves a gradient by a whole term).
const TOL: f32 = 1e-4;

#[test]
fn two_cpu_towers_equal_the_grouped_network() {
    let topo = narrow().without_dropout();
    let (g, p) = compare(&topo, 3, 3, TOL);
    eprintln!(
        "narrow alexnet, 3 steps: worst gradient gap {g:e}, worst parameter gap {p:e} (of scale)"
    );
}

#[test]
fn two_cpu_towers_equal_the_grouped_cifar_net_with_an_uneven_last_layer() {
    // 7 classes: tower 0 holds 4 of fc8's outputs, tower 1 holds 3.
    let topo = Topology::cifar().without_dropout().with_classes(7).unwrap();
    let (g, p) = compare(&topo, 4, 2, TOL);
    eprintln!(
        "cifar, 7 classes, 2 steps: worst gradient gap {g:e}, worst parameter gap {p:e} (of scale)"
    );
}

/// Bytes per image that cross between the towers in one training step,
/// from a net's shapes worked out by hand: the inputs of the four exchanges
/// (conv3, fc6, fc7, fc8) go across forward and their gradients come back,
/// and the logits go across forward only; 4 bytes a float.
fn hand_bytes_per_image(
    conv3_in: usize,
    fc6_in: usize,
    fc7_in: usize,
    fc8_in: usize,
    logits: usize,
) -> u64 {
    4 * (2 * (conv3_in + fc6_in + fc7_in + fc8_in) + logits) as u64
}

#[test]
fn bytes_between_the_towers_equal_a_hand_count() {
    let (a, b) = (CpuBackend::new(), CpuBackend::new());
    // Spatial sizes: 227 -> conv1 11/4 -> 55 -> pool 3/2 -> 27 -> conv2 ->
    // 27 -> pool -> 13 (conv3's input) -> conv5 -> 13 -> pool -> 6 (fc6's).
    // narrow: conv2 16 channels, conv5 16, fc6 32, fc7 32, 10 classes.
    let narrow_img = hand_bytes_per_image(16 * 13 * 13, 16 * 6 * 6, 32, 32, 10);
    // cifar at 28: conv1 5/1 p2 -> 28 -> pool -> 13 -> conv2 -> pool -> 6
    // (conv3's input, 128 channels) -> conv5 -> pool -> 2 (fc6's, 128
    // channels); fc6 and fc7 512; 7 classes.
    let cifar_img = hand_bytes_per_image(128 * 6 * 6, 128 * 2 * 2, 512, 512, 7);
    // The paper (figure 2): conv2 256 channels at 13x13, conv5 256 at 6x6,
    // fc6 and fc7 4096, 1000 classes.
    let paper_img = hand_bytes_per_image(256 * 13 * 13, 256 * 6 * 6, 4096, 4096, 1000);
    let n = 2;
    for (what, topo, per_image) in [
        ("narrow", narrow(), narrow_img),
        (
            "cifar, 7 classes",
            Topology::cifar().with_classes(7).unwrap(),
            cifar_img,
        ),
        ("alexnet", Topology::alexnet(), paper_img),
    ] {
        let mut towers = TowerNetwork::new([&a, &b], &topo, n, 1).unwrap();
        let (x, labels) = batch(&topo, n, 3);
        towers.forward(&x, &labels, Mode::Train).unwrap();
        towers.backward().unwrap();
        let want = per_image * n as u64;
        assert_eq!(towers.exchanged_bytes(), want, "{what}: bytes counted");
        assert_eq!(
            topo.exchange_bytes_per_step(n).unwrap(),
            want,
            "{what}: the table's prediction"
        );
    }
    // The paper's net at its batch of 128, as summary.rs also writes it out.
    assert_eq!(paper_img * 128, 62_640_128);
}

#[test]
fn towers_with_dropout_train_and_replay() {
    // Dropout draws each tower's mask from (seed, step, layer, tower), so a
    // run replays exactly, and the net learns a fixed batch.
    let topo = narrow();
    let (a, b) = (CpuBackend::new(), CpuBackend::new());
    let (x, labels) = batch(&topo, 4, 11);
    let run = || {
        let mut t = TowerNetwork::new([&a, &b], &topo, 4, 5).unwrap();
        let mut losses = Vec::new();
        for _ in 0..8 {
            losses.push(t.forward(&x, &labels, Mode::Train).unwrap());
            t.backward().unwrap();
            t.sgd_step(&HP).unwrap();
        }
        losses
    };
    let (r1, r2) = (run(), run());
    assert_eq!(bits(&r1), bits(&r2), "same seed, same run");
    assert!(r1.iter().all(|l| l.is_finite()));
    assert!(r1[7] < r1[0], "loss falls on a fixed batch: {r1:?}");
}

/// Each tower draws its own mask, and a new one each step: the towers'
/// halves of fc6 drop different units, and the next step other ones.
#[test]
fn each_tower_and_each_step_draws_its_own_dropout_mask() {
    let topo = wide_fc();
    let (a, b) = (CpuBackend::new(), CpuBackend::new());
    let (x, labels) = batch(&topo, 1, 3);
    let mut t = TowerNetwork::new([&a, &b], &topo, 1, 5).unwrap();
    t.set_param("fc6.bias", &[50.0; 256]).unwrap();
    let first = dropped_fc6_units(&mut t, &x, &labels);
    let share = first.iter().filter(|d| **d).count() as f64 / 256.0;
    assert!((0.35..0.65).contains(&share), "dropout 0.5 dropped {share}");
    assert_ne!(first[..128], first[128..], "the towers drew one mask");
    let hp = SgdParams { lr: 0.0, ..HP };
    t.sgd_step(&hp).unwrap();
    let next = dropped_fc6_units(&mut t, &x, &labels);
    assert_ne!(first, next, "the next step drew the same mask");
}

#[test]
fn one_tower_configs_are_refused_with_the_reason() {
    let (a, b) = (CpuBackend::new(), CpuBackend::new());
    let err = TowerNetwork::new([&a, &b], &Topology::alexnet_half(), 2, 1)
        .err()
        .expect("alexnet-half has one tower");
    assert!(err.to_string().contains("1 tower"), "{err}");
}

#[test]
fn bench_step_runs_two_cpu_towers_and_reports_the_bytes() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_alexnet-cuda"))
        .args([
            "bench-step",
            "--cpu",
            "--parallel",
            "model",
            "--config",
            "cifar",
        ])
        .args(["--batch", "8", "--steps", "2", "--warmup", "0"])
        .env("RUST_LOG", "error")
        .output()
        .expect("run alexnet-cuda");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let v: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON line");
    // cifar at batch 8, by hand as in bytes_between_the_towers_equal_a_hand_count:
    // 4 * (2 * (128*6*6 + 128*2*2 + 512 + 512) + 10) * 8.
    let want = 8 * hand_bytes_per_image(128 * 6 * 6, 128 * 2 * 2, 512, 512, 10);
    assert_eq!(want, 393_536);
    assert_eq!(v["exchanged_bytes_per_step"], want);
    assert_eq!(v["predicted_bytes_per_step"], want);
    assert!(v["loss_last"].as_f64().unwrap().is_finite());
}
