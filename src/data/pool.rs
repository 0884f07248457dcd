//! Buffers kept between uses: a loader's batches, given back once the step
//! is done with them, are taken again by the next batch, of the same epoch
//! or of a later one. A pool and its clones are one pool, so a run's epochs
//! and its validation passes, whose loaders are clones of one config, fill
//! the same few batches: a GPU's pinned batch memory is allocated once per
//! run, not again for every epoch and every validation.
use std::fmt;

use crossbeam_channel::{unbounded, Receiver, Sender};

/// A shared pool of `T`s; clones share it. It never holds more than it is
/// given, so it never holds more than were ever in use at once.
pub struct Pool<T> {
    tx: Sender<T>,
    rx: Receiver<T>,
}

impl<T> Pool<T> {
    /// A kept `T`, or a new (default) one when none is kept.
    pub fn take(&self) -> T
    where
        T: Default,
    {
        self.rx.try_recv().unwrap_or_default()
    }

    /// Keep `item` for a later `take`, unless `cap` are kept already
    /// (then it is dropped).
    pub fn give(&self, item: T, cap: usize) {
        if self.rx.len() < cap {
            // The pool holds its own receiver, so the send cannot fail.
            let _ = self.tx.send(item);
        }
    }

    /// How many are kept now.
    pub fn idle(&self) -> usize {
        self.rx.len()
    }
}

impl<T> Default for Pool<T> {
    fn default() -> Self {
        let (tx, rx) = unbounded();
        Pool { tx, rx }
    }
}

impl<T> Clone for Pool<T> {
    fn clone(&self) -> Self {
        Pool {
            tx: self.tx.clone(),
            rx: self.rx.clone(),
        }
    }
}

impl<T> fmt::Debug for Pool<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pool({} kept)", self.idle())
    }
}

#[cfg(test)]
mod tests {
    use super::Pool;

    #[test]
    fn clones_share_what_is_given_and_the_cap_bounds_it() {
        let a: Pool<Vec<u8>> = Pool::default();
        let b = a.clone();
        assert!(a.take().is_empty(), "an empty pool gives a new one");
        a.give(vec![1], 2);
        a.give(vec![2], 2);
        a.give(vec![3], 2);
        assert_eq!(
            b.idle(),
            2,
            "the cap let a third in, or the clone is another pool"
        );
        assert_eq!(b.take(), vec![1]);
        assert_eq!(a.take(), vec![2]);
        assert!(b.take().is_empty());
        // A separate pool shares nothing.
        Pool::<Vec<u8>>::default().give(vec![4], 1);
        assert_eq!(a.idle(), 0);
    }
}
