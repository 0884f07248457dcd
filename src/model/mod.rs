//! The network: the topology table (`topology`), the name a checkpoint keeps
//! for it (`spec`), what is derived from it for people (`summary`), what
//! runs it on a backend (`stage` one layer's state and passes, `net` on one device, `towers` on two, `replicas`
//! data-parallel), what every executor offers the trainer (`trainable`, with
//! the step metrics of `step`), the loss scale of 16-bit training (`loss_scale`),
//! and the op-by-op clock of `bench-step --per-layer` (`laps`) and its table (`profile`).
pub mod laps;
pub mod loss_scale;
pub mod net;
pub mod profile;
pub mod replicas;
pub mod scaling;
pub mod spec;
pub mod stage;
pub mod step;
pub mod summary;
pub mod topology;
pub mod towers;
pub mod trainable;
