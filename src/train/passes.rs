//! The run's passes over its data, queued ahead on one loader feed
//! (data::feed): when an epoch opens, its validation and the next epoch are
//! queued behind it, so the workers go on from one to the next and each
//! pass starts with its first batches filled. A pass opened out of that
//! order (none is, in `Trainer::run`) is queued then, after what is left of
//! the others is skipped.
use std::collections::VecDeque;
use std::sync::Arc;

use crate::data::{BatchIter, Feed, LoaderConfig, Pass};
use crate::error::Result;

use super::data::TrainData;

/// One pass: epoch `epoch`'s training from its batch `first`, or the
/// validation after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassKey {
    Train { epoch: usize, first: usize },
    Val { epoch: usize },
}

impl PassKey {
    /// The pass that follows this one in a run of `last` epochs.
    fn after(self, last: usize) -> Option<PassKey> {
        match self {
            PassKey::Train { epoch, .. } => Some(PassKey::Val { epoch }),
            PassKey::Val { epoch } if epoch < last => Some(PassKey::Train {
                epoch: epoch + 1,
                first: 0,
            }),
            PassKey::Val { .. } => None,
        }
    }
}

/// Passes queued beyond the one open: its validation and the next epoch.
const AHEAD: usize = 2;

/// The loader feed of a run and the passes queued on it.
pub struct Passes {
    feed: Feed,
    queued: VecDeque<(PassKey, Pass)>,
    /// The training batches' settings and the validation's.
    train: LoaderConfig,
    val: LoaderConfig,
    /// The run's last epoch.
    last: usize,
}

impl Passes {
    /// A feed with the training loader's workers, for a run of `last` epochs.
    pub fn new(train: &LoaderConfig, val: &LoaderConfig, last: usize) -> Result<Passes> {
        Ok(Passes {
            feed: Feed::new(train.workers)?,
            queued: VecDeque::new(),
            train: train.clone(),
            val: val.clone(),
            last,
        })
    }

    /// The batches of pass `key`, with the passes after it queued.
    pub fn open(&mut self, key: PassKey, data: &TrainData) -> Result<BatchIter> {
        while let Some((k, _)) = self.queued.front() {
            if *k == key {
                break;
            }
            self.queued.pop_front();
        }
        let pass = match self.queued.pop_front() {
            Some((_, pass)) => pass,
            None => self.queue(key, data)?,
        };
        let mut tail = self.queued.back().map_or(key, |(k, _)| *k);
        while self.queued.len() < AHEAD {
            let Some(next) = tail.after(self.last) else {
                break;
            };
            let pass = self.queue(next, data)?;
            self.queued.push_back((next, pass));
            tail = next;
        }
        Ok(self.feed.open(pass))
    }

    fn queue(&self, key: PassKey, data: &TrainData) -> Result<Pass> {
        match key {
            PassKey::Train { epoch, first } => self.feed.queue(
                Arc::clone(&data.train),
                &data.train_idx,
                &self.train,
                epoch as u64,
                first,
            ),
            PassKey::Val { .. } => {
                self.feed
                    .queue(Arc::clone(&data.val), &data.val_idx, &self.val, 0, 0)
            }
        }
    }
}
