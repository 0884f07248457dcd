//! The steady state at a fixed batch shape, one body for every device: after
//! the first training step, four more at the same shape (an evaluation
//! forward before the last) allocate nothing. tests/steady_state.rs runs it
//! on the CPU backend, tests/gpu_parity/ on a GPU; both backends count
//! their allocations the same way (`Backend::allocations`).
use alexnet_cuda::backend::{Backend, SgdParams};
use alexnet_cuda::model::net::{Mode, Network};
use alexnet_cuda::Result;

const HP: SgdParams = SgdParams {
    lr: 0.01,
    momentum: 0.9,
    weight_decay: 5e-4,
};

/// Five training steps of `net` (on `be`) on one batch, an evaluation
/// forward before the fifth; `be`'s allocation count after the first step
/// and after the fifth. Equal counts: the steady state allocates nothing.
pub fn allocations_first_and_fifth<B: Backend>(
    be: &B,
    net: &mut Network<B>,
    x: &[f32],
    labels: &[u32],
) -> Result<(u64, u64)> {
    let step = |net: &mut Network<B>| -> Result<()> {
        net.forward(x, labels, Mode::Train)?;
        net.backward()?;
        net.sgd_step(&HP)
    };
    step(net)?;
    be.synchronize()?;
    let after_first = be.allocations();
    for _ in 0..3 {
        step(net)?;
    }
    net.forward(x, labels, Mode::Eval)?;
    step(net)?;
    be.synchronize()?;
    Ok((after_first, be.allocations()))
}
