//! The network: the topology table (`topology`), what is derived from it for
//! people (`summary`), and what runs it on a backend (`net`).
pub mod net;
pub mod summary;
pub mod topology;
