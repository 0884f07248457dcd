//! The training loop: epochs of the paper's SGD over a prepared store (or a
//! class-folder data set decoded into memory), validated on the store's val
//! images or a held-out split, the learning-rate schedule (divide by 10
//! when validation error stops improving, at most three times: section 5),
//! checkpoints every N steps and at each epoch end, exact resume, a clean
//! stop on SIGINT/SIGTERM or at the time limit (after the same step in
//! every process of a run),
//! per-step and per-epoch metrics and their plot.
//! A step waits for nothing on the device (fp16's overflow flag aside): its
//! loss and top-1 stay there until the loop reads a group of steps back
//! (`step_log`).
//!
//! `Trainer` is the run in progress: `step`, `epoch`, `validate` and `save`,
//! and `run`, the loop over them. Around it: `setup` (the checks and the
//! state a run starts from), `data` (the images and the loader settings),
//! `passes` (the epochs and validations queued ahead on the loader),
//! `agree` (what the processes of a run must share, checked at its start),
//! `schedule`, `deadline` (the time limit within an epoch), `run_dir`
//! (checkpoints, metrics, plot), `writer` (checkpoint files written while
//! training goes on) and `display` (the log lines and the bars).
mod agree;
mod data;
mod deadline;
mod display;
mod options;
mod passes;
mod run_dir;
pub mod schedule;
mod setup;
mod writer;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info, warn};

use crate::backend::{Backend, SgdParams};
use crate::checkpoint::{self, RunState};
use crate::data::{Batch, LoaderConfig};
use crate::dist::layout::Layout;
use crate::error::{Error, Result};
use crate::eval::evaluate_pass_until;
use crate::export::Tensor;
use crate::model::net::Mode;
use crate::model::spec::NetSpec;
use crate::model::topology::Topology;
use crate::model::trainable::Model;
use crate::step_log::{EpochClock, StepLog, StepSink};

pub use crate::run_state::{EpochStats, Schedule};
pub use data::{data_difference, load_data, loader_config, TrainData};
pub use options::{resume_options, Stopped, TrainOptions, TrainReport};
pub use run_dir::{check_run_folder, is_run_file, lock_fix, refuse_run_inside_data, resume_arg};
pub use schedule::{after_validation, set_by_hand};
pub use setup::local_batch;

use passes::{PassKey, Passes};
use run_dir::RunDir;
use writer::Pending;

/// Train the network `spec` names, laid over devices as `layout` says,
/// with `opts`; with `opts.resume`, continue that checkpoint's run exactly.
/// Checkpoints hold whole tensors whatever the layout, so any layout
/// resumes any run (bit for bit with the same one: dropout masks are drawn
/// per tower and per replica). In a multi-process run (`opts.world`) the
/// batch is the global one: each process takes its share of every batch.
/// The resumed checkpoint's tensors are dropped once in the network:
/// `opts.resume` keeps its path and state.
pub fn train<B: Backend>(
    layout: Layout<'_, B>,
    spec: &NetSpec,
    opts: &mut TrainOptions,
) -> Result<TrainReport> {
    Trainer::new(layout, spec, opts)?.run()
}

/// A run in progress: the network, its data, its state (checkpointed), its
/// run folder, and what the step loop keeps between steps.
pub struct Trainer<'a> {
    opts: &'a TrainOptions,
    topo: Topology,
    net: Box<dyn Model + 'a>,
    data: TrainData,
    /// This process's training batches' settings, and the passes of them
    /// and of the validation set, queued ahead on the loader's threads.
    loader: LoaderConfig,
    passes: Passes,
    local_batch: usize,
    state: RunState,
    report: TrainReport,
    run_dir: Option<RunDir>,
    mean_tensor: Option<Tensor>,
    /// Steps whose metrics are still on the device.
    log: StepLog,
    /// When training started, and the seconds trained before (a resume).
    start: Instant,
    elapsed0: f64,
    /// Towers: the bytes the first step moved were logged beside the table's count.
    bytes_told: bool,
    /// When the last checkpoint was written (or training started), for
    /// `checkpoint_interval`, and how long writing it took.
    last_save: Instant,
    save_s: f64,
    /// How long the last validation took (none timed yet: None).
    val_s: Option<f64>,
    /// Seconds per step in the last epoch trained (0 before a step).
    per_step: f64,
    /// The checkpoint being written in the background, if one is.
    pending: Option<Pending>,
    /// When the time limit is reached.
    deadline: Option<Instant>,
    /// A rate set by hand (`--resume --lr`) is the one the first epoch
    /// that trains after the resume trains at: that epoch's milestone is
    /// not applied on top of it.
    lr_by_hand: bool,
}

impl<'a> Trainer<'a> {
    /// Check `opts` against the network and the data, build the network on
    /// `layout`'s devices, and take up the run where `opts.resume` left it
    /// (or start it), its run folder open.
    pub fn new<B: Backend>(
        layout: Layout<'a, B>,
        spec: &NetSpec,
        opts: &'a mut TrainOptions,
    ) -> Result<Trainer<'a>> {
        let backend = layout.first();
        let local_batch = setup::local_batch(opts, layout.copies())?;
        let base = spec.topology()?;
        base.validate()?;
        setup::check_fresh(opts, &base)?;
        let data = load_data(opts, base.image_size)?;
        let spec = setup::fit_classes(spec, &base, &data, opts);
        let topo = spec.topology()?;
        setup::check(opts, &spec, &topo, &data)?;
        let (loader, eval) = data::run_loaders(&topo, opts, &data, backend.host_alloc());
        display::data(&data, &topo, &loader);
        display::left_out(data.train_idx.len(), opts.run.batch);
        let towers = matches!(layout, Layout::Towers(_) | Layout::Hybrid(..));
        display::layout(towers, &topo, opts, local_batch)?;
        let devices = layout.describe();
        let shape = layout.shape();
        setup::check_memory(&layout, &topo, opts, &loader, &data)?;
        let mut net = setup::build_net(layout, &topo, opts, local_batch)?;
        let (mut state, resumed) = setup::start_state(&mut *net, &spec, &data, &loader, opts)?;
        setup::drop_resumed_tensors(opts);
        let opts: &'a TrainOptions = opts;
        setup::not_stopped(opts)?;
        // Before the run folder is touched: a process started otherwise stops them all.
        let precision = backend.precision();
        let by_hand = opts.lr_from_here.filter(|_| resumed);
        agree::across(
            &mut *net,
            (&state, by_hand),
            (&shape, precision),
            &opts.world,
        )?;
        let mean_tensor = setup::mean_tensor(&loader, data.train.size());
        // The run folder: refuse to mix two runs in one.
        let run_dir = RunDir::open(opts, &topo, &state, resumed)?;
        display::start(&topo, &devices, opts, state.progress.lr)?;
        let start = Instant::now();
        let save_s = first_save_secs(&topo, &state, run_dir.is_some());
        setup::loss_scaling(backend, &mut *net, &state.progress);
        setup::continue_at(&mut state, opts);
        Ok(Trainer {
            opts,
            local_batch,
            elapsed0: state.progress.elapsed_s,
            report: TrainReport {
                epochs: state.history.clone(),
                classes: data.classes.clone(),
                stopped: None,
                checkpoint: None,
                go_on: String::new(),
            },
            topo,
            net,
            data,
            passes: Passes::new(&loader, &eval, opts.run.epochs)?,
            loader,
            state,
            run_dir,
            mean_tensor,
            log: StepLog::new(opts.refresh),
            start,
            bytes_told: false,
            last_save: start,
            save_s,
            val_s: None,
            per_step: 0.0,
            pending: None,
            deadline: opts.time_limit.and_then(|l| opts.started.checked_add(l)),
            lr_by_hand: resumed && opts.lr_from_here.is_some(),
        })
    }

    /// Every epoch left, each followed by validation and a checkpoint,
    /// until the last, a stop, or the time limit. The last checkpoint is
    /// whole on disk before it returns, however the run ended.
    pub fn run(mut self) -> Result<TrainReport> {
        let ran = match self.epochs() {
            Err(e @ Error::Peer(_)) => Err(self.stopped_from_outside(e)),
            ran => ran,
        };
        let wrote = self.finish_write();
        if let (Err(_), Err(e)) = (&ran, &wrote) {
            warn!("{e}");
        }
        ran.and(wrote).map_err(|e| match &self.run_dir {
            Some(d) => d.after_failure(e),
            None => e,
        })?;
        if let Some(d) = &self.run_dir {
            self.report.go_on = d.go_on_flags();
        }
        Ok(self.report)
    }

    /// `run`'s loop.
    fn epochs(&mut self) -> Result<()> {
        let mut times = EpochTimes::default();
        while self.state.progress.epoch <= self.opts.run.epochs {
            let epoch = self.state.progress.epoch;
            let whole = self.state.progress.batches_done == 0;
            let epoch_start = Instant::now();
            let Some(clock) = self.epoch()? else {
                return Ok(());
            };
            let t_val = Instant::now();
            let Some(best) = self.validate(&clock, epoch_start.elapsed().as_secs_f64())? else {
                return Ok(());
            };
            self.val_s = Some(t_val.elapsed().as_secs_f64());
            self.save_epoch_end(best)?;
            times.add(whole, epoch_start.elapsed().as_secs_f64());
            self.state.progress.next_epoch();
            if self.agreed(self.stopping())? {
                info!("stopping after epoch {epoch} as asked{}", self.whose());
                if epoch < self.opts.run.epochs {
                    self.report.stopped = Some(Stopped::Signal);
                }
                return Ok(());
            }
            // The time limit is kept step by step (`stop_after_step`): an
            // epoch that will not fit still trains until a checkpoint must
            // be written, and the resume goes on from there exactly. Here,
            // only where not even that first stop would fit.
            let late = self.next_epoch_late(epoch);
            if self.agreed(late)? {
                if !late {
                    info!("stopping after epoch {epoch}: another process of the run reached its time limit");
                }
                let step = self.state.progress.step;
                self.report.stopped = Some(Stopped::TimeLimit {
                    epoch,
                    step,
                    own: late,
                });
                break;
            }
            let spent = self.start.elapsed().as_secs_f64();
            let per_epoch = times.per_epoch(spent, &self.state.history);
            display::time_left(epoch, self.opts.run.epochs, per_epoch, self.until_limit());
        }
        Ok(())
    }

    /// The epoch's remaining steps (a milestone drops the lr first, unless
    /// the rate was just set by hand); None at a stop (after its
    /// checkpoint; `report.stopped` says why).
    pub fn epoch(&mut self) -> Result<Option<EpochClock>> {
        let epoch = self.state.progress.epoch;
        let first = self.state.progress.batches_done;
        if !self.lr_by_hand {
            schedule::at_epoch_start(&mut self.state.progress, &self.opts.run.schedule);
        }
        // Kept over an epoch left only to validate (a stop during its validation).
        self.lr_by_hand &= first >= self.state.progress.epoch_batches;
        let mut iter = self
            .passes
            .open(PassKey::Train { epoch, first }, &self.data)?;
        let pb = display::epoch_bar(iter.num_batches(), first, epoch, self.opts);
        let mut clock = EpochClock::resumed(self.state.progress.epoch_so_far);
        let epoch_start = Instant::now();
        let mut done = 0;
        loop {
            let t0 = Instant::now();
            let Some(b) = iter.next() else { break };
            let waited = t0.elapsed();
            let b = b.map_err(|e| self.stopped_from_outside(e))?;
            self.step(&b, &mut clock)?;
            iter.recycle(b);
            pb.inc(1);
            if self.log.due(self.net.step_slots()) {
                self.read_steps()?;
                display::show(&pb, &self.state.progress, &clock, epoch_start);
            }
            clock.wait += waited;
            clock.steps += t0.elapsed();
            done += 1;
            // What a checkpoint from here on holds of the epoch's timing.
            self.state.progress.epoch_so_far = clock.so_far(epoch_start.elapsed().as_secs_f64());
            if !self.after_step(clock.steps.as_secs_f64() / done as f64, iter.len())? {
                pb.finish_and_clear();
                return Ok(None);
            }
        }
        self.read_steps()?;
        pb.finish_and_clear();
        Ok(Some(clock))
    }

    /// One training step on `b`, queued: nothing here waits for the device
    /// but fp16's overflow check (`sgd_step` reads one flag per step to
    /// decide whether to skip the update). The loss and top-1 hits are
    /// recorded on the device and read back by `read_steps`.
    pub fn step(&mut self, b: &Batch, clock: &mut EpochClock) -> Result<()> {
        let p = &self.state.progress;
        let lr = schedule::step_lr(p.lr, p.step, self.opts.run.warmup, p.epoch_batches);
        let hp = SgdParams {
            lr,
            momentum: self.opts.run.momentum,
            weight_decay: self.opts.run.weight_decay,
        };
        let t0 = Instant::now();
        self.net.forward_queued(&b.x, &b.labels, Mode::Train)?;
        self.net.record_step(self.log.next_slot())?;
        self.net.backward()?;
        if let Err(e) = self.net.sgd_step(&hp) {
            // The steps before it into the metrics first (a non-finite
            // loss among them is the earlier, plainer cause).
            self.read_steps()?;
            let epoch = self.state.progress.epoch;
            return self.with_way_back(Err(e), |what| format!("epoch {epoch}, {what}"));
        }
        clock.compute += t0.elapsed();
        if !self.bytes_told && self.net.exchanged_bytes() > 0 {
            info!(
                "between towers: {} bytes this step; the table predicts {}",
                self.net.exchanged_bytes(),
                self.topo.exchange_bytes_per_step(self.local_batch)?
            );
            self.bytes_told = true;
        }
        let elapsed = self.elapsed();
        let net = &*self.net;
        let p = &mut self.state.progress;
        if let Some(ls) = net.loss_scale() {
            if net.last_step_skipped() {
                debug!(
                    "step {}: a gradient overflowed; update skipped, loss scale now {}",
                    net.steps(),
                    ls.scale
                );
            }
            p.loss_scale = Some(ls.clone());
        }
        p.batches_done += 1;
        p.step = net.steps();
        // The processes of a run step together (each step ends in the
        // all-reduce), so the run's images are this shard times their number.
        clock.images += b.n * self.opts.world.size;
        self.log.push(p, lr, b.n, elapsed);
        Ok(())
    }

    /// Validation after the epoch `clock` timed (`train_secs` of training),
    /// and the epoch's record: its row and log line, the metrics files,
    /// the schedule. Returns whether the validation error is the best yet;
    /// None at a signal during it (`stop_in_validation`).
    pub fn validate(&mut self, clock: &EpochClock, train_secs: f64) -> Result<Option<bool>> {
        let bar = crate::progress::bar(self.data.val_idx.len(), "validation", self.opts.progress);
        let epoch = self.state.progress.epoch;
        let iter = self.passes.open(PassKey::Val { epoch }, &self.data)?;
        let n = self.data.val_idx.len();
        // Several processes validate whole (`stop_alone`).
        let flag = self.opts.stop_alone();
        let stop = move || flag.as_ref().is_some_and(|s| s.load(Ordering::Relaxed));
        let on_batch = |n| bar.set_position(n as u64);
        let v = evaluate_pass_until(&mut *self.net, iter, n, on_batch, &stop);
        bar.finish_and_clear();
        let v = match v {
            Err(e @ (Error::Data(_) | Error::Image { .. } | Error::Io { .. })) => {
                return Err(self.stopped_from_outside(e))
            }
            v => v?,
        };
        let Some(v) = v else {
            self.stop_in_validation()?;
            return Ok(None);
        };
        // Outputs that overflowed on validation images: a point not to go
        // back to, and a NaN would make the run state unreadable.
        if !v.loss.is_finite() {
            let p = &self.state.progress;
            let what = format!(
                "epoch {}, step {}: the validation loss is {} (the network's outputs on validation images are not finite numbers), so no checkpoint of it was written",
                p.epoch, p.step, v.loss
            );
            let fix = self.way_back(p.lr);
            return Err(Error::Diverged { what, fix });
        }
        let err = 1.0 - v.top1;
        let best = self.rank0_says(schedule::improves(&self.state.progress, err))?;
        // The previous checkpoint whole (or its failure said) before this
        // epoch's row: a log of two epochs then always had a checkpoint,
        // which a fresh run in the folder relies on (`run_dir::earlier_results`).
        self.finish_write()?;
        let elapsed = self.elapsed();
        // A resumed epoch's rate over all its steps, the earlier process's too.
        let whole = clock.so_far(train_secs);
        let p = &mut self.state.progress;
        let stats = EpochStats {
            epoch: p.epoch,
            lr: p.lr,
            train_loss: p.loss_sum / p.seen.max(1) as f64,
            train_top1: p.hits as f64 / p.seen.max(1) as f64,
            val_loss: v.loss,
            val_top1: v.top1,
            val_top5: v.top5,
            images_per_s: whole.images as f64 / whole.train_s,
            elapsed_s: elapsed,
            data_wait: clock.wait_share(),
        };
        display::epoch(self.opts, &stats, clock, self.loader.workers);
        if let Some(ls) = self.net.loss_scale() {
            info!(
                "epoch {}: loss scale {}, {} steps skipped for overflow so far",
                stats.epoch, ls.scale, ls.skipped
            );
        }
        if let Some(d) = &mut self.run_dir {
            d.epoch(p.step, &stats, &*self.net)?;
        }
        let warming = schedule::warming_up(p.step, self.opts.run.warmup, p.epoch_batches);
        let last = p.epoch >= self.opts.run.epochs;
        // Still set only after an epoch left to validate (`epoch`): the
        // rate of `--resume --lr` trains from the next step on.
        match (self.lr_by_hand, self.opts.lr_from_here) {
            (true, Some(lr)) => schedule::record_by_hand(p, err, best, lr),
            _ => schedule::record(p, &self.opts.run.schedule, err, best, warming, last),
        }
        p.epoch_done = true;
        p.elapsed_s = elapsed;
        self.state.history.push(stats.clone());
        self.report.epochs.push(stats);
        Ok(Some(best))
    }

    /// A run stopped by its data (a batch the loader could not make) or by
    /// another process of the run (`Error::Peer`, in any collective: the weights are those of
    /// the last whole step, since gradients meet before the update): the
    /// steps trained since the newest checkpoint are written first, whole,
    /// so that none is lost, and the error says where they are.
    fn stopped_from_outside(&mut self, e: Error) -> Error {
        // Gradients meet, so the steps diverge in every process: a peer
        // that found it first and stopped gave this one its error. Its
        // own steps name the cause (or, where the peer's share diverged
        // first, the weights its gradients left here), and no checkpoint
        // of them is kept: a resume as it was would diverge again.
        let saved = match self.read_steps().and_then(|()| self.save_unsaved()) {
            Err(Error::Diverged { what, fix }) if matches!(e, Error::Peer(_)) => {
                return Error::Diverged {
                    what: format!("{what} (another process found it first and stopped: {e})"),
                    fix,
                }
            }
            saved => saved,
        };
        if let Err(w) = &saved {
            warn!("could not save the steps trained before the error: {w}");
        }
        match &self.run_dir {
            Some(d) => d.with_steps_kept(e, saved.is_ok()),
            None => e,
        }
    }

    /// A checkpoint of the state now, unless the newest one holds it or
    /// no step has trained (a fresh run's first batch: nothing to keep).
    fn save_unsaved(&mut self) -> Result<()> {
        self.finish_write()?;
        let Some(d) = &self.run_dir else {
            return Ok(());
        };
        let step = self.state.progress.step;
        if step == 0 || d.newest_at(step).is_some() {
            return Ok(());
        }
        self.read_steps()?;
        self.state.progress.elapsed_s = self.elapsed();
        self.save_tensors(false, false, false)?;
        Ok(())
    }

    /// A signal during the epoch's validation: the state before it (every
    /// step trained, the epoch not done), written now and whole, so that a
    /// scheduler's kill soon after the signal (Slurm and Kubernetes wait
    /// 30 s by default) cannot take the epoch with it; a resume validates.
    fn stop_in_validation(&mut self) -> Result<()> {
        let step = self.state.progress.step;
        match self.run_dir.as_ref().and_then(|d| d.newest_at(step)) {
            // Whole at this step already (the checkpoint resumed, as in
            // `save_unsaved`): not written again inside the kill window.
            Some(newest) => self.report.checkpoint = Some(newest.to_path_buf()),
            None => {
                self.state.progress.elapsed_s = self.elapsed();
                self.save_tensors(false, false, false)?;
            }
        }
        let p = &self.state.progress;
        info!(
            "stopping at epoch {}, step {} as asked, before the epoch's validation ended{}",
            p.epoch,
            p.step,
            self.checkpoint_said()
        );
        self.report.stopped = Some(Stopped::Signal);
        Ok(())
    }

    /// A checkpoint of the run as it stands (marked best when `best`),
    /// whole on disk when this returns, and the plot redrawn; nothing
    /// without a run folder.
    pub fn save(&mut self, best: bool) -> Result<()> {
        self.save_tensors(best, false, false)
    }

    /// The checkpoint at an epoch's end, written while the next epoch
    /// trains, and each layer's statistics for TensorBoard from the same
    /// tensors: the weights and momentum are read from the device once.
    fn save_epoch_end(&mut self, best: bool) -> Result<()> {
        self.save_tensors(best, true, true)
    }

    /// `save`, the file written in the background when `background`
    /// (after the previous one's write has ended); at an `epoch_end`, each
    /// layer's statistics logged from its tensors, on disk before the
    /// checkpoint is (a resume from it never writes them again). Nothing
    /// without a run folder.
    fn save_tensors(&mut self, best: bool, background: bool, epoch_end: bool) -> Result<()> {
        self.finish_write()?;
        let Some(dir) = &mut self.run_dir else {
            return Ok(());
        };
        let t0 = Instant::now();
        let mut tensors = checkpoint::network_tensors(&*self.net, true)?;
        tensors.extend(self.mean_tensor.clone());
        let path = dir.checkpoint_path(&self.state, &tensors)?;
        if epoch_end {
            dir.layers(self.state.progress.step, &tensors)?;
        }
        dir.sync_metrics()?;
        let read_s = t0.elapsed().as_secs_f64();
        let state = self.state.clone();
        self.pending = Some(Pending::start(path, state, Arc::new(tensors), best, read_s));
        dir.plot(&self.state.history);
        self.last_save = t0;
        if !background {
            self.finish_write()?;
        }
        Ok(())
    }

    /// Wait for the checkpoint being written, if one is, and account for
    /// it: the newest checkpoint, its time, and an error if it failed.
    fn finish_write(&mut self) -> Result<()> {
        let (Some(pending), Some(dir)) = (self.pending.take(), &mut self.run_dir) else {
            return Ok(());
        };
        let w = pending.wait();
        self.save_s = w.secs;
        self.report.checkpoint = Some(dir.written(w)?);
        Ok(())
    }

    /// How to go on after a divergence at rate `lr`: from the newest
    /// checkpoint (the one being written, once whole, which holds finite
    /// numbers only), or, without a run folder, a lower rate.
    fn way_back(&mut self, lr: f32) -> String {
        if let Err(e) = self.finish_write() {
            warn!("{e}");
        }
        match &self.run_dir {
            Some(d) => d.after_divergence(lr),
            None => Error::lower_rate(lr),
        }
    }

    fn elapsed(&self) -> f64 {
        self.elapsed0 + self.start.elapsed().as_secs_f64()
    }

    /// Set from outside (a signal): finish the step, checkpoint, stop.
    fn stopping(&self) -> bool {
        self.opts
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
    }

    /// Whether to stop after this step, and why: a signal, or the time
    /// limit, which would pass before the rest (`deadline::Ahead`: `ahead`
    /// more steps of `per_step` seconds, of the `left` in the epoch, its
    /// validation if it ends within them, and a checkpoint as long as the
    /// last, `first_save_secs` before one is written). The processes of a
    /// run must stop after the same step, or the others wait for its
    /// gradients: they agree every `AGREE_EVERY` steps (one all-reduce of
    /// the two flags, a wait for the device, so not every step), stop if
    /// any says so, and so look that many steps ahead.
    fn stop_after_step(&mut self, per_step: f64, left: usize) -> Result<Option<Stopped>> {
        if !self.state.progress.step.is_multiple_of(self.steps_ahead()) {
            return Ok(None);
        }
        let val_images = self.data.val_idx.len();
        let rest = deadline::Ahead {
            steps: self.steps_ahead(),
            left,
            per_step,
            val_s: (self.val_s).unwrap_or_else(|| {
                deadline::first_val_secs(val_images, self.local_batch, per_step)
            }),
            // A stop waits for a write in flight, then writes its own.
            saves: if self.pending.is_some() { 2.0 } else { 1.0 },
            save_s: self.save_s,
        };
        let late = self.time_short_of(rest.needed());
        let any = self.agree(&[self.stopping(), late])?;
        let p = &self.state.progress;
        Ok(match any.as_slice() {
            [true, _] => Some(Stopped::Signal),
            [false, true] => {
                let why = match late {
                    true => format!("the time limit would pass before {}", rest.told()),
                    false => "another process of the run reached its time limit".into(),
                };
                info!("stopping at epoch {}, step {}: {why}", p.epoch, p.step);
                Some(Stopped::TimeLimit {
                    epoch: p.epoch,
                    step: p.step,
                    own: late,
                })
            }
            _ => None,
        })
    }

    /// Seconds a step takes: as timed here, or, before this process has
    /// trained one (a resume that only validated), at the last epoch's pace.
    fn step_secs(&self) -> f64 {
        let last_epoch = self.state.history.last();
        let pace = last_epoch.map(|e| self.opts.run.batch as f64 / e.images_per_s);
        match self.per_step {
            0.0 => pace.filter(|s| s.is_finite()).unwrap_or(0.0),
            timed => timed,
        }
    }

    /// After `epoch`'s end: whether the next epoch's first chance to stop
    /// would come too late: its steps up to then and two checkpoints (the
    /// epoch's, still being written, and the stop's own). The epoch's
    /// checkpoint is then the one to stop on.
    fn next_epoch_late(&self, epoch: usize) -> bool {
        if self.deadline.is_none() || epoch >= self.opts.run.epochs {
            return false;
        }
        let rest = deadline::Ahead {
            steps: self.steps_ahead(),
            left: usize::MAX,
            per_step: self.step_secs(),
            val_s: 0.0,
            saves: 2.0,
            save_s: self.save_s,
        };
        let late = self.time_short_of(rest.needed());
        if late {
            info!(
                "stopping after epoch {epoch}: the time limit would pass before {} of the next",
                rest.told()
            );
        }
        late
    }

    /// Steps from one chance to stop to the next: each step, or in a run
    /// of several processes the steps between their agreements.
    fn steps_ahead(&self) -> u64 {
        match self.opts.world.size {
            1 => 1,
            _ => AGREE_EVERY,
        }
    }

    /// Seconds left before the time limit; None without one.
    fn until_limit(&self) -> Option<f64> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()).as_secs_f64())
    }

    /// Whether the time limit comes in `secs` seconds or less.
    fn time_short_of(&self, secs: f64) -> bool {
        self.until_limit().is_some_and(|left| left <= secs)
    }

    /// `local`'s flags or, in a multi-process run, for each whether any
    /// process says so (every process asks at the same point, with as
    /// many flags).
    fn agree(&mut self, local: &[bool]) -> Result<Vec<bool>> {
        if self.opts.world.size == 1 {
            return Ok(local.to_vec());
        }
        self.net.any_process(local)
    }

    /// Rank 0's `flag`, in every process. Each process validates on its own
    /// device; where their numbers differ by a bit (cuDNN times and picks
    /// its algorithms per process), a tie could make them judge an epoch
    /// differently, drop the rate at different epochs and from then on
    /// average the gradients of different models. Rank 0 decides for all.
    fn rank0_says(&mut self, flag: bool) -> Result<bool> {
        let mine = self.opts.world.rank == 0 && flag;
        self.agreed(mine)
    }

    /// `agree` for one flag.
    fn agreed(&mut self, local: bool) -> Result<bool> {
        Ok(self.agree(&[local])?.first() == Some(&true))
    }

    /// For a stop's log line: the checkpoint it wrote, if any.
    fn checkpoint_said(&self) -> String {
        match &self.report.checkpoint {
            Some(p) => format!("; checkpoint {}", p.display()),
            None => String::new(),
        }
    }

    /// For a stop's log line: whose signal it was, when not this process's.
    fn whose(&self) -> &'static str {
        if self.stopping() {
            ""
        } else {
            " by another process of the run"
        }
    }

    /// The queued steps' metrics from the device into the epoch's sums,
    /// the metrics files and the plot's rows.
    fn read_steps(&mut self) -> Result<()> {
        let mut no_rows = Vec::new();
        let sink = match &mut self.run_dir {
            Some(d) => d.sink(),
            None => StepSink {
                metrics: None,
                events: None,
                rows: &mut no_rows,
            },
        };
        let read = self
            .log
            .flush(&mut *self.net, &mut self.state.progress, sink);
        self.with_way_back(read, |what| what)
    }

    /// A divergence found in a step, its `what` reworded, with the way on
    /// a run folder knows (the checkpoint to go back to).
    fn with_way_back(&mut self, r: Result<()>, word: impl Fn(String) -> String) -> Result<()> {
        match r {
            Err(Error::Diverged { what, fix }) => Err(Error::Diverged {
                what: word(what),
                fix: match self.run_dir {
                    Some(_) => self.way_back(self.state.progress.lr),
                    None => fix,
                },
            }),
            r => r,
        }
    }

    /// A checkpoint when one is due or at a stop (a signal, or the time
    /// limit near: steps take `per_step` seconds, `left` more in the
    /// epoch); Ok(false) to stop.
    fn after_step(&mut self, per_step: f64, left: usize) -> Result<bool> {
        // A background write's failure is told within a step.
        if self.pending.as_ref().is_some_and(Pending::is_done) {
            self.finish_write()?;
        }
        self.per_step = per_step;
        let stop = self.stop_after_step(per_step, left)?;
        let every = self.opts.checkpoint_every;
        // Without a run folder (ranks other than 0) nothing is saved, and
        // the interval, never reset, would read the device every step. On
        // an epoch's last step the epoch end's checkpoint, after the
        // validation, stands for the periodic one (the same step, twice).
        let due = self.run_dir.is_some()
            && left > 0
            && (every > 0 && self.state.progress.step.is_multiple_of(every)
                || (self.opts.checkpoint_interval).is_some_and(|d| self.last_save.elapsed() >= d));
        if !(stop.is_some() || due) {
            return Ok(true);
        }
        // The checkpoint holds the epoch's sums: every step is read first.
        self.read_steps()?;
        self.state.progress.elapsed_s = self.elapsed();
        // A stop's checkpoint is whole before the run returns; a periodic
        // one is written while the next steps train.
        self.save_tensors(false, stop.is_none(), false)?;
        if stop == Some(Stopped::Signal) {
            info!(
                "stopping at epoch {}, step {} as asked{}{}",
                self.state.progress.epoch,
                self.state.progress.step,
                self.whose(),
                self.checkpoint_said()
            );
        }
        self.report.stopped = stop;
        Ok(stop.is_none())
    }
}

/// Seconds the first checkpoint is assumed to take, until one is timed:
/// its size from above at 100 MB/s (a slow disk or a network file system,
/// fsync included); 0 without a run folder, which writes none.
fn first_save_secs(topo: &Topology, state: &RunState, writes: bool) -> f64 {
    let size = checkpoint::estimated_size(topo, state.preprocess.image_size);
    match (writes, size) {
        (true, Ok(bytes)) => bytes as f64 / 100e6,
        _ => 0.0,
    }
}

/// How often (in steps) the processes of a multi-process run agree on
/// whether to stop: a signal is acted on within this many steps.
const AGREE_EVERY: u64 = 10;

/// Seconds per epoch, for the time-left line: the mean of this process's
/// epochs begun at their first batch, once one has run. A resumed epoch's
/// rest is not one: counted whole, a resume near an epoch's end would halve
/// the estimate. Until then the run's history says how long its last epoch
/// took, in all processes.
#[derive(Default)]
struct EpochTimes {
    whole: usize,
    whole_s: f64,
    run: usize,
}

impl EpochTimes {
    fn add(&mut self, whole: bool, seconds: f64) {
        self.run += 1;
        if whole {
            self.whole += 1;
            self.whole_s += seconds;
        }
    }

    /// Before a whole epoch, the last epoch of `history` (its `elapsed_s`
    /// less the one before's), or the `spent` seconds over the epochs run.
    fn per_epoch(&self, spent: f64, history: &[EpochStats]) -> f64 {
        if self.whole > 0 {
            return self.whole_s / self.whole as f64;
        }
        let last = match history {
            [.., a, b] => b.elapsed_s - a.elapsed_s,
            [b] => b.elapsed_s,
            [] => 0.0,
        };
        match last > 0.0 {
            true => last,
            false => spent / self.run.max(1) as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{EpochStats, EpochTimes};

    /// A history whose epochs ended at these run seconds.
    fn ended_at(elapsed: &[f64]) -> Vec<EpochStats> {
        let stats = |(i, &elapsed_s): (usize, &f64)| EpochStats {
            epoch: i + 1,
            lr: 0.01,
            train_loss: 0.0,
            train_top1: 0.0,
            val_loss: 0.0,
            val_top1: 0.0,
            val_top5: 0.0,
            images_per_s: 0.0,
            elapsed_s,
            data_wait: 0.0,
        };
        elapsed.iter().enumerate().map(stats).collect()
    }

    /// Epochs of 5,400 s, resumed 180 s before an epoch's end: with 9,000 s
    /// allowed, after the rest and one whole epoch (5,580 s spent) the next
    /// epoch would end at 10,980 s, past the limit. Counting the rest as an
    /// epoch gave 2,790 s per epoch and a next epoch "ending" at 8,370 s.
    #[test]
    fn a_resumed_epochs_rest_is_not_counted_as_an_epoch() {
        let history = ended_at(&[5400.0, 10800.0]);
        let mut t = EpochTimes::default();
        t.add(false, 180.0);
        t.add(true, 5400.0);
        let spent = 5580.0;
        assert_eq!(t.per_epoch(spent, &history), 5400.0);
        assert!(spent + t.per_epoch(spent, &history) > 9000.0);
        t.add(true, 5000.0);
        assert_eq!(t.per_epoch(spent + 5000.0, &history), 5200.0);
    }

    /// Right after a resumed epoch's rest (180 s here) no whole epoch has
    /// run in this process: the history's last epoch (5,400 s, 180 of them
    /// after the resume) says how long the next takes, so a limit of
    /// 3,600 s stops there, where the rest's 180 s let the next epoch start.
    #[test]
    fn after_a_resumed_epochs_rest_the_history_times_the_next_epoch() {
        let mut t = EpochTimes::default();
        t.add(false, 180.0);
        assert_eq!(t.per_epoch(180.0, &ended_at(&[5400.0, 10800.0])), 5400.0);
        assert_eq!(t.per_epoch(180.0, &ended_at(&[5400.0])), 5400.0);
        // No history that measures an epoch: the rest is all there is.
        assert_eq!(t.per_epoch(180.0, &[]), 180.0);
        assert_eq!(t.per_epoch(180.0, &ended_at(&[0.0])), 180.0);
    }
}
