//! The state of a training run that outlives the process: the options that
//! define it (`RunOptions`, `Schedule`), how its images became inputs
//! (`Preprocess`), where it is (`Progress`), what each epoch measured
//! (`EpochStats`), how it keeps checkpoints (`Saving`) and the devices it
//! computed on (`Compute`), and all of it together as a checkpoint keeps it
//! (`RunState`). Plain data: `train` fills it, `checkpoint` stores it,
//! `metrics` and `tensorboard` write it out, and none of them needs another.
use serde::{Deserialize, Serialize};

use crate::model::loss_scale::LossScale;
use crate::model::spec::NetSpec;
use crate::model::topology::{DropoutRule, InitRecipe};

/// When the learning rate drops.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Schedule {
    /// The paper: divide by 10 when validation error has not improved for
    /// `patience` epochs, at most `max_drops` times.
    Plateau { patience: usize, max_drops: usize },
    /// Divide by 10 at the start of each listed epoch (1-based).
    Milestones(Vec<usize>),
}

/// What one epoch measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    pub epoch: usize,
    pub lr: f32,
    pub train_loss: f64,
    pub train_top1: f64,
    pub val_loss: f64,
    pub val_top1: f64,
    pub val_top5: f64,
    /// Training images per second (forward, backward, update), of all the
    /// run's processes together.
    pub images_per_s: f64,
    /// Wall time since training started, seconds.
    pub elapsed_s: f64,
    /// The share of the epoch's step time spent waiting for the loader's
    /// batches (0 in checkpoints written before it was measured).
    #[serde(default)]
    pub data_wait: f64,
}

/// The training options a run keeps for its whole life.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunOptions {
    pub epochs: usize,
    pub batch: usize,
    /// The initial learning rate.
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub schedule: Schedule,
    pub val: usize,
    pub limit: Option<usize>,
    pub seed: u64,
    /// Crop side when smaller than the network input (zero-padded).
    pub crop: Option<usize>,
    /// The starting biases (`--recipe`); runs written before the flag
    /// existed started from the paper's.
    #[serde(default = "paper_init")]
    pub init: InitRecipe,
    /// The data is `train --demo`'s synthetic set, written from `seed`: a
    /// resume writes it again instead of reading the (temporary) folder.
    #[serde(default)]
    pub demo: bool,
    /// Epochs over which the rate rises linearly to the schedule's
    /// (`--warmup`; 0: none, as the paper).
    #[serde(default)]
    pub warmup: f64,
    /// How dropout's scale is trained (`--dropout`); runs written before
    /// the flag existed trained inverted dropout, the default.
    #[serde(default)]
    pub dropout: DropoutRule,
    /// `--limit` on a store draws each class's share (`draw_by_class`);
    /// false in runs written before, which drew from the whole set and
    /// could leave classes out: a resume draws as its run did.
    #[serde(default)]
    pub limit_by_class: bool,
}

fn paper_init() -> InitRecipe {
    InitRecipe::Paper
}

/// How the loader turned images into network inputs: what `eval` and
/// `predict` must repeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    /// Side of the stored images crops are cut from (the paper: 256).
    pub image_size: usize,
    /// Crop side, and the zero padding around it up to the network input.
    pub crop: usize,
    pub pad: usize,
    /// Per-channel mean, 0..255 (used when there is no mean image).
    pub mean: [f32; 3],
    /// Per-channel std when the config divides by it.
    pub std: Option<[f32; 3]>,
    /// Whether `data.mean_image` was subtracted.
    pub mean_image: bool,
    /// How the store kept the images (`StoreMeta::stored`: "JPEG quality
    /// 90", "raw"); None for images decoded from their own files, and in
    /// checkpoints from before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<String>,
}

impl Preprocess {
    /// The first way `now` turns images into inputs otherwise than
    /// `self`, in words ("its ..., and the run's ..."); None when the same.
    pub fn difference(&self, now: &Preprocess) -> Option<String> {
        let (was, is) = (self, now);
        if was.image_size != is.image_size {
            return Some(format!(
                "its images are {0}x{0}, and the run's were {1}x{1}",
                is.image_size, was.image_size
            ));
        }
        if (was.crop, was.pad) != (is.crop, is.pad) {
            return Some(format!(
                "its crops are {} padded by {}, and the run's were {} padded by {}",
                is.crop, is.pad, was.crop, was.pad
            ));
        }
        if was.mean_image != is.mean_image {
            let has = |m: bool| if m { "a mean image" } else { "no mean image" };
            return Some(format!(
                "it has {}, and the run had {}",
                has(is.mean_image),
                has(was.mean_image)
            ));
        }
        if was.mean != is.mean {
            return Some(format!(
                "its channel mean is {:?}, and the run's was {:?}",
                is.mean, was.mean
            ));
        }
        if was.std != is.std {
            let told = |s: Option<[f32; 3]>| match s {
                Some(s) => format!("{s:?}"),
                None => "not divided by".into(),
            };
            return Some(format!(
                "its channel std is {}, and the run's was {}",
                told(is.std),
                told(was.std)
            ));
        }
        None
    }
}

/// Where the run is: enough to replay the rest of it exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The epoch in progress (1-based), and its batches already trained.
    pub epoch: usize,
    pub batches_done: usize,
    pub epoch_batches: usize,
    /// The epoch's validation and schedule update are done too.
    pub epoch_done: bool,
    /// Optimiser steps so far (fixes the dropout masks still to come).
    pub step: u64,
    /// The learning rate in force.
    pub lr: f32,
    /// Plateau schedule: best validation error, epochs since it, drops made.
    pub best_err: Option<f64>,
    pub since_best: usize,
    pub drops: usize,
    /// The epoch's running sums (so its reported training loss is whole).
    pub loss_sum: f64,
    pub hits: usize,
    pub seen: usize,
    /// Wall time trained before this checkpoint, seconds.
    pub elapsed_s: f64,
    /// Dynamic loss scaling's state (fp16 training), so a resumed run scales alike.
    #[serde(default)]
    pub loss_scale: Option<LossScale>,
    /// The epoch's training so far, timed by the processes before this
    /// checkpoint: a resumed epoch's rate and data wait cover all of it.
    #[serde(default)]
    pub epoch_so_far: EpochSoFar,
}

/// An epoch's training time and images up to a checkpoint (`EpochClock`'s
/// sums, in seconds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochSoFar {
    pub images: usize,
    /// Wall time from the epoch's start to its last step.
    pub train_s: f64,
    pub compute_s: f64,
    pub wait_s: f64,
    pub step_s: f64,
}

impl Progress {
    /// The start of a run: epoch 1, batch 0, learning rate `lr`.
    pub fn start(lr: f32, epoch_batches: usize) -> Progress {
        Progress {
            epoch: 1,
            batches_done: 0,
            epoch_batches,
            epoch_done: false,
            step: 0,
            lr,
            best_err: None,
            since_best: 0,
            drops: 0,
            loss_sum: 0.0,
            hits: 0,
            seen: 0,
            elapsed_s: 0.0,
            loss_scale: None,
            epoch_so_far: EpochSoFar::default(),
        }
    }

    /// Move to batch 0 of the next epoch, with fresh running sums.
    pub fn next_epoch(&mut self) {
        self.epoch += 1;
        self.batches_done = 0;
        self.epoch_done = false;
        self.loss_sum = 0.0;
        self.hits = 0;
        self.seen = 0;
        self.epoch_so_far = EpochSoFar::default();
    }

    /// Every one of `epochs` trained and validated: no step is left.
    pub fn finished(&self, epochs: usize) -> bool {
        self.epoch + usize::from(self.epoch_done) > epochs
    }

    /// The epoch's steps are all done, its validation not yet (a stop
    /// between them): resuming only validates it.
    pub fn only_validation_left(&self) -> bool {
        !self.epoch_done && self.batches_done >= self.epoch_batches
    }

    /// Every step of `epochs` trained: at most the last one's validation
    /// is left.
    pub fn all_steps_done(&self, epochs: usize) -> bool {
        let epoch_trained = self.epoch_done || self.only_validation_left();
        self.epoch + usize::from(epoch_trained) > epochs
    }
}

/// Everything in a checkpoint besides tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub format: String,
    pub version: u32,
    pub net: NetSpec,
    /// Class ids (label i is classes[i]) and readable names (may be empty).
    pub classes: Vec<String>,
    pub names: Vec<String>,
    /// The data the run trains on, to refuse resuming on different data.
    pub data: String,
    pub train_images: usize,
    pub val_images: usize,
    /// CRC-32 of the validation images' names and labels
    /// (`data::store::names_digest`), for `eval --held-out` to find them again;
    /// None in checkpoints from before it, and for stores without sources.
    #[serde(default)]
    pub val_digest: Option<u32>,
    pub options: RunOptions,
    pub preprocess: Preprocess,
    pub progress: Progress,
    /// One row per finished epoch.
    pub history: Vec<EpochStats>,
    /// How the run folder keeps checkpoints; runs written before it was
    /// kept resume with the defaults.
    #[serde(default)]
    pub saving: Saving,
    /// How the run last computed (None in checkpoints from before it was
    /// kept): a resume with other device flags is warned of.
    #[serde(default)]
    pub compute: Option<Compute>,
}

/// A run's device flags. A resume without the same ones goes on otherwise
/// (an fp16 run in fp32, its loss scale dropped; other replicas, other
/// dropout masks; other bits), so `train` warns, naming the run's flags.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compute {
    /// The flags as a command line repeats them (" --gpus 0,1 --precision fp16").
    pub flags: String,
    /// What they come to, for comparing: the processes, the CPU or how
    /// many GPUs (not which), and the flags that change the computation.
    pub setup: String,
}

/// `--keep`, `--checkpoint-every` and `--checkpoint-minutes` as the run was
/// given them (None: the default): a resume keeps them unless given
/// again, so it does not prune the checkpoints a run was told to keep.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Saving {
    pub keep: Option<usize>,
    pub checkpoint_every: Option<u64>,
    pub checkpoint_minutes: Option<f64>,
}

impl Saving {
    /// Checkpoints kept: `keep`, else 3.
    pub fn kept(&self) -> usize {
        self.keep.unwrap_or(3)
    }
}

/// Minutes between checkpoints that a clock can count, or 0 for none: what
/// train's --checkpoint-minutes takes and a checkpoint may hold.
pub fn is_checkpoint_interval(m: f64) -> bool {
    m == 0.0 || (m > 0.0 && std::time::Duration::try_from_secs_f64(m * 60.0).is_ok())
}

#[cfg(test)]
mod tests {
    use super::Preprocess;

    fn paper() -> Preprocess {
        Preprocess {
            image_size: 256,
            crop: 224,
            pad: 3,
            mean: [120.0, 115.0, 104.0],
            std: None,
            mean_image: true,
            stored: None,
        }
    }

    /// A change to a preparation, and the words that must name it.
    type Case = (fn(&mut Preprocess), &'static str);

    /// Each field that changes the inputs is named, with both values.
    #[test]
    fn a_preparation_differs_in_the_first_field_that_changes_the_inputs() {
        assert_eq!(paper().difference(&paper()), None);
        let cases: [Case; 5] = [
            (
                |p| p.image_size = 288,
                "its images are 288x288, and the run's were 256x256",
            ),
            (
                |p| p.crop = 227,
                "its crops are 227 padded by 3, and the run's were 224 padded by 3",
            ),
            (
                |p| p.mean_image = false,
                "it has no mean image, and the run had a mean image",
            ),
            (
                |p| p.mean[1] = 116.0,
                "mean is [120.0, 116.0, 104.0], and the run's was [120.0, 115.0, 104.0]",
            ),
            (
                |p| p.std = Some([1.0; 3]),
                "std is [1.0, 1.0, 1.0], and the run's was not divided by",
            ),
        ];
        for (change, want) in cases {
            let mut now = paper();
            change(&mut now);
            let d = paper().difference(&now).expect("a difference");
            assert!(d.contains(want), "{d:?} lacks {want:?}");
        }
    }
}
