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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{PassKey, Passes};
    use crate::data::{ImageSet, LoaderConfig};
    use crate::train::TrainData;

    fn data(n: usize) -> TrainData {
        let set = ImageSet::from_parts(4, vec![9; n * 48], vec![0; n], vec!["a".into()]);
        let set = Arc::new(set.expect("set"));
        TrainData {
            train: set.clone(),
            train_idx: (0..n).collect(),
            val: set,
            val_idx: (0..n / 2).collect(),
            classes: vec!["a".into()],
            names: vec![],
            mean: [0.0; 3],
            std: [1.0; 3],
            mean_image: None,
            cov: None,
            val_digest: None,
            stored: None,
            limit_cut: false,
        }
    }

    fn keys(p: &Passes) -> Vec<PassKey> {
        p.queued.iter().map(|(k, _)| *k).collect()
    }

    /// Each epoch, validated after it, in a run of three epochs resumed
    /// in epoch 1's batch 2: opening a pass leaves the two after it queued
    /// (none past the last validation), and a pass opened out of that
    /// order is queued anew and read whole.
    #[test]
    fn each_pass_opens_with_the_next_two_queued() {
        let d = data(12);
        let train = LoaderConfig {
            workers: 2,
            drop_last: true,
            ..LoaderConfig::new(2, 4, true)
        };
        let val = LoaderConfig::new(2, 4, false);
        let mut p = Passes::new(&train, &val, 3).expect("passes");
        let (t, v) = (
            |epoch, first| PassKey::Train { epoch, first },
            |epoch| PassKey::Val { epoch },
        );
        let want = [
            (t(1, 2), vec![v(1), t(2, 0)], 4),
            (v(1), vec![t(2, 0), v(2)], 3),
            (t(2, 0), vec![v(2), t(3, 0)], 6),
            (v(2), vec![t(3, 0), v(3)], 3),
            (t(3, 0), vec![v(3)], 6),
            (v(3), vec![], 3),
        ];
        for (key, queued, batches) in want {
            let it = p.open(key, &d).expect("open");
            assert_eq!(keys(&p), queued, "after opening {key:?}");
            let read: Vec<_> = it.collect::<crate::Result<_>>().expect("batches");
            assert_eq!(read.len(), batches, "{key:?}");
        }
        let it = p.open(t(2, 1), &d).expect("a pass out of order");
        let read: Vec<_> = it.collect::<crate::Result<_>>().expect("batches");
        assert_eq!(read.len(), 5);
    }
}
