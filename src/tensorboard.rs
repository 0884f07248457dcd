//! TensorBoard event files in the run folder, so `tensorboard --logdir runs/`
//! shows a run while it trains: the per-step and per-epoch scalars of
//! `steps.csv` / `epochs.csv` and, at each epoch end, each layer's weight
//! RMS and the size of its last update against its weights (the momentum
//! buffer v is that update: w += v), and a picture of conv1's kernels
//! (drawn by `viz::filters`, as the `filters` command draws them).
//! This file owns the format (the record framing; the messages are
//! `tensorboard_pb`'s prost structs) and the writer.
//!
//! The format, from TensorFlow's sources:
//! - framing (`tensorflow/core/lib/io/record_writer.cc`): each record is
//!   the data length as a little-endian u64, the masked CRC32C of those 8
//!   bytes (u32 LE), the data, and the masked CRC32C of the data (u32 LE);
//!   the mask (`tensorflow/core/lib/hash/crc32c.h`) rotates the CRC right
//!   by 15 bits and adds 0xa282ead8;
//! - the records are `Event` messages (`tensorflow/core/util/event.proto`;
//!   the first record's file_version is "brain.Event:2") carrying a
//!   `Summary` (`tensorflow/core/framework/summary.proto`) of scalars or a
//!   PNG, or a `SessionLog` START.
//!
//! The framing stays ours: the `tfrecord` crate frames records too, but
//! brings prost 0.12 and all of TensorFlow's generated messages for these
//! twenty lines. The CRC32C is the `crc32c` crate's.
//!
//! A resumed run opens a new file beside the old ones (TensorBoard reads
//! every events file in a folder) and cuts the old ones back to the
//! checkpoint's step (a killed run's steps after its checkpoint go, as
//! `steps.csv` is cut back). The new file starts with a `SessionLog` START
//! at the step after the checkpoint, which TensorBoard's Python reader
//! also takes as "drop what comes later".
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};
use prost::Message;

use crate::checkpoint::MOMENTUM;
use crate::error::{Error, Result};
use crate::export::Tensor;
use crate::fsutil::{write_aside, write_atomic};
use crate::metrics::StepRow;
use crate::model::trainable::Model;
use crate::run_state::EpochStats;
use crate::tensorboard_pb::event::What;
use crate::tensorboard_pb::summary::{self, value};
use crate::tensorboard_pb::{Event, SessionLog, SessionStatus, Summary};
use crate::viz::filters::{render, Conv1, Scale};
use tracing::warn;

/// CRC32C (Castagnoli) masked as TFRecord stores it.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    mask(crc32c::crc32c(data))
}

/// TFRecord's mask: rotate right by 15 bits, add a constant.
pub fn mask(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord: length, its masked CRC, the data, the data's masked CRC.
pub fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

/// The end of our events files' names (TensorFlow's pattern ends with the
/// writer's own tag), which tells them from other tools' in a folder.
const SUFFIX: &str = ".alexnet-cuda";
/// The start of every events file's name (TensorFlow's pattern).
pub const PREFIX: &str = "events.out.tfevents.";

/// Whether `name` is one of this program's events files: another tool's
/// logs in the same folder are not.
fn is_ours(name: &str) -> bool {
    name.starts_with(PREFIX) && name.contains(SUFFIX)
}

/// What [`records`] read of an events file.
struct Records {
    /// The whole records' (start, end) byte ranges, in order.
    whole: Vec<(usize, usize)>,
    /// Bytes of records skipped: their data failed its CRC (damage), but
    /// their length, checked by its own CRC, says where the next starts.
    skipped: usize,
    /// Where reading stopped: the file's length, or a record whose length
    /// is cut short or fails its CRC, after which nothing can be found.
    end: usize,
    /// Whether that last record runs past the file's end: a write cut off
    /// by a stopped process, not damage.
    torn: bool,
}

/// The records of an events file, a record damaged in its data skipped.
fn records(bytes: &[u8]) -> Records {
    let mut r = Records {
        whole: Vec::new(),
        skipped: 0,
        end: 0,
        torn: false,
    };
    let mut i = 0;
    while i < bytes.len() {
        // Some((end, whether the data's CRC matches)) where the length
        // reads whole and its CRC matches.
        let framed = (|| {
            let len = bytes.get(i..i + 8)?;
            let crc = u32::from_le_bytes(bytes.get(i + 8..i + 12)?.try_into().ok()?);
            if crc != masked_crc32c(len) {
                return None;
            }
            let n = usize::try_from(u64::from_le_bytes(len.try_into().ok()?)).ok()?;
            let end = (i + 12).checked_add(n)?.checked_add(4)?;
            if end > bytes.len() {
                return Some((end, false));
            }
            let dcrc = u32::from_le_bytes(bytes[end - 4..end].try_into().ok()?);
            Some((end, dcrc == masked_crc32c(&bytes[i + 12..end - 4])))
        })();
        match framed {
            Some((end, true)) => r.whole.push((i, end)),
            Some((end, false)) if end <= bytes.len() => r.skipped += end - i,
            Some(_) => {
                r.torn = true;
                break;
            }
            None => {
                r.torn = bytes.len() - i < 12;
                break;
            }
        }
        i = framed.map_or(i, |(end, _)| end);
    }
    r.end = i;
    r
}

/// Make the folder's earlier events files agree with the run about to
/// write its own. A fresh run removes them: they are an attempt that left no
/// checkpoint, whose `steps.csv` is rewritten too. A run resumed at step
/// `s` cuts each back to its records at steps up to `s` (and a torn last
/// record): the restart marker alone would not do, since TensorBoard's
/// default reader ignores it and keeps a tag's points past `s` until the
/// resumed run writes that tag again. A checkpoint taken at an epoch's last
/// step before its validation ended (`validates_at_step`: the resume
/// validates first, at step `s`) also loses the epoch-end records an
/// earlier resume from it wrote at `s`, which would be written twice.
/// Returns the files changed.
pub fn cut_earlier(
    dir: &Path,
    resume_step: Option<u64>,
    validates_at_step: bool,
) -> Result<Vec<Cut>> {
    let mut changed = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if !name.is_some_and(|n| is_ours(&n)) || !path.is_file() {
            continue;
        }
        let Some(s) = resume_step else {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            changed.push(Cut {
                path,
                unread: 0,
                aside: None,
            });
            continue;
        };
        let s = i64::try_from(s).unwrap_or(i64::MAX);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let r = records(&bytes);
        let kept: Vec<&(usize, usize)> = r
            .whole
            .iter()
            .filter(|(a, b)| {
                // A record whose step cannot be read is kept as it is.
                Event::decode(&bytes[a + 12..b - 4]).map_or(true, |e| {
                    e.step < s || (e.step == s && !(validates_at_step && is_epoch_end(&e)))
                })
            })
            .collect();
        let unread = r.skipped + (bytes.len() - r.end);
        if unread == 0 && kept.len() == r.whole.len() {
            continue;
        }
        // Damage, not a last write cut off: the file as it was stays.
        let damaged = r.skipped > 0 || (r.end < bytes.len() && !r.torn);
        let aside = damaged.then(|| keep_aside(&path, s, &bytes)).transpose()?;
        let out: Vec<u8> = kept
            .iter()
            .flat_map(|&&(a, b)| &bytes[a..b])
            .copied()
            .collect();
        write_atomic(&path, &out)?;
        changed.push(Cut {
            path,
            unread,
            aside,
        });
    }
    changed.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(changed)
}

/// An events file `cut_earlier` changed: cut back or removed.
#[derive(Debug, PartialEq, Eq)]
pub struct Cut {
    pub path: PathBuf,
    /// Bytes that could not be read, dropped: a last record torn by a
    /// stopped process, or damage (a record whose data fails its CRC; one
    /// whose length does takes the records after it along).
    pub unread: usize,
    /// Where the file as it was is kept when damage, not a torn last
    /// record, lost bytes: under a name without "tfevents", which
    /// TensorBoard would read as another events file.
    pub aside: Option<PathBuf>,
}

/// Whether an event holds epoch-end values: a summary with no per-step
/// (`step/`) tag.
fn is_epoch_end(e: &Event) -> bool {
    let Some(What::Summary(s)) = &e.what else {
        return false;
    };
    !s.value.is_empty() && !s.value.iter().any(|v| v.tag.starts_with("step/"))
}

/// Copy an events file's `bytes` beside it before a resume at step `s`
/// cuts it: `events.out.damaged.<rest>.before-resume-<s>` (`-2`, `-3` ...
/// beside an earlier one).
fn keep_aside(path: &Path, s: i64, bytes: &[u8]) -> Result<PathBuf> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let name = name.replacen("tfevents", "damaged", 1);
    write_aside(
        &path.with_file_name(format!("{name}.before-resume-{s}")),
        bytes,
    )
}

/// What an event carries besides its time and step.
pub enum Payload<'a> {
    /// The first record of a file.
    FileVersion,
    /// `SessionLog { status: START }`: a restart at this step.
    Start,
    /// Scalars, (tag, value).
    Scalars(&'a [(&'a str, f32)]),
    /// A PNG: tag, height, width, channels (colorspace), the encoded file.
    Image {
        tag: &'a str,
        height: i32,
        width: i32,
        channels: i32,
        png: &'a [u8],
    },
}

/// An `Event` message's bytes.
pub fn event(wall_time: f64, step: i64, payload: Payload) -> Vec<u8> {
    let scalar = |(tag, v): &(&str, f32)| summary::Value {
        tag: tag.to_string(),
        value: Some(value::Value::SimpleValue(*v)),
    };
    let what = match payload {
        Payload::FileVersion => What::FileVersion("brain.Event:2".into()),
        Payload::Start => What::SessionLog(SessionLog {
            status: SessionStatus::Start as i32,
        }),
        Payload::Scalars(values) => What::Summary(Summary {
            value: values.iter().map(scalar).collect(),
        }),
        Payload::Image {
            tag,
            height,
            width,
            channels,
            png,
        } => What::Summary(Summary {
            value: vec![summary::Value {
                tag: tag.into(),
                value: Some(value::Value::Image(summary::Image {
                    height,
                    width,
                    colorspace: channels,
                    encoded_image_string: png.to_vec(),
                })),
            }],
        }),
    };
    Event {
        wall_time,
        step,
        what: Some(what),
    }
    .encode_to_vec()
}

/// The seconds in a new events file's name: now, or past the newest of
/// the folder's own files where a clock behind theirs (a resume on another
/// machine) would name it earlier. TensorBoard reads a folder's files in
/// name order, and a resumed run's file must come after the run's older ones.
fn name_seconds(dir: &Path, now: u64) -> u64 {
    let newest = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            is_ours(&name).then_some(())?;
            name[PREFIX.len()..].split('.').next()?.parse::<u64>().ok()
        })
        .max();
    newest.map_or(now, |n| now.max(n + 1))
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The machine's name for the file name (TensorFlow's pattern is
/// `events.out.tfevents.<seconds>.<host>...`); "localhost" when unknown.
fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

/// Root mean square, summed in f64.
fn rms(x: &[f32]) -> f64 {
    let sum: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
    (sum / x.len().max(1) as f64).sqrt()
}

/// The step scalars' tags, in `steps.csv`'s order.
pub const STEP_TAGS: [&str; 3] = ["step/loss", "step/top1", "step/lr"];
/// The epoch scalars' tags (x: the step at the epoch's end).
pub const EPOCH_TAGS: [&str; 9] = [
    "epoch/epoch",
    "epoch/lr",
    "epoch/train_loss",
    "epoch/train_top1",
    "epoch/val_loss",
    "epoch/val_top1",
    "epoch/val_top5",
    "epoch/images_per_s",
    "epoch/data_wait",
];
/// The per-layer tags' prefixes: `weight_rms/conv1`, `update_ratio/conv1`.
pub const LAYER_TAGS: [&str; 2] = ["weight_rms", "update_ratio"];
/// The conv1 kernel picture's tag.
pub const FILTERS_TAG: &str = "conv1/filters";

/// Appends events to one file of a run folder. Writes are buffered and
/// reach the file at `flush` (when the metrics files flush).
pub struct EventWriter {
    path: PathBuf,
    file: BufWriter<File>,
    /// Unix time at `elapsed0` seconds of run time: a step row's wall
    /// time is this plus its `elapsed_s - elapsed0`.
    wall0: f64,
    elapsed0: f64,
}

impl EventWriter {
    /// A new events file in `dir`, `events.out.tfevents.<unix seconds>.
    /// <host>.alexnet-cuda` (a number appended if that name is taken).
    /// `elapsed0` is the run time trained before (a resume), and
    /// `resume_step` the checkpoint's step when resuming: the file then
    /// starts with a restart marker at the step after it.
    pub fn create(dir: &Path, elapsed0: f64, resume_step: Option<u64>) -> Result<EventWriter> {
        let wall0 = unix_now();
        let base = format!(
            "{PREFIX}{:010}.{}{SUFFIX}",
            name_seconds(dir, wall0 as u64),
            host_name()
        );
        let mut n = 0;
        let (path, file) = loop {
            let path = match n {
                0 => dir.join(&base),
                _ => dir.join(format!("{base}.{n}")),
            };
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => break (path, f),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => n += 1,
                Err(e) => return Err(Error::io(&path, e)),
            }
        };
        EventWriter::start(path, file, wall0, elapsed0, resume_step)
    }

    /// The file's first records (the version, a resume's restart marker),
    /// flushed.
    fn start(
        path: PathBuf,
        file: File,
        wall0: f64,
        elapsed0: f64,
        resume_step: Option<u64>,
    ) -> Result<EventWriter> {
        let mut w = EventWriter {
            path,
            file: BufWriter::new(file),
            wall0,
            elapsed0,
        };
        w.write(&event(wall0, 0, Payload::FileVersion))?;
        if let Some(s) = resume_step {
            w.write(&event(wall0, s as i64 + 1, Payload::Start))?;
        }
        w.flush()?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self, event: &[u8]) -> Result<()> {
        self.file
            .write_all(&record(event))
            .map_err(|e| Error::io(&self.path, e))
    }

    /// A step's loss, top-1 and lr, at its step.
    pub fn step(&mut self, r: &StepRow) -> Result<()> {
        let values = [
            (STEP_TAGS[0], r.loss as f32),
            (STEP_TAGS[1], r.top1 as f32),
            (STEP_TAGS[2], r.lr as f32),
        ];
        let wall = self.wall0 + (r.elapsed_s - self.elapsed0);
        self.write(&event(wall, r.step as i64, Payload::Scalars(&values)))
    }

    /// An epoch's row, at the step that ended it.
    pub fn epoch(&mut self, step: u64, s: &EpochStats) -> Result<()> {
        let v = [
            s.epoch as f64,
            s.lr as f64,
            s.train_loss,
            s.train_top1,
            s.val_loss,
            s.val_top1,
            s.val_top5,
            s.images_per_s,
            s.data_wait,
        ];
        let values: Vec<(&str, f32)> = EPOCH_TAGS
            .iter()
            .zip(v)
            .map(|(t, v)| (*t, v as f32))
            .collect();
        self.write(&event(unix_now(), step as i64, Payload::Scalars(&values)))
    }

    /// Each layer's weight RMS and its last update's RMS over it (the
    /// momentum buffer's: the paper's rule adds v to w), at `step`, from a
    /// checkpoint's `tensors` (weights and their `momentum.` buffers). A
    /// ratio far from about 1e-3 points at a learning rate too large or
    /// too small for that layer.
    pub fn layers(&mut self, step: u64, tensors: &[Tensor]) -> Result<()> {
        let data = |name: &str| tensors.iter().find(|t| t.name == name).map(|t| &t.data);
        let mut tags = Vec::new();
        for t in tensors {
            let Some(layer) = t.name.strip_suffix(".weight") else {
                continue;
            };
            if layer.starts_with(MOMENTUM) {
                continue;
            }
            let w = rms(&t.data);
            tags.push((format!("{}/{layer}", LAYER_TAGS[0]), w));
            if let Some(v) = data(&format!("{MOMENTUM}{}", t.name)).filter(|_| w > 0.0) {
                tags.push((format!("{}/{layer}", LAYER_TAGS[1]), rms(v) / w));
            }
        }
        let values: Vec<(&str, f32)> = tags.iter().map(|(t, v)| (t.as_str(), *v as f32)).collect();
        self.write(&event(unix_now(), step as i64, Payload::Scalars(&values)))
    }

    /// conv1's kernels as a PNG grid, at `step`.
    pub fn filters(&mut self, step: u64, net: &dyn Model) -> Result<()> {
        // The `filters` command's picture (towers, per-kernel scaling).
        let conv1 = match Conv1::from_model(net) {
            Ok(c) => c,
            Err(e) => {
                warn!("no conv1 picture for TensorBoard: {e}");
                return Ok(());
            }
        };
        let (layout, rgb) = render(&conv1, Scale::Kernel);
        let (width, height) = (dim(layout.width)?, dim(layout.height)?);
        let mut png = Vec::new();
        PngEncoder::new(&mut png)
            .write_image(
                &rgb,
                width.unsigned_abs(),
                height.unsigned_abs(),
                ExtendedColorType::Rgb8,
            )
            .map_err(|e| {
                Error::Backend(format!(
                    "{}: encoding conv1's kernels as PNG: {e}",
                    self.path.display()
                ))
            })?;
        let payload = Payload::Image {
            tag: FILTERS_TAG,
            height,
            width,
            channels: 3,
            png: &png,
        };
        self.write(&event(unix_now(), step as i64, payload))
    }

    pub fn flush(&mut self) -> Result<()> {
        self.file.flush().map_err(|e| Error::io(&self.path, e))
    }

    /// `flush`, then the file's data to the disk (fsync).
    pub fn sync(&mut self) -> Result<()> {
        self.flush()?;
        self.file
            .get_ref()
            .sync_data()
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// A picture side as Summary.Image's int32 (so also a u32 for the PNG).
fn dim(px: usize) -> Result<i32> {
    i32::try_from(px).map_err(|_| Error::Shape {
        op: "conv1 picture",
        detail: format!("{px} pixels"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_rfc3720_vectors() {
        // RFC 3720, appendix B.4.
        assert_eq!(crc32c::crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c::crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        let up: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c::crc32c(&up), 0x46DD_794E);
        let down: Vec<u8> = (0..32).rev().collect();
        assert_eq!(crc32c::crc32c(&down), 0x113F_DB5C);
        // The CRC catalogue's check value.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn mask_is_tensorflows_formula() {
        // ((crc >> 15) | (crc << 17)) + 0xa282ead8, by hand:
        // 0x8A9136AA >> 15 = 0x0001_1522, << 17 = 0x6D54_0000 (bits shifted
        // out dropped), or = 0x6D55_1522, + 0xA282_EAD8 = 0x0FD7_FFFA (mod 2^32).
        assert_eq!(mask(0x8A91_36AA), 0x0FD7_FFFA);
        assert_eq!(mask(0), 0xA282_EAD8);
        assert_eq!(masked_crc32c(&[0u8; 32]), 0x0FD7_FFFA);
    }

    #[test]
    fn record_frames_the_data() {
        let data = b"abc";
        let r = record(data);
        assert_eq!(r.len(), 8 + 4 + 3 + 4);
        assert_eq!(&r[..8], &3u64.to_le_bytes());
        assert_eq!(&r[8..12], &masked_crc32c(&3u64.to_le_bytes()).to_le_bytes());
        assert_eq!(&r[12..15], data);
        assert_eq!(&r[15..], &masked_crc32c(data).to_le_bytes());
    }

    #[test]
    fn scalar_event_bytes() {
        let e = event(1.5, 300, Payload::Scalars(&[("a", 2.0)]));
        let mut want = vec![0x09];
        want.extend_from_slice(&1.5f64.to_le_bytes());
        // step (2): 300
        want.extend_from_slice(&[0x10, 0xac, 0x02]);
        // summary (5), 10 bytes: value (1), 8 bytes: { tag (1) "a" (3 bytes),
        // simple_value (2) 2.0f (5 bytes) }
        want.extend_from_slice(&[0x2a, 0x0a, 0x0a, 0x08, 0x0a, 0x01, b'a', 0x15]);
        want.extend_from_slice(&2.0f32.to_le_bytes());
        assert_eq!(e, want);
        // file_version (3), 13 bytes; step 0 is proto3's default, not written.
        let v = event(1.5, 0, Payload::FileVersion);
        assert_eq!(&v[9..11], &[0x1a, 13]);
        assert_eq!(&v[11..], b"brain.Event:2");
        // session_log (7) { status (1): START (1) } at step 5.
        let s = event(1.5, 5, Payload::Start);
        assert_eq!(&s[9..], &[0x10, 0x05, 0x3a, 0x02, 0x08, 0x01]);
        // An image: summary (5) { value (1) { tag (1) "f", image (4) {
        // height (1) 2, width (2) 3, colorspace (3) 3, encoded (4) "P" } } }.
        let png = b"P";
        let payload = Payload::Image {
            tag: "f",
            height: 2,
            width: 3,
            channels: 3,
            png,
        };
        let i = event(1.5, 5, payload);
        assert_eq!(
            &i[11..],
            &[
                0x2a, 0x10, 0x0a, 0x0e, 0x0a, 0x01, b'f', 0x22, 0x09, 0x08, 0x02, 0x10, 0x03, 0x18,
                0x03, 0x22, 0x01, b'P'
            ]
        );
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_failed_write_is_an_error_naming_the_file() {
        // /dev/full fails every write with ENOSPC, as a full disk does.
        let path = PathBuf::from("/dev/full");
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open /dev/full");
        let err = match EventWriter::start(path, file, 0.0, 0.0, None) {
            Ok(_) => panic!("writing to /dev/full succeeded"),
            Err(e) => e.to_string(),
        };
        assert!(err.starts_with("/dev/full: "), "{err}");
        assert!(err.contains("No space left on device"), "{err}");
    }

    /// A new file's name sorts after the folder's own files: their newest
    /// second plus one where this clock is behind, else now; another
    /// program's files do not count.
    #[test]
    fn a_new_file_is_named_after_the_runs_older_ones() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(name_seconds(t.path(), 100), 100);
        let touch = |n: &str| std::fs::write(t.path().join(n), b"").unwrap();
        touch("events.out.tfevents.0000000050.a.alexnet-cuda");
        assert_eq!(name_seconds(t.path(), 100), 100);
        touch("events.out.tfevents.9999999990.b.alexnet-cuda.1");
        touch("events.out.tfevents.9999999999.other-program");
        assert_eq!(name_seconds(t.path(), 100), 9_999_999_991);
    }
}
