//! The network: the topology table (`topology`), the name a checkpoint keeps
//! for it (`spec`), what is derived from it for people (`summary`), what
//! runs it on a backend (`net`), and the loss scale of 16-bit training
//! (`loss_scale`).
pub mod loss_scale;
pub mod net;
pub mod replicas;
pub mod scaling;
pub mod spec;
pub mod summary;
pub mod tcp_reduce;
pub mod topology;
pub mod towers;
pub mod trainable;
