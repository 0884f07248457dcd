//! Page-locked host memory for the loader's batches. The backend hands the
//! loader an allocator (`Backend::host_alloc`) whose buffers are pinned, and
//! remembers their address ranges: an upload whose source lies inside one is
//! copied by DMA straight from it on the copy stream, with no staging copy
//! (ARCHITECTURE.md, "The data path": the loader writes into pinned host memory). The
//! buffers are portable (pinned for every context), and one registry serves
//! the whole process, so every GPU's uploads take the fast path, not only
//! those of the GPU whose allocator the loader was given.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::sys::CU_MEMHOSTALLOC_PORTABLE;
use cudarc::driver::{CudaContext, PinnedHostSlice};

use crate::data::{HostAlloc, HostMemory};
use crate::error::Error;

/// Address ranges [start, end) of the pinned buffers alive now.
#[derive(Default)]
pub(crate) struct Registry(Mutex<Vec<(usize, usize)>>);

impl Registry {
    /// Whether `src` lies wholly inside one registered buffer.
    pub(crate) fn contains(&self, src: &[f32]) -> bool {
        let start = src.as_ptr() as usize;
        let end = start + std::mem::size_of_val(src);
        match self.0.lock() {
            Ok(r) => r.iter().any(|&(s, e)| s <= start && end <= e),
            // A poisoned registry only costs the fast path.
            Err(_) => false,
        }
    }

    fn add(&self, range: (usize, usize)) {
        if let Ok(mut r) = self.0.lock() {
            r.push(range);
        }
    }

    fn remove(&self, start: usize) {
        if let Ok(mut r) = self.0.lock() {
            r.retain(|&(s, _)| s != start);
        }
    }
}

/// The process's registry, shared by every backend.
pub(crate) fn registry() -> Arc<Registry> {
    static ONE: OnceLock<Arc<Registry>> = OnceLock::new();
    Arc::clone(ONE.get_or_init(Arc::default))
}

/// One pinned buffer, registered while it lives.
struct PinnedBatch {
    /// Owns the allocation (freed on drop, after its event).
    _mem: PinnedHostSlice<f32>,
    ptr: *mut f32,
    len: usize,
    registry: Arc<Registry>,
}

// SAFETY: the buffer is plain host memory owned by this value alone; `ptr`
// and `len` describe it and are never shared outside `&self`/`&mut self`.
unsafe impl Send for PinnedBatch {}

impl HostMemory for PinnedBatch {
    fn as_slice(&self) -> &[f32] {
        // SAFETY: ptr/len come from the live allocation `_mem` (len floats,
        // initialised to zero at creation); the borrow is tied to `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as above, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for PinnedBatch {
    fn drop(&mut self) {
        self.registry.remove(self.ptr as usize);
    }
}

/// The allocator the loader gets: zeroed pinned buffers, registered in
/// `registry`, each counted in `allocs`. Page-locked memory, not
/// write-combined (the loader's workers write it and tests read it back),
/// and portable: CU_MEMHOSTALLOC_PORTABLE makes every CUDA context treat it
/// as pinned, not only the allocating one (CUDA Driver API, cuMemHostAlloc).
pub(crate) fn allocator(
    ctx: Arc<CudaContext>,
    registry: Arc<Registry>,
    allocs: Arc<AtomicU64>,
) -> HostAlloc {
    HostAlloc(Arc::new(move |len: usize| {
        // SAFETY: the memory is uninitialised until the fill below, and
        // nothing reads it before then.
        let mut mem =
            unsafe { ctx.alloc_pinned_with_flags::<f32>(len.max(1), CU_MEMHOSTALLOC_PORTABLE) }
                .map_err(|e| Error::Cuda {
                    op: "pinned batch memory",
                    detail: format!("{len} floats: {e:?}; try a smaller --batch"),
                })?;
        let ptr = mem.as_mut_ptr().map_err(|e| Error::Cuda {
            op: "pinned batch memory",
            detail: format!("{e:?}"),
        })?;
        // SAFETY: ptr addresses len.max(1) floats just allocated.
        unsafe { std::slice::from_raw_parts_mut(ptr, len.max(1)) }.fill(0.0);
        allocs.fetch_add(1, Ordering::Relaxed);
        let start = ptr as usize;
        registry.add((start, start + len * std::mem::size_of::<f32>()));
        Ok(Box::new(PinnedBatch {
            _mem: mem,
            ptr,
            len,
            registry: Arc::clone(&registry),
        }) as Box<dyn HostMemory>)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every backend gets the same registry, so a range one backend's
    /// allocator registered is seen by all (the fast path on every GPU).
    #[test]
    fn one_registry_per_process() {
        let (a, b) = (registry(), registry());
        assert!(Arc::ptr_eq(&a, &b));
        let buf = [0.0f32; 16];
        let start = buf.as_ptr() as usize;
        a.add((start, start + 16 * 4));
        assert!(b.contains(&buf[2..10]));
        b.remove(start);
        assert!(!a.contains(&buf[2..10]));
    }
}
