//! tests/imagenette_cli.rs: owns the whole command-line chain on real
//! ImageNet photos, through the built binary: `prepare` the committed
//! Imagenette fixture (tests/fixtures/imagenette: 100 train and 20 val
//! photos of 10 classes, with their names), `train --config alexnet` for a
//! few steps on the CPU, `eval` (centre and ten crops), `predict` one photo,
//! and `export` as safetensors and ONNX. Each step must exit 0 and write
//! what it promises; the references are the fixture's folders and names
//! file, and the paper's layer shapes written out here by hand.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use alexnet_cuda::checkpoint;
use safetensors::{Dtype, SafeTensors};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/imagenette")
}

/// Run the binary; it must succeed. Returns its stdout.
fn run_ok(args: &[&str]) -> String {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_alexnet-cuda"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run alexnet-cuda");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{args:?} failed:\n{stderr}");
    println!("{} ({:.1} s)\n{stdout}", args[0], t.elapsed().as_secs_f64());
    stdout
}

/// The names file as (synset, name) pairs, sorted by synset: the class
/// order of ILSVRC-2012 and of sorted class folders.
fn names() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(fixture().join("imagenette-names.txt")).expect("names");
    let mut v: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(s, n)| (s.to_string(), n.trim().to_string()))
        .collect();
    v.sort();
    v
}

/// Class folders of `dir`, sorted, and the number of files in all of them.
fn classes_and_count(dir: &Path) -> (Vec<String>, usize) {
    let mut classes = Vec::new();
    let mut n = 0;
    for e in std::fs::read_dir(dir).expect("read the fixture") {
        let e = e.expect("fixture entry");
        classes.push(e.file_name().to_string_lossy().into_owned());
        n += std::fs::read_dir(e.path()).expect("class folder").count();
    }
    classes.sort();
    (classes, n)
}

/// The first file of `dir` by name.
fn first_file(dir: &Path) -> PathBuf {
    let files = std::fs::read_dir(dir).expect("read a class folder");
    let paths = files.map(|e| e.expect("entry").path());
    paths.min().expect("a photo")
}

/// `prepare`'s summary line for `what` says `n` images of 10 classes, none skipped.
fn check_prepare(stdout: &str, what: &str, n: usize) {
    let want = format!("{what}: {n} images of 10 classes, 0 skipped");
    assert!(
        stdout.lines().any(|l| l.starts_with(&want)),
        "no line {want:?} in:\n{stdout}"
    );
}

/// `eval --json` describes `images` images with error rates in [0, 1] that
/// are whole numbers of images, top-5 no worse than top-1.
fn check_eval(stdout: &str, images: usize, mode: &str) {
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(v["images"].as_u64(), Some(images as u64), "{stdout}");
    assert_eq!(v["mode"].as_str(), Some(mode), "{stdout}");
    let field = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {stdout}"));
    let (top1, top5) = (field("top1_error"), field("top5_error"));
    for e in [top1, top5] {
        assert!((0.0..=1.0).contains(&e), "{stdout}");
        let wrong = e * images as f64;
        assert!(
            (wrong - wrong.round()).abs() < 1e-3,
            "{e} of {images} images: {stdout}"
        );
    }
    assert!(top5 <= top1, "{stdout}");
    assert!(field("loss").is_finite() && field("loss") > 0.0, "{stdout}");
}

/// `predict`'s listing of one image: its path, then five classes, each a
/// synset of the names file followed by that synset's name, with
/// probabilities falling and summing to at most 100%.
fn check_predict(stdout: &str, image: &Path, names: &[(String, String)]) {
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some(image.display().to_string().as_str()));
    let mut percents = Vec::new();
    let mut seen = Vec::new();
    for (rank, line) in lines.enumerate() {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert!(words.len() >= 4, "rank, percent, synset and name: {line:?}");
        assert_eq!(words[0], format!("{}.", rank + 1), "{line:?}");
        let p: f64 = words[1]
            .trim_end_matches('%')
            .parse()
            .expect("a percentage");
        let (synset, name) = (words[2], words[3..].join(" "));
        let want = names.iter().find(|(s, _)| s == synset);
        assert_eq!(
            want.map(|(_, n)| n.as_str()),
            Some(name.as_str()),
            "{line:?}"
        );
        assert!(!seen.contains(&synset), "{synset} listed twice");
        seen.push(synset);
        percents.push(p);
    }
    assert_eq!(percents.len(), 5, "{stdout}");
    assert!(percents.windows(2).all(|w| w[0] >= w[1]), "{stdout}");
    assert!(percents.iter().sum::<f64>() <= 100.01, "{stdout}");
}

/// The paper's AlexNet for `classes` classes under PyTorch's names and
/// layouts (section 3.5): conv weights [out, in / groups, k, k], the two
/// towers' convolutions 2, 4 and 5 as groups of 2, fc6 reading 256 x 6 x 6.
fn alexnet_shapes(classes: usize) -> Vec<(&'static str, Vec<usize>)> {
    vec![
        ("conv1.weight", vec![96, 3, 11, 11]),
        ("conv1.bias", vec![96]),
        ("conv2.weight", vec![256, 48, 5, 5]),
        ("conv2.bias", vec![256]),
        ("conv3.weight", vec![384, 256, 3, 3]),
        ("conv3.bias", vec![384]),
        ("conv4.weight", vec![384, 192, 3, 3]),
        ("conv4.bias", vec![384]),
        ("conv5.weight", vec![256, 192, 3, 3]),
        ("conv5.bias", vec![256]),
        ("fc6.weight", vec![4096, 256 * 6 * 6]),
        ("fc6.bias", vec![4096]),
        ("fc7.weight", vec![4096, 4096]),
        ("fc7.bias", vec![4096]),
        ("fc8.weight", vec![classes, 4096]),
        ("fc8.bias", vec![classes]),
    ]
}

/// The exported safetensors file, read by the safetensors crate: exactly
/// the 16 tensors of `alexnet_shapes`, f32, and the classes and names.
fn check_safetensors(path: &Path, names: &[(String, String)]) {
    let bytes = std::fs::read(path).expect("read the export");
    let st = SafeTensors::deserialize(&bytes).expect("a safetensors file");
    let want = alexnet_shapes(names.len());
    assert_eq!(st.len(), want.len(), "{:?}", st.names());
    for (name, shape) in &want {
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            (t.dtype(), t.shape()),
            (Dtype::F32, shape.as_slice()),
            "{name}"
        );
    }
    let (_, header) = SafeTensors::read_metadata(&bytes).expect("header");
    let meta = header.metadata().clone().expect("metadata");
    let list = |k: &str| -> Vec<String> {
        serde_json::from_str(meta.get(k).map_or("null", String::as_str)).expect(k)
    };
    let synsets: Vec<String> = names.iter().map(|(s, _)| s.clone()).collect();
    let readable: Vec<String> = names.iter().map(|(_, n)| n.clone()).collect();
    assert_eq!((list("classes"), list("names")), (synsets, readable));
}

/// The ONNX file: a ModelProto whose initializers are the 16 tensors of
/// `alexnet_shapes`, float (data_type 1), each with the values of the
/// safetensors export `st` of the same checkpoint, and whose metadata
/// names the input and the classes.
fn check_onnx(path: &Path, st: &Path, classes: usize) {
    let m = crate::export::decode(path);
    let bytes = std::fs::read(st).expect("read the export");
    let st = SafeTensors::deserialize(&bytes).expect("a safetensors file");
    let want = alexnet_shapes(classes);
    assert_eq!(m.inits.len(), want.len(), "{:?}", m.inits.keys());
    for (name, shape) in &want {
        let (dims, ty, data) = &m.inits[*name];
        let dims: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
        assert_eq!((&dims, *ty), (shape, 1), "{name}");
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let values: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert!(
            values == *data,
            "{name}: the ONNX values are not the export's"
        );
    }
    assert_eq!(m.meta["input"], "input");
    let listed: Vec<String> = serde_json::from_str(&m.meta["classes"]).unwrap();
    assert_eq!(listed.len(), classes);
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `prepare` the fixture's train/ and val/ with its names into `store`;
/// its summary must count the fixture's files.
fn prepare_fixture(store: &Path) {
    let (_, n_train) = classes_and_count(&fixture().join("train"));
    let (_, n_val) = classes_and_count(&fixture().join("val"));
    let out = run_ok(&[
        "prepare",
        "--train",
        &s(&fixture().join("train")),
        "--val",
        &s(&fixture().join("val")),
        "--names",
        &s(&fixture().join("imagenette-names.txt")),
        "--out",
        &s(store),
        "--no-progress",
    ]);
    check_prepare(&out, "train", n_train);
    check_prepare(&out, "val", n_val);
}

/// 24 photos at batch 8 (3 steps) with a checkpoint every 2 steps and at
/// the end, both kept; the run's best checkpoint records the full network,
/// the image counts and the fixture's classes and names.
fn train_briefly(store: &Path, run: &Path, names: &[(String, String)]) {
    let stdout = run_ok(&[
        "train",
        "--cpu",
        "--config",
        "alexnet",
        "--data",
        &s(store),
        "--out",
        &s(run),
        "--batch",
        "8",
        "--epochs",
        "1",
        "--limit",
        "24",
        "--checkpoint-every",
        "2",
        "--keep",
        "2",
        "--no-progress",
    ]);
    // The closing line's command evaluates on the store's val/.
    let best = run.join("best.safetensors");
    let hint = format!("eval --checkpoint {} --data {}", s(&best), s(store));
    assert!(stdout.contains(&hint), "no {hint:?} in {stdout}");
    let steps: Vec<u64> = checkpoint::list(run)
        .expect("checkpoints")
        .iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(steps, [2, 3], "a checkpoint every 2 steps and at the end");
    let ck = checkpoint::load(&run.join("best.safetensors")).expect("best.safetensors loads");
    let (_, n_val) = classes_and_count(&fixture().join("val"));
    assert_eq!(ck.state.net.config, "alexnet");
    assert_eq!((ck.state.train_images, ck.state.val_images), (24, n_val));
    let synsets: Vec<String> = names.iter().map(|(s, _)| s.clone()).collect();
    let readable: Vec<String> = names.iter().map(|(_, n)| n.clone()).collect();
    assert_eq!((&ck.state.classes, &ck.state.names), (&synsets, &readable));
}

/// A few training steps of the full network on real photos, then every
/// command that uses the checkpoint: about 40 s on 2 cores.
#[test]
fn imagenette_photos_through_prepare_train_eval_predict_export() {
    let t = tempfile::tempdir().expect("temp dir");
    let (store, run) = (t.path().join("store"), t.path().join("run"));
    let names = names();
    let synsets: Vec<String> = names.iter().map(|(s, _)| s.clone()).collect();
    for split in ["train", "val"] {
        let (classes, _) = classes_and_count(&fixture().join(split));
        assert_eq!(classes, synsets, "{split}/ has a folder per named class");
    }
    prepare_fixture(&store);
    train_briefly(&store, &run, &names);

    let best = s(&run.join("best.safetensors"));
    let (_, n_val) = classes_and_count(&fixture().join("val"));
    let eval = [
        "eval",
        "--checkpoint",
        &best,
        "--data",
        &s(&store),
        "--json",
        "--no-progress",
    ];
    check_eval(&run_ok(&eval), n_val, "centre-crop");
    check_eval(
        &run_ok(&[&eval[..], &["--ten-crop"]].concat()),
        n_val,
        "10-crop",
    );

    let photo = first_file(&fixture().join("val").join(&synsets[3]));
    check_predict(
        &run_ok(&["predict", "--checkpoint", &best, &s(&photo)]),
        &photo,
        &names,
    );

    let (st, onnx) = (
        t.path().join("alexnet.safetensors"),
        t.path().join("alexnet.onnx"),
    );
    run_ok(&[
        "export",
        "--checkpoint",
        &best,
        "--format",
        "safetensors",
        "--out",
        &s(&st),
    ]);
    check_safetensors(&st, &names);
    run_ok(&[
        "export",
        "--checkpoint",
        &best,
        "--format",
        "onnx",
        "--out",
        &s(&onnx),
    ]);
    check_onnx(&onnx, &st, names.len());
}
