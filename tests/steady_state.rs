//! The network sizes every buffer once per batch shape: after the first step
//! at a batch size, training and evaluation steps at that size allocate
//! nothing (the backend's allocation count stays put). The same network code
//! drives the CUDA backend, whose count this mirrors, so a GPU run allocates
//! nothing per step either: tests/gpu_parity/ runs the fixed-shape part
//! (steady_state/fixed_shape.rs) there too.
// Shared with tests/gpu_parity/main.rs, which runs it on a GPU.
#[path = "steady_state/fixed_shape.rs"]
mod fixed_shape;

use alexnet_cuda::backend::cpu::CpuBackend;
use alexnet_cuda::backend::Backend;
use alexnet_cuda::model::net::{Mode, Network};
use alexnet_cuda::model::topology::Topology;
use alexnet_cuda::rng::Rng;

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
