//! alexnet-cuda: AlexNet (Krizhevsky, Sutskever, Hinton, NIPS 2012) as the
//! paper trained it. `model::topology` is the one table that describes the
//! network; `backend` holds the ops (CPU reference here); `model::net` runs
//! the table on a backend; `data` reads images; `train` is the loop, with
//! `checkpoint`, `metrics`, `plot` and `eval` around it (`per_class` for eval's
//! class-by-class table); `export` writes the weights
//! (safetensors) and the graph (ONNX); `npy` passes arrays to and from NumPy;
//! `run_state` is the run's state that checkpoints keep; `step_log` holds the loop's per-step metrics until it reads them back;
//! `tensorboard` writes them as TensorBoard event files too (its messages in `tensorboard_pb`);
//! `dist` spreads a run over devices and processes (the device choice, the
//! layout, the all-reduce, the world of a multi-machine run);
//! `viz` draws what a trained network learned (conv1's kernels, figure 3;
//! eval's confusion matrix);
//! `features` takes hidden-layer activations and finds nearest neighbours;
//! `lr` takes a tenth of a learning rate as a decimal;
//! `memory` checks that a run fits in the host's memory before it starts;
//! `shell` quotes the paths in the commands it prints for the user to copy.
pub mod backend;
pub mod checkpoint;
pub mod data;
pub mod dist;
pub mod error;
pub mod eval;
pub mod export;
pub mod features;
pub mod fsutil;
pub mod held_out;
pub mod lr;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod npy;
pub mod per_class;
pub mod plot;
pub mod progress;
pub mod rng;
pub mod run_state;
pub mod shell;
pub mod step_log;
pub mod tensorboard;
mod tensorboard_pb;
pub mod train;
pub mod viz;

pub use error::{Error, Result};
