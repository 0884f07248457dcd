//! Checkpoints: everything a run needs to continue exactly where it stopped
//! (weights, momentum, step, epoch and batch position, learning-rate schedule,
//! the options and data it was started with, the metrics so far) in one
//! safetensors file, so any safetensors reader can open it too.
//!
//! Layout: tensors `conv1.weight` ... `fc8.bias` (PyTorch names and layouts),
//! `momentum.conv1.weight` ..., and `data.mean_image` when training subtracted
//! one. `__metadata__` holds `state` (JSON of [`RunState`]) and the CRC-32 of
//! the state and of every tensor's bytes, so a flipped or missing byte
//! anywhere is caught on load.
//!
//! Files are written to a temporary name, fsynced and renamed (`fsutil`), so
//! a kill, a full disk or a power cut leaves the previous checkpoint whole.
//! A run folder keeps the last K `ckpt-<step>.safetensors` and a hard link
//! `best.safetensors` to the one with the lowest validation error.
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::backend::Backend;
use crate::data::decode::MAX_SIDE;
use crate::error::{Error, Result};
use crate::export::{self, Tensor};
use crate::fsutil::{folder_of, same_file, sync_dir, temp_path};
use crate::model::net::Network;
use crate::model::topology::Topology;
use crate::model::trainable::Model;
use crate::run_state::is_checkpoint_interval;
pub use crate::run_state::{Preprocess, Progress, RunOptions, RunState, Saving};

pub const FORMAT: &str = "alexnet-cuda-checkpoint";
pub const VERSION: u32 = 1;
/// Prefix of the momentum tensors.
pub const MOMENTUM: &str = "momentum.";
/// The mean image the loader subtracted, `size x size x 3` (HWC, 0..255).
pub const MEAN_IMAGE: &str = "data.mean_image";

/// A loaded, verified checkpoint.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub path: PathBuf,
    pub state: RunState,
    pub tensors: HashMap<String, Tensor>,
}

/// CRC-32 of a tensor's little-endian bytes (as stored), without a copy.
fn crc_f32(v: &[f32]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    let mut buf = [0u8; 4096];
    for chunk in v.chunks(buf.len() / 4) {
        for (b, x) in buf.chunks_exact_mut(4).zip(chunk) {
            b.copy_from_slice(&x.to_le_bytes());
        }
        h.update(&buf[..chunk.len() * 4]);
    }
    h.finalize()
}

/// The network's weights, and with `momentum` its momentum buffers, as tensors.
pub fn network_tensors(net: &dyn Model, momentum: bool) -> Result<Vec<Tensor>> {
    let mut out = export::network_tensors(net)?;
    if momentum {
        for name in net.param_names() {
            out.push(Tensor {
                data: net.momentum(&name)?,
                shape: net.param_shape(&name)?,
                name: format!("{MOMENTUM}{name}"),
            });
        }
    }
    Ok(out)
}

/// Write a checkpoint of `state` and `tensors` to `path`, atomically.
pub fn save(path: &Path, state: &RunState, tensors: &[Tensor]) -> Result<()> {
    let state_json = serde_json::to_string(state)
        .map_err(|e| Error::Data(format!("could not encode the run state: {e}")))?;
    // JSON writes a NaN or infinity as null, which no f64 reads back: a
    // checkpoint that could not be resumed is refused, not written.
    if let Err(e) = serde_json::from_str::<RunState>(&state_json) {
        return Err(Error::Diverged {
            what: format!(
                "step {}: a number in the run state is not finite ({e}), so {} was not written",
                state.progress.step,
                path.display()
            ),
            fix: "resume from an earlier checkpoint".into(),
        });
    }
    let crcs: BTreeMap<&str, u32> = tensors
        .iter()
        .map(|t| (t.name.as_str(), crc_f32(&t.data)))
        .collect();
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), FORMAT.to_string());
    meta.insert(
        "state_crc32".to_string(),
        crc32fast::hash(state_json.as_bytes()).to_string(),
    );
    meta.insert("state".to_string(), state_json);
    meta.insert(
        "tensor_crc32".to_string(),
        serde_json::to_string(&crcs).map_err(|e| Error::Data(e.to_string()))?,
    );
    export::write_safetensors(path, tensors, &meta)
}

fn damaged(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::Data(format!(
        "{}: damaged or incomplete checkpoint ({why})",
        path.display()
    ))
}

/// The checkpoint files of a run folder, as errors name them.
const CHECKPOINT_FILES: &str = "(RUN/best.safetensors, RUN/ckpt-*.safetensors)";

/// Load and verify a checkpoint: the format, the state's CRC and every
/// tensor's CRC. Errors say the file is damaged; [`load_latest`] names the
/// previous good one.
pub fn load(path: &Path) -> Result<Checkpoint> {
    let (tensors, meta) = export::read_safetensors_meta(path).map_err(|e| match e {
        Error::Data(m) => Error::Data(format!(
            "{m}; pass a checkpoint written by `train` {CHECKPOINT_FILES}"
        )),
        other => other,
    })?;
    from_parts(path, tensors, meta)
}

/// The file a `--checkpoint` value names: a run folder means its
/// `best.safetensors` (the lowest validation error), anything else itself.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    refuse_slashed_file("--checkpoint", path)?;
    if !path.exists() {
        return Err(Error::Config(format!(
            "--checkpoint {}: no such file or folder; pass a run folder from `train` or one of its checkpoints {CHECKPOINT_FILES}",
            path.display()
        )));
    }
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let best = path.join("best.safetensors");
    if best.is_file() {
        return Ok(best);
    }
    Err(Error::Config(format!(
        "--checkpoint {}: {}",
        path.display(),
        without_best(path)
    )))
}

/// Why the folder `dir` names no weights, and what to pass instead: a run
/// stopped before its first validation has checkpoints but no best yet.
pub fn without_best(dir: &Path) -> String {
    match list(dir).ok().and_then(|mut l| l.pop()) {
        Some((step, p)) => format!(
            "no best.safetensors in this run folder (it comes with the first validated epoch); pass one of its checkpoints, as the newest, {} (step {step}), or train on to an epoch's end",
            crate::shell::word(&p)
        ),
        None => "a folder without best.safetensors; pass a run folder from `train` or a checkpoint file".into(),
    }
}

/// A checkpoint file named with a trailing `/`: the OS would call it
/// missing, so say what it is.
fn refuse_slashed_file(flag: &str, path: &Path) -> Result<()> {
    match crate::fsutil::file_with_slash(path) {
        Some(file) => Err(Error::Config(format!(
            "{flag} {}: {} is a file, not a folder; drop the trailing /",
            path.display(),
            file.display()
        ))),
        None => Ok(()),
    }
}

/// [`load`] of what `--checkpoint` names ([`resolve`]).
pub fn load_resolved(path: &Path) -> Result<Checkpoint> {
    let file = resolve(path)?;
    load(&file).map_err(|e| good_one_for(e, &file))
}

/// `e`, the error of reading `file` (given with --checkpoint): where the
/// file is a damaged checkpoint, with the newest good one of its folder.
pub fn good_one_for(e: Error, file: &Path) -> Error {
    with_good_one(e, file, "--checkpoint")
}

/// Whether a safetensors header's `__metadata__` is a checkpoint's.
pub fn is_checkpoint(meta: &BTreeMap<String, String>) -> bool {
    meta.get("format").map(String::as_str) == Some(FORMAT)
}

/// The JSON header of a safetensors file (None when it has none).
fn read_header(path: &Path) -> Option<serde_json::Value> {
    let mut f = fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let n = usize::try_from(u64::from_le_bytes(len))
        .ok()?
        .min(100 << 20);
    let mut json = vec![0u8; n];
    f.read_exact(&mut json).ok()?;
    serde_json::from_slice(&json).ok()
}

/// Whether `path` is a checkpoint of ours, from its header alone (false
/// for anything else, readable or not).
pub fn is_checkpoint_file(path: &Path) -> bool {
    read_header(path).is_some_and(|h| h["__metadata__"]["format"] == FORMAT)
}

/// The step a checkpoint was written at, from its header alone (None for
/// anything but a readable checkpoint); nothing is verified.
pub fn step_of(path: &Path) -> Option<u64> {
    let h = read_header(path)?;
    let state: serde_json::Value =
        serde_json::from_str(h["__metadata__"]["state"].as_str()?).ok()?;
    state["progress"]["step"].as_u64()
}

/// A checkpoint's run state, from its header alone (None for anything but
/// a readable checkpoint); nothing is verified.
pub fn state_of(path: &Path) -> Option<RunState> {
    let h = read_header(path)?;
    serde_json::from_str(h["__metadata__"]["state"].as_str()?).ok()
}

/// The device flags the run of checkpoint `path` computed with (" --cpu",
/// " --gpus 0,1"), for a command that resumes it; empty where it keeps
/// none.
pub fn device_flags(path: &Path) -> String {
    checked_state_of(path)
        .and_then(|s| s.compute)
        .map_or(String::new(), |c| c.flags)
}

/// [`state_of`], its checksum checked: None for a damaged header too.
pub fn checked_state_of(path: &Path) -> Option<RunState> {
    let meta: BTreeMap<String, String> =
        serde_json::from_value(read_header(path)?["__metadata__"].take()).ok()?;
    serde_json::from_str(verified_state(path, &meta).ok()?).ok()
}

/// [`load`] for a file already read (`export::read_safetensors_meta`), so a
/// caller that must look at the metadata first reads the file once.
pub fn from_parts(
    path: &Path,
    tensors: Vec<Tensor>,
    meta: BTreeMap<String, String>,
) -> Result<Checkpoint> {
    if !is_checkpoint(&meta) {
        return Err(Error::Data(format!(
            "{}: a safetensors file but not an alexnet-cuda checkpoint (no training state); use it with --init-from",
            path.display()
        )));
    }
    let state_json = verified_state(path, &meta)?;
    // The version first: another version's state may not parse as ours.
    if let Some(v) = state_version(state_json).filter(|&v| v != VERSION as u64) {
        let by = match v > VERSION as u64 {
            true => "a newer build",
            false => "an older build",
        };
        return Err(Error::Data(format!(
            "{}: checkpoint version {v} but this build reads version {VERSION}; the file was written by {by} of alexnet-cuda: read it with that build",
            path.display(),
        )));
    }
    let state: RunState =
        serde_json::from_str(state_json).map_err(|e| damaged(path, format!("state: {e}")))?;
    verify_tensors(path, &meta, &tensors)?;
    check_consistent(path, &state, &tensors)?;
    Ok(Checkpoint {
        path: path.to_path_buf(),
        state,
        tensors: tensors.into_iter().map(|t| (t.name.clone(), t)).collect(),
    })
}

/// The state's JSON, its checksum checked.
fn verified_state<'a>(path: &Path, meta: &'a BTreeMap<String, String>) -> Result<&'a str> {
    let state_json = meta.get("state").ok_or_else(|| damaged(path, "no state"))?;
    let want: u32 = meta
        .get("state_crc32")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| damaged(path, "no state checksum"))?;
    if crc32fast::hash(state_json.as_bytes()) != want {
        return Err(damaged(path, "state checksum mismatch"));
    }
    Ok(state_json)
}

/// Every tensor's checksum against the header's.
fn verify_tensors(path: &Path, meta: &BTreeMap<String, String>, tensors: &[Tensor]) -> Result<()> {
    let crcs: BTreeMap<String, u32> = meta
        .get("tensor_crc32")
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| damaged(path, "no tensor checksums"))?;
    if crcs.len() != tensors.len() {
        return Err(damaged(
            path,
            format!("{} tensors, {} checksums", tensors.len(), crcs.len()),
        ));
    }
    match tensors
        .iter()
        .find(|t| crcs.get(&t.name) != Some(&crc_f32(&t.data)))
    {
        Some(t) => Err(damaged(
            path,
            format!("tensor {} checksum mismatch", t.name),
        )),
        None => Ok(()),
    }
}

/// A checkpoint's checksums (state and tensors), for a reader of its
/// weights alone (`--init-from`), which takes one of any version.
pub fn verify_sums(path: &Path, meta: &BTreeMap<String, String>, tensors: &[Tensor]) -> Result<()> {
    verified_state(path, meta)?;
    verify_tensors(path, meta, tensors)
}

/// The run state agrees with the network it names and with the tensors:
/// a class per output, a name per class, crops padded to the input, the
/// mean image it says was subtracted, and none it says was not (eval
/// would subtract it, `export --pixels` the channel means). `train` never
/// writes otherwise, and every checksum can be right on a state edited and
/// summed again; read as is, such a file would list no predictions, or
/// allocate without end.
fn check_consistent(path: &Path, state: &RunState, tensors: &[Tensor]) -> Result<()> {
    let topo = state.net.topology()?;
    let (classes, names) = (state.classes.len(), state.names.len());
    let p = &state.preprocess;
    let why = if classes != topo.classes {
        format!(
            "{classes} classes for the {} outputs of its network",
            topo.classes
        )
    } else if names != 0 && names != classes {
        format!("{names} class names for {classes} classes")
    } else if p.crop.checked_add(p.pad) != Some(topo.crop) {
        format!(
            "crops of {} padded by {} for a network input of {}",
            p.crop, p.pad, topo.crop
        )
    } else if p.crop == 0 || p.image_size < p.crop {
        format!("crops of {} from images of {}", p.crop, p.image_size)
    } else if p.image_size > MAX_SIDE as usize {
        format!(
            "images of {} a side, over the {MAX_SIDE} any is decoded to",
            p.image_size
        )
    } else if let Some(m) = state
        .saving
        .checkpoint_minutes
        .filter(|&m| !is_checkpoint_interval(m))
    {
        match m.abs() < 1e6 {
            true => format!("a checkpoint every {m} minutes"),
            false => format!("a checkpoint every {m:e} minutes"),
        }
    } else if p.mean_image != tensors.iter().any(|t| t.name == MEAN_IMAGE) {
        match p.mean_image {
            true => format!("the mean image subtracted in training, but no {MEAN_IMAGE}"),
            false => format!("a {MEAN_IMAGE}, but channel means subtracted in training"),
        }
    } else {
        return Ok(());
    };
    Err(Error::Data(format!(
        "{}: the run state does not fit the network ({why}): the file was changed after training wrote it; use another checkpoint",
        path.display()
    )))
}

impl Checkpoint {
    /// Copy the weights (and momentum and step count, when `resume`) into `net`.
    pub fn restore(&self, net: &mut dyn Model, resume: bool) -> Result<()> {
        load_weights(net, &self.tensors, &self.path, None)?;
        if resume {
            for name in net.param_names() {
                let key = format!("{MOMENTUM}{name}");
                let t = self
                    .tensors
                    .get(&key)
                    .ok_or_else(|| damaged(&self.path, format!("no {key}")))?;
                net.set_momentum(&name, &t.data)?;
            }
            net.set_steps(self.state.progress.step);
        }
        Ok(())
    }

    /// The checkpoint's network on one device for batches of up to `batch`
    /// images, its weights set from the file (never drawn first), for the
    /// commands that run a trained network.
    pub fn network<'a, B: Backend>(
        &self,
        be: &'a B,
        topo: &Topology,
        batch: usize,
    ) -> Result<Network<'a, B>> {
        let mut net = Network::zeroed(be, topo, batch)?;
        self.restore(&mut net, false)?;
        Ok(net)
    }

    pub fn mean_image(&self) -> Option<&[f32]> {
        self.tensors.get(MEAN_IMAGE).map(|t| t.data.as_slice())
    }

    /// The id of class `label` (its folder name: a synset for ImageNet);
    /// empty for a label the checkpoint does not have.
    pub fn class_id(&self, label: u32) -> String {
        let i = label as usize;
        self.state.classes.get(i).cloned().unwrap_or_default()
    }

    /// The readable name of class `label` (its id when it has none).
    pub fn class_name(&self, label: u32) -> String {
        match self
            .state
            .names
            .get(label as usize)
            .filter(|n| !n.is_empty())
        {
            Some(n) => n.clone(),
            None => self.class_id(label),
        }
    }

    /// CRC-32 of what the network computes with: every tensor but the
    /// momentum, by name in order. Two checkpoints with the same weights
    /// (a run's best and the step it copies) agree; any weight changed
    /// changes it.
    pub fn weights_crc32(&self) -> u32 {
        let weights = self
            .tensors
            .iter()
            .filter(|(n, _)| !n.starts_with(MOMENTUM));
        named_crc32(weights.map(|(n, t)| (n.as_str(), &t.data[..])).collect())
    }
}

/// A CRC-32 of `tensors` (names and values), in name order: equal for
/// equal tensors in any order.
pub fn tensors_crc32(tensors: &[Tensor]) -> u32 {
    named_crc32(
        tensors
            .iter()
            .map(|t| (t.name.as_str(), &t.data[..]))
            .collect(),
    )
}

fn named_crc32(mut named: Vec<(&str, &[f32])>) -> u32 {
    named.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = crc32fast::Hasher::new();
    for (name, data) in named {
        h.update(name.as_bytes());
        h.update(&crc_f32(data).to_le_bytes());
    }
    h.finalize()
}

/// Set every parameter of `net` from `tensors` (PyTorch names and shapes);
/// `source` names the file in errors. `fresh`, for weights a run starts
/// from (`--init-from`): layers left as they are (`--fresh`).
pub fn load_weights(
    net: &mut dyn Model,
    tensors: &HashMap<String, Tensor>,
    source: &Path,
    fresh: Option<&[String]>,
) -> Result<()> {
    for name in net.param_names() {
        let layer = name.split('.').next().unwrap_or(&name);
        if fresh.is_some_and(|f| f.iter().any(|f| f == layer)) {
            continue;
        }
        let want = net.param_shape(&name)?;
        let t = tensors.get(&name).ok_or_else(|| {
            Error::Data(format!(
                "{}: no tensor {name}; the file must hold {} (PyTorch names)",
                source.display(),
                net.param_names().join(", ")
            ))
        })?;
        if t.shape != want {
            return Err(Error::Data(format!(
                "{}: {name} has shape {:?} but config {} needs {:?}; load weights trained for the same config and class count{}",
                source.display(),
                t.shape,
                net.topology().name,
                want,
                match fresh {
                    Some(_) => format!(", or start {layer} fresh with --fresh {layer} (as in fine-tuning on other classes)"),
                    None => String::new(),
                }
            )));
        }
        refuse_non_finite(source, &name, &t.data)?;
        net.set_param(&name, &t.data)?;
    }
    Ok(())
}

/// Weights `name` of `source` that hold NaN or infinities are refused:
/// nothing learnt or drawn from them would mean anything.
pub fn refuse_non_finite(source: &Path, name: &str, data: &[f32]) -> Result<()> {
    let bad = data.iter().filter(|v| !v.is_finite()).count();
    if bad == 0 {
        return Ok(());
    }
    Err(Error::Data(format!(
        "{}: {name} holds {bad} values that are not finite numbers (NaN or infinite): the weights come from a run that diverged, or the file is damaged; pass other weights",
        source.display()
    )))
}

/// File name of the checkpoint after `step` optimiser steps.
pub fn checkpoint_name(step: u64) -> String {
    format!("ckpt-{step:010}.safetensors")
}

/// The step in a checkpoint's file name ([`checkpoint_name`]); None for
/// any other name.
pub fn step_in_name(name: &str) -> Option<u64> {
    name.strip_prefix("ckpt-")
        .and_then(|s| s.strip_suffix(".safetensors"))
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<u64>().ok())
}

/// The run folder's checkpoints, oldest first.
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(step) = step_in_name(name) {
            out.push((step, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// About how large a checkpoint of `topo` is, from above: its weights and
/// momentum as f32, a mean image of `image_size` pixels a side, and room
/// for the header and the run's state.
pub fn estimated_size(topo: &Topology, image_size: usize) -> Result<u64> {
    let params = topo.param_count()? as u64;
    let mean = 3 * (image_size * image_size) as u64;
    Ok(4 * (2 * params + mean) + (1 << 20))
}

/// Delete all but the newest `keep` checkpoints (never fewer than one).
/// A delete that fails does not stop the others: the failures are
/// returned, for the caller to report (an old checkpoint left behind
/// costs disk space, not the run).
pub fn prune(dir: &Path, keep: usize) -> Result<Vec<Error>> {
    let all = list(dir)?;
    let n = all.len().saturating_sub(keep.max(1));
    let mut failed = Vec::new();
    for (_, p) in &all[..n] {
        match fs::remove_file(p) {
            Ok(()) => tracing::debug!("removed {} (--keep {})", p.display(), keep.max(1)),
            Err(e) => failed.push(Error::io(p, e)),
        }
    }
    Ok(failed)
}

/// Point `best.safetensors` at `ckpt` (a hard link, swapped in atomically:
/// no second copy of the data is written).
pub fn mark_best(dir: &Path, ckpt: &Path) -> Result<()> {
    let best = dir.join("best.safetensors");
    let tmp = temp_path(&best);
    let _ = fs::remove_file(&tmp);
    // A copy (where links are not allowed) is synced before the rename,
    // as a checkpoint is: else a power cut could leave an empty best.
    let made = fs::hard_link(ckpt, &tmp)
        .or_else(|_| fs::copy(ckpt, &tmp).and_then(|_| fs::File::open(&tmp)?.sync_all()))
        .and_then(|()| fs::rename(&tmp, &best));
    if let Err(e) = made {
        // A half copy would hold a checkpoint's worth of a full disk.
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(&best, e));
    }
    sync_dir(&best)
}

/// Load `path`: a checkpoint file, or a run folder, whose newest checkpoint
/// is taken. A damaged checkpoint is an error that names the newest one of
/// its folder that verifies (`best.safetensors` the last), for the user to
/// pass instead.
pub fn load_latest(path: &Path) -> Result<Checkpoint> {
    refuse_slashed_file("--resume", path)?;
    if path.is_file() {
        return load(path).map_err(|e| with_good_one(e, path, "--resume"));
    }
    if !path.is_dir() {
        return Err(Error::Config(format!(
            "--resume {}: no such checkpoint or run folder",
            path.display()
        )));
    }
    let all = list(path)?;
    let Some((_, newest)) = all.last() else {
        let best = path.join("best.safetensors");
        let fix = match load(&best) {
            Ok(c) => format!(
                "; its best.safetensors (step {}) is one: --resume {}",
                c.state.progress.step,
                crate::shell::word(&best)
            ),
            Err(_) => String::new(),
        };
        return Err(Error::Config(format!(
            "--resume {}: the folder holds no checkpoint (ckpt-*.safetensors){fix}",
            path.display()
        )));
    };
    load(newest).map_err(|e| with_good_one(e, newest, "--resume"))
}

/// The version a run state's JSON names, read before the state is parsed
/// as ours (another version's layout may not parse).
fn state_version(state_json: &str) -> Option<u64> {
    let state: serde_json::Value = serde_json::from_str(state_json).ok()?;
    state["version"].as_u64()
}

/// Whether a file that failed to load is a damaged checkpoint: ours and
/// of this build's version (its checks failed), or a `.safetensors` file
/// whose header cannot be read (cut short). Another program's file, an
/// export, and a checkpoint of another version are whole, and must not
/// be called damaged (the error's advice is to delete it).
pub fn is_damaged(path: &Path) -> bool {
    match read_header(path) {
        Some(h) => {
            let version = h["__metadata__"]["state"].as_str().and_then(state_version);
            h["__metadata__"]["format"] == FORMAT && version.is_none_or(|v| v == VERSION as u64)
        }
        None => path.extension().is_some_and(|x| x == "safetensors"),
    }
}

/// Whether `path`, unreadable, is a damaged checkpoint ([`is_damaged`]) in
/// a run's folder: one that holds checkpoints or `best.safetensors`, where
/// another may be named. Elsewhere it may be any safetensors file.
pub fn damaged_in_a_run(path: &Path) -> bool {
    let dir = folder_of(path);
    let run = list(dir).is_ok_and(|l| !l.is_empty()) || dir.join("best.safetensors").exists();
    is_damaged(path) && run
}

/// `e`, the error of the damaged checkpoint `damaged` (given with `flag`),
/// with the newest other checkpoint of its folder that verifies, up to
/// `damaged`'s step where it is one of the folder's (a resume from an older
/// step goes back no further than asked), or `best.safetensors` where none
/// does (with `--keep 1` it may be the one left). Other errors, and any of
/// a file that is not [`damaged_in_a_run`], are left as they are.
fn with_good_one(e: Error, damaged: &Path, flag: &str) -> Error {
    if !matches!(e, Error::Data(_)) || !damaged_in_a_run(damaged) {
        return e;
    }
    let dir = folder_of(damaged);
    let ckpts = list(dir).unwrap_or_default();
    // A best.safetensors copied rather than linked is in no list: its
    // header's step, where that still reads.
    let upto = ckpts
        .iter()
        .find(|(_, p)| same_file(p, damaged))
        .map(|(s, _)| *s)
        .or_else(|| step_of(damaged))
        .unwrap_or(u64::MAX);
    let other = |p: &Path| !same_file(p, damaged) && load(p).is_ok();
    let older = ckpts.into_iter().rev().filter(|(s, _)| *s <= upto);
    let good = older.map(|(_, p)| p).find(|p| other(p));
    let best = dir.join("best.safetensors");
    let best_ok = step_of(&best).is_some_and(|s| s <= upto) && other(&best);
    let good = good.or_else(|| best_ok.then_some(best));
    Error::Data(match good {
        Some(p) => {
            // A resume goes on with the run's device flags, as it computed;
            // its --epochs and --lr, the advice cannot know.
            let (flags, others) = match flag {
                "--resume" => (
                    device_flags(&p),
                    " and device flags; keep its others, such as --epochs and --lr",
                ),
                _ => (String::new(), ""),
            };
            format!(
                "{e}; the newest good checkpoint is {}: pass it with {flag} {}{flags} (in place of the command's {flag}{others}; and delete the damaged file)",
                p.display(),
                crate::shell::word(&p),
            )
        }
        None => format!("{e}; no other checkpoint in {} verifies", dir.display()),
    })
}
