//! The integration tests, one module per file beside this one, built as one
//! test executable: each executable links the whole crate and its generic
//! code again: one instead of 28 takes about 53 s of compile on 2 cores
//! instead of about 115 s. Run one file's tests by its module name, e.g.
//!   cargo test --release --test integration checkpoint::
//! tests/gpu_parity/ stays its own executable (its own main, GPU flags).
mod common;

// Counts the bytes each test thread holds (steady_state's peak tests).
#[global_allocator]
static ALLOC: common::live_bytes::LiveBytes = common::live_bytes::LiveBytes;

mod checkpoint;
mod cli;
mod cpu_ops;
mod cuda_probe;
mod data;
mod dropout_rule;
mod eval;
mod export;
mod features;
mod filters;
mod gradcheck;
mod imagenette_cli;
mod kernels_host;
mod lighting;
mod loss_scale;
mod memory;
mod net_gradcheck;
mod plot;
mod prepare;
mod profile;
mod progress;
mod pytorch_fixtures;
mod recipe;
mod replicas;
mod scaling;
mod scripts;
mod steady_state;
mod step_metrics;
mod summary;
mod tcp_reduce;
mod tensorboard;
mod towers;
mod train_cifar;
