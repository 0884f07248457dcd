//! What the trainer shows as it runs: the lines that describe a run as it
//! starts, the epoch's progress bar and its numbers, and the epoch's log
//! line, with advice when the loader held training back, and the time the
//! run has left.
use std::time::Instant;

use indicatif::ProgressBar;
use tracing::{info, warn};

use crate::checkpoint::Checkpoint;
use crate::data::LoaderConfig;
use crate::error::Result;
use crate::model::summary::thousands;
use crate::model::topology::{DropoutRule, InitRecipe, Topology, WeightRule};
use crate::run_state::{EpochStats, Progress, RunOptions};
use crate::step_log::EpochClock;

use super::data::TrainData;
use super::options::TrainOptions;

/// Past this share of step time spent waiting for batches, the log says
/// how to feed the loop faster.
const WAIT_WARN: f64 = 0.05;

/// The data line: the split, the classes, the stored size, the crops the
/// loader cuts (`--crop`, zero-padded to the network's input) and the
/// channel mean.
pub fn data(data: &TrainData, topo: &Topology, loader: &LoaderConfig) {
    let c = loader.crop;
    let padded = match loader.pad {
        0 => String::new(),
        _ => format!(" zero-padded to {}x{}", topo.crop, topo.crop),
    };
    info!(
        "data: {} train / {} val images, {} classes, {}x{} stored, {c}x{c} crops{padded}; channel mean {:.1?}",
        data.train_idx.len(),
        data.val_idx.len(),
        data.classes.len(),
        data.train.size(),
        data.train.size(),
        data.mean
    );
}

/// A last partial batch is not trained (each epoch is whole batches of
/// its shuffled images): where that leaves out a tenth of the images or
/// more, said, since an epoch then is not a pass over the data.
pub fn left_out(n: usize, batch: usize) {
    let rest = n % batch.max(1);
    if rest * 10 < n {
        return;
    }
    let steps = n / batch.max(1);
    let batches = if steps == 1 { "batch" } else { "batches" };
    let wait = if rest == 1 { "waits" } else { "wait" };
    warn!(
        "--batch {batch}: each epoch trains {steps} {batches}, so {rest} of the {n} training images {wait} for a later epoch (others each time: the order is shuffled); a batch that divides {n} trains on every image each epoch"
    );
}

/// How the run is spread: the bytes the two towers exchange, this
/// process's share of each batch, and the starting biases of the recipe.
pub fn layout(
    towers: bool,
    topo: &Topology,
    opts: &TrainOptions,
    local_batch: usize,
) -> Result<()> {
    if towers {
        info!(
            "two towers: {} bytes cross between them per step",
            topo.exchange_bytes_per_step(local_batch)?
        );
    }
    let world = &opts.world;
    if !world.is_single() {
        info!(
            "process {} of {}: {} images of every batch of {}",
            world.rank, world.size, local_batch, opts.run.batch
        );
    }
    if topo.has_one_biases() && opts.resume.is_none() && opts.init_from.is_none() {
        info!(
            "recipe {}: the biases the paper sets to 1 start at {}{}",
            opts.run.init.name(),
            opts.run.init.one_bias(),
            match opts.run.init {
                InitRecipe::Caffe => " (as Caffe's AlexNet; --recipe paper for 1)",
                InitRecipe::Paper => " (section 5)",
            }
        );
    }
    if opts.run.dropout == DropoutRule::Paper {
        let rules = topo.clone().with_dropout(DropoutRule::Paper);
        for l in rules
            .layers
            .iter()
            .filter(|l| l.weight_rule != WeightRule::SAME)
        {
            let r = l.weight_rule;
            info!(
                "dropout as the paper's (section 4.2): {} weights train at lr x {}, weight decay x {}, from init std x {}",
                l.name, r.lr_mult, r.decay_mult, r.init_scale
            );
        }
    }
    Ok(())
}

/// Where a resumed run continues.
pub fn resuming(ck: &Checkpoint, p: &Progress) {
    let at = match p.epoch_done {
        true => format!("after epoch {}", p.epoch),
        false => format!(
            "at epoch {}, batch {}/{}",
            p.epoch, p.batches_done, p.epoch_batches
        ),
    };
    info!(
        "resuming {} {at}, step {}, lr {:e}",
        ck.path.display(),
        p.step,
        p.lr
    );
}

/// The run's first line of training: the network, the devices, the recipe
/// (at the rate in force: a resumed run's, not its first) and the run
/// folder.
pub fn start(topo: &Topology, devices: &str, opts: &TrainOptions, lr: f32) -> Result<()> {
    info!(
        "training {} ({} parameters) on {}: batch {}, lr {}, {} epochs{}",
        topo.name,
        thousands(topo.param_count()? as u64),
        devices,
        opts.run.batch,
        lr,
        opts.run.epochs,
        match &opts.out {
            Some(d) => format!("; run folder {}", d.display()),
            None => String::new(),
        }
    );
    Ok(())
}

/// The warm-up a new run starts with (`--warmup`), in steps.
pub fn warmup(run: &RunOptions, epoch_batches: usize) {
    if run.warmup <= 0.0 {
        return;
    }
    let steps = run.warmup * epoch_batches as f64;
    if steps <= 1.0 {
        warn!(
            "--warmup {}: epochs of {epoch_batches} steps make that {steps:.2} steps, too short to ramp; the run trains at {} from its first step",
            run.warmup, run.lr
        );
    } else {
        info!(
            "warm-up: the learning rate rises linearly from {:.2e} to {} over the first {steps:.0} steps ({} epoch{} of {epoch_batches})",
            run.lr as f64 / steps.max(1.0),
            run.lr,
            run.warmup,
            if run.warmup == 1.0 { "" } else { "s" }
        );
    }
}

/// The epoch's bar over its `len` batches, at batch `first` (a resume).
pub fn epoch_bar(len: usize, first: usize, epoch: usize, opts: &TrainOptions) -> ProgressBar {
    let prefix = format!("epoch {epoch}/{}", opts.run.epochs);
    let pb = crate::progress::bar(len, &prefix, opts.progress);
    crate::progress::start_at(&pb, first as u64);
    pb
}

/// The progress bar's numbers, as of the last read.
pub fn show(pb: &ProgressBar, p: &Progress, clock: &EpochClock, epoch_start: Instant) {
    if p.seen == 0 {
        return;
    }
    pb.set_message(format!(
        "loss {:.3} top1 {:.1}% {:.0} img/s",
        p.loss_sum / p.seen as f64,
        100.0 * p.hits as f64 / p.seen as f64,
        clock.images as f64 / epoch_start.elapsed().as_secs_f64()
    ));
}

/// The epoch's log line, and advice when the loader held training back.
pub fn epoch(opts: &TrainOptions, s: &EpochStats, clock: &EpochClock, workers: usize) {
    info!(
        "epoch {}/{} lr {:e}: train loss {:.3} top1 {:.1}% | val loss {:.3} top1 {:.1}% top5 {:.1}% | {:.0} img/s ({:.0} compute), data wait {:.1}% | {:.0}s",
        s.epoch,
        opts.run.epochs,
        s.lr,
        s.train_loss,
        100.0 * s.train_top1,
        s.val_loss,
        100.0 * s.val_top1,
        100.0 * s.val_top5,
        s.images_per_s,
        clock.compute_rate(),
        100.0 * s.data_wait,
        s.elapsed_s
    );
    if s.data_wait > WAIT_WARN {
        warn!(
            "epoch {}: training waited for batches {:.1}% of the time; feed it faster with more --workers (now {workers}), a lower-quality store (`alexnet-cuda prepare --quality 75`), or raw pixels (`alexnet-cuda prepare --format raw`)",
            s.epoch,
            100.0 * s.data_wait
        );
    }
}

/// After `epoch` of `epochs`, the time the rest will take at `per_epoch`
/// seconds each (training, validation and checkpoint, as measured so far in
/// this process): for a days-long run, when to come back.
pub fn time_left(epoch: usize, epochs: usize, per_epoch: f64, until_limit: Option<f64>) {
    if let Some(line) = left_line(epoch, epochs, per_epoch, until_limit) {
        info!("{line}");
    }
}

/// `time_left`'s line, if epochs are left; with `until_limit` seconds to
/// the time limit, how many of them this process has room for, where
/// that is not all.
fn left_line(
    epoch: usize,
    epochs: usize,
    per_epoch: f64,
    until_limit: Option<f64>,
) -> Option<String> {
    let left = epochs.saturating_sub(epoch);
    if left == 0 {
        return None;
    }
    let s = if left == 1 { "" } else { "s" };
    let line = format!(
        "{left} epoch{s} left: about {} at this pace",
        duration(left as f64 * per_epoch)
    );
    let room = until_limit.map(|t| (t / per_epoch).floor() as usize);
    Some(match room {
        Some(k) if k < left => format!("{line}; the time limit leaves room for {k} of them"),
        _ => line,
    })
}

/// `secs` in the two largest units: 45s, 12m 5s, 3h 20m, 2d 3h.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    let (d, h, m) = (s / 86_400, s / 3_600 % 24, s / 60 % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {}s", s % 60),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::{duration, left_line};

    /// 5 epochs of 100 s left with 250 s to the limit: room for 2 (by
    /// hand); with 600 s, room for all, so no clause.
    #[test]
    fn the_time_left_says_how_many_epochs_the_limit_leaves_room_for() {
        let line = |limit| left_line(5, 10, 100.0, limit);
        let plain = "5 epochs left: about 8m 20s at this pace";
        assert_eq!(line(None).as_deref(), Some(plain));
        let two = format!("{plain}; the time limit leaves room for 2 of them");
        assert_eq!(line(Some(250.0)), Some(two));
        assert_eq!(line(Some(600.0)).as_deref(), Some(plain));
        assert_eq!(left_line(10, 10, 100.0, Some(5.0)), None);
    }

    #[test]
    fn durations_in_their_two_largest_units() {
        assert_eq!(duration(0.4), "0s");
        assert_eq!(duration(45.0), "45s");
        assert_eq!(duration(12.0 * 60.0 + 5.0), "12m 5s");
        assert_eq!(duration(3.0 * 3600.0 + 20.0 * 60.0 + 59.0), "3h 20m");
        assert_eq!(duration(2.0 * 86_400.0 + 3.0 * 3600.0 + 1.0), "2d 3h");
        // 90 epochs of 35 minutes: the paper's recipe at a slow pace.
        assert_eq!(duration(90.0 * 35.0 * 60.0), "2d 4h");
    }
}
