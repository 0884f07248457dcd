//! The loader's worker threads, kept across passes. A run queues its
//! passes ahead (a training epoch, its validation, the next epoch), and the
//! workers fill their batches in that order, so a pass's first batches are
//! ready when it opens instead of one batch's decode later: on a GPU, where
//! an Imagenette epoch takes half a second, that wait came twice an epoch.
//! Worker w fills items w, w + W, w + 2W, ... of the run's sequence of
//! batches, whatever pass each belongs to, and the consumer reads the
//! workers' channels in turn, so order is kept and at most 2W + 1 batches
//! are alive (one queued and one being filled per worker, one being read),
//! as for a single pass. `batches` is the loader of one pass: a feed of
//! that pass alone.
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};

use super::loader::{Batch, ImageSource, Job, LoaderConfig, PREFETCH_PER_WORKER};
use crate::error::{Error, Result};

/// A pass queued on a [`Feed`], to be opened with [`Feed::open`].
pub struct Pass {
    job: Arc<Job>,
    /// Its first item in the feed's sequence.
    start: u64,
    /// The batch of the epoch it starts at, and the epoch's batches.
    first: usize,
    n_batches: usize,
}

/// Batches of one epoch over `indices` of `set`. Errors when the config does
/// not fit the set (crop larger than the images, batch 0, an index out of
/// range, a non-positive std).
pub fn batches(
    set: Arc<dyn ImageSource>,
    indices: &[usize],
    cfg: &LoaderConfig,
    epoch: u64,
) -> Result<BatchIter> {
    batches_from(set, indices, cfg, epoch, 0)
}

/// Like [`batches`], starting at batch `first` of the epoch: a resumed run
/// gets the same images, crops and noise the uninterrupted run would have,
/// since every draw depends on (seed, epoch, position) alone.
pub fn batches_from(
    set: Arc<dyn ImageSource>,
    indices: &[usize],
    cfg: &LoaderConfig,
    epoch: u64,
    first: usize,
) -> Result<BatchIter> {
    let job = Job::new(set, indices, cfg, epoch)?;
    // Workers past the epoch's remaining batches would have nothing to do.
    let workers = cfg.workers.min(job.n_batches().saturating_sub(first));
    let feed = Feed::new(workers)?;
    let pass = feed.queue_job(job, first)?;
    feed.seal();
    Ok(feed.open(pass))
}

/// The passes queued and not yet read past.
#[derive(Default)]
struct Plan {
    passes: VecDeque<Queued>,
    /// The item after the last queued pass.
    end: u64,
    /// No more passes will be queued: workers past `end` stop.
    sealed: bool,
    /// The feed is being dropped: every worker stops.
    closed: bool,
}

struct Queued {
    job: Arc<Job>,
    start: u64,
    first: usize,
    count: usize,
}

/// What the workers and the consumer share.
#[derive(Default)]
struct Shared {
    plan: Mutex<Plan>,
    more: Condvar,
}

impl Shared {
    fn plan(&self) -> MutexGuard<'_, Plan> {
        // A panic never leaves the plan half-changed: every change is one push or retain.
        self.plan.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The job and batch of item `g`, waiting until a pass holding it is
    /// queued; None once the feed is closed, or sealed before `g`.
    fn item(&self, g: u64) -> Option<(Arc<Job>, usize)> {
        let mut plan = self.plan();
        loop {
            if plan.closed {
                return None;
            }
            if let Some(q) = plan.holding(g) {
                return Some((Arc::clone(&q.job), q.first + (g - q.start) as usize));
            }
            if plan.sealed && g >= plan.end {
                return None;
            }
            plan = self.more.wait(plan).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The job of item `g` if its pass is still queued (no waiting).
    fn item_queued(&self, g: u64) -> Option<Arc<Job>> {
        self.plan().holding(g).map(|q| Arc::clone(&q.job))
    }
}

impl Plan {
    /// The queued pass that holds item `g`.
    fn holding(&self, g: u64) -> Option<&Queued> {
        self.passes.iter().find(|q| g >= q.start && g < q.end())
    }
}

impl Queued {
    fn end(&self) -> u64 {
        self.start + self.count as u64
    }
}

/// The reading side: the workers' channels, in turn.
struct Consumer {
    shared: Arc<Shared>,
    rxs: Vec<Receiver<Result<Batch>>>,
    /// Worker `w`'s thread at index `w`, until it is joined.
    handles: Vec<Option<JoinHandle<()>>>,
    /// The next item to read.
    next: u64,
    /// With no workers, items are filled here, decoding into this.
    scratch: Vec<u8>,
}

/// Worker threads filling the batches of queued passes, in order.
pub struct Feed {
    consumer: Arc<Mutex<Consumer>>,
    shared: Arc<Shared>,
    workers: usize,
}

impl Feed {
    /// A feed with `workers` threads (0: each batch is filled on the
    /// reading thread, when read).
    pub fn new(workers: usize) -> Result<Feed> {
        let shared = Arc::new(Shared::default());
        let mut consumer = Consumer {
            shared: Arc::clone(&shared),
            rxs: Vec::with_capacity(workers),
            handles: Vec::with_capacity(workers),
            next: 0,
            scratch: Vec::new(),
        };
        for w in 0..workers {
            let (tx, rx) = bounded::<Result<Batch>>(PREFETCH_PER_WORKER);
            let shared = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("loader-{w}"))
                .spawn(move || work(&shared, w, workers, &tx));
            match spawned {
                Ok(h) => {
                    consumer.rxs.push(rx);
                    consumer.handles.push(Some(h));
                }
                // Dropping `consumer` stops and joins those started.
                Err(e) => {
                    return Err(Error::Config(format!(
                        "could not start loader thread {w} ({e}); pass fewer --workers"
                    )))
                }
            }
        }
        Ok(Feed {
            consumer: Arc::new(Mutex::new(consumer)),
            shared,
            workers,
        })
    }

    /// Queue epoch `epoch` of `indices` of `set` under `cfg`, from its
    /// batch `first` (as [`batches_from`] reads it):
    /// the workers fill it once they are past the passes queued before.
    pub fn queue(
        &self,
        set: Arc<dyn ImageSource>,
        indices: &[usize],
        cfg: &LoaderConfig,
        epoch: u64,
        first: usize,
    ) -> Result<Pass> {
        self.queue_job(Job::new(set, indices, cfg, epoch)?, first)
    }

    /// [`Feed::queue`] of a job made already.
    pub(super) fn queue_job(&self, job: Job, first: usize) -> Result<Pass> {
        let n_batches = job.n_batches();
        let first = first.min(n_batches);
        let job = Arc::new(job);
        let mut plan = self.shared.plan();
        if plan.sealed {
            return Err(Error::Config("loader: a pass queued after the last".into()));
        }
        let start = plan.end;
        let count = n_batches - first;
        plan.end += count as u64;
        plan.passes.push_back(Queued {
            job: Arc::clone(&job),
            start,
            first,
            count,
        });
        self.shared.more.notify_all();
        Ok(Pass {
            job,
            start,
            first,
            n_batches,
        })
    }

    /// No more passes: workers stop after the last queued one.
    pub fn seal(&self) {
        self.shared.plan().sealed = true;
        self.shared.more.notify_all();
    }

    /// The batches of `pass`. Passes are read in the order queued; opening
    /// one skips (fills and discards) what is left of earlier ones.
    pub fn open(&self, pass: Pass) -> BatchIter {
        BatchIter {
            consumer: Arc::clone(&self.consumer),
            workers: self.workers,
            next: pass.first,
            pass,
        }
    }
}

fn lock(c: &Mutex<Consumer>) -> MutexGuard<'_, Consumer> {
    // Poisoned only by a worker's panic re-raised while reading, which
    // ends the reader; what it holds is still whole.
    c.lock().unwrap_or_else(|e| e.into_inner())
}

/// Worker `w` of `workers`: fill items w, w + W, ... until the feed ends.
fn work(shared: &Shared, w: usize, workers: usize, tx: &Sender<Result<Batch>>) {
    let mut g = w as u64;
    let mut scratch = Vec::new();
    while let Some((job, k)) = shared.item(g) {
        let mut b = job.cfg.pool.take();
        let r = job.fill(k, &mut b, &mut scratch).map(|()| b);
        // A closed channel means the feed was dropped.
        if tx.send(r).is_err() {
            break;
        }
        g += workers as u64;
    }
}

impl Consumer {
    /// Item `g`, after reading (and giving back) any skipped before it.
    fn get(&mut self, g: u64) -> Result<Batch> {
        if g < self.next {
            return Err(Error::Config(
                "loader: a pass opened after a later one was read".into(),
            ));
        }
        while self.next < g {
            if let Ok(b) = self.read(self.next) {
                if let Some(job) = self.shared.item_queued(self.next) {
                    job.cfg.pool.give(b, pool_cap(self.rxs.len()));
                }
            }
            self.next += 1;
        }
        let r = self.read(g);
        self.next = g + 1;
        let next = self.next;
        self.shared.plan().passes.retain(|q| q.end() > next);
        r
    }

    /// Item `g` from its worker, or filled here when there are none.
    fn read(&mut self, g: u64) -> Result<Batch> {
        if self.rxs.is_empty() {
            let Some((job, k)) = self.shared.item(g) else {
                return Err(Error::Config("loader: a batch past the last pass".into()));
            };
            let mut b = job.cfg.pool.take();
            return job.fill(k, &mut b, &mut self.scratch).map(|()| b);
        }
        let w = (g % self.rxs.len() as u64) as usize;
        match self.rxs[w].recv() {
            Ok(r) => r,
            Err(_) => self.worker_died(w),
        }
    }

    /// A worker's channel closed while the feed was open: it panicked (a
    /// bug, not bad input). Re-raise its panic here.
    fn worker_died(&mut self, w: usize) -> ! {
        // Taken, not removed: the other workers keep their indices.
        match self.handles[w].take().map(JoinHandle::join) {
            Some(Err(payload)) => std::panic::resume_unwind(payload),
            _ => panic!("loader worker {w} stopped early"),
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.shared.plan().closed = true;
        self.shared.more.notify_all();
        // Closing the receivers wakes any worker blocked in `send`; one
        // filling a batch stops when it tries to send it.
        self.rxs.clear();
        for h in self.handles.drain(..).flatten() {
            let _ = h.join();
        }
    }
}

/// The batches of one pass, in order. A pass from `batches` owns its
/// feed: dropping it stops and joins the workers (they notice within one
/// batch).
pub struct BatchIter {
    consumer: Arc<Mutex<Consumer>>,
    workers: usize,
    pass: Pass,
    next: usize,
}

impl BatchIter {
    /// Number of batches this epoch yields in all.
    pub fn num_batches(&self) -> usize {
        self.pass.n_batches
    }

    /// Hand a used batch back to the config's pool, so its buffers are
    /// refilled, in this epoch or a later one, instead of allocating new
    /// ones (optional: unreturned batches are just freed).
    pub fn recycle(&self, batch: Batch) {
        self.pass.job.cfg.pool.give(batch, pool_cap(self.workers));
    }
}

/// The most batches a pool given back to by a feed of `workers` keeps: the
/// most the feed has in use (the memory plan's 2W + 1), so the pool never
/// holds more than were in use at once.
fn pool_cap(workers: usize) -> usize {
    workers.max(1) * (PREFETCH_PER_WORKER + 1) + 1
}

/// Yields `Err` once if an image cannot be read (a damaged store), then ends.
impl Iterator for BatchIter {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.next >= self.pass.n_batches {
            return None;
        }
        let g = self.pass.start + (self.next - self.pass.first) as u64;
        self.next += 1;
        let r = lock(&self.consumer).get(g);
        if r.is_err() {
            self.next = self.pass.n_batches;
        }
        Some(r)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.pass.n_batches - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for BatchIter {}
