//! Data parallelism (src/model/replicas.rs) on CPU replicas with the
//! in-process all-reduce: k replicas at batch B/k each against one network
//! at batch B, for k = 2 and 4; hybrid (pairs of towers) likewise;
//! bucketing; replicas staying equal.
use crate::common::{batch, bits, dropped_fc6_units, max_nan, narrow, scaled_diff, wide_fc};
use alexnet_cuda::backend::cpu::CpuBackend;
use alexnet_cuda::backend::SgdParams;
use alexnet_cuda::dist::HostAllReduce;
use alexnet_cuda::model::net::{Mode, Network};
use alexnet_cuda::model::replicas::{plan_buckets, DataParallel, Replica};
use alexnet_cuda::model::topology::Topology;
use alexnet_cuda::model::trainable::Model;

const HP: SgdParams = SgdParams {
    lr: 0.01,
    momentum: 0.9,
    weight_decay: 5e-4,
};

/// A batch's gradient is the mean over its images; k shards' means averaged
/// is the same sum grouped differently (k partial sums of B/k terms, then
/// scaled by 1/k), so in f32 the two differ by a few units of 2^-24 of the
/// terms' size; cancellation can lift that relative to the result. 1e-4 of
/// a tensor's scale is far above it and far below any real mistake (a
/// missing shard moves a gradient by a whole shard's share).
const TOL: f32 = 1e-4;

/// `steps` steps of k replicas at batch/k against one network at `batch`.
/// `scale` multiplies the inputs (see the hybrid test for why cifar's are
/// normalised).
fn compare(topo: &Topology, k: usize, batch_size: usize, scale: f32, steps: usize) -> f32 {
    let devs: Vec<CpuBackend> = (0..k).map(|_| CpuBackend::new()).collect();
    let dp = DataParallel::grouped(
        devs.iter().collect(),
        topo,
        batch_size,
        9,
        25 << 20,
        Box::new(HostAllReduce::default()),
    )
    .unwrap();
    let (mut x, labels) = batch(topo, batch_size, 4);
    x.iter_mut().for_each(|v| *v *= scale);
    against_one(topo, dp, (x, labels), steps)
}

/// Steps of `dp` against one grouped network at the whole batch: loss,
/// logits, every replica's gradients and parameters within `TOL` of the
/// one network's, and the replicas' parameters bit-equal to each other.
fn against_one<M: Replica<CpuBackend>>(
    topo: &Topology,
    mut dp: DataParallel<'_, CpuBackend, M>,
    (x, labels): (Vec<f32>, Vec<u32>),
    steps: usize,
) -> f32 {
    let one = CpuBackend::new();
    let k = dp.replicas();
    let mut single = Network::new(&one, topo, labels.len(), 9).unwrap();
    let names = single.param_names();
    let mut worst = 0f32;
    for step in 0..steps {
        let l1 = single.forward(&x, &labels, Mode::Train).unwrap();
        let l2 = dp.forward(&x, &labels, Mode::Train).unwrap();
        assert!(
            (l1 - l2).abs() <= TOL * l1.abs(),
            "loss at step {step}: {l2} vs {l1}"
        );
        let d = scaled_diff(&dp.logits().unwrap(), &single.logits().unwrap());
        assert!(d <= TOL, "logits at step {step}: {d:e} of their scale");
        single.backward().unwrap();
        dp.backward().unwrap();
        for name in &names {
            let s = single.grad(name).unwrap();
            for r in 0..k {
                let d = scaled_diff(&dp.replica(r).grad(name).unwrap(), &s);
                assert!(
                    d <= TOL,
                    "k={k}: gradient of {name} on replica {r} at step {step}: {d:e}"
                );
                worst = max_nan(worst, d);
            }
        }
        single.sgd_step(&HP).unwrap();
        dp.sgd_step(&HP).unwrap();
        for name in &names {
            let s = single.param(name).unwrap();
            let r0 = dp.replica(0).param(name).unwrap();
            let d = scaled_diff(&r0, &s);
            assert!(
                d <= TOL,
                "k={k}: {name} after step {step}: {d:e} of its scale"
            );
            worst = max_nan(worst, d);
            for r in 1..k {
                assert_eq!(
                    bits(&dp.replica(r).param(name).unwrap()),
                    bits(&r0),
                    "replica {r}'s {name} equals replica 0's after step {step}"
                );
            }
        }
    }
    worst
}

#[test]
fn two_and_four_replicas_equal_one_network_at_the_whole_batch() {
    let topo = narrow().without_dropout();
    for k in [2, 4] {
        let worst = compare(&topo, k, 8, 1.0, 3);
        eprintln!("narrow alexnet, k = {k}, batch 8, 3 steps: worst gap {worst:e} of scale");
    }
    let topo = Topology::cifar().without_dropout();
    for k in [2, 4] {
        let worst = compare(&topo, k, 16, 1.0 / 60.0, 3);
        eprintln!("cifar, k = {k}, batch 16, 3 steps: worst gap {worst:e} of scale");
    }
}

#[test]
fn bucket_size_changes_the_order_not_the_numbers() {
    let topo = narrow().without_dropout();
    let (x, labels) = batch(&topo, 4, 8);
    let devs: Vec<CpuBackend> = (0..2).map(|_| CpuBackend::new()).collect();
    let run = |bucket_bytes: usize| {
        let mut dp = DataParallel::grouped(
            devs.iter().collect(),
            &topo,
            4,
            3,
            bucket_bytes,
            Box::new(HostAllReduce::default()),
        )
        .unwrap();
        dp.forward(&x, &labels, Mode::Train).unwrap();
        dp.backward().unwrap();
        let grads: Vec<Vec<f32>> = dp
            .replica(0)
            .param_names()
            .iter()
            .map(|n| dp.replica(0).grad(n).unwrap())
            .collect();
        (grads, dp.buckets().len(), dp.reduction_order().to_vec())
    };
    let (one_per_tensor, n_small, order) = run(1);
    let (all_in_one, n_big, _) = run(usize::MAX);
    assert_eq!(
        n_small,
        2 * topo.layers.len(),
        "1-byte buckets: one tensor each"
    );
    assert_eq!(n_big, 1);
    for (a, b) in one_per_tensor.iter().zip(&all_in_one) {
        assert_eq!(
            bits(a),
            bits(b),
            "element-wise means do not depend on the buckets"
        );
    }
    // Each bucket goes as soon as its layer's backward is done everywhere:
    // fc8's first, right after fc8, long before conv1's backward.
    let last = topo.layers.len() - 1;
    assert_eq!(order[0], (0, last));
    for (b, &(bucket, layer)) in order.iter().enumerate() {
        assert_eq!(bucket, b);
        assert_eq!(
            layer,
            last - b / 2,
            "bucket {b} (weight, bias of one layer)"
        );
    }
}

#[test]
fn buckets_follow_the_backward_order_and_the_size() {
    let topo = Topology::alexnet();
    let buckets = plan_buckets(&topo, 25 << 20).unwrap();
    // From fc8 down; every tensor in exactly one bucket.
    assert_eq!(buckets[0][0], (7, true));
    let mut all: Vec<(usize, bool)> = buckets.concat();
    assert_eq!(all.len(), 16);
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 16);
    // By hand, in f32 bytes from fc8 down: fc8's weight (4096 x 1000,
    // 16.4 MB) and bias leave the first bucket under 25 MiB, fc7's weight
    // (67 MB) closes it; fc7's bias and fc6's weight (151 MB) close the
    // second; all the convolutions together (2.3 M parameters, 9.3 MB)
    // never reach 25 MiB and go last.
    let (w, b) = (true, false);
    let convs: Vec<(usize, bool)> = (0..5).rev().flat_map(|l| [(l, w), (l, b)]).collect();
    assert_eq!(
        buckets,
        [
            vec![(7, w), (7, b), (6, w)],
            vec![(6, b), (5, w)],
            [vec![(5, b)], convs].concat(),
        ]
    );
}

#[test]
fn a_batch_that_does_not_split_is_an_error_naming_the_sizes() {
    let devs: Vec<CpuBackend> = (0..4).map(|_| CpuBackend::new()).collect();
    let err = DataParallel::grouped(
        devs.iter().collect(),
        &narrow(),
        6,
        1,
        1 << 20,
        Box::new(HostAllReduce::default()),
    )
    .err()
    .expect("6 images over 4 replicas");
    let msg = err.to_string();
    assert!(msg.contains("6") && msg.contains("4 replicas"), "{msg}");
    // A batch that splits, with an input a few values past its images:
    // refused, as one network refuses it, not cut short.
    let mut dp = DataParallel::grouped(
        devs.iter().collect(),
        &narrow(),
        8,
        1,
        1 << 20,
        Box::new(HostAllReduce::default()),
    )
    .expect("8 images over 4 replicas");
    let (mut x, labels) = batch(&narrow(), 8, 3);
    x.extend([0.0; 3]);
    let msg = dp
        .forward(&x, &labels, Mode::Train)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("not 8 whole images"), "{msg}");
}

/// Hybrid: the paper's two towers on each of k pairs of CPU devices, each
/// pair at batch B/k, against one grouped network at B. The towers add
/// their own reordering below the exchanges (tests/towers.rs), the
/// replicas theirs; the same tolerance holds for both. The cifar config
/// takes normalised inputs (unit scale): at pixel scale its He-initialised
/// weights diverge within two steps at this rate, and a diverging run
/// amplifies any reordering past every tolerance.
#[test]
fn hybrid_pairs_of_towers_equal_one_network_at_the_whole_batch() {
    for (topo, batch_size, scale, steps) in [
        (narrow().without_dropout(), 8, 1.0, 3),
        (Topology::cifar().without_dropout(), 16, 1.0 / 60.0, 3),
    ] {
        for k in [2, 4] {
            let devs: Vec<CpuBackend> = (0..2 * k).map(|_| CpuBackend::new()).collect();
            let pairs = devs.chunks_exact(2).map(|p| [&p[0], &p[1]]).collect();
            let dp = DataParallel::hybrid(
                pairs,
                &topo,
                batch_size,
                9,
                1 << 20,
                Box::new(HostAllReduce::default()),
            )
            .unwrap();
            let (mut x, labels) = batch(&topo, batch_size, 4);
            x.iter_mut().for_each(|v| *v *= scale);
            let worst = against_one(&topo, dp, (x, labels), steps);
            eprintln!(
                "{}, {k} pairs of towers, batch {batch_size}, {steps} steps: worst gap {worst:e} of scale",
                topo.name
            );
        }
    }
}

/// Evaluation batches need not split evenly (the last one is short): the
/// replicas take near-equal shares and the logits and loss are the one
/// network's. Training refuses a short batch: its gradient would be the
/// wrong mean.
#[test]
fn evaluation_splits_any_batch_and_training_needs_the_whole_one() {
    let topo = narrow().without_dropout();
    let devs: Vec<CpuBackend> = (0..4).map(|_| CpuBackend::new()).collect();
    let mut dp = DataParallel::grouped(
        devs.iter().collect(),
        &topo,
        8,
        9,
        1 << 20,
        Box::new(HostAllReduce::default()),
    )
    .unwrap();
    let one = CpuBackend::new();
    let mut single = Network::new(&one, &topo, 8, 9).unwrap();
    for n in [1, 3, 5, 8] {
        let (x, labels) = batch(&topo, n, 6);
        let l1 = single.forward(&x, &labels, Mode::Eval).unwrap();
        let l2 = dp.forward(&x, &labels, Mode::Eval).unwrap();
        assert!(
            (l1 - l2).abs() <= TOL * l1.abs(),
            "{n} images: {l2} vs {l1}"
        );
        let d = scaled_diff(&dp.probs().unwrap(), &single.probs().unwrap());
        assert!(d <= TOL, "{n} images: probabilities {d:e} of their scale");
    }
    let (x, labels) = batch(&topo, 5, 6);
    let err = dp
        .forward(&x, &labels, Mode::Train)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("5 images") && err.contains("4 replicas"),
        "{err}"
    );
}

/// Each replica draws its own dropout masks (otherwise image j of every
/// shard would lose the same units): two replicas given the same image
/// drop fc6's units independently, so its averaged bias gradient is zero
/// (dropped in both) for about a quarter of them, not the half that one
/// shared mask would leave.
#[test]
fn replicas_draw_their_own_dropout_masks() {
    let topo = wide_fc();
    let devs = [CpuBackend::new(), CpuBackend::new()];
    let mut dp = DataParallel::grouped(
        devs.iter().collect(),
        &topo,
        2,
        9,
        25 << 20,
        Box::new(HostAllReduce::default()),
    )
    .unwrap();
    dp.set_param("fc6.bias", &[50.0; 256]).unwrap();
    let (one, label) = batch(&topo, 1, 3);
    let x = [one.clone(), one].concat();
    let both = dropped_fc6_units(&mut dp, &x, &[label[0], label[0]]);
    let share = both.iter().filter(|d| **d).count() as f64 / 256.0;
    assert!(
        (0.12..0.38).contains(&share),
        "units dropped by both replicas: {share} (one shared mask drops 0.5)"
    );
}
