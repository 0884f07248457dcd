//! The network: the topology table (`topology`), the name a checkpoint keeps
//! for it (`spec`), what is derived from it for people (`summary`), and what
//! runs it on a backend (`net`).
pub mod net;
pub mod spec;
pub mod summary;
pub mod topology;
