//! The hidden benchmark commands, each printing one JSON line for the
//! scripts that call them: `bench-step` (training steps on one batch),
//! `bench-loader` (the training loader over a store), `bench-feed` (a run's
//! passes fed one loader each, or queued ahead on one feed) and `synth-store`
//! (a large synthetic store for the loader's memory figures);
//! `bench-step --per-layer` adds the op-by-op table (`per_layer`).
pub mod feed;
pub mod loader;
mod per_layer;
mod proc_status;
pub mod step;
pub mod synth_store;
mod timing;
