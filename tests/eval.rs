//! Evaluation against hand-worked answers: top-k ranks with ties, averaging
//! over crops, and the whole ten-crop evaluation against crops cut out here
//! by hand (section 4.1: the four corners and the centre, and their mirror
//! images) and run through the network one at a time. Per-class counts
//! against rows sorted here. Then the `eval` CLI on a trained checkpoint,
//! including data with fewer classes, and its per-class tables against
//! `predict`'s logits.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use alexnet_cuda::backend::cpu::CpuBackend;
use alexnet_cuda::checkpoint;
use alexnet_cuda::data::{write_demo_dataset, ImageSet, ImageSource, LoaderConfig};
use alexnet_cuda::eval::{evaluate, log_mean_softmax, top_k, topk_hits, ClassTally};
use alexnet_cuda::model::net::{Mode, Network};
use alexnet_cuda::model::topology::Topology;
use alexnet_cuda::rng::Rng;

use crate::common::cli;

#[test]
fn top_k_by_hand() {
    let row = [0.1, 0.5, 0.2, 0.5, 0.05, 0.15];
    assert_eq!(top_k(&row, 3), vec![(1, 0.5), (3, 0.5), (2, 0.2)]);
    assert_eq!(top_k(&row, 10).len(), 6);
    // Rows of 7 classes. Row 0: label 2 is the largest -> top-1 and top-5.
    // Row 1: label 0 ties with class 5 (ties count against us) -> top-5 only.
    // Row 2: label 6 is the 6th largest -> neither.
    let probs = [
        0.1, 0.1, 0.4, 0.1, 0.1, 0.1, 0.1, //
        0.3, 0.05, 0.05, 0.1, 0.1, 0.3, 0.1, //
        0.2, 0.2, 0.15, 0.15, 0.12, 0.1, 0.08,
    ];
    assert_eq!(topk_hits(&probs, &[2, 0, 6], 7), (1, 2));
    assert_eq!(topk_hits(&probs, &[2], 7), (1, 1));
}

/// `ClassTally` against each row sorted here: an image's rank is its
/// label's place in the sorted row, its top-1 class the row's first.
#[test]
fn class_tally_against_sorted_rows() {
    let (n, classes) = (400, 7);
    let mut rng = Rng::new(11);
    // Distinct values, so the sorted order is unambiguous.
    let probs: Vec<f32> = (0..n * classes)
        .map(|i| rng.uniform() as f32 + i as f32 * 1e-7)
        .collect();
    let labels: Vec<u32> = (0..n).map(|_| rng.below(classes) as u32).collect();
    let mut tally = ClassTally::new(classes);
    // Two batches, as evaluation adds them.
    tally.add(&probs[..150 * classes], &labels[..150]);
    tally.add(&probs[150 * classes..], &labels[150..]);

    let mut want = vec![[0u64; 3]; classes];
    let mut matrix = vec![0u64; classes * classes];
    for (row, &l) in probs.chunks_exact(classes).zip(&labels) {
        let mut order: Vec<usize> = (0..classes).collect();
        order.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap());
        let rank = order.iter().position(|&c| c == l as usize).unwrap();
        let w = &mut want[l as usize];
        w[0] += 1;
        w[1] += (rank == 0) as u64;
        w[2] += (rank < 5) as u64;
        matrix[l as usize * classes + order[0]] += 1;
    }
    for (c, w) in want.iter().enumerate() {
        assert_eq!(tally.counts(c), (w[0], w[1], w[2]), "class {c}");
        let off: Vec<u64> = (0..classes)
            .map(|j| if j == c { 0 } else { matrix[c * classes + j] })
            .collect();
        let most = off.iter().copied().max().unwrap();
        let first = off.iter().position(|&m| m == most).unwrap();
        let expect = (most > 0).then_some((first, most));
        assert_eq!(tally.most_confused(c), expect, "class {c}");
    }
    let cells: Vec<u64> = (0..classes * classes)
        .map(|i| tally.confused(i / classes, i % classes))
        .collect();
    assert_eq!(cells, matrix);
    assert!(want.iter().any(|w| w[1] < w[0]), "some images are missed");

    // A constant row is a miss (ties count against us), taken for the
    // lowest other class.
    let mut t = ClassTally::new(4);
    t.add(&[0.25; 8], &[0, 2]);
    assert_eq!((t.counts(0), t.counts(2)), ((1, 0, 1), (1, 0, 1)));
    assert_eq!((t.confused(0, 1), t.confused(2, 0)), (1, 1));
}

/// The ten crops cut by hand from 32x32 images (28x28 crops, so corners at
/// 0 and 4 and the centre at 2), each normalised as (pixel - mean) / std,
/// run one at a time; the mean softmax's top-1/top-5/loss must equal
/// `evaluate` with `ten_crop`.
#[test]
fn ten_crop_evaluation_matches_crops_cut_by_hand() {
    let topo = Topology::cifar();
    let (size, crop, n) = (32usize, 28usize, 6usize);
    let mut rng = Rng::new(11);
    let pixels: Vec<u8> = (0..n * size * size * 3)
        .map(|_| rng.below(256) as u8)
        .collect();
    let labels: Vec<u32> = (0..n).map(|i| (i * 3 % 10) as u32).collect();
    let classes: Vec<String> = (0..10).map(|c| format!("c{c}")).collect();
    let set = ImageSet::from_parts(size, pixels.clone(), labels.clone(), classes).unwrap();
    let set: Arc<dyn ImageSource> = Arc::new(set);
    let (mean, std) = ([120.0f32, 110.0, 100.0], [60.0f32, 55.0, 50.0]);
    let be = CpuBackend::new();
    let mut net = Network::new(&be, &topo, 40, 3).unwrap();

    // By hand.
    let corners = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2)];
    let (mut top1, mut top5, mut loss) = (0usize, 0usize, 0.0f64);
    for img in 0..n {
        let mut sum = [0.0f64; 10];
        for flip in [false, true] {
            for &(x0, y0) in &corners {
                let mut x = vec![0.0f32; 3 * crop * crop];
                for c in 0..3 {
                    for y in 0..crop {
                        for xx in 0..crop {
                            let sx = if flip { x0 + crop - 1 - xx } else { x0 + xx };
                            let p = pixels[((img * size + y0 + y) * size + sx) * 3 + c];
                            x[(c * crop + y) * crop + xx] = (p as f32 - mean[c]) / std[c];
                        }
                    }
                }
                net.forward(&x, &[labels[img]], Mode::Eval).unwrap();
                for (s, p) in sum.iter_mut().zip(net.probs().unwrap()) {
                    *s += p as f64 / 10.0;
                }
            }
        }
        let l = labels[img] as usize;
        let above = (0..10).filter(|&j| j != l && sum[j] >= sum[l]).count();
        top1 += (above == 0) as usize;
        top5 += (above < 5) as usize;
        loss -= sum[l].ln();
    }

    let cfg = LoaderConfig {
        mean,
        std: Some(std),
        ten_crop: true,
        drop_last: false,
        skip_unreadable: false,
        ..LoaderConfig::new(4, crop, false)
    };
    let idx: Vec<usize> = (0..n).collect();
    let r = evaluate(&mut net, &set, &idx, &cfg, |_| {}).unwrap();
    assert_eq!(r.images, n);
    assert_eq!(r.top1, top1 as f64 / n as f64);
    assert_eq!(r.top5, top5 as f64 / n as f64);
    assert!(
        (r.loss - loss / n as f64).abs() < 1e-5,
        "{} vs {}",
        r.loss,
        loss / n as f64
    );
    // A random net's ten crops do not all agree: the average matters.
    let centre = LoaderConfig {
        ten_crop: false,
        ..cfg.clone()
    };
    let c = evaluate(&mut net, &set, &idx, &centre, |_| {}).unwrap();
    assert!(c.loss != r.loss);
}

/// A net whose outputs overflow (finite fc8 weights of +-3e38, as a run
/// near divergence can leave) gives NaN probabilities: every image is a
/// top-1 and top-5 miss and the loss is NaN, where a NaN used to compare
/// false against every class and count as a hit, with a finite loss.
#[test]
fn outputs_that_are_not_numbers_score_as_misses() {
    let topo = Topology::cifar();
    let (size, n) = (32usize, 6usize);
    let mut rng = Rng::new(5);
    let pixels: Vec<u8> = (0..n * size * size * 3)
        .map(|_| rng.below(256) as u8)
        .collect();
    let labels: Vec<u32> = (0..n as u32).collect();
    let classes: Vec<String> = (0..10).map(|c| format!("c{c}")).collect();
    let set = ImageSet::from_parts(size, pixels, labels.clone(), classes).unwrap();
    let set: Arc<dyn ImageSource> = Arc::new(set);
    let be = CpuBackend::new();
    let mut net = Network::new(&be, &topo, n, 3).unwrap();
    let w = net.param("fc8.weight").unwrap();
    let huge: Vec<f32> = (0..w.len())
        .map(|i| if i % 2 == 0 { 3e38 } else { -3e38 })
        .collect();
    net.set_param("fc8.weight", &huge).unwrap();
    let cfg = LoaderConfig {
        mean: [120.0; 3],
        std: Some([60.0; 3]),
        drop_last: false,
        skip_unreadable: false,
        ..LoaderConfig::new(n, 28, false)
    };
    let idx: Vec<usize> = (0..n).collect();
    let r = evaluate(&mut net, &set, &idx, &cfg, |_| {}).unwrap();
    let probs = net.probs().unwrap();
    for (i, row) in probs.chunks_exact(10).enumerate() {
        assert!(row[labels[i] as usize].is_nan(), "image {i}: {row:?}");
    }
    assert_eq!((r.images, r.top1, r.top5), (n, 0.0, 0.0), "hit rates {r:?}");
    assert!(r.loss.is_nan(), "loss {}", r.loss);
    let mut t = ClassTally::new(10);
    t.add(&probs, &labels);
    assert!((0..n).all(|c| t.counts(c) == (1, 0, 0)));
}

/// A logit of minus infinity (an overflow) is no number either: its
/// image's outputs are NaN, a miss, not a label at infinite loss. The other
/// image's are its log softmax, worked here.
#[test]
fn a_logit_of_minus_infinity_leaves_its_image_unscored() {
    let logits = [1.0f32, f32::NEG_INFINITY, 0.5, 0.0, 2.0, 1.0];
    let out = log_mean_softmax(&logits, 1, 3);
    assert!(out[..3].iter().all(|v| v.is_nan()), "{out:?}");
    let lse = (0f64.exp() + 2f64.exp() + 1f64.exp()).ln();
    for (o, l) in out[3..].iter().zip([0.0, 2.0, 1.0]) {
        assert!((o - (l - lse)).abs() < 1e-12, "{out:?}");
    }
}

/// fc8 scaled by 1e4 (finite outputs, logit gaps in the hundreds): a
/// label's softmax below f32's least (e^-104) no longer ties at 0 with the
/// classes under it. Hits and loss match the averaged softmax worked here
/// in log space from the logits (section 4.1), on one crop and on ten.
/// Scored on f32 probabilities, a label second by a gap of 200 missed top-5
/// and its loss stopped at ln(1e30) = 69.
#[test]
fn labels_far_below_the_top_rank_by_their_logits() {
    let topo = Topology::cifar();
    let (size, n) = (32usize, 40usize);
    let mut rng = Rng::new(8);
    let pixels: Vec<u8> = (0..n * size * size * 3)
        .map(|_| rng.below(256) as u8)
        .collect();
    let labels: Vec<u32> = (0..n).map(|i| (i * 7 % 10) as u32).collect();
    let classes: Vec<String> = (0..10).map(|c| format!("c{c}")).collect();
    let set = ImageSet::from_parts(size, pixels, labels.clone(), classes).unwrap();
    let set: Arc<dyn ImageSource> = Arc::new(set);
    let be = CpuBackend::new();
    let mut net = Network::new(&be, &topo, n, 3).unwrap();
    let w: Vec<f32> = net
        .param("fc8.weight")
        .unwrap()
        .iter()
        .map(|w| w * 1e4)
        .collect();
    net.set_param("fc8.weight", &w).unwrap();
    let mut far = 0;
    for (ten_crop, images) in [(false, n), (true, n / 10)] {
        let cfg = LoaderConfig {
            mean: [120.0; 3],
            std: Some([60.0; 3]),
            ten_crop,
            drop_last: false,
            skip_unreadable: false,
            ..LoaderConfig::new(images, 28, false)
        };
        let idx: Vec<usize> = (0..images).collect();
        let r = evaluate(&mut net, &set, &idx, &cfg, |_| {}).unwrap();
        // The last forward was the whole set: one batch.
        let crops = if ten_crop { 10 } else { 1 };
        let logits = net.logits().unwrap();
        let (mut top1, mut top5, mut loss) = (0, 0, 0.0f64);
        for (img, rows) in logits.chunks_exact(crops * 10).enumerate() {
            let a = averaged_log_softmax(rows, crops);
            let l = labels[img] as usize;
            let above = (0..10).filter(|&j| j != l && a[j] >= a[l]).count();
            top1 += (above == 0) as usize;
            top5 += (above < 5) as usize;
            loss -= a[l];
            far += (above > 0 && above < 5 && a[l] < -110.0) as usize;
        }
        let m = images as f64;
        assert_eq!(
            (r.top1, r.top5),
            (top1 as f64 / m, top5 as f64 / m),
            "{r:?}"
        );
        assert!(
            (r.loss - loss / m).abs() < 1e-9 * loss.abs() / m,
            "{} vs {}",
            r.loss,
            loss / m
        );
    }
    assert!(
        far > 0,
        "no label in the top 5 with a probability under e^-110"
    );
}

/// ln of the mean over `crops` rows of softmax(row), per class, worked
/// through the largest term so nothing underflows.
fn averaged_log_softmax(rows: &[f32], crops: usize) -> Vec<f64> {
    let log_softmax = |row: &[f32]| -> Vec<f64> {
        let m = row.iter().fold(f64::MIN, |m, &x| m.max(x as f64));
        let z: f64 = row.iter().map(|&x| (x as f64 - m).exp()).sum();
        row.iter().map(|&x| x as f64 - m - z.ln()).collect()
    };
    let each: Vec<Vec<f64>> = rows.chunks_exact(10).map(log_softmax).collect();
    (0..10)
        .map(|c| {
            let top = each.iter().fold(f64::MIN, |m, r| m.max(r[c]));
            let mean: f64 = each.iter().map(|r| (r[c] - top).exp()).sum::<f64>() / crops as f64;
            top + mean.ln()
        })
        .collect()
}

/// `cmd` run with its standard output closed at once, as by a reader that
/// stops reading (`| head -0`).
fn stdout_closed(cmd: &mut Command) -> std::process::Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run alexnet-cuda");
    drop(child.stdout.take());
    child.wait_with_output().expect("wait for alexnet-cuda")
}

/// One class folder is enough to score under a checkpoint, whose classes
/// name the labels: `eval` on it gives that class's row of `eval
/// --per-class` on the whole tree, and `features` takes a row per image.
/// `features` and `eval` on a `prepare` output with train/ only name
/// train/; `neighbors` on one with val/ only names val/.
#[test]
fn one_class_folder_is_scored_and_a_missing_split_is_named() {
    let t = tempfile::tempdir().unwrap();
    let s = |p: &Path| p.display().to_string();
    let data = t.path().join("tree");
    write_demo_dataset(&data, 3, 10, 32, 4).unwrap();
    let out = t.path().join("run");
    train_run(
        &data,
        &out,
        &["--epochs", "1", "--batch", "10", "--val", "6"],
    );
    let (ck, csv) = (s(&out), t.path().join("classes.csv"));
    let args = ["eval", "--checkpoint", &ck, "--data", &s(&data), "--json"];
    let (ok, json, err) = cli(&[&args[..], &["--per-class", &s(&csv)]].concat());
    assert!(ok, "{err}");
    // The run folder is reported as the file it resolved to, with the step
    // that file's weights were saved at.
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    let file = PathBuf::from(v["checkpoint"].as_str().unwrap());
    assert!(file.is_file() && file.parent() == Some(&out), "{v}");
    assert_eq!(v["step"].as_u64(), checkpoint::step_of(&file), "{v}");
    let table = std::fs::read_to_string(&csv).unwrap();
    let row: Vec<&str> = table.lines().nth(2).unwrap().split(',').collect();
    // Three classes are all in every image's top 5: said beside the 0%.
    let (ok, text, err) = cli(&args[..args.len() - 1]);
    assert!(ok, "{err}");
    assert!(
        text.contains("top-5 error 0.00% (trivial: 3 classes) on 30 images"),
        "{text}"
    );
    // A reader that stops at once (`| head -0`): the status of a program
    // ended by SIGPIPE, and the table written all the same.
    let closed = t.path().join("closed.csv");
    let o = stdout_closed(
        Command::new(env!("CARGO_BIN_EXE_alexnet-cuda"))
            .args([&args[..], &["--per-class", &s(&closed)]].concat()),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(141), "{err}");
    assert_eq!(std::fs::read_to_string(&closed).unwrap(), table, "{err}");
    // Class 1 alone, under its own name.
    let one = t.path().join("one");
    let class = data.join(row[1]);
    std::fs::create_dir_all(one.join(row[1])).unwrap();
    for f in std::fs::read_dir(&class).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, one.join(row[1]).join(f.file_name().unwrap())).unwrap();
    }
    let (ok, json, err) = cli(&["eval", "--checkpoint", &ck, "--data", &s(&one), "--json"]);
    assert!(ok, "{err}");
    assert_eq!(json_field(&json, "images"), row[3].parse::<f64>().unwrap());
    for (key, col) in [("top1_error", 4), ("top5_error", 5)] {
        let want: f64 = row[col].parse().unwrap();
        assert!(
            (json_field(&json, key) - want).abs() < 1e-5,
            "{key}: {json} vs {row:?}"
        );
    }
    let npy = t.path().join("f.npy");
    let args = [
        "features",
        "--checkpoint",
        &ck,
        "--data",
        &s(&one),
        "--out",
        &s(&npy),
    ];
    let (ok, stdout, err) = cli(&args);
    assert!(ok && stdout.contains("10 rows"), "{stdout} {err}");
    // A data set's top folder holding one split: the split is named.
    let top = t.path().join("top");
    std::fs::create_dir_all(&top).unwrap();
    std::fs::rename(&one, top.join("val")).unwrap();
    let (ok, _, err) = cli(&["eval", "--checkpoint", &ck, "--data", &s(&top)]);
    let pass = format!("pass --data {}", s(&top.join("val")));
    assert!(
        !ok && err.contains("folder val/ is read as a class") && err.contains(&pass),
        "{err}"
    );
    let (ok, json, err) = cli(&[
        "eval",
        "--checkpoint",
        &ck,
        "--data",
        &s(&top.join("val")),
        "--json",
    ]);
    assert!(ok && json_field(&json, "images") == 10.0, "{err}");

    let store = t.path().join("store");
    prepare_raw32(&data, None, &store);
    let args = [
        "features",
        "--checkpoint",
        &ck,
        "--data",
        &s(&store),
        "--out",
        &s(&npy),
    ];
    let (ok, _, err) = cli(&args);
    assert!(!ok && err.contains("has train/ but no val/"), "{err}");
    assert!(err.contains(&s(&store.join("train"))), "{err}");
    let (ok, _, err) = cli(&["eval", "--checkpoint", &ck, "--data", &s(&store)]);
    let pass = format!(
        "pass {} to evaluate on training images",
        s(&store.join("train"))
    );
    assert!(!ok && err.contains(&pass), "{err}");
    // `neighbors` searches train/: with val/ alone, val/ is named.
    std::fs::rename(store.join("train"), store.join("val")).unwrap();
    let query = std::fs::read_dir(&class)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let grid = t.path().join("grid.png");
    let args = ["neighbors", "--checkpoint", &ck, "--data", &s(&store)];
    let (ok, _, err) = cli(&[&args[..], &["--query", &s(&query), "--out", &s(&grid)]].concat());
    let pass = format!(
        "has val/ but no train/; pass {} to search those images",
        s(&store.join("val"))
    );
    assert!(!ok && err.contains(&pass), "{err}");
    // Ten crops of images stored no larger than the crops (28) coincide:
    // said, where the checkpoint's own 32 would not have said it.
    let small = t.path().join("small");
    let args = [
        "prepare",
        "--train",
        &s(&data),
        "--out",
        &s(&small),
        "--size",
        "28",
    ];
    let (ok, _, err) = cli(&[&args[..], &["--format", "raw", "--no-progress"]].concat());
    assert!(ok, "{err}");
    let args = ["eval", "--checkpoint", &ck, "--ten-crop", "--data"];
    let (ok, _, err) = cli(&[&args[..], &[&s(&small.join("train"))]].concat());
    let same = "the images are 28x28 and the crops 28x28, so the four corners are the centre";
    assert!(ok && err.contains(same), "{err}");
    let (ok, _, err) = cli(&[&args[..], &[&s(&data)]].concat());
    assert!(ok && !err.contains("four corners"), "{err}");
}

/// Train the cifar config on `data` into the run folder `out` (CLI).
fn train_run(data: &Path, out: &Path, extra: &[&str]) {
    let (data, out) = (data.display().to_string(), out.display().to_string());
    let mut args = vec![
        "train",
        "--cpu",
        "--config",
        "cifar",
        "--no-progress",
        "--data",
        &data,
        "--out",
        &out,
    ];
    args.extend_from_slice(extra);
    let (ok, _, err) = cli(&args);
    assert!(ok, "{args:?}: {err}");
}

/// `prepare` `train` (and `val`) into the raw 32x32 store `out` (CLI); what
/// it printed.
fn prepare_raw32(train: &Path, val: Option<&Path>, out: &Path) -> String {
    let s = |p: &Path| p.display().to_string();
    let (train, out) = (s(train), s(out));
    let mut args = vec!["prepare", "--train", &train, "--out", &out];
    let val = val.map(s);
    if let Some(v) = &val {
        args.extend(["--val", v]);
    }
    args.extend(["--size", "32", "--format", "raw", "--no-progress"]);
    let (ok, said, err) = cli(&args);
    assert!(ok, "{args:?}: {err}");
    said
}

fn json_field(line: &str, key: &str) -> f64 {
    let v: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON line");
    v[key].as_f64().unwrap_or_else(|| panic!("{key} in {line}"))
}

/// An `eval --json` line against the last row of the run `out`'s
/// epochs.csv (epoch,lr,train_loss,train_top1,val_loss,val_top1,val_top5,
/// ...): `images` images, the same top-1 and top-5, and the same loss to
/// summation order. Returns the row.
fn assert_repeats_last_epoch(out: &Path, json: &str, images: f64) -> Vec<f64> {
    let epochs = std::fs::read_to_string(out.join("epochs.csv")).unwrap();
    let last = epochs.lines().last().unwrap();
    let row: Vec<f64> = last.split(',').map(|v| v.parse().unwrap()).collect();
    let close = |key: &str, want: f64, tol: f64| {
        let got = json_field(json, key);
        assert!((got - want).abs() < tol, "{key}: {json} vs {last}");
    };
    close("images", images, 0.5);
    close("top1_error", 1.0 - row[5], 1e-5);
    close("top5_error", 1.0 - row[6], 1e-5);
    close("loss", row[4], 1e-4);
    row
}

/// `eval` of a run's last checkpoint on the run's own val store gives
/// exactly the validation numbers the run logged for its last epoch: the
/// weights and the preprocessing (mean, std, crop) come back from the file.
#[test]
fn eval_cli_repeats_the_runs_own_validation() {
    let t = tempfile::tempdir().unwrap();
    let s = |p: &Path| p.display().to_string();
    let (train_dir, val_dir) = (t.path().join("train"), t.path().join("val"));
    write_demo_dataset(&train_dir, 10, 30, 32, 9).unwrap();
    write_demo_dataset(&val_dir, 10, 10, 32, 10).unwrap();
    let store = t.path().join("store");
    prepare_raw32(&train_dir, Some(&val_dir), &store);
    let out = t.path().join("run");
    train_run(&store, &out, &["--epochs", "2", "--batch", "20"]);
    let last = alexnet_cuda::checkpoint::list(&out)
        .unwrap()
        .pop()
        .unwrap()
        .1;
    // `eval --json` of a checkpoint (or run folder) on the store, which must succeed.
    let eval_json = |ck: &Path, extra: &[&str]| {
        let args = ["eval", "--checkpoint", &s(ck), "--data", &s(&store)];
        let (ok, json, err) = cli(&[&args[..], &["--json", "--no-progress"], extra].concat());
        assert!(ok, "{err}");
        json
    };
    let centre = eval_json(&last, &[]);
    let row = assert_repeats_last_epoch(&out, &centre, 100.0);
    assert_eq!(row[0], 2.0);
    let epochs = std::fs::read_to_string(out.join("epochs.csv")).unwrap();
    // --held-out finds the same val/ store from the checkpoint alone.
    let args = ["eval", "--checkpoint", &s(&last), "--held-out", "--json"];
    let (ok, held, err) = cli(&args);
    assert!(ok, "{err}");
    for key in ["images", "top1_error", "top5_error", "loss"] {
        assert_eq!(json_field(&held, key), json_field(&centre, key), "{key}");
    }
    // A run on train/ alone held --val images out of it and never read
    // val/: --held-out --data given the root finds them, not val/.
    let split_out = t.path().join("split-run");
    let split = ["--epochs", "1", "--batch", "20", "--val", "40"];
    train_run(&store.join("train"), &split_out, &split);
    let split_args = ["eval", "--checkpoint", &s(&split_out), "--held-out"];
    let (ok, held, err) = cli(&[&split_args[..], &["--data", &s(&store), "--json"]].concat());
    assert!(ok, "{err}");
    assert_repeats_last_epoch(&split_out, &held, 40.0);
    // A store prepared again from fewer training images beside the same
    // val/ is not the run's data: --held-out --data refuses it.
    let fewer = t.path().join("fewer");
    write_demo_dataset(&fewer, 10, 20, 32, 9).unwrap();
    let other = t.path().join("other-store");
    prepare_raw32(&fewer, Some(&val_dir), &other);
    let (ok, _, err) = cli(&[&args[..4], &["--data", &s(&other)]].concat());
    assert!(
        !ok && err.contains("but 200 training images, and the run had 300"),
        "{err}"
    );
    // Its train/ prepared again alone leaves its val/ from the earlier
    // prepare: eval scores it, saying so (`train` says the same).
    let (ok, _, err) = cli(&["eval", "--checkpoint", &s(&last), "--data", &s(&other)]);
    assert!(ok && !err.contains("not prepared with"), "{err}");
    prepare_raw32(&train_dir, None, &other);
    let (ok, _, err) = cli(&["eval", "--checkpoint", &s(&last), "--data", &s(&other)]);
    let stale = format!(
        "{} was not prepared with the train/ beside it",
        other.join("val").display()
    );
    assert!(ok && err.contains(&stale), "{err}");
    let ten = eval_json(&last, &["--ten-crop"]);
    assert_eq!(json_field(&ten, "images"), 100.0);
    assert!(json_field(&ten, "loss") != json_field(&centre, "loss"));

    // A batch past the set's size is the set in one step: the network is
    // sized to the 100 images, not to the flag (which could not be allocated).
    let huge = eval_json(&last, &["--batch", "1000000000000"]);
    assert_eq!(
        json_field(&huge, "top1_error"),
        json_field(&centre, "top1_error")
    );
    assert!((json_field(&huge, "loss") - json_field(&centre, "loss")).abs() < 1e-5);

    // The run folder stands for its best.safetensors: the epoch of
    // epochs.csv with the highest validation top-1 (the first of equals).
    let folder = eval_json(&out, &[]);
    let val_top1 = |l: &str| l.split(',').nth(5).unwrap().parse::<f64>().unwrap();
    let best = epochs.lines().skip(1).map(val_top1).fold(0.0, f64::max);
    assert!(
        (1.0 - json_field(&folder, "top1_error") - best).abs() < 1e-5,
        "{folder} vs {epochs}"
    );

    // The same images as a class folder, each read and decoded when the
    // loader asks for it: the raw store's numbers.
    let on_folder = |extra: &[&str]| {
        let args = ["eval", "--checkpoint", &s(&last), "--data", &s(&val_dir)];
        cli(&[&args[..], &["--json", "--no-progress"], extra].concat())
    };
    let (ok, by_file, err) = on_folder(&[]);
    assert!(ok, "{err}");
    for key in ["images", "top1_error", "top5_error"] {
        assert_eq!(json_field(&by_file, key), json_field(&centre, key), "{key}");
    }
    assert!((json_field(&by_file, "loss") - json_field(&centre, "loss")).abs() < 1e-5);
    // --limit reads only the images it picks: a broken file past them (the
    // last of 101; 10 spread over 101 end at 90) is not read.
    let broken = val_dir.join("09-blobs/zzz.jpg");
    std::fs::write(&broken, "not pixels").unwrap();
    let (ok, _, err) = on_folder(&["--limit", "10"]);
    assert!(ok, "{err}");
    // All of them, with a truncated copy of a good image too: both are
    // named and the run fails, but the other 100 are scored, as the store
    // that never held the two scores them.
    let first = std::fs::read_dir(val_dir.join("03-checker")).unwrap();
    let good = first.map(|e| e.unwrap().path()).min().unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let cut = val_dir.join("03-checker/cut.jpg");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let (ok, by_file, err) = on_folder(&[]);
    assert!(!ok, "{by_file}");
    assert!(err.contains(&s(&broken)) && err.contains(&s(&cut)), "{err}");
    assert!(err.contains("2 of 102 images could not be read"), "{err}");
    assert!(err.contains("over the other 100 images"), "{err}");
    assert_eq!(json_field(&by_file, "unreadable"), 2.0);
    for key in ["images", "top1_error", "top5_error"] {
        assert_eq!(json_field(&by_file, key), json_field(&centre, key), "{key}");
    }
    std::fs::remove_file(&broken).unwrap();
    std::fs::remove_file(&cut).unwrap();

    // A class-folder tree with fewer classes than the network knows:
    // labels are matched by name.
    let part = t.path().join("part");
    for c in ["03-checker", "07-cross"] {
        std::fs::create_dir_all(part.join(c)).unwrap();
        for e in std::fs::read_dir(val_dir.join(c)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), part.join(c).join(e.file_name())).unwrap();
        }
    }
    let (ok, one, err) = cli(&[
        "eval",
        "--checkpoint",
        &s(&last),
        "--data",
        &s(&part),
        "--json",
        "--no-progress",
    ]);
    assert!(ok, "{err}");
    assert_eq!(json_field(&one, "images"), 20.0);
    // An unknown class is refused by name, before any image is decoded:
    // a broken one goes unmentioned.
    std::fs::rename(part.join("07-cross"), part.join("zebra")).unwrap();
    std::fs::write(part.join("zebra/broken.jpg"), "not pixels").unwrap();
    let (ok, _, err) = cli(&["eval", "--checkpoint", &s(&last), "--data", &s(&part)]);
    assert!(!ok);
    assert!(
        err.contains("class zebra is not one of the checkpoint's 10 classes"),
        "{err}"
    );
    assert!(!err.contains("broken.jpg"), "{err}");
    // A val store lists its train split's classes, also one no val image
    // has: only the classes of its images need be known.
    std::fs::remove_file(part.join("zebra/broken.jpg")).unwrap();
    let only = t.path().join("only-checker");
    std::fs::create_dir_all(only.join("03-checker")).unwrap();
    for e in std::fs::read_dir(part.join("03-checker")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), only.join("03-checker").join(e.file_name())).unwrap();
    }
    let store = t.path().join("zebra-store");
    let said = prepare_raw32(&part, Some(&only), &store);
    assert!(said.contains("val: 10 images of 1 classes"), "{said}");
    let (ok, one, err) = cli(&[
        "eval",
        "--checkpoint",
        &s(&last),
        "--data",
        &s(&store),
        "--json",
        "--no-progress",
    ]);
    assert!(ok, "{err}");
    assert_eq!(json_field(&one, "images"), 10.0);
    // A folder given as the checkpoint.
    let (ok, _, err) = cli(&["eval", "--checkpoint", &s(&part), "--data", &s(&part)]);
    assert!(!ok && err.contains("error:"), "{err}");
}

/// `eval --held-out` finds again the images a run held out of its data
/// with `--val` (after `--limit`'s draw), for a class folder and for a
/// store without val/: it repeats the validation numbers the run logged for
/// its last epoch, loss included, which other images would not. Moved data
/// is named with --data; data whose held-out names changed is refused.
#[test]
fn eval_held_out_repeats_the_validation_of_a_split_run() {
    let t = tempfile::tempdir().unwrap();
    let s = |p: &Path| p.display().to_string();
    let folder = t.path().join("photos");
    write_demo_dataset(&folder, 10, 30, 32, 11).unwrap();
    // Not "store", the name of the run folder of the run on it below.
    let store = t.path().join("photos-store");
    prepare_raw32(&folder, None, &store);
    let split = [
        "--epochs", "1", "--batch", "20", "--val", "40", "--limit", "250",
    ];
    for (name, data) in [("folder", &folder), ("store", &store)] {
        let out = t.path().join(name);
        train_run(data, &out, &split);
        // After the first epoch, and after a resume to a second: the
        // resumed checkpoint still names its held-out images.
        for epochs in ["1", "2"] {
            if epochs == "2" {
                let args = ["train", "--resume", &s(&out), "--epochs", "2", "--cpu"];
                let (ok, _, err) = cli(&[&args[..], &["--no-progress"]].concat());
                assert!(ok, "{name}: {err}");
            }
            let last = alexnet_cuda::checkpoint::list(&out)
                .unwrap()
                .pop()
                .unwrap()
                .1;
            let args = ["eval", "--checkpoint", &s(&last), "--held-out", "--json"];
            let (ok, held, err) = cli(&args);
            assert!(ok, "{name}: {err}");
            assert!(!err.contains("training error"), "{name}: {err}");
            assert!(
                !err.contains("cannot be compared"),
                "{name}, epoch {epochs}: {err}"
            );
            assert_repeats_last_epoch(&out, &held, 40.0);
        }
    }

    // --held-out without --data knows the tree from the checkpoint: a
    // confusion picture in one of its class folders is refused there too.
    let class = std::fs::read_dir(&folder).unwrap().next().unwrap().unwrap();
    let inside = s(&class.path().join("cm.png"));
    let run = s(&t.path().join("folder"));
    let args = [
        "eval",
        "--checkpoint",
        &run,
        "--held-out",
        "--confusion",
        &inside,
    ];
    let (ok, _, err) = cli(&args);
    assert!(!ok && err.contains("inside the class folder"), "{err}");
    assert!(!class.path().join("cm.png").exists());

    // The whole folder is mostly the run's training images: said.
    let args = [
        "eval",
        "--checkpoint",
        &s(&t.path().join("folder")),
        "--data",
        &s(&folder),
    ];
    let (ok, _, err) = cli(&args);
    assert!(ok, "{err}");
    let said = "this is the data the run trained from; it trained on 210 of its 300 images, so the error below is mostly a training error";
    assert!(err.contains(said), "{err}");
    // A run that trained on a small part of it (--limit 100, 20 held out):
    // most of the images scored are ones it never saw.
    let few = t.path().join("few");
    let small = [
        "--epochs", "1", "--batch", "20", "--val", "20", "--limit", "100",
    ];
    train_run(&folder, &few, &small);
    let (ok, _, err) = cli(&["eval", "--checkpoint", &s(&few), "--data", &s(&folder)]);
    assert!(ok, "{err}");
    let said = "it trained on 80 of its 300 images, so the error below is partly a training error, partly one on images the run never trained on";
    assert!(err.contains(said), "{err}");

    // The folder moved: --data says where it is now.
    let moved = t.path().join("moved");
    std::fs::rename(&folder, &moved).unwrap();
    let run = s(&t.path().join("folder"));
    let (ok, _, err) = cli(&["eval", "--checkpoint", &run, "--held-out"]);
    assert!(
        !ok && err.contains("not a folder here now; pass --data"),
        "{err}"
    );
    // A --data that is no folder is named as the user's, not the run's.
    let typo = s(&t.path().join("movd"));
    let (ok, _, err) = cli(&["eval", "--checkpoint", &run, "--held-out", "--data", &typo]);
    assert!(!ok, "{err}");
    assert!(
        err.contains(&format!("--held-out --data {typo}: not a folder"))
            && err.contains(&format!("the one it names ({})", s(&folder))),
        "{err}"
    );
    let (ok, _, err) = cli(&[
        "eval",
        "--checkpoint",
        &run,
        "--held-out",
        "--data",
        &s(&moved),
    ]);
    assert!(ok, "{err}");
    // The same counts and classes, but every file renamed: not the images
    // the run held out, so refused.
    for class in std::fs::read_dir(&moved).unwrap() {
        for f in std::fs::read_dir(class.unwrap().path()).unwrap() {
            let f = f.unwrap().path();
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            std::fs::rename(&f, f.with_file_name(format!("x{name}"))).unwrap();
        }
    }
    let (ok, _, err) = cli(&[
        "eval",
        "--checkpoint",
        &run,
        "--held-out",
        "--data",
        &s(&moved),
    ]);
    assert!(!ok, "a changed folder is refused");
    assert!(
        err.contains("the held-out images are not the ones the run validated on")
            && err.contains("with --data DIR and no --held-out"),
        "{err}"
    );

    // Back where it trained, but two of every three images gone: fewer
    // images than the run trained on, said as such.
    std::fs::rename(&moved, &folder).unwrap();
    for class in std::fs::read_dir(&folder).unwrap() {
        let mut files: Vec<_> = std::fs::read_dir(class.unwrap().path())
            .unwrap()
            .map(|f| f.unwrap().path())
            .collect();
        files.sort();
        for f in files.iter().skip(files.len() / 3) {
            std::fs::remove_file(f).unwrap();
        }
    }
    let (ok, _, err) = cli(&["eval", "--checkpoint", &run, "--data", &s(&folder)]);
    assert!(ok, "{err}");
    let said = "it trained on 210 images, more than the 100 it holds now, so the error below is mostly a training error";
    assert!(err.contains(said), "{err}");
}

/// Each input's ranked (class, percent) lines of a `predict` listing.
fn listed(listing: &str) -> Vec<Vec<(String, f64)>> {
    let mut lists: Vec<Vec<(String, f64)>> = Vec::new();
    for l in listing.lines() {
        if !l.starts_with(' ') {
            lists.push(Vec::new());
            continue;
        }
        let w: Vec<&str> = l.split_whitespace().collect();
        let pct = w[1].trim_end_matches('%').parse().unwrap();
        lists.last_mut().unwrap().push((w[2].to_string(), pct));
    }
    lists
}

/// The mean over `crops` rows of softmax(row), per class.
fn averaged_softmax(rows: &[f32], crops: usize) -> Vec<f64> {
    averaged_log_softmax(rows, crops)
        .iter()
        .map(|l| l.exp())
        .collect()
}

/// `list` names the likeliest classes of `probs`, in order, with their
/// percentages to two decimals.
fn assert_listing_is(list: &[(String, f64)], probs: &[f64], classes: &[String]) {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    assert!(!list.is_empty());
    for ((id, pct), &c) in list.iter().zip(&order) {
        assert_eq!(id, &classes[c], "{list:?} vs {probs:?}");
        assert!(
            (pct - 100.0 * probs[c]).abs() < 0.006,
            "{list:?} vs {probs:?}"
        );
    }
}

/// `dir/data`, 10 demo classes of 10 images, and `dir/run`, one epoch of
/// `cifar` on it (batch 20, 20 held out).
fn one_epoch_of_ten_classes(dir: &Path) -> (PathBuf, PathBuf) {
    let (data, out) = (dir.join("data"), dir.join("run"));
    write_demo_dataset(&data, 10, 10, 32, 4).unwrap();
    let split = ["--val", "20", "--epochs", "1", "--batch", "20"];
    train_run(&data, &out, &split);
    (data, out)
}

/// A network whose output is not a finite number (here fc8 so large that
/// every logit overflows) gives no prediction: each input says so where
/// its classes would be, and the command exits 1 naming the likely cause,
/// rather than rank a NaN first as a probability; eval counts such images
/// as misses in no column of its confusion matrix.
#[test]
fn predict_says_when_the_output_is_not_a_number() {
    use alexnet_cuda::checkpoint;
    use alexnet_cuda::export::Tensor;
    let t = tempfile::tempdir().unwrap();
    let s = |p: &Path| p.display().to_string();
    let (data, out) = one_epoch_of_ten_classes(t.path());
    let ck = checkpoint::load(&checkpoint::list(&out).unwrap().pop().unwrap().1).unwrap();
    let mut tensors: Vec<Tensor> = ck.tensors.into_values().collect();
    for t in tensors.iter_mut().filter(|t| t.name.starts_with("fc8.")) {
        t.data.fill(f32::MAX);
    }
    let huge = t.path().join("huge.safetensors");
    checkpoint::save(&huge, &ck.state, &tensors).unwrap();
    let img = s(&data.join("05-ring/00002.jpg"));
    let (ok, listing, err) = cli(&["predict", "--cpu", "--checkpoint", &s(&huge), &img]);
    assert!(!ok, "{listing}");
    assert_eq!(
        listing,
        format!("{img}\n  no prediction: the network's output is not a finite number\n")
    );
    let said = format!(
        "1 of 1 inputs got an output that is not a finite number (NaN or infinity), e.g. {img}"
    );
    assert!(err.contains(&said) && err.contains("try fp32"), "{err}");
    // eval: scored as misses, in no column of the confusion matrix (not
    // all in the first), and said, with exit status 1.
    let cm = t.path().join("cm.npy");
    let args = [
        "eval",
        "--cpu",
        "--checkpoint",
        &s(&huge),
        "--data",
        &s(&data),
    ];
    let pc = s(&t.path().join("pc.csv"));
    let (ok, text, err) = cli(&[&args[..], &["--confusion", &s(&cm), "--per-class", &pc]].concat());
    assert!(!ok && text.contains("top-1 error 100.00%"), "{text}");
    assert!(
        text.contains("most confused (true -> top-1, images): none: no missed image's output was a finite number\n"),
        "{text}"
    );
    let said = "100 of the 100 images got an output that is not a finite number";
    assert!(
        err.contains(said) && err.contains("count them as misses"),
        "{err}"
    );
    let (shape, m) = alexnet_cuda::npy::read_npy_f32(&cm).unwrap();
    assert_eq!((shape, m.iter().sum::<f32>()), (vec![10, 10], 0.0));
}

/// A run of many classes: eval tallies its misses in memory that grows
/// with the images scored, not classes² (a dense matrix of these 5,000
/// classes' would be 200 MB, of 100,000 classes' 80 GB), and refuses
/// before scoring a --confusion picture too large to draw. The net here is
/// the ten-class run's with fc8 widened to 5,000 outputs, the new ones
/// zero and their biases -1e3, so each image's scores, and so its top-1
/// class, are the ten-class net's.
#[test]
fn eval_of_many_classes_tallies_only_what_it_sees() {
    use alexnet_cuda::checkpoint;
    use alexnet_cuda::export::Tensor;
    let t = tempfile::tempdir().unwrap();
    let s = |p: &Path| p.display().to_string();
    let (data, out) = one_epoch_of_ten_classes(t.path());
    let last = checkpoint::list(&out).unwrap().pop().unwrap().1;
    let ck = checkpoint::load(&last).unwrap();
    let wide = 5000;
    let mut state = ck.state.clone();
    state.net.classes = Some(wide);
    state
        .classes
        .extend((10..wide).map(|c| format!("extra-{c}")));
    state.names.clear();
    let tensors: Vec<Tensor> = ck
        .tensors
        .into_values()
        .filter(|t| !t.name.starts_with("momentum."))
        .map(|mut t| {
            match t.name.as_str() {
                "fc8.weight" => {
                    let inputs = t.shape[1];
                    t.data.resize(wide * inputs, 0.0);
                    t.shape = vec![wide, inputs];
                }
                "fc8.bias" => {
                    t.data.resize(wide, -1e3);
                    t.shape = vec![wide];
                }
                _ => {}
            }
            t
        })
        .collect();
    let many = t.path().join("many.safetensors");
    checkpoint::save(&many, &state, &tensors).unwrap();

    let json = |ck: &Path, extra: &[&str]| {
        let args = [
            "eval",
            "--cpu",
            "--json",
            "--checkpoint",
            &s(ck),
            "--data",
            &s(&data),
        ];
        let (ok, text, err) = cli(&[&args[..], extra].concat());
        assert!(ok, "{err}");
        let top1 = json_field(&text, "top1_error");
        (top1, json_field(&text, "images"))
    };
    let pc = t.path().join("pc.csv");
    assert_eq!(json(&many, &["--per-class", &s(&pc)]), json(&last, &[]));
    let rows = std::fs::read_to_string(&pc).unwrap().lines().count();
    assert_eq!(rows, 1 + wide, "a header and a row per class");

    let png = t.path().join("cm.png");
    let args = [
        "eval",
        "--cpu",
        "--checkpoint",
        &s(&many),
        "--data",
        &s(&data),
    ];
    let (ok, text, err) = cli(&[&args[..], &["--confusion", &s(&png)]].concat());
    assert!(!ok && text.is_empty(), "{text}");
    let said = format!(
        "--confusion {}: the checkpoint has 5000 classes, and a picture is written for up to 4096",
        s(&png)
    );
    assert!(err.contains(&said) && err.contains("--per-class"), "{err}");
    assert!(!png.exists());
}

/// `predict` on image files equals `predict --input-npy` on the same images
/// cut and normalised here by hand (centre 28x28 of the 32x32 image, minus
/// the checkpoint's mean, over its std); `--logits` holds rows x classes.
/// `export --format safetensors` holds the checkpoint's weights under
/// PyTorch's names and shapes; without --format, --out's name picks it.
#[test]
fn predict_and_export_cli() {
    use alexnet_cuda::checkpoint;
    use alexnet_cuda::npy::{read_npy_f32, write_npy_f32};
    let t = tempfile::tempdir().unwrap();
    let s = |p: &Path| p.display().to_string();
    let (data, out) = one_epoch_of_ten_classes(t.path());
    let ck_path = checkpoint::list(&out).unwrap().pop().unwrap().1;
    let ck = checkpoint::load(&ck_path).unwrap();
    let pre = &ck.state.preprocess;
    assert_eq!((pre.image_size, pre.crop, pre.pad), (32, 28, 0));
    let std = pre.std.expect("cifar divides by the std");

    let images: Vec<_> = [
        "01-vstripes/00001.jpg",
        "05-ring/00002.jpg",
        "09-blobs/00000.jpg",
    ]
    .iter()
    .map(|p| data.join(p))
    .collect();
    let mut x = Vec::new();
    for p in &images {
        let img = image::open(p).unwrap().to_rgb8();
        for (c, (m, sd)) in pre.mean.iter().zip(std).enumerate() {
            for y in 0..28 {
                for xx in 0..28 {
                    let v = img.get_pixel(xx + 2, y + 2)[c] as f32;
                    x.push((v - m) / sd);
                }
            }
        }
    }
    let x_path = t.path().join("x.npy");
    write_npy_f32(&x_path, &[3, 3, 28, 28], &x).unwrap();
    let (la, lb) = (t.path().join("a.npy"), t.path().join("b.npy"));
    let mut args = vec![
        "predict".to_string(),
        "--checkpoint".into(),
        s(&ck_path),
        "--logits".into(),
        s(&la),
    ];
    args.extend(images.iter().map(|p| s(p)));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, listing, err) = cli(&args);
    assert!(ok, "{err}");
    assert_eq!(
        listing
            .lines()
            .filter(|l| l.trim_start().starts_with("1."))
            .count(),
        3
    );
    // Each image's listing is the softmax of its logits row: the classes
    // by falling probability, named by index, to two decimals.
    let (_, logits) = read_npy_f32(&la).unwrap();
    let lists = listed(&listing);
    assert_eq!(lists.len(), 3, "{listing}");
    for (list, row) in lists.iter().zip(logits.chunks_exact(10)) {
        assert_listing_is(list, &averaged_softmax(row, 1), &ck.state.classes);
    }
    assert!(listing.contains("05-ring/00002.jpg"), "{listing}");
    // All ten classes, ranks 1 to 10, the percentages in one column.
    let (ok, listing, err) = cli(&[&args[..3], &["--top", "10", args[5]]].concat());
    assert!(ok, "{err}");
    let ranks: Vec<&str> = listing.lines().skip(1).collect();
    assert_eq!(ranks.len(), 10, "{listing}");
    for (i, l) in ranks.iter().enumerate() {
        assert!(
            l.trim_start().starts_with(&format!("{}. ", i + 1)),
            "{listing}"
        );
        assert_eq!(l.find('%'), ranks[0].find('%'), "{listing}");
    }
    // A file name not in UTF-8 (written on a system of another encoding)
    // is an image like any other, named with the bytes it cannot show
    // replaced.
    use std::os::unix::ffi::OsStrExt;
    let odd = t.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9.jpg"));
    std::fs::copy(&images[0], &odd).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_alexnet-cuda"))
        .args(&args[..3])
        .arg(&odd)
        .output()
        .unwrap();
    let odd_listing = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        odd_listing.contains("caf\u{FFFD}.jpg") && odd_listing.contains("1. "),
        "{odd_listing}"
    );
    // A line break in a name is shown escaped: it cannot start a line
    // that reads as a rank of the listing.
    let forged = t.path().join("x\n  1. 99.99%  forged.jpg");
    std::fs::copy(&images[0], &forged).unwrap();
    let (ok, listing, err) = cli(&[&args[..3], &[s(&forged).as_str()]].concat());
    assert!(ok, "{err}");
    let first = listing.lines().next().unwrap_or_default();
    assert!(first.ends_with("x\\n  1. 99.99%  forged.jpg"), "{listing}");
    let ranks = listing
        .lines()
        .filter(|l| l.trim_start().starts_with("1. "));
    assert_eq!(ranks.count(), 1, "{listing}");
    // A reader that stops reading at once (`| head -0`): no panic, the
    // status of a program ended by SIGPIPE, and the logits file whole.
    let lc = t.path().join("c.npy");
    let o = stdout_closed(
        Command::new(env!("CARGO_BIN_EXE_alexnet-cuda"))
            .args(&args[..4])
            .arg(&lc)
            .args(images.iter()),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(141), "{err}");
    assert!(!err.contains("panicked") && !err.contains("error"), "{err}");
    assert_eq!(read_npy_f32(&lc).unwrap(), read_npy_f32(&la).unwrap());
    let (ok, _, err) = cli(&[
        "predict",
        "--checkpoint",
        &s(&ck_path),
        "--input-npy",
        &s(&x_path),
        "--logits",
        &s(&lb),
    ]);
    assert!(ok, "{err}");
    let (sa, a) = read_npy_f32(&la).unwrap();
    let (sb, b) = read_npy_f32(&lb).unwrap();
    assert_eq!(sa, vec![3, 10]);
    assert_eq!(sb, vec![3, 10]);
    for (u, v) in a.iter().zip(&b) {
        assert!((u - v).abs() <= 1e-4 * u.abs().max(1.0), "{a:?}\n{b:?}");
    }
    // A batch of the wrong shape is refused with the shape it needs.
    write_npy_f32(&x_path, &[1, 3, 32, 32], &vec![0.0; 3 * 32 * 32]).unwrap();
    let (ok, _, err) = cli(&[
        "predict",
        "--checkpoint",
        &s(&ck_path),
        "--input-npy",
        &s(&x_path),
    ]);
    assert!(!ok && err.contains("takes [N, 3, 28, 28]"), "{err}");
    // With what the input must hold: cifar divides by its stds.
    let said = format!("subtracted, divided by the channel stds {std:?}");
    assert!(err.contains(&said), "{said}: {err}");
    // A NaN (or an infinity) is refused, named by image and channel: the
    // net's ReLUs and pooling would turn it into a confident answer. So is
    // a batch of no images.
    let mut v = vec![0.5f32; 2 * 3 * 28 * 28];
    v[3 * 28 * 28 + 2 * 28 * 28 + 5] = f32::NAN;
    write_npy_f32(&x_path, &[2, 3, 28, 28], &v).unwrap();
    let predict_x = [
        "predict",
        "--checkpoint",
        &s(&ck_path),
        "--input-npy",
        &s(&x_path),
    ];
    let (ok, _, err) = cli(&predict_x);
    let said = format!(
        "{}: value {} (image 1, channel 2) is NaN",
        s(&x_path),
        3 * 28 * 28 + 2 * 28 * 28 + 5
    );
    assert!(!ok && err.contains(&said), "{said}: {err}");
    write_npy_f32(&x_path, &[0, 3, 28, 28], &[]).unwrap();
    let (ok, _, err) = cli(&predict_x);
    assert!(!ok && err.contains("holds no images"), "{err}");
    // --ten-crop --logits: a row per crop, ten per image, and said so.
    let ten = [&args[..5], &["--ten-crop", args[5]]].concat();
    let (ok, ten_listing, err) = crate::common::cli_logging(&ten, "info");
    assert!(ok, "{err}");
    assert_eq!(read_npy_f32(&la).unwrap().0, vec![10, 10]);
    assert!(err.contains("wrote 10 logits rows, of 1 inputs"), "{err}");
    // Its listing: the ten crops' softmax averaged (not their logits).
    let (_, crops) = read_npy_f32(&la).unwrap();
    let mean = averaged_softmax(&crops, 10);
    assert_listing_is(&listed(&ten_listing)[0], &mean, &ck.state.classes);
    // --logits naming the --input-npy file is refused, the input kept.
    let before = std::fs::read(&x_path).unwrap();
    let (ok, _, err) = cli(&[&predict_x[..], &["--logits", &s(&x_path)]].concat());
    assert!(
        !ok && err.contains("is the --input-npy file") && err.contains("name another file"),
        "{err}"
    );
    assert_eq!(std::fs::read(&x_path).unwrap(), before);
    // A missing image is named.
    let (ok, _, err) = cli(&["predict", "--checkpoint", &s(&ck_path), "nothere.jpg"]);
    assert!(!ok && err.contains("nothere.jpg"), "{err}");
    // A folder means every image under it, in path order; other files
    // are named in a warning, and a folder without images is an error.
    let photos = t.path().join("photos");
    std::fs::create_dir_all(photos.join("sub")).unwrap();
    let placed = [
        photos.join("b.jpg"),
        photos.join("c.JPEG"),
        photos.join("sub/a.jpg"),
    ];
    for (from, to) in [&images[1], &images[2], &images[0]].iter().zip(&placed) {
        std::fs::copy(from, to).unwrap();
    }
    std::fs::write(photos.join("notes.txt"), "a note").unwrap();
    let ckp = s(&ck_path);
    let (ok, listed, err) = cli(&["predict", "--checkpoint", &ckp, &s(&photos)]);
    assert!(ok && err.contains("1 files not read (notes.txt)"), "{err}");
    let placed: Vec<String> = placed.iter().map(|p| s(p)).collect();
    let each = [
        &["predict", "--checkpoint", &ckp][..],
        &placed.iter().map(String::as_str).collect::<Vec<_>>(),
    ]
    .concat();
    let (ok, by_file, err) = cli(&each);
    assert!(ok, "{err}");
    assert_eq!(listed, by_file);
    let empty = t.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (ok, _, err) = cli(&["predict", "--checkpoint", &ckp, &s(&empty)]);
    assert!(
        !ok && err.contains(&s(&empty)) && err.contains("has no .jpg"),
        "{err}"
    );
    // Unreadable images among readable ones: the readable ones are listed
    // as they are without the others, which are named in one error.
    let (notes, gif) = (t.path().join("notes.jpg"), t.path().join("anim.gif"));
    std::fs::write(&notes, "not pixels").unwrap();
    std::fs::write(&gif, b"GIF89a").unwrap();
    let (a, b) = (s(&images[0]), s(&images[1]));
    let mixed = [s(&notes), a.clone(), s(&gif), b.clone()];
    let mixed: Vec<&str> = mixed.iter().map(String::as_str).collect();
    let (ok, part, err) = cli(&[&["predict", "--checkpoint", &ckp][..], &mixed].concat());
    assert!(!ok, "{err}");
    for want in [
        "2 of 4 images could not be read",
        "notes.jpg",
        "GIF image",
        "predictions are above",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
    let (ok, alone, err) = cli(&["predict", "--checkpoint", &ckp, &a, &b]);
    assert!(ok, "{err}");
    assert_eq!(part, alone);
    // With --logits, whose rows are the inputs': the same listing, and no
    // file (nor its temporary one).
    let ld = t.path().join("d.npy");
    let lds = s(&ld);
    let with_logits = [
        &["predict", "--checkpoint", &ckp, "--logits", &lds][..],
        &mixed,
    ]
    .concat();
    let (ok, listing, err) = cli(&with_logits);
    assert!(!ok && listing == alone, "{listing}");
    for want in [
        &lds,
        "was not written",
        "--logits writes a row for every image",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
    let left: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("d.npy"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(!err.contains("earlier one"), "{err}");
    // Over a file from an earlier run: that file is kept as it was, and
    // the error says it is the earlier one.
    std::fs::write(&ld, b"earlier").unwrap();
    let (ok, _, err) = cli(&with_logits);
    assert!(
        !ok && err.contains("the file there is an earlier one, left as it was"),
        "{err}"
    );
    assert_eq!(std::fs::read(&ld).unwrap(), b"earlier");
    std::fs::remove_file(&ld).unwrap();
    // A --logits name for another format is refused before any image is
    // read.
    let txt = s(&t.path().join("d.txt"));
    let (ok, _, err) = cli(&["predict", "--checkpoint", &ckp, "--logits", &txt, &a]);
    assert!(!ok && err.contains("name the file .npy, e.g."), "{err}");
    assert!(!t.path().join("d.txt").exists());
    // So is one in a folder that does not exist, with the checkpoint
    // missing too: the flag is named, not the checkpoint.
    let nodir = s(&t.path().join("nodir/d.npy"));
    let (ok, _, err) = cli(&[
        "predict",
        "--checkpoint",
        "no-such.safetensors",
        "--logits",
        &nodir,
        &a,
    ]);
    assert!(
        !ok && err.contains(&nodir) && err.contains("does not exist; create it"),
        "{err}"
    );
    assert!(!err.contains("no-such"), "{err}");
    // Past one group of decoded images (256): every input's row, in order,
    // as the hand-cut batch's.
    let many: Vec<String> = (0..300).map(|i| s(&images[i % 3])).collect();
    let le = t.path().join("e.npy");
    let les = s(&le);
    let args = [&["predict", "--checkpoint", &ckp, "--logits", &les][..]].concat();
    let many_args: Vec<&str> = many.iter().map(String::as_str).collect();
    let (ok, _, err) = cli(&[&args[..], &many_args].concat());
    assert!(ok, "{err}");
    let (se, e) = read_npy_f32(&le).unwrap();
    assert_eq!(se, vec![300, 10]);
    let (_, hand) = read_npy_f32(&lb).unwrap();
    for (i, row) in e.chunks_exact(10).enumerate() {
        let want = &hand[(i % 3) * 10..][..10];
        for (u, v) in row.iter().zip(want) {
            assert!(
                (u - v).abs() <= 1e-4 * v.abs().max(1.0),
                "row {i}: {row:?} {want:?}"
            );
        }
    }

    // Without --format, the name of --out says which.
    let st = t.path().join("w.safetensors");
    let (ok, _, err) = cli(&["export", "--checkpoint", &s(&ck_path), "--out", &s(&st)]);
    assert!(ok, "{err}");
    let bytes = std::fs::read(&st).unwrap();
    let w = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = w.names();
    names.sort();
    assert_eq!(names.len(), 16);
    let conv2 = w.tensor("conv2.weight").unwrap();
    // [out, in / groups, k, k]: 128 outputs over 64 / 2 inputs, 5x5.
    assert_eq!(conv2.shape(), &[128, 32, 5, 5]);
    // fc6 sees conv5's 128 channels at 2x2 (28 -> 13 -> 6 -> 2), flattened C, H, W.
    assert_eq!(w.tensor("fc6.weight").unwrap().shape(), &[512, 128 * 2 * 2]);
    let ours = &ck.tensors["conv2.weight"].data;
    let theirs: Vec<f32> = conv2
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(ours, &theirs);
    let onnx = t.path().join("m.onnx");
    let (ok, stdout, err) = cli(&[
        "export",
        "--checkpoint",
        &s(&ck_path),
        "--format",
        "onnx",
        "--out",
        &s(&onnx),
    ]);
    // Channel means, which the metadata holds: nothing more to take.
    assert!(ok && !stdout.contains("mean image"), "{stdout}{err}");
    assert!(std::fs::metadata(&onnx).unwrap().len() > 4 * 1_136_010);
    let named = t.path().join("named.ONNX");
    let (ok, _, err) = cli(&["export", "--checkpoint", &s(&ck_path), "--out", &s(&named)]);
    assert!(ok, "{err}");
    assert!(std::fs::read(&named).unwrap() == std::fs::read(&onnx).unwrap());
    // A name that says no format is refused; one that says another is
    // written as asked, with a warning.
    let txt = t.path().join("w.txt");
    let (ok, _, err) = cli(&["export", "--checkpoint", &s(&ck_path), "--out", &s(&txt)]);
    assert!(!ok && err.contains("--format safetensors|onnx"), "{err}");
    assert!(!txt.exists());
    // `.onnx` alone has no extension (a hidden file's name): told to name it.
    let bare = t.path().join(".onnx");
    let (ok, _, err) = cli(&["export", "--checkpoint", &s(&ck_path), "--out", &s(&bare)]);
    assert!(
        !ok && err.contains("name the file, such as model.onnx"),
        "{err}"
    );
    assert!(!bare.exists());
    // --pixels is an ONNX graph's; tests/export.rs and scripts/check-onnx
    // check what that graph does.
    let px = t.path().join("px.safetensors");
    let args = ["export", "--checkpoint", &s(&ck_path), "--pixels"];
    let (ok, _, err) = cli(&[&args[..], &["--out", &s(&px)]].concat());
    assert!(
        !ok && err.contains("--pixels is for --format onnx"),
        "{err}"
    );
    assert!(!px.exists());
    let px = t.path().join("px.onnx");
    let (ok, stdout, err) = cli(&[&args[..], &["--out", &s(&px)]].concat());
    assert!(
        ok && stdout.contains("input \"pixels\": [N, 3, 28, 28]"),
        "{stdout}{err}"
    );
    assert!(std::fs::read(&px).unwrap() != std::fs::read(&onnx).unwrap());
    let odd = t.path().join("w.onnx");
    let args = [
        "export",
        "--checkpoint",
        &s(&ck_path),
        "--format",
        "safetensors",
    ];
    let (ok, _, err) = cli(&[&args[..], &["--out", &s(&odd)]].concat());
    assert!(
        ok && err.contains("ends in .onnx but holds safetensors"),
        "{err}"
    );
    safetensors::SafeTensors::deserialize(&std::fs::read(&odd).unwrap()).unwrap();
    // PyTorch's pickle names say which reader to use instead.
    let pt = t.path().join("w.pt");
    let (ok, _, err) = cli(&[&args[..], &["--out", &s(&pt)]].concat());
    assert!(
        ok && err.contains("ends in .pt, not .safetensors")
            && err.contains("safetensors.torch.load_file"),
        "{err}"
    );
    safetensors::SafeTensors::deserialize(&std::fs::read(&pt).unwrap()).unwrap();

    // An export over a checkpoint (itself, or another of the run's) is
    // refused and leaves it whole; over a plain export it is not refused.
    let before = std::fs::read(&ck_path).unwrap();
    for format in ["safetensors", "onnx"] {
        let args = ["export", "--checkpoint", &s(&out), "--format", format];
        let (ok, _, err) = cli(&[&args[..], &["--out", &s(&ck_path)]].concat());
        assert!(!ok && err.contains("a training checkpoint"), "{err}");
        let (ok, _, err) = cli(&[&args[..], &["--out", &s(&st)]].concat());
        assert!(ok, "{err}");
        // Nor under a checkpoint's name in the run's folder, where --resume
        // would take the newest-numbered file for the run's last step.
        let named = out.join("ckpt-9999999999.safetensors");
        let (ok, _, err) = cli(&[&args[..], &["--out", &s(&named)]].concat());
        assert!(
            !ok && err.contains("a name train gives its checkpoints"),
            "{err}"
        );
        assert!(!named.exists());
    }
    // Nor do eval, predict, features and neighbors write over one.
    let (run, ck, d, img) = (s(&out), s(&ck_path), s(&data), s(&images[0]));
    let cpu = ["--cpu", "--checkpoint", &run, "--data", &d];
    let writes: [(&[&str], &str); 4] = [
        (
            &[&["eval"][..], &cpu, &["--per-class", &ck]].concat(),
            "--per-class",
        ),
        (
            &["predict", "--checkpoint", &run, "--logits", &ck, &img],
            "--logits",
        ),
        (
            &[&["features"][..], &cpu, &["--out", &ck]].concat(),
            "--out",
        ),
        (
            &[&["neighbors"][..], &cpu, &["--query", &img, "--out", &ck]].concat(),
            "--out",
        ),
    ];
    for (args, flag) in writes {
        let (ok, _, err) = cli(args);
        let want = format!("{flag} {ck}: a training checkpoint");
        assert!(!ok && err.contains(&want), "{args:?}: {err}");
    }
    assert!(std::fs::read(&ck_path).unwrap() == before);
    alexnet_cuda::checkpoint::load(&ck_path).expect("the checkpoint still loads");

    // Nor over the run's logs or its chart, under the names train gives them.
    let (log, chart) = (out.join("epochs.csv"), out.join("curves.png"));
    let (log_before, chart_before) = (std::fs::read(&log).unwrap(), std::fs::read(&chart).unwrap());
    let (log_s, chart_s) = (s(&log), s(&chart));
    // Nor over its lock, which a running train holds.
    let lock_s = s(&out.join(".lock"));
    let writes: [(&[&str], &str, &str); 3] = [
        (
            &[&["eval"][..], &cpu, &["--per-class", &log_s]].concat(),
            "--per-class",
            &log_s,
        ),
        (
            &["filters", "--checkpoint", &run, "--out", &chart_s],
            "--out",
            &chart_s,
        ),
        (
            &[
                "export",
                "--checkpoint",
                &run,
                "--format",
                "onnx",
                "--out",
                &lock_s,
            ],
            "--out",
            &lock_s,
        ),
    ];
    for (args, flag, file) in writes {
        let (ok, _, err) = cli(args);
        let want = format!("{flag} {file}: a name train gives its own files, in a run's folder");
        assert!(!ok && err.contains(&want), "{args:?}: {err}");
    }
    // A link elsewhere to a run's file is written through, so it is
    // refused as the file it names is.
    let link = t.path().join("mine.csv");
    std::os::unix::fs::symlink(&log, &link).unwrap();
    let link_s = s(&link);
    let args = [&["eval"][..], &cpu, &["--per-class", &link_s]].concat();
    let (ok, _, err) = cli(&args);
    let want = format!("--per-class {log_s}: a name train gives its own files, in a run's folder");
    assert!(!ok && err.contains(&want), "{err}");
    assert!(std::fs::read(&log).unwrap() == log_before);
    assert!(std::fs::read(&chart).unwrap() == chart_before);
    // A link at an output flag is written through, as the shell's `>`
    // does: the file it names is replaced and the link stays; features'
    // side files go beside that file, not the link.
    let deploy = t.path().join("deploy");
    std::fs::create_dir_all(&deploy).unwrap();
    let (v1, latest) = (deploy.join("v1.onnx"), t.path().join("latest.onnx"));
    std::fs::write(&v1, "an older export").unwrap();
    std::os::unix::fs::symlink("deploy/v1.onnx", &latest).unwrap();
    let (ok, _, err) = cli(&["export", "--checkpoint", &run, "--out", &s(&latest)]);
    assert!(ok, "{err}");
    assert!(std::fs::symlink_metadata(&latest).unwrap().is_symlink());
    assert!(std::fs::read(&v1).unwrap() != b"an older export");
    let (npy, link) = (deploy.join("f.npy"), t.path().join("f.npy"));
    std::os::unix::fs::symlink(&npy, &link).unwrap();
    let link_s = s(&link);
    let args = [&["features"][..], &cpu, &["--limit", "2", "--out", &link_s]].concat();
    let (ok, _, err) = cli(&args);
    assert!(ok, "{err}");
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert!(npy.exists() && deploy.join("f.meta.json").exists(), "{err}");
    assert!(!t.path().join("f.meta.json").exists());
    // Names that only start like a run's are the user's, in its folder too.
    let (mine_csv, mine_png) = (out.join("epochs.before.csv"), out.join("ckpt-best.png"));
    let (mine_csv_s, mine_png_s) = (s(&mine_csv), s(&mine_png));
    let args = [&["eval"][..], &cpu, &["--per-class", &mine_csv_s]].concat();
    let (ok, _, err) = cli(&args);
    assert!(ok && mine_csv.exists(), "{err}");
    let (ok, _, err) = cli(&["filters", "--checkpoint", &run, "--out", &mine_png_s]);
    assert!(ok && mine_png.exists(), "{err}");
    // The same names outside a run's folder are the user's to write.
    let elsewhere = t.path().join("epochs.csv");
    let elsewhere_s = s(&elsewhere);
    let args = [&["eval"][..], &cpu, &["--per-class", &elsewhere_s]].concat();
    let (ok, _, err) = cli(&args);
    assert!(ok && elsewhere.exists(), "{err}");
}

/// A float64 `.npy` (a NumPy array never cast) of `shape`, written from
/// the format's description: magic, version 1.0, the header's dict padded
/// with spaces to a multiple of 64 bytes with '\n', then the values.
fn write_npy_f64(path: &Path, shape: &[usize], values: &[f64]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let dict = format!(
        "{{'descr': '<f8', 'fortran_order': False, 'shape': ({},), }}",
        dims.join(", ")
    );
    let len = (10 + dict.len() + 1).div_ceil(64) * 64 - 10;
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(len as u16).to_le_bytes());
    b.extend_from_slice(dict.as_bytes());
    b.resize(10 + len - 1, b' ');
    b.push(b'\n');
    values
        .iter()
        .for_each(|v| b.extend_from_slice(&v.to_le_bytes()));
    std::fs::write(path, b).unwrap();
}

/// `predict --input-npy` reads its input a step of rows at a time: 45
/// rows, steps of 20 (the run's batch), give the logits of one forward of
/// all 45 through the checkpoint's network, from float32 and from float64
/// files; a NaN in the last step is refused before anything is printed.
#[test]
fn predict_reads_a_large_input_a_step_at_a_time() {
    use alexnet_cuda::npy::{read_npy_f32, write_npy_f32};
    let t = tempfile::tempdir().unwrap();
    let s = |p: &Path| p.display().to_string();
    let (_, run) = one_epoch_of_ten_classes(t.path());
    let ck = checkpoint::load(&run.join("best.safetensors")).unwrap();
    let topo = ck.state.net.topology().unwrap();
    let (n, per) = (45, 3 * 28 * 28);
    let mut rng = Rng::new(7);
    let x: Vec<f32> = (0..n * per).map(|_| rng.normal() as f32).collect();
    let be = CpuBackend::new();
    let mut net = ck.network(&be, &topo, n).unwrap();
    net.forward(&x, &vec![0; n], Mode::Eval).unwrap();
    let want = net.logits().unwrap();

    let (x32, x64, logits) = (
        t.path().join("x.npy"),
        t.path().join("x64.npy"),
        t.path().join("l.npy"),
    );
    write_npy_f32(&x32, &[n, 3, 28, 28], &x).unwrap();
    let wide: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    write_npy_f64(&x64, &[n, 3, 28, 28], &wide);
    for input in [&x32, &x64] {
        let args = [
            "predict",
            "--cpu",
            "--checkpoint",
            &s(&run),
            "--input-npy",
            &s(input),
        ];
        let (ok, _, err) = cli(&[&args[..], &["--logits", &s(&logits)]].concat());
        assert!(ok, "{err}");
        let (shape, got) = read_npy_f32(&logits).unwrap();
        assert_eq!(shape, vec![n, 10]);
        for (a, b) in got.iter().zip(&want) {
            assert!(
                (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                "{}: {a} vs {b}",
                s(input)
            );
        }
    }
    let mut bad = x.clone();
    bad[44 * per + 2 * 28 * 28] = f32::INFINITY;
    write_npy_f32(&x32, &[n, 3, 28, 28], &bad).unwrap();
    let (ok, listing, err) = cli(&[
        "predict",
        "--cpu",
        "--checkpoint",
        &s(&run),
        "--input-npy",
        &s(&x32),
    ]);
    let said = format!(
        "value {} (image 44, channel 2) is inf",
        44 * per + 2 * 28 * 28
    );
    assert!(
        !ok && err.contains(&said) && listing.is_empty(),
        "{said}: {listing}{err}"
    );
}

/// `predict` ranks the classes by their log-probability, not by the
/// probability in f32: for a network so confident (here fc8 scaled by 200)
/// that many classes' softmax is below f32's least value (a logit gap over
/// about 104), the listing still follows the logits --logits writes, every
/// class in its place.
#[test]
fn predict_ranks_classes_whose_probability_underflows_by_their_logits() {
    use alexnet_cuda::export::Tensor;
    use alexnet_cuda::npy::{read_npy_f32, write_npy_f32};
    let t = tempfile::tempdir().unwrap();
    let s = |p: &Path| p.display().to_string();
    let (_, run) = one_epoch_of_ten_classes(t.path());
    let ck = checkpoint::load(&run.join("best.safetensors")).unwrap();
    let mut tensors: Vec<Tensor> = ck.tensors.into_values().collect();
    for t in tensors.iter_mut().filter(|t| t.name.starts_with("fc8.")) {
        t.data.iter_mut().for_each(|v| *v *= 200.0);
    }
    let sure = t.path().join("sure.safetensors");
    checkpoint::save(&sure, &ck.state, &tensors).unwrap();
    let (n, per) = (6, 3 * 28 * 28);
    let mut rng = Rng::new(11);
    let x: Vec<f32> = (0..n * per).map(|_| rng.normal() as f32).collect();
    let (xp, lp) = (t.path().join("x.npy"), t.path().join("l.npy"));
    write_npy_f32(&xp, &[n, 3, 28, 28], &x).unwrap();
    let (ok, listing, err) = cli(&[
        "predict",
        "--cpu",
        "--checkpoint",
        &s(&sure),
        "--input-npy",
        &s(&xp),
        "--top",
        "10",
        "--logits",
        &s(&lp),
    ]);
    assert!(ok, "{err}");
    let (_, logits) = read_npy_f32(&lp).unwrap();
    let lists = listed(&listing);
    assert_eq!(lists.len(), n, "{listing}");
    let mut out_of_index_order = 0;
    for (list, row) in lists.iter().zip(logits.chunks_exact(10)) {
        let mut order: Vec<usize> = (0..10).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        let ids: Vec<&str> = list.iter().map(|(id, _)| id.as_str()).collect();
        let want: Vec<&str> = order
            .iter()
            .map(|&c| ck.state.classes[c].as_str())
            .collect();
        assert_eq!(ids, want, "logits {row:?}\n{listing}");
        // The case that needs it: two classes below f32's least
        // probability, the higher logit on the higher index.
        let top = row[order[0]];
        let low: Vec<usize> = order
            .iter()
            .copied()
            .filter(|&c| top - row[c] > 110.0)
            .collect();
        out_of_index_order += low.windows(2).filter(|w| w[0] > w[1]).count();
    }
    assert!(
        out_of_index_order > 0,
        "no underflowing classes out of index order: {logits:?}"
    );
}

/// `eval --per-class` and `--confusion` on a class folder against the same
/// images' `predict --logits`, ranked here: each class's images, top-1 and
/// top-5 error, the class it is most often taken for, and the matrix.
#[test]
fn eval_per_class_tables_match_predicts_logits() {
    use alexnet_cuda::npy::read_npy_f32;
    let t = tempfile::tempdir().unwrap();
    let s = |p: &Path| p.display().to_string();
    let (train_dir, val_dir) = (t.path().join("train"), t.path().join("val"));
    write_demo_dataset(&train_dir, 10, 30, 32, 21).unwrap();
    write_demo_dataset(&val_dir, 10, 12, 32, 22).unwrap();
    // Each class's name ends in a line break and a word, which the printed
    // lines show escaped (the CSV quotes it).
    for d in [&train_dir, &val_dir] {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            std::fs::rename(&p, d.join(format!("{name}\nx"))).unwrap();
        }
    }
    let out = t.path().join("run");
    // Five epochs of 14 steps: after one the net can sit at chance, and the
    // matrix below must have a diagonal to compare.
    train_run(
        &train_dir,
        &out,
        &["--val", "20", "--epochs", "5", "--batch", "20"],
    );
    let (csv_path, npy_path, logits) = (
        t.path().join("classes.csv"),
        t.path().join("confusion.npy"),
        t.path().join("logits.npy"),
    );
    let (ok, text, err) = cli(&[
        "eval",
        "--checkpoint",
        &s(&out),
        "--data",
        &s(&val_dir),
        "--no-progress",
        "--per-class",
        &s(&csv_path),
        "--confusion",
        &s(&npy_path),
        "--confusion",
        &s(&t.path().join("confusion.png")),
        // The same file again, spelled otherwise: written once.
        "--confusion",
        &s(&t.path().join(".").join("confusion.npy")),
    ]);
    assert!(ok, "{err}");
    let png = image::open(t.path().join("confusion.png")).unwrap();
    assert!(
        png.width() > 10 * 40,
        "10 classes, 40-pixel cells and names"
    );
    let (ok, _, err) = cli(&[
        "predict",
        "--checkpoint",
        &s(&out),
        "--logits",
        &s(&logits),
        &s(&val_dir),
    ]);
    assert!(ok, "{err}");

    // predict lists a folder in path order: class by class, 12 each.
    let (shape, z) = read_npy_f32(&logits).unwrap();
    assert_eq!(shape, [120, 10]);
    let mut want = vec![(0u64, 0u64, 0u64); 10];
    let mut matrix = vec![0f32; 100];
    for (i, row) in z.chunks_exact(10).enumerate() {
        let label = i / 12;
        let mut order: Vec<usize> = (0..10).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        let rank = order.iter().position(|&c| c == label).unwrap();
        want[label].0 += 1;
        want[label].1 += (rank > 0) as u64;
        want[label].2 += (rank >= 5) as u64;
        matrix[label * 10 + order[0]] += 1.0;
    }
    assert!(want.iter().any(|w| w.1 > 0), "some images are missed");
    assert!(
        matrix.iter().step_by(11).sum::<f32>() > 12.0,
        "trained above chance"
    );
    assert_eq!(
        read_npy_f32(&npy_path).unwrap(),
        (vec![10, 10], matrix.clone())
    );

    let mut rows = csv::Reader::from_path(&csv_path).unwrap();
    let head: Vec<String> = rows.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(
        head,
        [
            "label",
            "class",
            "name",
            "images",
            "top1_error",
            "top5_error",
            "confused_with",
            "confused_name",
            "confused_images"
        ]
    );
    let records: Vec<csv::StringRecord> = rows.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), 10);
    let classes: Vec<String> = std::fs::read_dir(&val_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for (c, r) in records.iter().enumerate() {
        let (n, miss1, miss5) = want[c];
        let num = |k: usize| r[k].parse::<f64>().unwrap();
        assert_eq!(
            (&r[0], &r[1]),
            (c.to_string().as_str(), classes[c].as_str())
        );
        assert_eq!(num(3) as u64, n);
        assert!((num(4) - miss1 as f64 / n as f64).abs() < 1e-6, "{r:?}");
        assert!((num(5) - miss5 as f64 / n as f64).abs() < 1e-6, "{r:?}");
        let off = |j: usize| if j == c { 0.0 } else { matrix[c * 10 + j] };
        let most = (0..10).map(off).fold(0.0, f32::max);
        if most == 0.0 {
            assert_eq!(&r[6], "", "{r:?}");
        } else {
            let j = (0..10).find(|&j| off(j) == most).unwrap();
            assert_eq!((&r[6], num(8) as f32), (classes[j].as_str(), most), "{r:?}");
        }
    }
    // Ten classes: top-5 is no given.
    assert!(
        text.contains("top-5 error") && !text.contains("trivial"),
        "{text}"
    );
    // The printed line: the classes of highest top-1 error first (ties in
    // label order), each "name e% of n", split on "; ".
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("hardest classes (top-1 error): "))
        .unwrap_or_else(|| panic!("{text}"));
    let mut hard: Vec<usize> = (0..10).filter(|&c| want[c].1 > 0).collect();
    hard.sort_by(|&a, &b| {
        (want[b].1 * want[a].0)
            .cmp(&(want[a].1 * want[b].0))
            .then(a.cmp(&b))
    });
    let shown: Vec<String> = hard
        .iter()
        .take(5)
        .map(|&c| {
            let e = 100.0 * want[c].1 as f64 / want[c].0 as f64;
            let name = classes[c].replace('\n', "\\n");
            format!("{name} {e:.1}% of {}", want[c].0)
        })
        .collect();
    assert_eq!(line.split("; ").collect::<Vec<_>>(), shown, "{text}");
    assert!(
        text.contains("most confused (true -> top-1, images): "),
        "{text}"
    );
    // No name split a line: the "x" after each break stays on its line.
    assert!(!text.lines().any(|l| l.starts_with('x')), "{text}");
}

/// `eval --confusion F.png`: every cell shaded by its share of the row,
/// white to `DARK` linear in the square root of the share (the formula
/// written out here), a row without images white; with few classes the
/// cells' corners (clear of the counts) the same.
#[test]
fn confusion_png_shades_each_cell_by_its_share_of_the_row() {
    use alexnet_cuda::viz::confusion::{png, DARK};
    let t = tempfile::tempdir().unwrap();
    for (n, inset) in [(50usize, None), (3, Some(1))] {
        // Class k: 6 images taken for k, 3 for k+1, 1 for k+7; the last
        // class has none.
        let mut tally = ClassTally::new(n);
        for k in 0..n - 1 {
            for (pred, times) in [(k, 6), ((k + 1) % n, 3), ((k + 7) % n, 1)] {
                let mut row = vec![0.0f32; n];
                row[pred] = 1.0;
                for _ in 0..times {
                    tally.add(&row, &[k as u32]);
                }
            }
        }
        let names: Vec<String> = (0..n).map(|c| format!("class {c}")).collect();
        let path = t.path().join(format!("c{n}.png"));
        let (bytes, l) = png(&path, &names, &tally).unwrap();
        let img = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (l.width as u32, l.height as u32));
        for truth in 0..n {
            let row: u64 = (0..n).map(|p| tally.confused(truth, p)).sum();
            for p in 0..n {
                let share = match row {
                    0 => 0.0,
                    _ => tally.confused(truth, p) as f64 / row as f64,
                };
                let want = DARK.map(|d| (255.0 + (d as f64 - 255.0) * share.sqrt()).round() as u8);
                let (x, y) = match inset {
                    None => (
                        l.left + p * l.cell + l.cell / 2,
                        l.top + truth * l.cell + l.cell / 2,
                    ),
                    Some(i) => (l.left + p * l.cell + i, l.top + truth * l.cell + i),
                };
                let got = img.get_pixel(x as u32, y as u32).0;
                assert_eq!(got, want, "{n} classes, cell ({truth}, {p}), share {share}");
            }
        }
    }
}

/// `eval --confusion F.png` with 30 classes (cells of 24 pixels): counts
/// of two digits are written in their cells; one of four (about 29 pixels
/// in the 12-pixel font) would spill into the next cell, so then no cell
/// holds a count, and each is its shade alone.
#[test]
fn confusion_png_counts_only_where_they_fit() {
    use alexnet_cuda::viz::confusion::png;
    let t = tempfile::tempdir().unwrap();
    let n = 30;
    let names: Vec<String> = (0..n).map(|c| format!("c{c}")).collect();
    for (extra, counts) in [(0, true), (1000, false)] {
        let mut tally = ClassTally::new(n);
        for k in 0..n {
            for (pred, times) in [(k, 6 + if k == 0 { extra } else { 0 }), ((k + 1) % n, 3)] {
                let mut row = vec![0.0f32; n];
                row[pred] = 1.0;
                for _ in 0..times {
                    tally.add(&row, &[k as u32]);
                }
            }
        }
        let path = t.path().join(format!("c{extra}.png"));
        let (bytes, l) = png(&path, &names, &tally).unwrap();
        assert_eq!(l.cell, 24);
        let img = image::load_from_memory(&bytes).unwrap().to_rgb8();
        // A cell is inked when it holds a colour other than its corner's.
        let inked = |tr: usize, p: usize| {
            let (x0, y0) = (l.left + p * l.cell, l.top + tr * l.cell);
            let shade = img.get_pixel(x0 as u32, y0 as u32).0;
            (0..l.cell * l.cell).any(|i| {
                let (x, y) = (x0 + i % l.cell, y0 + i / l.cell);
                img.get_pixel(x as u32, y as u32).0 != shade
            })
        };
        assert_eq!(inked(1, 1), counts, "cell (1, 1) holding 6, extra {extra}");
        assert_eq!(inked(0, 1), counts, "cell (0, 1) holding 3, extra {extra}");
        if !counts {
            let any = (0..n * n).find(|&i| inked(i / n, i % n));
            assert_eq!(any.map(|i| (i / n, i % n)), None, "a count drawn");
        }
    }
}

/// A checkpoint that subtracts its training set's mean image (the paper's
/// preprocessing, as `alexnet-half` does) is not run on a store of another
/// size, where that image would not fit: the error names the size to
/// prepare at, and the class folder it suggests instead is scaled to fit.
#[test]
fn a_store_of_another_size_than_the_mean_image_is_refused_with_the_size_to_use() {
    let t = tempfile::tempdir().unwrap();
    let s = |p: &Path| p.display().to_string();
    let (train_dir, val_dir) = (t.path().join("train"), t.path().join("val"));
    write_demo_dataset(&train_dir, 2, 2, 240, 3).unwrap();
    write_demo_dataset(&val_dir, 2, 1, 240, 4).unwrap();
    let prepare = |out: &Path, size: &str| {
        let (ok, _, err) = cli(&[
            "prepare",
            "--no-progress",
            "--train",
            &s(&train_dir),
            "--val",
            &s(&val_dir),
            "--out",
            &s(out),
            "--size",
            size,
        ]);
        assert!(ok, "{err}");
    };
    let (at_228, at_232) = (t.path().join("s228"), t.path().join("s232"));
    prepare(&at_228, "228");
    prepare(&at_232, "232");
    let run = t.path().join("run");
    let (ok, _, err) = cli(&[
        "train",
        "--cpu",
        "--config",
        "alexnet-half",
        "--epochs",
        "1",
        "--batch",
        "2",
        "--no-progress",
        "--data",
        &s(&at_228),
        "--out",
        &s(&run),
    ]);
    assert!(ok, "{err}");
    let eval = |data: &Path| cli(&["eval", "--checkpoint", &s(&run), "--data", &s(data)]);
    let (ok, _, err) = eval(&at_232);
    assert!(!ok);
    assert!(
        err.contains("stored at 232x232") && err.contains("the 228x228 mean image"),
        "{err}"
    );
    assert!(err.contains("prepare them with --size 228"), "{err}");
    assert!(!err.contains("loader:"), "{err}");
    let (ok, _, err) = eval(&val_dir);
    assert!(ok, "{err}");
    // An export holds no mean image, and says so where its graph does
    // not subtract one itself (--pixels): the metadata's channel means
    // are not what the run subtracted.
    let note = "the run subtracted a mean image, which this file does not hold";
    let export = |out: &Path, more: &[&str]| {
        let args = ["export", "--checkpoint", &s(&run), "--out", &s(out)];
        cli(&[&args[..], more].concat())
    };
    for (out, more, told) in [
        ("w.safetensors", &[][..], true),
        ("w.onnx", &[], true),
        ("px.onnx", &["--pixels"], false),
    ] {
        let (ok, stdout, err) = export(&t.path().join(out), more);
        assert!(ok && stdout.contains(note) == told, "{out}: {stdout}{err}");
    }
}
