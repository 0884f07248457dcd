//! Checkpoint files written in the background. Encoding a checkpoint (its
//! CRCs, the safetensors file, the write and the fsync: about a second for
//! `alexnet`'s 456 MB on an H200's host) runs on a thread of its own while
//! the next steps train. One write is in flight at a time: the run waits
//! for it before the next checkpoint, at a stop, at its end and at a
//! divergence, and dropping it waits too, so no file is left half written
//! by an early return. The file appears under its name only when whole
//! (`export::write_safetensors` renames a finished temporary file).
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::checkpoint::{self, RunState};
use crate::error::{Error, Result};
use crate::export::Tensor;

/// A checkpoint besides its file: what the log and the way back name.
#[derive(Default)]
pub struct About {
    pub path: PathBuf,
    pub best: bool,
    /// Megabytes of tensors.
    pub mb: f64,
    /// The run's learning rate then (for the way back, should it fail).
    pub lr: f32,
    /// Seconds spent before the write: reading the tensors from the device.
    pub read_s: f64,
}

/// A checkpoint write that has ended, well or not.
pub struct Written {
    pub about: About,
    pub result: Result<()>,
    /// Seconds the checkpoint took: reading the tensors and writing them.
    pub secs: f64,
}

/// A checkpoint being written.
pub struct Pending {
    about: About,
    /// The writing thread, or (when none could be started) the outcome of
    /// the write done in place.
    thread: Option<JoinHandle<(Result<()>, f64)>>,
    done: Option<(Result<()>, f64)>,
}

impl Pending {
    /// Start writing `tensors` and `state` to `path` (`read_s` after the
    /// checkpoint began).
    pub fn start(
        path: PathBuf,
        state: RunState,
        tensors: Arc<Vec<Tensor>>,
        best: bool,
        read_s: f64,
    ) -> Pending {
        let about = About {
            path: path.clone(),
            best,
            mb: tensors.iter().map(|t| t.data.len()).sum::<usize>() as f64 * 4e-6,
            lr: state.progress.lr,
            read_s,
        };
        Pending::run(about, move || checkpoint::save(&path, &state, &tensors))
    }

    /// `write` (of the checkpoint `about` tells) on a thread of its own,
    /// timed; where no thread can be started, here and now.
    fn run<F>(about: About, write: F) -> Pending
    where
        F: FnOnce() -> Result<()> + Clone + Send + 'static,
    {
        Pending::run_on(about, write, |timed| {
            let named = std::thread::Builder::new().name("checkpoint".into());
            named.spawn(move || timed.call())
        })
    }

    /// `run` with the thread started by `spawn` (a test's may fail).
    fn run_on<F, S>(about: About, write: F, spawn: S) -> Pending
    where
        F: FnOnce() -> Result<()> + Clone + Send + 'static,
        S: FnOnce(Timed<F>) -> std::io::Result<JoinHandle<(Result<()>, f64)>>,
    {
        let timed = Timed(write);
        let (thread, done) = match spawn(timed.clone()) {
            Ok(h) => (Some(h), None),
            Err(e) => {
                tracing::warn!("no thread for the checkpoint write ({e}); writing it now");
                (None, Some(timed.call()))
            }
        };
        Pending {
            about,
            thread,
            done,
        }
    }

    /// Whether the write has ended (waiting for it would not block).
    pub fn is_done(&self) -> bool {
        self.thread.as_ref().is_none_or(|h| h.is_finished())
    }

    /// Wait for the write to end.
    pub fn wait(mut self) -> Written {
        let (result, write_s) = match (self.thread.take(), self.done.take()) {
            (Some(h), _) => h.join().unwrap_or_else(|_| {
                let why = "the thread writing it stopped with a panic (a bug)";
                (Err(Error::Data(why.into())), 0.0)
            }),
            (None, Some(done)) => done,
            (None, None) => (Err(Error::Data("no write was started".into())), 0.0),
        };
        let about = std::mem::take(&mut self.about);
        Written {
            secs: about.read_s + write_s,
            about,
            result,
        }
    }
}

/// A write and its time in seconds.
#[derive(Clone)]
struct Timed<F>(F);

impl<F: FnOnce() -> Result<()>> Timed<F> {
    fn call(self) -> (Result<()>, f64) {
        let t0 = Instant::now();
        let r = (self.0)();
        (r, t0.elapsed().as_secs_f64())
    }
}

impl Drop for Pending {
    /// An early return still leaves a whole file, or none under its name.
    fn drop(&mut self) {
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::{About, Pending};
    use crate::error::Error;

    /// A write that takes a while, then marks `ended`.
    fn slow(ended: &Arc<AtomicBool>) -> Pending {
        let ended = Arc::clone(ended);
        Pending::run(About::default(), move || {
            std::thread::sleep(Duration::from_millis(200));
            ended.store(true, Ordering::SeqCst);
            Ok(())
        })
    }

    #[test]
    fn waiting_and_dropping_both_wait_for_the_write_to_end() {
        let ended = Arc::new(AtomicBool::new(false));
        let w = slow(&ended).wait();
        assert!(w.result.is_ok() && ended.load(Ordering::SeqCst));
        assert!(
            w.secs >= 0.2,
            "the write's time was not counted: {}",
            w.secs
        );
        let ended = Arc::new(AtomicBool::new(false));
        drop(slow(&ended));
        assert!(
            ended.load(Ordering::SeqCst),
            "dropped before the write ended"
        );
    }

    #[test]
    fn without_a_thread_the_write_is_done_in_place() {
        let ended = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&ended);
        let write = move || {
            std::thread::sleep(Duration::from_millis(50));
            flag.store(true, Ordering::SeqCst);
            Err(Error::Data("disk full".into()))
        };
        let refused = |_| Err(std::io::Error::other("no threads left"));
        let p = Pending::run_on(About::default(), write, refused);
        assert!(
            ended.load(Ordering::SeqCst) && p.is_done(),
            "not written yet"
        );
        let w = p.wait();
        assert!(matches!(w.result, Err(Error::Data(m)) if m == "disk full"));
        assert!(
            w.secs >= 0.05,
            "the write's time was not counted: {}",
            w.secs
        );
    }

    #[test]
    fn a_failed_write_is_told_by_wait() {
        let p = Pending::run(About::default(), || Err(Error::Data("disk full".into())));
        let w = p.wait();
        assert!(matches!(w.result, Err(Error::Data(m)) if m == "disk full"));
        let p = Pending::run(About::default(), || panic!("a bug"));
        assert!(matches!(p.wait().result, Err(Error::Data(m)) if m.contains("panic")));
    }
}
