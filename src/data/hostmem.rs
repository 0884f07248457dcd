//! The host memory a batch's pixels are written into. By default ordinary
//! memory; a GPU backend hands the loader an allocator of page-locked
//! ("pinned") memory instead, so the loader's workers write each batch
//! straight into memory the GPU can copy from by DMA, asynchronously, with
//! no staging copy (ARCHITECTURE.md, "The data path"). Buffers are recycled with their
//! batches, so after the first few batches nothing is allocated.
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use crate::error::Result;

/// A block of host memory holding f32s.
pub trait HostMemory: Send {
    fn as_slice(&self) -> &[f32];
    fn as_mut_slice(&mut self) -> &mut [f32];
}

impl HostMemory for Vec<f32> {
    fn as_slice(&self) -> &[f32] {
        self
    }
    fn as_mut_slice(&mut self) -> &mut [f32] {
        self
    }
}

/// Makes zeroed host memory of exactly `len` floats (a backend's pinned memory).
#[derive(Clone)]
pub struct HostAlloc(pub Arc<dyn Fn(usize) -> Result<Box<dyn HostMemory>> + Send + Sync>);

impl fmt::Debug for HostAlloc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HostAlloc")
    }
}

/// A growable f32 buffer over either kind of memory. It derefs to its first
/// `len` floats; growing past the capacity replaces the memory (contents
/// are not kept: every caller rewrites the whole batch).
#[derive(Default)]
pub struct HostBuf {
    mem: Option<Box<dyn HostMemory>>,
    len: usize,
}

impl HostBuf {
    /// Set the length to `len`, getting new memory from `alloc` (or the
    /// ordinary heap) when the current memory is too small.
    pub fn resize(&mut self, len: usize, alloc: Option<&HostAlloc>) -> Result<()> {
        let capacity = self.mem.as_ref().map_or(0, |m| m.as_slice().len());
        if capacity < len {
            self.mem = None;
            self.mem = Some(match alloc {
                Some(a) => (a.0)(len)?,
                None => Box::new(vec![0.0f32; len]),
            });
        }
        self.len = len;
        Ok(())
    }
}

impl Deref for HostBuf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match &self.mem {
            Some(m) => &m.as_slice()[..self.len],
            None => &[],
        }
    }
}

impl DerefMut for HostBuf {
    fn deref_mut(&mut self) -> &mut [f32] {
        match &mut self.mem {
            Some(m) => &mut m.as_mut_slice()[..self.len],
            None => &mut [],
        }
    }
}

/// A copy in ordinary memory.
impl Clone for HostBuf {
    fn clone(&self) -> Self {
        HostBuf {
            mem: Some(Box::new(self.to_vec())),
            len: self.len,
        }
    }
}

impl fmt::Debug for HostBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostBuf({} floats)", self.len)
    }
}

impl PartialEq for HostBuf {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn grows_through_the_allocator_and_reuses_its_memory() {
        let made = Arc::new(AtomicUsize::new(0));
        let m = Arc::clone(&made);
        let alloc = HostAlloc(Arc::new(move |len| {
            m.fetch_add(1, Ordering::Relaxed);
            Ok(Box::new(vec![0.0f32; len]) as Box<dyn HostMemory>)
        }));
        let mut b = HostBuf::default();
        assert!(b.is_empty());
        b.resize(10, Some(&alloc)).unwrap();
        b[9] = 3.0;
        assert_eq!((b.len(), made.load(Ordering::Relaxed)), (10, 1));
        b.resize(4, Some(&alloc)).unwrap();
        b.resize(10, Some(&alloc)).unwrap();
        assert_eq!(
            made.load(Ordering::Relaxed),
            1,
            "shrinking and regrowing reallocated"
        );
        assert_eq!(b[9], 3.0);
        b.resize(11, Some(&alloc)).unwrap();
        assert_eq!(made.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_clone_is_an_independent_copy_in_ordinary_memory() {
        let made = Arc::new(AtomicUsize::new(0));
        let m = Arc::clone(&made);
        let alloc = HostAlloc(Arc::new(move |len| {
            m.fetch_add(1, Ordering::Relaxed);
            Ok(Box::new(vec![0.0f32; len]) as Box<dyn HostMemory>)
        }));
        let mut b = HostBuf::default();
        // Capacity 8, length 5: the clone holds the first 5 floats only.
        b.resize(8, Some(&alloc)).unwrap();
        b.resize(5, Some(&alloc)).unwrap();
        for (i, v) in b.iter_mut().enumerate() {
            *v = i as f32 + 0.5;
        }
        let mut c = b.clone();
        assert_eq!(&c[..], [0.5, 1.5, 2.5, 3.5, 4.5]);
        assert_eq!(
            made.load(Ordering::Relaxed),
            1,
            "the clone used the allocator"
        );
        c[0] = -1.0;
        assert_eq!(b[0], 0.5, "writing the clone changed the original");
        // Equality compares the floats, not the memory.
        assert_ne!(c, b);
        c[0] = 0.5;
        assert_eq!(c, b);
    }
}
