//! Dynamic loss scaling through the network, on the CPU backend (the same
//! network code drives 16-bit training on a GPU).
//! - Scaling by a power of two is exact in floating point, so a scaled f32
//!   run must give the same bits as an unscaled one: a test that the scale
//!   reaches the loss gradient and is removed from every parameter gradient
//!   exactly once.
//! - That alone would pass if the scale were never applied, so the
//!   gradients after a scaled backward pass must be S times the unscaled
//!   ones, exactly (one device and two towers).
//! - A non-finite gradient skips the update (weights and momentum untouched)
//!   and halves the scale; the next clean step updates again.
//! - At the smallest scale no scaled gradient can overflow, so a non-finite
//!   one there stops the run (`Error::Diverged`, naming the step) instead
//!   of skipping every step that follows.
use alexnet_cuda::backend::cpu::CpuBackend;
use alexnet_cuda::backend::SgdParams;
use alexnet_cuda::error::{Error, Result};
use alexnet_cuda::model::loss_scale::LossScale;
use alexnet_cuda::model::net::{Mode, Network};
use alexnet_cuda::model::topology::Topology;
use alexnet_cuda::model::towers::TowerNetwork;
use alexnet_cuda::rng::Rng;

const HP: SgdParams = SgdParams {
    lr: 0.01,
    momentum: 0.9,
    weight_decay: 5e-4,
};

fn batch(topo: &Topology, n: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = Rng::new(seed);
    let x = (0..n * 3 * topo.crop * topo.crop)
        .map(|_| rng.normal() as f32)
        .collect();
    let labels = (0..n).map(|_| rng.below(topo.classes) as u32).collect();
    (x, labels)
}

fn state(net: &Network<CpuBackend>) -> Vec<Vec<f32>> {
    net.param_names()
        .iter()
        .flat_map(|p| [net.param(p).unwrap(), net.momentum(p).unwrap()])
        .collect()
}

#[test]
fn a_power_of_two_loss_scale_gives_the_unscaled_bits() {
    let topo = Topology::cifar();
    let n = 8;
    let run = |scale: Option<f32>| {
        let be = CpuBackend::new();
        let mut net = Network::new(&be, &topo, n, 9).expect("network");
        net.set_loss_scale(scale.map(LossScale::with_scale));
        for step in 0..4 {
            let (x, labels) = batch(&topo, n, 100 + step);
            net.forward(&x, &labels, Mode::Train).expect("forward");
            net.backward().expect("backward");
            net.sgd_step(&HP).expect("sgd");
            assert!(!net.last_step_skipped());
        }
        state(&net)
    };
    let plain = run(None);
    for s in [1024.0, 65536.0] {
        let scaled = run(Some(s));
        assert!(
            plain == scaled,
            "loss scale {s}: weights or momentum differ from the unscaled run"
        );
    }
}

/// `scaled` equals `plain` times `s`, bit for bit (a power of two scales
/// exactly), and is not `plain` itself.
fn assert_scaled(what: &str, scaled: &[f32], plain: &[f32], s: f32) {
    assert_eq!(scaled.len(), plain.len(), "{what}: lengths");
    assert!(
        plain.iter().any(|&g| g != 0.0),
        "{what}: an all-zero gradient cannot show the scale"
    );
    for (i, (&g, &p)) in scaled.iter().zip(plain).enumerate() {
        assert_eq!(
            g.to_bits(),
            (p * s).to_bits(),
            "{what}[{i}]: scaled gradient {g}, unscaled {p} times {s} is {}",
            p * s
        );
    }
}

#[test]
fn a_scaled_backward_pass_gives_s_times_the_gradients() {
    let topo = Topology::cifar();
    let n = 4;
    let s = 1024.0f32;
    let (x, labels) = batch(&topo, n, 31);
    let be = CpuBackend::new();
    let grads = |scale: Option<f32>| {
        let mut net = Network::new(&be, &topo, n, 6).expect("network");
        net.set_loss_scale(scale.map(LossScale::with_scale));
        net.forward(&x, &labels, Mode::Train).expect("forward");
        net.backward().expect("backward");
        let names = net.param_names();
        names
            .into_iter()
            .map(|p| (net.grad(&p).unwrap(), p))
            .collect::<Vec<_>>()
    };
    let (plain, scaled) = (grads(None), grads(Some(s)));
    for ((p, name), (g, _)) in plain.iter().zip(&scaled) {
        assert_scaled(name, g, p, s);
    }

    let (a, b) = (CpuBackend::new(), CpuBackend::new());
    let tower_grads = |scale: Option<f32>| {
        let mut net = TowerNetwork::new([&a, &b], &topo, n, 6).expect("towers");
        net.set_loss_scale(scale.map(LossScale::with_scale));
        net.forward(&x, &labels, Mode::Train).expect("forward");
        net.backward().expect("backward");
        let names = net.param_names();
        names
            .into_iter()
            .map(|p| (net.grad(&p).unwrap(), p))
            .collect::<Vec<_>>()
    };
    let (plain, scaled) = (tower_grads(None), tower_grads(Some(s)));
    for ((p, name), (g, _)) in plain.iter().zip(&scaled) {
        assert_scaled(&format!("towers {name}"), g, p, s);
    }
}

#[test]
fn a_non_finite_gradient_skips_the_step_and_halves_the_scale() {
    let topo = Topology::cifar();
    let n = 4;
    let be = CpuBackend::new();
    let mut net = Network::new(&be, &topo, n, 2).expect("network");
    net.set_loss_scale(Some(LossScale::with_scale(1024.0)));
    let (x, labels) = batch(&topo, n, 7);
    net.forward(&x, &labels, Mode::Train).unwrap();
    net.backward().unwrap();
    net.sgd_step(&HP).unwrap();
    let before = state(&net);

    // One NaN pixel poisons the loss and so every gradient.
    let mut bad = x.clone();
    bad[5] = f32::NAN;
    net.forward(&bad, &labels, Mode::Train).unwrap();
    net.backward().unwrap();
    net.sgd_step(&HP).unwrap();
    assert!(net.last_step_skipped());
    assert!(before == state(&net), "a skipped step changed the weights");
    let ls = net.loss_scale().unwrap();
    assert_eq!((ls.scale, ls.skipped), (512.0, 1));

    net.forward(&x, &labels, Mode::Train).unwrap();
    net.backward().unwrap();
    net.sgd_step(&HP).unwrap();
    assert!(!net.last_step_skipped());
    assert!(
        before != state(&net),
        "the clean step after a skip did not update"
    );
}

/// `stepped` is the divergence of step 2 (the one after a clean step).
fn assert_stops_at_step_2(what: &str, stepped: Result<()>) {
    match stepped {
        Err(Error::Diverged { what: msg, .. }) => {
            assert!(msg.starts_with("step 2: "), "{what}: {msg}");
            assert!(msg.contains("smallest loss scale"), "{what}: {msg}");
        }
        other => panic!("{what}: expected Diverged, got {other:?}"),
    }
}

#[test]
fn a_non_finite_gradient_at_the_smallest_scale_stops_the_run() {
    let topo = Topology::cifar();
    let n = 4;
    let (x, labels) = batch(&topo, n, 7);
    let mut bad = x.clone();
    bad[5] = f32::NAN;
    let floor = || Some(LossScale::with_scale(f32::MIN_POSITIVE));

    let be = CpuBackend::new();
    let mut net = Network::new(&be, &topo, n, 2).expect("network");
    net.set_loss_scale(floor());
    net.forward(&x, &labels, Mode::Train).unwrap();
    net.backward().unwrap();
    net.sgd_step(&HP)
        .expect("a clean step at the smallest scale");
    let before = state(&net);
    net.forward(&bad, &labels, Mode::Train).unwrap();
    net.backward().unwrap();
    assert_stops_at_step_2("one device", net.sgd_step(&HP));
    assert!(before == state(&net), "the failed step changed the weights");

    let (a, b) = (CpuBackend::new(), CpuBackend::new());
    let mut towers = TowerNetwork::new([&a, &b], &topo, n, 2).expect("towers");
    towers.set_loss_scale(floor());
    towers.forward(&x, &labels, Mode::Train).unwrap();
    towers.backward().unwrap();
    towers
        .sgd_step(&HP)
        .expect("a clean step at the smallest scale");
    towers.forward(&bad, &labels, Mode::Train).unwrap();
    towers.backward().unwrap();
    assert_stops_at_step_2("towers", towers.sgd_step(&HP));
}
