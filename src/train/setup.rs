//! How a run starts: the options and the data checked against the network
//! (the batch over the processes, the learning rate, the classes, the
//! crop, a resume's data and network), the network built with its
//! starting weights, and the run's state: a checkpoint's, or a fresh one.
use std::sync::atomic::Ordering;

use tracing::info;

use crate::backend::Backend;
use crate::checkpoint::{self, Checkpoint, Preprocess, Progress, RunState};
use crate::data::LoaderConfig;
use crate::dist::layout::Layout;
use crate::error::{Error, Result};
use crate::export::Tensor;
use crate::memory::run_batches;
use crate::model::loss_scale::LossScale;
use crate::model::spec::NetSpec;
use crate::model::topology::Topology;
use crate::model::trainable::Model;

use super::data::{data_difference, other_data_fix, resume_mismatch, TrainData};
use super::display;
use super::options::TrainOptions;
use super::schedule;

/// This process's share of each batch, after checking the batch (it must
/// split evenly over the run's `copies` replicas in each process) and the
/// learning rate.
pub fn local_batch(opts: &TrainOptions, copies: usize) -> Result<usize> {
    let world = &opts.world;
    let all = world.size.saturating_mul(copies.max(1));
    if !opts.run.batch.is_multiple_of(all) {
        let over = match (world.size, copies) {
            (1, k) => format!("{k} replicas"),
            (w, 1) => format!("WORLD_SIZE={w} processes"),
            (w, k) => format!("WORLD_SIZE={w} processes of {k} replicas each"),
        };
        let b = opts.run.batch;
        return Err(Error::Config(match opts.resume {
            // The batch is the run's: --batch is refused with --resume.
            Some(_) => format!("the run's batch of {b} does not split evenly over {over}; resume it on a number of GPUs, replicas or processes that divides {b}"),
            None => format!("--batch {b} does not split evenly over {over}; use a multiple of {all}"),
        }));
    }
    if opts.run.batch == 0 {
        return Err(Error::Config("--batch must be at least 1".into()));
    }
    if !(opts.run.lr > 0.0 && opts.run.lr.is_finite()) {
        return Err(Error::Config(format!(
            "--lr must be a positive number, not {}",
            opts.run.lr
        )));
    }
    Ok(opts.run.batch / world.size)
}

/// `spec` with as many outputs as the data has classes.
pub fn fit_classes(
    spec: &NetSpec,
    base: &Topology,
    data: &TrainData,
    opts: &TrainOptions,
) -> NetSpec {
    let n_classes = data.classes.len();
    let mut spec = spec.clone();
    if n_classes != base.classes {
        info!(
            "{} has {n_classes} classes: the last layer gets {n_classes} outputs (config {} has {})",
            opts.data.display(),
            base.name,
            base.classes
        );
        spec.classes = Some(n_classes);
    }
    spec
}

/// Refuse a resume on other data or another network, a crop the network
/// or the images cannot take, and a batch larger than the training set;
/// warn of images stored at another size than the config's.
pub fn check(opts: &TrainOptions, spec: &NetSpec, topo: &Topology, data: &TrainData) -> Result<()> {
    check_resume(opts, spec, data)?;
    if let Some(c) = opts.run.crop {
        if c == 0 || c > topo.crop {
            return Err(Error::Config(format!(
                "--crop {c}: config {} takes {}x{} inputs; pass a crop from 1 to {} (smaller crops are zero-padded; the paper's is 224)",
                topo.name, topo.crop, topo.crop, topo.crop
            )));
        }
    }
    let cut = opts.run.crop.unwrap_or(topo.crop);
    if cut > data.train.size() {
        let small = match topo.name.as_str() {
            "cifar" => "",
            _ => " or pick a config for small images (--config cifar)",
        };
        return Err(Error::Config(format!(
            "{}: images are stored at {}x{}, smaller than the {cut}x{cut} crops of config {}; prepare the data with --size {}{small}",
            opts.data.display(),
            data.train.size(),
            data.train.size(),
            topo.name,
            topo.image_size
        )));
    }
    let stored = data.train.size();
    if stored != topo.image_size {
        tracing::warn!(
            "{}: images are stored at {stored}x{stored}, but config {} expects {}x{}; each {cut}x{cut} crop covers another share of the image than the recipe's; prepare with --size {} unless that is meant",
            opts.data.display(),
            topo.name,
            topo.image_size,
            topo.image_size,
            topo.image_size
        );
    }
    let n = data.train_idx.len();
    if n < opts.run.batch {
        let (limit, raise) = match opts.run.limit {
            Some(l) if data.limit_cut => (format!(" (--limit {l})"), ", or raise --limit"),
            Some(l) => (format!(" (--limit {l} takes them all)"), ""),
            None => (String::new(), ""),
        };
        return Err(Error::Config(format!(
            "--batch {}: only {n} training images{limit}; use a smaller batch{raise}",
            opts.run.batch,
        )));
    }
    super::data::warn_of_untrained_classes(opts, data);
    Ok(())
}

/// A resume continues on the data and the network its checkpoint names.
fn check_resume(opts: &TrainOptions, spec: &NetSpec, data: &TrainData) -> Result<()> {
    let Some(ck) = &opts.resume else {
        return Ok(());
    };
    let st = &ck.state;
    let now = (&data.classes[..], data.train_idx.len());
    if let Some(diff) = data_difference((&st.classes, st.train_images), now) {
        return Err(resume_mismatch(ck, &opts.data, &diff));
    }
    // The run's best error and its plateaus compare epochs on the same
    // validation images.
    if let (Some(was), Some(now)) = (st.val_digest, data.val_digest) {
        if was != now {
            return Err(Error::Config(format!(
                "--resume {}: the validation images of {} are not the ones the run validated on (other images, labels or split: digest {now:08x}, the run's {was:08x}), and its best error and learning-rate plateaus compare epochs on the same images; resume with the data as it was, or start a new run from these weights with --init-from {}",
                ck.path.display(),
                opts.data.display(),
                crate::shell::word(&ck.path)
            )));
        }
    }
    if st.net != *spec {
        return Err(Error::Config(format!(
            "--resume {}: the checkpoint's network is {:?}, not {:?}",
            ck.path.display(),
            st.net,
            spec
        )));
    }
    Ok(())
}

/// Refuse a run whose network buffers (on the CPU) and loader batches would
/// not fit in the host's memory, or whose network would not fit in its
/// GPUs' (`memory`), before either is touched.
pub fn check_memory<B: Backend>(
    layout: &Layout<'_, B>,
    topo: &Topology,
    opts: &TrainOptions,
    loader: &LoaderConfig,
    data: &TrainData,
) -> Result<()> {
    let batches = run_batches(data.train_idx.len(), data.val_idx.len(), opts.run.batch);
    let (mut need, mut on_device) = layout.memory_needs(topo)?;
    // Only the process that keeps the run folder writes checkpoints.
    if opts.out.is_some() {
        need = need.with_checkpoint(topo)?;
    }
    let mut need = need.with_loader(loader, batches);
    need.world = opts.world.size;
    need.check_now_shared(loader.batch, loader.workers, opts.world.local_size)?;
    on_device.world = opts.world.size;
    on_device.check_devices(&layout.devices(), loader.batch)
}

/// The network on `layout`'s devices, from `--init-from`'s weights when
/// given (a resume's come with its state, in `start_state`).
pub fn build_net<'a, B: Backend>(
    layout: Layout<'a, B>,
    topo: &Topology,
    opts: &TrainOptions,
    local_batch: usize,
) -> Result<Box<dyn Model + 'a>> {
    let mut net = layout.build(
        &topo
            .clone()
            .with_init(opts.run.init)
            .with_dropout(opts.run.dropout),
        local_batch,
        opts.run.seed,
    )?;
    if let Some(path) = &opts.init_from {
        // A checkpoint is checked as --resume checks it: damage in its
        // weights would otherwise start the run from them unnoticed.
        let (tensors, meta) = crate::export::read_safetensors_meta(path)?;
        if checkpoint::is_checkpoint(&meta) {
            checkpoint::verify_sums(path, &meta, &tensors)?;
        }
        let map = tensors.into_iter().map(|t| (t.name.clone(), t)).collect();
        checkpoint::load_weights(&mut *net, &map, path, Some(&opts.fresh))?;
        match opts.fresh.is_empty() {
            true => info!("initial weights from {}", path.display()),
            false => info!(
                "initial weights from {}, but for {}, which start fresh",
                path.display(),
                opts.fresh.join(", ")
            ),
        }
    }
    Ok(net)
}

/// `--fresh`'s layers: each one of `topo`'s, and only with `--init-from`.
pub fn check_fresh(opts: &TrainOptions, topo: &Topology) -> Result<()> {
    let names: Vec<&str> = topo.layers.iter().map(|l| l.name).collect();
    if let Some(bad) = opts.fresh.iter().find(|f| !names.contains(&f.as_str())) {
        return Err(Error::Config(format!(
            "--fresh {bad}: config {} has no layer {bad}; its layers are {}",
            topo.name,
            names.join(", ")
        )));
    }
    if names.iter().all(|n| opts.fresh.iter().any(|f| f == n)) {
        return Err(Error::Config(format!(
            "--fresh names every layer of config {}, so --init-from would load nothing; drop both for a fresh run, or leave out of --fresh the layers to load",
            topo.name
        )));
    }
    if !opts.fresh.is_empty() && opts.init_from.is_none() {
        return Err(Error::Config(
            "--fresh names layers to leave out of --init-from's weights; pass --init-from too"
                .into(),
        ));
    }
    Ok(())
}

/// The data folder as the checkpoint keeps it: absolute, so that a
/// `--resume` from another working folder finds it (symbolic links kept).
pub(super) fn data_path(opts: &TrainOptions) -> String {
    std::path::absolute(&opts.data)
        .unwrap_or_else(|_| opts.data.clone())
        .display()
        .to_string()
}

/// The run's state, and whether it is resumed: the checkpoint's (its
/// weights and momentum restored into `net`, its epochs as asked now) or
/// a fresh run's at epoch 1.
pub fn start_state(
    net: &mut dyn Model,
    spec: &NetSpec,
    data: &TrainData,
    loader: &LoaderConfig,
    opts: &TrainOptions,
) -> Result<(RunState, bool)> {
    if let Some(ck) = &opts.resume {
        let now = preprocess(data, loader);
        check_inputs(ck, opts, &now, loader)?;
        ck.restore(net, true)?;
        let mut st = ck.state.clone();
        // The store as it keeps the images now (warned of where it changed).
        st.preprocess.stored = now.stored;
        st.options.epochs = opts.run.epochs;
        st.data = data_path(opts);
        st.saving = opts.saving.clone();
        st.compute = opts.compute.clone();
        display::resuming(ck, &st.progress);
        if let Some(lr) = opts.lr_from_here {
            info!(
                "learning rate {:e} from step {} on (--lr; the run had reached {:e}); {}",
                lr,
                st.progress.step,
                st.progress.lr,
                schedule::after_hand(&st.progress, &st.options.schedule)
            );
            // An epoch left only to validate trained at the earlier rate:
            // its record is that rate's, and the trainer sets this one after it.
            if !st.progress.only_validation_left() {
                schedule::set_by_hand(&mut st.progress, lr);
            }
        }
        return Ok((st, true));
    }
    let epoch_batches = data.train_idx.len() / opts.run.batch;
    display::warmup(&opts.run, epoch_batches);
    let state = RunState {
        format: checkpoint::FORMAT.into(),
        version: checkpoint::VERSION,
        net: spec.clone(),
        classes: data.classes.clone(),
        names: data.names.clone(),
        data: data_path(opts),
        train_images: data.train_idx.len(),
        val_images: data.val_idx.len(),
        val_digest: data.val_digest,
        options: opts.run.clone(),
        preprocess: preprocess(data, loader),
        progress: Progress::start(opts.run.lr, epoch_batches),
        history: Vec::new(),
        saving: opts.saving.clone(),
        compute: opts.compute.clone(),
    };
    Ok((state, false))
}

/// Free the resumed checkpoint's weights and momentum once they are in
/// the network: `alexnet`'s are 488 MB, which a run would otherwise hold
/// for days, beside the two copies each checkpoint write makes.
pub fn drop_resumed_tensors(opts: &mut TrainOptions) {
    if let Some(ck) = opts.resume.as_deref_mut() {
        ck.tensors = Default::default();
    }
}

/// How `loader` turns `data`'s images into inputs, as a checkpoint keeps it.
fn preprocess(data: &TrainData, loader: &LoaderConfig) -> Preprocess {
    Preprocess {
        image_size: data.train.size(),
        crop: loader.crop,
        pad: loader.pad,
        mean: loader.mean,
        std: loader.std,
        mean_image: loader.mean_image.is_some(),
        stored: data.stored.clone(),
    }
}

/// A resume goes on with the inputs its run trained on: the same image
/// size, crop, mean (image) and std, or the weights would meet inputs they
/// have not seen, and the checkpoints would tell `eval` and `predict` the
/// old preparation beside the new mean image.
fn check_inputs(
    ck: &Checkpoint,
    opts: &TrainOptions,
    now: &Preprocess,
    loader: &LoaderConfig,
) -> Result<()> {
    let diff = ck.state.preprocess.difference(now).or_else(|| {
        match (ck.mean_image(), loader.mean_image.as_deref()) {
            (Some(was), Some(is)) => mean_image_difference(was, is),
            _ => None,
        }
    });
    warn_of_other_storage(ck, now);
    match diff {
        None => Ok(()),
        Some(diff) => Err(Error::Config(format!(
            "--resume {}: {} prepares the images otherwise than the run's data ({}): {diff}; {}",
            ck.path.display(),
            opts.data.display(),
            ck.state.data,
            other_data_fix(ck, &opts.data),
        ))),
    }
}

/// A store prepared again with another `--quality` or `--format` (as the
/// data-wait hint suggests) keeps the statistics, which are of the pixels
/// before encoding, and changes the pixels themselves: the resume goes on,
/// but not on the run's inputs to the bit, and says so.
fn warn_of_other_storage(ck: &Checkpoint, now: &Preprocess) {
    if let (Some(was), Some(is)) = (&ck.state.preprocess.stored, &now.stored) {
        if was != is {
            tracing::warn!(
                "--resume {}: the store keeps its images as {is}, and the run's kept them as {was}: the run goes on with these, so it is no longer the run it would have been to the bit",
                ck.path.display()
            );
        }
    }
}

/// How far the mean image `is` lies from the run's, `was`, in words; None
/// when they are the same to the bit (the same store gives the same one).
fn mean_image_difference(was: &[f32], is: &[f32]) -> Option<String> {
    if was.len() != is.len() {
        return Some(format!(
            "its mean image has {} values, and the run's had {}",
            is.len(),
            was.len()
        ));
    }
    let most = was
        .iter()
        .zip(is)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    (most > 0.0).then(|| format!("its mean image differs from the run's by up to {most} levels"))
}

/// The mean image the loader subtracts, as the checkpoint keeps it.
pub fn mean_tensor(loader: &LoaderConfig, size: usize) -> Option<Tensor> {
    loader.mean_image.as_ref().map(|m| Tensor {
        name: checkpoint::MEAN_IMAGE.into(),
        shape: vec![size, size, 3],
        data: m.to_vec(),
    })
}

/// A signal while a run of one process was set up (the data read, the
/// network built): `Error::Stopped` before the run folder is touched, not
/// a first step and a checkpoint nobody asked for.
pub fn not_stopped(opts: &TrainOptions) -> Result<()> {
    match opts.stop_alone().is_some_and(|s| s.load(Ordering::Relaxed)) {
        true => Err(Error::Stopped(
            "stopped at a signal while the run was set up, before any step: nothing was trained"
                .into(),
        )),
        false => Ok(()),
    }
}

/// 16-bit backends: dynamic loss scaling, from where a resumed run left it.
pub fn loss_scaling<B: Backend>(backend: &B, net: &mut dyn Model, p: &Progress) {
    if !backend.needs_loss_scaling() {
        return;
    }
    let ls = match p.loss_scale.clone() {
        Some(ls) if !ls.is_usable() => {
            tracing::warn!(
                "the checkpoint's loss scale {} (doubled every {} clean steps, {} so far) is not a positive power of two that grows, counted below its interval: starting again from the default",
                ls.scale, ls.growth_interval, ls.good_steps
            );
            LossScale {
                skipped: ls.skipped,
                ..LossScale::dynamic()
            }
        }
        Some(ls) => ls,
        None => LossScale::dynamic(),
    };
    info!(
        "{}: dynamic loss scaling from {} (halved on overflow, doubled after {} clean steps)",
        backend.name(),
        ls.scale,
        ls.growth_interval
    );
    net.set_loss_scale(Some(ls));
}

/// Past a checkpoint written at an epoch's end, the run continues with the
/// next epoch; a run past its last epoch says how to extend it.
pub fn continue_at(state: &mut RunState, opts: &TrainOptions) {
    if state.progress.epoch_done {
        state.progress.next_epoch();
    }
    if let (Some(ck), true) = (&opts.resume, state.progress.finished(opts.run.epochs)) {
        info!(
            "{}: the run has finished its {} epochs; pass --epochs N to extend it",
            ck.path.display(),
            opts.run.epochs
        );
    }
}

#[cfg(test)]
mod tests {
    use super::mean_image_difference;

    #[test]
    fn a_mean_image_differs_by_its_largest_difference_or_its_length() {
        let was = [10.0, 20.0, 30.0];
        assert_eq!(mean_image_difference(&was, &was), None);
        let d = mean_image_difference(&was, &[10.0, 20.5, 29.75]).expect("a difference");
        assert!(d.contains("by up to 0.5 levels"), "{d}");
        let d = mean_image_difference(&was, &[10.0, 20.0]).expect("a difference");
        assert!(d.contains("has 2 values, and the run's had 3"), "{d}");
    }
}
