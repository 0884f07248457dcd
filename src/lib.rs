//! alexnet-cuda: AlexNet (Krizhevsky, Sutskever, Hinton, NIPS 2012) as the
//! paper trained it. `model::topology` is the one table that describes the
//! network; `backend` holds the ops (CPU reference here); `model::net` runs
//! the table on a backend; `data` reads images; `train` is the loop.
pub mod backend;
pub mod data;
pub mod error;
pub mod fsutil;
pub mod model;
pub mod plot;
pub mod rng;
pub mod train;

pub use error::{Error, Result};
