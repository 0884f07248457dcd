//! The network sizes every buffer once per batch shape: after the first step
//! at a batch size, training and evaluation steps at that size allocate
//! nothing (the backend's allocation count stays put). The same network code
//! drives the CUDA backend, whose count this mirrors, so a GPU run allocates
//! nothing per step either: tests/gpu_parity/ runs the fixed-shape part
//! (steady_state/fixed_shape.rs) there too. A new batch shape frees the
//! old shape's buffers before it makes its own, so the two are never held
//! at once (measured by the bytes the test's thread holds at its most).
// Shared with tests/gpu_parity/main.rs, which runs it on a GPU.
#[path = "steady_state/fixed_shape.rs"]
mod fixed_shape;

use alexnet_cuda::backend::cpu::CpuBackend;
use alexnet_cuda::backend::Backend;
use alexnet_cuda::model::net::{Mode, Network};
use alexnet_cuda::model::topology::Topology;
use alexnet_cuda::model::towers::TowerNetwork;
use alexnet_cuda::model::trainable::Model;
use alexnet_cuda::rng::Rng;

use crate::common::{self, live_bytes};

#[test]
fn no_allocation_per_step_at_a_fixed_batch_shape() {
    let topo = Topology::cifar();
    let be = CpuBackend::new();
    let n = 8;
    let mut net = Network::new(&be, &topo, n, 5).expect("network");
    let mut rng = Rng::new(3);
    let x: Vec<f32> = (0..n * 3 * topo.crop * topo.crop)
        .map(|_| rng.normal() as f32)
        .collect();
    let labels: Vec<u32> = (0..n as u32).map(|i| i % 10).collect();
    let (after_first, after_fifth) =
        fixed_shape::allocations_first_and_fifth(&be, &mut net, &x, &labels).expect("steps");
    assert!(after_first > 0, "the network allocates through the backend");
    assert_eq!(
        after_fifth, after_first,
        "steps at the same batch shape allocated buffers"
    );

    // A new batch shape (an epoch's short last batch) sizes the buffers anew, once.
    let m = 3;
    let xs = &x[..m * 3 * topo.crop * topo.crop];
    net.forward(xs, &labels[..m], Mode::Train)
        .expect("short batch");
    let after_short = be.allocations();
    assert!(after_short > after_first);
    net.backward().expect("backward");
    net.forward(xs, &labels[..m], Mode::Train)
        .expect("short batch again");
    assert_eq!(be.allocations(), after_short);
}

/// What this thread holds at its most while `model` goes from batches of
/// `full` to a short batch of `short` images and back, against the most it
/// holds with either size alone, and the bytes a short batch's buffers take.
fn peak_across_a_short_batch(model: &mut dyn Model, topo: &Topology, full: usize, short: usize) {
    let (x, labels) = common::batch(topo, full, 9);
    let xs = &x[..short * topo.channels * topo.crop * topo.crop];
    let run = |model: &mut dyn Model, n: usize| {
        let x = if n == full { &x[..] } else { xs };
        model.forward(x, &labels[..n], Mode::Eval).expect("forward");
    };
    // Each size alone, its buffers made: the most a forward at it holds.
    run(model, short);
    live_bytes::reset_peak();
    run(model, short);
    let alone_short = live_bytes::peak();
    let short_held = live_bytes::live();
    run(model, full);
    live_bytes::reset_peak();
    run(model, full);
    let alone_full = live_bytes::peak();
    let full_held = live_bytes::live();
    // The switches, as a validation pass's short last batch and the next
    // epoch's first batch make them.
    live_bytes::reset_peak();
    run(model, short);
    run(model, full);
    let switching = live_bytes::peak();
    // What the buffers hold grows by the same bytes per image at any size.
    let short_buffers = (full_held - short_held) * short as isize / (full - short) as isize;
    let most_alone = alone_short.max(alone_full);
    assert!(
        switching - most_alone < short_buffers / 4,
        "{}: the switch between {full} and {short} images held {} bytes more than \
         either size alone ({most_alone}); a short batch's buffers take about {short_buffers}",
        topo.name,
        switching - most_alone
    );
}

/// A network resized for a short batch frees the full batch's buffers
/// before it makes the short one's (and back), so a device never holds
/// both: the memory check plans for the full batch alone.
#[test]
fn a_short_batch_never_holds_two_batch_sizes_buffers() {
    let topo = common::narrow();
    let be = CpuBackend::new();
    let mut net = Network::new(&be, &topo, 16, 5).expect("network");
    peak_across_a_short_batch(&mut net, &topo, 16, 12);
    let (b0, b1) = (CpuBackend::new(), CpuBackend::new());
    let mut towers = TowerNetwork::new([&b0, &b1], &topo, 16, 5).expect("towers");
    peak_across_a_short_batch(&mut towers, &topo, 16, 12);
}
