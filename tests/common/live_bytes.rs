//! The integration tests' global allocator: the system's, counting the bytes
//! each thread holds and the most it has held, so a test can see the peak of
//! what its own thread allocated while other tests run beside it. A buffer
//! freed on another thread than the one that allocated it skews both
//! threads' counts; the tests that read them allocate and free on theirs.
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

pub struct LiveBytes;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn add(delta: isize) {
    // try_with: nothing to count while the thread's locals are torn down.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is passed to `System` unchanged; the counting touches
// only const-initialised thread locals, which never allocate.
unsafe impl GlobalAlloc for LiveBytes {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            add(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            add(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        add(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            add(new_size as isize - layout.size() as isize);
        }
        p
    }
}

/// Bytes this thread holds now.
pub fn live() -> isize {
    LIVE.with(|l| l.get())
}

/// Start a new peak at what this thread holds now.
pub fn reset_peak() {
    let now = live();
    PEAK.with(|p| p.set(now));
}

/// The most this thread has held since `reset_peak`.
pub fn peak() -> isize {
    PEAK.with(|p| p.get())
}
