//! TensorBoard events files across resumes: every (tag, step) point is in
//! one file only, as TensorBoard's default reader needs (it keeps an old
//! file's points past a resume's checkpoint until that tag is written again
//! at a lower step), and the steps are those of steps.csv. Records are read
//! here by hand from the TFRecord framing and the protobuf wire format.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use alexnet_cuda::tensorboard::{cut_earlier, event, record, Payload};

fn run(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_alexnet-cuda"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("run alexnet-cuda");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}: {err}");
}

/// A protobuf varint at `b[*i..]`.
fn varint(b: &[u8], i: &mut usize) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = b[*i];
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            break;
        }
    }
    v
}

/// The fields of one message: (field number, varint value or bytes).
fn fields(b: &[u8]) -> Vec<(u64, u64, &[u8])> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let key = varint(b, &mut i);
        let (num, wire) = (key >> 3, key & 7);
        match wire {
            0 => out.push((num, varint(b, &mut i), &b[..0])),
            1 => {
                out.push((num, 0, &b[i..i + 8]));
                i += 8;
            }
            2 => {
                let n = varint(b, &mut i) as usize;
                out.push((num, 0, &b[i..i + n]));
                i += n;
            }
            5 => {
                out.push((num, 0, &b[i..i + 4]));
                i += 4;
            }
            w => panic!("wire type {w}"),
        }
    }
    out
}

/// Each record's data: an 8-byte length, 4 bytes of CRC, the data, 4 more.
fn record_data(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let n = u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap()) as usize;
        out.push(&bytes[i + 12..i + 12 + n]);
        i += 16 + n;
    }
    assert_eq!(i, bytes.len(), "a cut record at the end");
    out
}

/// (Event.step (field 2), the tags of its Summary (field 5, values field 1,
/// tag field 1)).
fn step_and_tags(data: &[u8]) -> (i64, Vec<String>) {
    let mut step = 0;
    let mut tags = Vec::new();
    for (num, v, b) in fields(data) {
        match num {
            2 => step = v as i64,
            5 => {
                for (n, _, value) in fields(b) {
                    assert_eq!(n, 1);
                    for (m, _, tag) in fields(value) {
                        if m == 1 {
                            tags.push(String::from_utf8(tag.to_vec()).unwrap());
                        }
                    }
                }
            }
            _ => {}
        }
    }
    (step, tags)
}

fn events_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("events.out.tfevents."))
        .collect();
    v.sort();
    v
}

/// A 2-epoch run, a resume to 3, then a resume from the epoch-2 checkpoint
/// to 3 again (as after a kill past a checkpoint): each tag's steps across
/// the three files are distinct, the step scalars' steps are steps.csv's,
/// and there are three epoch-end points; the replaced epoch 3 is kept
/// aside.
#[test]
fn resumed_runs_leave_each_point_in_one_events_file() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data").display().to_string();
    let out = t.path().join("run");
    let o = out.display().to_string();
    run(&[
        "demo-data",
        "--out",
        &data,
        "--size",
        "32",
        "--per-class",
        "12",
    ]);
    let common = ["--cpu", "--data", &data, "--no-progress"];
    run(&[
        &["train", "--config", "cifar", "--val", "40", "--batch", "20"],
        &common[..],
        &["--epochs", "2", "--checkpoint-every", "0", "--out", &o],
    ]
    .concat());
    run(&[&["train", "--resume", &o, "--epochs", "3"], &common[..]].concat());
    let mut cks: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("ckpt-"))
        .collect();
    cks.sort();
    let ck2 = cks[cks.len() - 2].display().to_string();
    run(&[&["train", "--resume", &ck2, "--epochs", "3"], &common[..]].concat());

    let files = events_files(&out);
    assert_eq!(files.len(), 3, "{files:?}");
    let mut seen: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    for f in &files {
        for data in record_data(&std::fs::read(f).unwrap()) {
            let (step, tags) = step_and_tags(data);
            for tag in tags {
                let fresh = seen.entry(tag.clone()).or_default().insert(step);
                assert!(fresh, "{tag} at step {step} twice ({})", f.display());
            }
        }
    }
    let csv = std::fs::read_to_string(out.join("steps.csv")).unwrap();
    let steps: BTreeSet<i64> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(seen["step/loss"], steps);
    assert_eq!(seen["epoch/val_top1"].len(), 3);
    assert_eq!(seen["conv1/filters"], seen["epoch/val_top1"]);
    // The history replaced (the first epoch 3) is kept aside whole, with
    // the metrics files: its two events files hold every step to the end.
    let aside = out.join(format!("replaced-after-step-{}", steps.len() * 2 / 3));
    let kept = events_files(&aside);
    assert_eq!(kept.len(), 2, "{}", aside.display());
    let last = kept
        .iter()
        .flat_map(|f| {
            record_data(&std::fs::read(f).unwrap())
                .into_iter()
                .map(|d| step_and_tags(d).0)
                .collect::<Vec<_>>()
        })
        .max();
    assert_eq!(last, steps.last().copied());
}

/// `cut_earlier` at step 6: an events file of steps 1..10 and a torn last
/// record keeps its version record and steps 1..6, whole; a file already
/// within step 6 is left as it was; other files, and another program's
/// events file, are not touched. A fresh run (no step) removes our events
/// files and only them.
#[test]
fn cut_earlier_keeps_records_up_to_the_step_and_drops_a_torn_tail() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let scalars = |step: i64| event(0.0, step, Payload::Scalars(&[("step/loss", 1.0)]));
    let mut long = record(&event(0.0, 0, Payload::FileVersion));
    for s in 1..=10 {
        long.extend(record(&scalars(s)));
    }
    let torn = record(&scalars(11));
    long.extend(&torn[..torn.len() - 3]);
    let mut short = record(&event(0.0, 0, Payload::FileVersion));
    short.extend(record(&scalars(3)));
    let a = dir.join("events.out.tfevents.0000000001.h.alexnet-cuda");
    let b = dir.join("events.out.tfevents.0000000002.h.alexnet-cuda");
    std::fs::write(&a, &long).unwrap();
    std::fs::write(&b, &short).unwrap();
    std::fs::write(dir.join("steps.csv"), "step\n").unwrap();
    // Another program's events file (no ".alexnet-cuda" in its name).
    let theirs = dir.join("events.out.tfevents.0000000003.h");
    std::fs::write(&theirs, &long).unwrap();

    let cut = cut_earlier(dir, Some(6), false).unwrap();
    let paths: Vec<&PathBuf> = cut.iter().map(|c| &c.path).collect();
    assert_eq!(paths, [&a]);
    assert_eq!(cut[0].unread, torn.len() - 3, "the torn record's bytes");
    let kept = std::fs::read(&a).unwrap();
    let steps: Vec<i64> = record_data(&kept)
        .iter()
        .map(|d| step_and_tags(d).0)
        .collect();
    assert_eq!(steps, [0, 1, 2, 3, 4, 5, 6]);
    assert_eq!(kept[..], long[..kept.len()], "records kept byte for byte");
    assert_eq!(std::fs::read(&b).unwrap(), short);

    let gone: Vec<PathBuf> = cut_earlier(dir, None, false)
        .unwrap()
        .into_iter()
        .map(|c| c.path)
        .collect();
    assert_eq!(gone, [a.clone(), b.clone()]);
    assert!(!a.exists() && !b.exists());
    assert!(dir.join("steps.csv").exists());
    assert_eq!(std::fs::read(&theirs).unwrap(), long);
}

/// A damaged record in the middle of an events file. Its data failing its
/// CRC, the framing (TFRecord: length, masked CRC32C of the length, data,
/// masked CRC32C of the data) still says where the next record starts:
/// that record alone is dropped. Its length failing its CRC, nothing after
/// it can be found: the records before it are kept. Either way the bytes
/// lost are counted (said in the resumed run's log) and the file as it was
/// is kept beside, under a name TensorBoard does not read; a torn last
/// record is not damage and leaves no copy.
#[test]
fn cut_earlier_drops_a_damaged_record_and_keeps_the_file_aside() {
    let scalars = |step: i64| record(&event(0.0, step, Payload::Scalars(&[("step/loss", 1.0)])));
    let mut bytes = record(&event(0.0, 0, Payload::FileVersion));
    bytes.extend(scalars(1));
    let damaged_at = bytes.len();
    let record_len = scalars(2).len();
    for s in 2..=10 {
        bytes.extend(scalars(s));
    }
    let name = "events.out.tfevents.0000000001.h.alexnet-cuda";
    // (byte flipped, steps kept, bytes lost): a byte of step 2's data; a
    // byte of its length.
    let cases = [
        (damaged_at + 14, vec![0, 1, 3, 4, 5, 6], record_len),
        (damaged_at + 2, vec![0, 1], bytes.len() - damaged_at),
    ];
    for (flip, want, lost) in cases {
        let t = tempfile::tempdir().unwrap();
        let mut damaged = bytes.clone();
        damaged[flip] ^= 0xff;
        let a = t.path().join(name);
        std::fs::write(&a, &damaged).unwrap();
        let cut = cut_earlier(t.path(), Some(6), false).unwrap();
        assert_eq!(cut.len(), 1);
        assert_eq!(cut[0].unread, lost, "byte {flip}");
        let steps: Vec<i64> = record_data(&std::fs::read(&a).unwrap())
            .iter()
            .map(|d| step_and_tags(d).0)
            .collect();
        assert_eq!(steps, want, "byte {flip}");
        let aside = cut[0].aside.as_ref().expect("a copy of the damaged file");
        assert_eq!(aside.parent(), Some(t.path()));
        let aside_name = aside.file_name().unwrap().to_string_lossy();
        assert!(!aside_name.contains("tfevents"), "{aside_name}");
        assert!(aside_name.ends_with(".before-resume-6"), "{aside_name}");
        assert_eq!(std::fs::read(aside).unwrap(), damaged);
    }

    // Damaged again and cut at the same step again (a second resume from
    // one checkpoint): the first copy stays as it was, the second goes
    // beside it.
    let t = tempfile::tempdir().unwrap();
    let a = t.path().join(name);
    let mut first = bytes.clone();
    first[damaged_at + 14] ^= 0xff;
    std::fs::write(&a, &first).unwrap();
    let one = cut_earlier(t.path(), Some(6), false).unwrap()[0]
        .aside
        .clone();
    let mut again = std::fs::read(&a).unwrap();
    again[damaged_at + 14] ^= 0xff;
    std::fs::write(&a, &again).unwrap();
    let two = cut_earlier(t.path(), Some(6), false).unwrap()[0]
        .aside
        .clone();
    let (one, two) = (one.expect("a first copy"), two.expect("a second copy"));
    assert_ne!(one, two);
    assert_eq!(std::fs::read(&one).unwrap(), first);
    assert_eq!(std::fs::read(&two).unwrap(), again);

    // A torn last record: cut, no copy.
    let t = tempfile::tempdir().unwrap();
    let torn = &bytes[..bytes.len() - 5];
    std::fs::write(t.path().join(name), torn).unwrap();
    let cut = cut_earlier(t.path(), Some(6), false).unwrap();
    assert_eq!((cut[0].unread, &cut[0].aside), (record_len - 5, &None));
    assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1);
}

/// A resume from a checkpoint taken at an epoch's last step (6) before its
/// validation ended validates first, at step 6: the epoch-end records an
/// earlier resume from it wrote at step 6 go, or TensorBoard would show two
/// points there; step 6's own rows and an earlier epoch's end (step 3)
/// stay. A checkpoint whose epoch is done keeps them all.
#[test]
fn cut_earlier_drops_the_epoch_end_a_resume_will_write_again() {
    let scalars =
        |step: i64, tags: &[(&str, f32)]| record(&event(0.0, step, Payload::Scalars(tags)));
    let mut bytes = record(&event(0.0, 0, Payload::FileVersion));
    for s in 1..=6 {
        bytes.extend(scalars(s, &[("step/loss", 1.0), ("step/lr", 0.01)]));
        if s % 3 == 0 {
            bytes.extend(scalars(
                s,
                &[("epoch/val_top1", 0.5), ("conv1/weight_rms", 0.1)],
            ));
        }
    }
    let name = "events.out.tfevents.0000000001.h.alexnet-cuda";
    let kept = |validates: bool| {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join(name), &bytes).unwrap();
        cut_earlier(t.path(), Some(6), validates).unwrap();
        let after = std::fs::read(t.path().join(name)).unwrap();
        record_data(&after)
            .iter()
            .map(|d| step_and_tags(d))
            .filter(|(_, tags)| tags.iter().any(|t| t.starts_with("epoch/")))
            .map(|(s, _)| s)
            .collect::<Vec<i64>>()
    };
    assert_eq!(kept(false), [3, 6]);
    assert_eq!(kept(true), [3]);
    // Step 6's own rows stay either way.
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join(name), &bytes).unwrap();
    cut_earlier(t.path(), Some(6), true).unwrap();
    let steps: Vec<i64> = record_data(&std::fs::read(t.path().join(name)).unwrap())
        .iter()
        .map(|d| step_and_tags(d).0)
        .collect();
    assert_eq!(steps, [0, 1, 2, 3, 3, 4, 5, 6]);
}
