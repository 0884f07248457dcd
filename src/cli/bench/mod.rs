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

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use alexnet_cuda::data::PackedStore;
use alexnet_cuda::eval::store_of;

/// The store --data names (itself, or a `prepare` output folder's train/,
/// as `train --data` takes it), opened, with --crop checked against its
/// images: the store's path, for the messages that follow, and the store.
fn open_store(data: &Path, crop: usize) -> Result<(PathBuf, PackedStore)> {
    let path = store_of(data, "train", "benchmark it")?.unwrap_or_else(|| data.to_path_buf());
    let store = PackedStore::open(&path)?;
    let side = store.meta().size;
    if crop > side {
        bail!(
            "{}: images of {side}x{side}; pass a --crop of at most {side}",
            path.display()
        );
    }
    Ok((path, store))
}
