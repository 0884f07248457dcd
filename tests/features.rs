//! `features` and `neighbors`: the rows written are the activations of the
//! network's own forward pass (and agree with the next layer's weights:
//! fc6 = relu(W6 pool5 + b6), fc7 = relu(W7 fc6 + b7), logits = W8 fc7 + b8);
//! a set image's nearest neighbour is itself; the blocked search equals a
//! brute-force one; bad input ends in a clear error; unreadable images are
//! left out of the rows and named. On a store of the
//! CIFAR-10 fixture photos and a cifar checkpoint trained for one epoch.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use alexnet_cuda::backend::cpu::CpuBackend;
use alexnet_cuda::checkpoint::{self, Checkpoint};
use alexnet_cuda::data::{ImageSource, PackedStore};
use alexnet_cuda::features::{grid_size, nearest_in_matrix, nearest_in_npy};
use alexnet_cuda::model::net::{Mode, Network};
use alexnet_cuda::npy::{read_npy_f32, write_npy_f32, NpyRows, NpyWriter};
use alexnet_cuda::rng::Rng;

use crate::common::cli;

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cifar10")
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    store: PathBuf,
    ckpt: PathBuf,
}

/// A raw store of the 500 fixture photos at 32x32 and a cifar checkpoint
/// trained on it for one epoch, made once for all tests.
fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let out = root.join("prepared");
        let (ok, _, err) = cli(&[
            "prepare",
            "--train",
            &s(&fixtures()),
            "--out",
            &s(&out),
            "--size",
            "32",
            "--format",
            "raw",
            "--no-progress",
        ]);
        assert!(ok, "prepare: {err}");
        let run = root.join("run");
        let (ok, _, err) = cli(&[
            "train",
            "--cpu",
            "--config",
            "cifar",
            "--no-progress",
            "--data",
            &s(&out),
            "--out",
            &s(&run),
            "--epochs",
            "1",
            "--batch",
            "50",
            "--val",
            "100",
        ]);
        assert!(ok, "train: {err}");
        let ckpt = checkpoint::list(&run).unwrap().pop().unwrap().1;
        Setup {
            _dir: dir,
            store: out.join("train"),
            root,
            ckpt,
        }
    })
}

fn fc(x: &[f32], w: &[f32], b: &[f32], relu: bool) -> Vec<f32> {
    let (inp, out) = (w.len() / b.len(), b.len());
    x.chunks_exact(inp)
        .flat_map(|row| {
            (0..out).map(move |o| {
                let v = b[o] as f64
                    + (0..inp)
                        .map(|i| row[i] as f64 * w[o * inp + i] as f64)
                        .sum::<f64>();
                let v = v as f32;
                if relu {
                    v.max(0.0)
                } else {
                    v
                }
            })
        })
        .collect()
}

fn assert_close(what: &str, a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * scale,
            "{what}[{i}]: {x} vs {y} (scale {scale})"
        );
    }
}

/// `features` of `data` into `out` with the setup's checkpoint, on the CPU.
fn features_of(st: &Setup, data: &Path, out: &Path, extra: &[&str]) -> (bool, String, String) {
    let (ck, data, out) = (s(&st.ckpt), s(data), s(out));
    let mut a = vec![
        "features",
        "--cpu",
        "--checkpoint",
        &ck,
        "--data",
        &data,
        "--out",
        &out,
    ];
    a.extend_from_slice(extra);
    a.push("--no-progress");
    cli(&a)
}

/// `neighbors` of one `query` in `data` by the features file `fc7`, the
/// `k` nearest drawn into `grid`, with checkpoint `ck` on the CPU.
fn neighbors_of(
    ck: &Path,
    data: &Path,
    query: &Path,
    (fc7, k): (&Path, &str),
    grid: &Path,
) -> (bool, String, String) {
    let (ck, data, query, fc7, grid) = (s(ck), s(data), s(query), s(fc7), s(grid));
    cli(&[
        "neighbors",
        "--cpu",
        "--checkpoint",
        &ck,
        "--data",
        &data,
        "--query",
        &query,
        "--k",
        k,
        "--features",
        &fc7,
        "--out",
        &grid,
        "--no-progress",
    ])
}

/// The fields of the rank-1 line of a `neighbors` table.
fn rank_one(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .find(|l| l.contains("\t1\t"))
        .expect("rank 1")
        .split('\t')
        .collect()
}

#[test]
fn features_are_the_forward_pass_activations() {
    let st = setup();
    let limit = 40;
    let mut files = std::collections::HashMap::new();
    for layer in ["pool5", "fc6", "fc7"] {
        let out = st.root.join(format!("{layer}.npy"));
        // A batch of 16 does not divide 40: the last batch is short.
        let (ok, stdout, err) = cli(&[
            "features",
            "--cpu",
            "--checkpoint",
            &s(&st.ckpt),
            "--data",
            &s(&st.store),
            "--layer",
            layer,
            "--out",
            &s(&out),
            "--batch",
            "16",
            "--limit",
            "40",
            "--no-progress",
        ]);
        assert!(ok, "{layer}: {err}");
        assert!(stdout.contains("40 rows"), "{stdout}");
        let (shape, rows) = read_npy_f32(&out).unwrap();
        assert_eq!(shape[0], limit);
        files.insert(layer, (shape[1], rows));
    }
    // The network's forward on the same images, all in one batch.
    let ck: Checkpoint = checkpoint::load(&st.ckpt).unwrap();
    let topo = ck.state.net.topology().unwrap();
    let be = CpuBackend::new();
    let mut net = Network::new(&be, &topo, limit, 0).unwrap();
    ck.restore(&mut net, false).unwrap();
    let store = PackedStore::open(&st.store).unwrap();
    let labels: Vec<u32> = (0..store.len()).map(|i| store.label(i)).collect();
    let sources = store.sources().unwrap();
    // Cut by hand: rows k * n / limit (spread evenly, as docs/features.md
    // says), each the centre crop of the raw 32x32 HWC pixels, minus the
    // channel mean, over the std, channels first.
    let n = store.len();
    let idx: Vec<usize> = (0..limit).map(|k| k * n / limit).collect();
    let pre = &ck.state.preprocess;
    let std = pre.std.expect("the cifar config divides by the std");
    let (size, crop) = (32, pre.crop);
    let off = (size - crop) / 2;
    let mut x = Vec::with_capacity(limit * 3 * crop * crop);
    for &i in &idx {
        let px = store.bytes(i).unwrap();
        assert_eq!(px.len(), size * size * 3);
        for c in 0..3 {
            for y in off..off + crop {
                for xx in off..off + crop {
                    let v = f32::from(px[(y * size + xx) * 3 + c]);
                    x.push((v - pre.mean[c]) / std[c]);
                }
            }
        }
    }
    let batch_labels: Vec<u32> = idx.iter().map(|&i| labels[i]).collect();
    net.forward(&x, &batch_labels, Mode::Eval).unwrap();
    for layer in ["pool5", "fc6", "fc7"] {
        let want = net.activation(layer).unwrap();
        assert_close(layer, &files[layer].1, &want, 1e-4);
    }
    // pool5 of cifar: 128 channels at 2x2; fc6 and fc7: 512.
    assert_eq!(files["pool5"].0, 128 * 2 * 2);
    assert_eq!(files["fc7"].0, 512);
    // Independently: each file is the previous one through the next layer's weights.
    let p = |n: &str| net.param(n).unwrap();
    let fc6 = fc(&files["pool5"].1, &p("fc6.weight"), &p("fc6.bias"), true);
    assert_close("fc6 from pool5", &files["fc6"].1, &fc6, 1e-4);
    let fc7 = fc(&files["fc6"].1, &p("fc7.weight"), &p("fc7.bias"), true);
    assert_close("fc7 from fc6", &files["fc7"].1, &fc7, 1e-4);
    let logits = fc(&files["fc7"].1, &p("fc8.weight"), &p("fc8.bias"), false);
    assert_close("logits from fc7", &logits, &net.logits().unwrap(), 1e-4);
    assert!(
        files["fc7"].1.iter().all(|&v| v >= 0.0),
        "fc7 is after the ReLU"
    );
    assert!(files["fc7"].1.iter().any(|&v| v > 0.0));

    // The row table: one line per row, the image's index, label, class and file.
    let csv = std::fs::read_to_string(st.root.join("fc7.rows.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "row,index,label,class,name,source");
    assert_eq!(lines.len(), limit + 1);
    for (row, line) in lines[1..].iter().enumerate() {
        let f: Vec<&str> = line.split(',').collect();
        let i = idx[row];
        assert_eq!(f[0], row.to_string());
        assert_eq!(f[1], i.to_string());
        assert_eq!(f[2], labels[i].to_string());
        assert_eq!(f[3], ck.state.classes[labels[i] as usize]);
        assert_eq!(f[5], sources[i]);
        assert!(
            f[5].contains(f[3]),
            "the source {} lies in its class folder {}",
            f[5],
            f[3]
        );
    }

    // A store whose source list is gone still has its images (eval reads
    // them): the same rows, written without their files, and a warning.
    let bare = st.root.join("no-sources");
    std::fs::create_dir_all(&bare).unwrap();
    for e in std::fs::read_dir(&st.store).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if p.is_file() && !name.starts_with("sources-") {
            std::fs::copy(&p, bare.join(&name)).unwrap();
        }
    }
    let out = st.root.join("bare-fc7.npy");
    let (ok, _, err) = features_of(st, &bare, &out, &["--layer", "fc7", "--limit", "40"]);
    assert!(ok, "{err}");
    assert!(err.contains("written without their source files"), "{err}");
    assert_eq!(read_npy_f32(&out).unwrap().1, files["fc7"].1);
    let csv = std::fs::read_to_string(st.root.join("bare-fc7.rows.csv")).unwrap();
    assert_eq!(csv.lines().count(), 41, "a header and 40 rows: {csv}");
    assert!(csv.lines().skip(1).all(|l| l.ends_with(',')), "{csv}");
}

/// Features of new data, for another task: twelve classes the checkpoint
/// (ten CIFAR-10 classes) never saw, more than it has labels for.
#[test]
fn features_of_new_classes_keep_the_datas_own_labels() {
    let st = setup();
    // The same 24 photos twice: under 12 new class folders, and all in the
    // checkpoint's class `airplane`, named so both scans list them in the
    // same order.
    let (new, known) = (st.root.join("new-classes"), st.root.join("one-known"));
    std::fs::create_dir_all(known.join("airplane")).unwrap();
    let photos: Vec<PathBuf> = ["cat", "ship"]
        .iter()
        .flat_map(|c| (0..12).map(move |i| fixtures().join(c).join(format!("{i:04}.jpg"))))
        .collect();
    for (k, pair) in photos.chunks(2).enumerate() {
        let class = new.join(format!("kind{k:02}"));
        std::fs::create_dir_all(&class).unwrap();
        for (j, p) in pair.iter().enumerate() {
            std::fs::copy(p, class.join(format!("x{j}.jpg"))).unwrap();
            let to = known.join("airplane").join(format!("{k:02}-{j}.jpg"));
            std::fs::copy(p, to).unwrap();
        }
    }
    let (f_new, f_known) = (st.root.join("new.npy"), st.root.join("known.npy"));
    let (ok, _, err) = features_of(st, &new, &f_new, &["--batch", "10"]);
    assert!(ok, "{err}");
    assert!(
        err.contains("12 of its 12 classes are not the checkpoint's"),
        "{err}"
    );
    let (ok, _, err) = features_of(st, &known, &f_known, &["--batch", "10"]);
    assert!(ok, "{err}");
    // The activations do not depend on the labels.
    let (shape, rows) = read_npy_f32(&f_new).unwrap();
    assert_eq!(shape, vec![24, 512]);
    assert_eq!(rows, read_npy_f32(&f_known).unwrap().1);
    // Each row's label, class and name are its folder's.
    let csv = std::fs::read_to_string(st.root.join("new.rows.csv")).unwrap();
    assert_eq!(csv.lines().count(), 25, "a header and 24 rows: {csv}");
    for (row, line) in csv.lines().skip(1).enumerate() {
        let class = format!("kind{:02}", row / 2);
        let want = format!(
            "{row},{row},{},{class},{class},{class}/x{}.jpg",
            row / 2,
            row % 2
        );
        assert_eq!(line, want);
    }

    // neighbors searches the new data and names its own classes.
    let query = new.join("kind11/x1.jpg");
    let grid = st.root.join("new-grid.png");
    let (ok, stdout, err) = neighbors_of(&st.ckpt, &new, &query, (&f_new, "2"), &grid);
    assert!(ok, "{err}");
    let first = rank_one(&stdout);
    assert_eq!((first[2], first[4]), ("kind11", "23"), "{stdout}");

    // The nearest image damaged since its features were taken: the search
    // stands, and the picture draws it as a grey cell.
    let kept = st.root.join("query-copy.jpg");
    std::fs::copy(&query, &kept).unwrap();
    std::fs::write(&query, b"not a photo any more").unwrap();
    let grid = st.root.join("damaged-grid.png");
    let (ok, stdout, err) = neighbors_of(&st.ckpt, &new, &kept, (&f_new, "2"), &grid);
    assert!(ok, "{err}");
    assert!(
        stdout.contains("\t1\t") && err.contains("drawn as a grey cell"),
        "{err}"
    );
    let img = image::open(&grid).unwrap().to_rgb8();
    // The first neighbour's cell, after the query's and the gap.
    let centre = img.get_pixel(6 + 102 + 12 + 48, 6 + 48);
    assert_eq!(centre.0, [128, 128, 128]);
}

#[test]
fn a_set_image_is_its_own_nearest_neighbour() {
    let st = setup();
    // The library: a row of the matrix as the query.
    let fc7 = st.root.join("all-fc7.npy");
    let (ok, _, err) = features_of(st, &st.store, &fc7, &[]);
    assert!(ok, "{err}");
    let (shape, x) = read_npy_f32(&fc7).unwrap();
    assert_eq!(shape, vec![500, 512]);
    for row in [0, 137, 499] {
        let q = &x[row * 512..(row + 1) * 512];
        let found = nearest_in_npy(&fc7, q, 3, 64).unwrap();
        assert_eq!(found[0][0].row, row);
        assert_eq!(found[0][0].dist2, 0.0);
        assert!(found[0][1].dist2 > 0.0);
    }

    // The command: a photo that is in the set, found at rank 1, distance ~0.
    let store = PackedStore::open(&st.store).unwrap();
    let sources = store.sources().unwrap();
    let source = |i: usize| {
        let query = fixtures().join(&sources[i]);
        let query = if query.exists() {
            query
        } else {
            PathBuf::from(&sources[i])
        };
        assert!(query.exists(), "{}", query.display());
        query
    };
    let i = 321;
    let query = source(i);
    let grid = st.root.join("grid.png");
    let (ok, stdout, err) = neighbors_of(&st.ckpt, &st.store, &query, (&fc7, "3"), &grid);
    assert!(ok, "{err}");
    let first = rank_one(&stdout);
    assert_eq!(first[4], i.to_string(), "{stdout}");
    assert!(first[3].parse::<f32>().unwrap() < 1e-2, "{stdout}");
    // A tab, a line break or a backslash in a name is escaped: each line
    // keeps its six fields.
    let odd = st.root.join("odd\tname\nwith \\.jpg");
    std::fs::copy(&query, &odd).unwrap();
    let (ok, out, err) = neighbors_of(&st.ckpt, &st.store, &odd, (&fc7, "3"), &grid);
    assert!(ok, "{err}");
    let table: Vec<&str> = out.lines().filter(|l| l.contains('\t')).collect();
    assert_eq!(table.len(), 4, "{out}");
    assert!(table.iter().all(|l| l.split('\t').count() == 6), "{out}");
    let field = rank_one(&out)[0];
    assert!(field.ends_with("odd\\tname\\nwith \\\\.jpg"), "{out}");
    let img = image::open(&grid).unwrap();
    // One row: the query and 3 neighbours of 96 px with text under them.
    assert_eq!(
        (img.width(), img.height()),
        (6 + 4 * 102 + 12, 6 + 96 + 30 + 6)
    );

    // A folder of queries: every image under it, in path order, each found
    // at rank 1.
    let queries = st.root.join("queries");
    std::fs::create_dir_all(queries.join("more")).unwrap();
    let placed = [(queries.join("a.jpg"), 77), (queries.join("more/b.jpg"), i)];
    for (to, row) in &placed {
        std::fs::copy(source(*row), to).unwrap();
    }
    let (ok, by_folder, err) = cli(&[
        "neighbors",
        "--cpu",
        "--checkpoint",
        &s(&st.ckpt),
        "--data",
        &s(&st.store),
        "--query",
        &s(&queries),
        "--k",
        "1",
        "--features",
        &s(&fc7),
        "--out",
        &s(&st.root.join("grid3.png")),
        "--no-progress",
    ]);
    assert!(ok, "{err}");
    let found: Vec<String> = by_folder
        .lines()
        .filter(|l| l.contains("\t1\t"))
        .map(|l| l.split('\t').nth(4).unwrap().to_string())
        .collect();
    assert_eq!(found, ["77", "321"], "{by_folder}");

    // Without --features, fc7 of the set is computed and written beside the picture.
    let grid2 = st.root.join("grid2.png");
    let (ok, stdout2, err) = cli(&[
        "neighbors",
        "--cpu",
        "--checkpoint",
        &s(&st.ckpt),
        "--data",
        &s(&st.store),
        "--query",
        &s(&query),
        "--k",
        "3",
        "--out",
        &s(&grid2),
        "--no-progress",
    ]);
    assert!(ok, "{err}");
    let (shape2, x2) = read_npy_f32(&st.root.join("grid2.fc7.npy")).unwrap();
    assert_eq!(shape2, shape);
    assert_close("recomputed fc7", &x2, &x, 1e-5);
    let ranks = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| l.contains('\t') && !l.starts_with("query\t"))
            .map(|l| l.split('\t').nth(4).unwrap().to_string())
            .collect()
    };
    assert_eq!(ranks(&stdout), ranks(&stdout2));
}

/// A write stopped by the disk (here a file-size limit, `ulimit -f`, with
/// SIGXFSZ ignored so the write fails with EFBIG) names the file asked for,
/// not its temporary one, says what to do, and leaves nothing behind.
#[test]
fn a_write_the_disk_refuses_names_the_file_and_the_fix() {
    let st = setup();
    let dir = tempfile::tempdir().unwrap();
    let limited = |args: &[&str]| {
        let o = under_16_kib(args);
        assert!(!o.status.success(), "a write past 16 KiB succeeded");
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        (String::from_utf8_lossy(&o.stderr).into_owned(), out)
    };
    let (c, d) = (s(&st.ckpt), s(&st.store));
    // 500 rows of 512 float32 values (1 MB), streamed.
    let fc7 = s(&dir.path().join("fc7.npy"));
    let (e1, _) = limited(&fc7_of_all(st, &fc7));
    // The cifar config's weights (a few MB), written at once.
    let onnx = s(&dir.path().join("net.onnx"));
    let (e2, _) = limited(&[
        "export",
        "--checkpoint",
        &c,
        "--format",
        "onnx",
        "--out",
        &onnx,
    ]);
    // eval's confusion picture: the scores are printed before it is
    // written, so a refused write costs the file, not them.
    let png = s(&dir.path().join("confusion.png"));
    let (e3, scores) = limited(&[
        "eval",
        "--cpu",
        "--checkpoint",
        &c,
        "--data",
        &d,
        "--confusion",
        &png,
        "--no-progress",
    ]);
    assert!(
        scores.contains("centre-crop: top-1 error") && scores.contains("on 500 images"),
        "{scores}"
    );
    assert!(e3.contains("the scores above stand"), "{e3}");
    for (err, file) in [(e1, fc7), (e2, onnx), (e3, png)] {
        assert!(err.contains(&format!("{file}: File too large")), "{err}");
        assert!(!err.contains(".tmp-"), "{err}");
        assert!(
            err.contains("file-size limit") && err.contains("write elsewhere"),
            "{err}"
        );
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

/// eval's tables are a set: where the disk refuses one (the picture, past
/// a file-size limit), none of them replaces an earlier eval's file, so the
/// folder never holds one run's table beside another's matrix.
#[test]
fn eval_tables_the_disk_refuses_leave_the_earlier_set_whole() {
    let st = setup();
    let dir = tempfile::tempdir().unwrap();
    let (csv, png) = (dir.path().join("classes.csv"), dir.path().join("c.png"));
    std::fs::write(&csv, "an earlier eval's table\n").unwrap();
    std::fs::write(&png, "an earlier eval's picture").unwrap();
    let o = under_16_kib(&[
        "eval",
        "--cpu",
        "--checkpoint",
        &s(&st.ckpt),
        "--data",
        &s(&st.store),
        "--per-class",
        &s(&csv),
        "--confusion",
        &s(&png),
        "--no-progress",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a write past 16 KiB succeeded");
    assert!(
        err.contains(&format!("{}: File too large", s(&png))),
        "{err}"
    );
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    assert_eq!(read(&csv), "an earlier eval's table\n");
    assert_eq!(read(&png), "an earlier eval's picture");
    assert!(
        err.contains("the scores above stand") && err.contains("no table was written"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

/// A features file written again where the disk refuses the new one (a
/// file-size limit, as above) leaves the old one whole with its record and
/// row table: they were removed before the write failed, so `neighbors`
/// lost the names of the old file's rows.
#[test]
fn a_rewrite_the_disk_refuses_keeps_the_old_file_and_its_record() {
    let st = setup();
    let dir = tempfile::tempdir().unwrap();
    let fc7 = s(&dir.path().join("fc7.npy"));
    let args = fc7_of_all(st, &fc7);
    let o = Command::new(env!("CARGO_BIN_EXE_alexnet-cuda"))
        .args(args)
        .output()
        .expect("run alexnet-cuda");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let files = ["fc7.npy", "fc7.meta.json", "fc7.rows.csv"].map(|n| dir.path().join(n));
    let before: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let o = under_16_kib(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("File too large"),
        "{err}"
    );
    for (p, was) in files.iter().zip(&before) {
        let now = std::fs::read(p).unwrap_or_default();
        assert!(&now == was, "{} changed or went: {err}", p.display());
    }
}

/// Where the disk takes the new features file but refuses its row table
/// (here long file names: a 4 KiB limit holds 20 rows of fc8, not their
/// names), the old file, record and row table stay as they were. The new
/// file used to land first, and the failed table left it without either.
#[test]
fn a_row_table_the_disk_refuses_keeps_the_old_file_and_its_record() {
    let st = setup();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let class = data.join("cat");
    std::fs::create_dir_all(&class).unwrap();
    let photos: Vec<PathBuf> = std::fs::read_dir(fixtures().join("cat"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .take(20)
        .collect();
    for (i, p) in photos.iter().enumerate() {
        let name = format!("{}-{i:02}.jpg", "long".repeat(50));
        std::fs::copy(p, class.join(name)).unwrap();
    }
    let f = dir.path().join("f.npy");
    let (ck, fd, ff) = (s(&st.ckpt), s(&data), s(&f));
    let args = |limit| {
        let (ck, fd, ff) = (ck.as_str(), fd.as_str(), ff.as_str());
        let data = ["--checkpoint", ck, "--data", fd, "--out", ff];
        [
            &["features", "--cpu", "--layer", "fc8", "--no-progress"][..],
            &data,
            &["--limit", limit],
        ]
        .concat()
    };
    let (ok, _, err) = cli(&args("20"));
    assert!(ok, "{err}");
    let files = ["f.npy", "f.meta.json", "f.rows.csv"].map(|n| dir.path().join(n));
    let sizes: Vec<u64> = files.iter().map(|p| p.metadata().unwrap().len()).collect();
    assert!(sizes[0] < 4096 && sizes[2] > 4096, "sizes {sizes:?}");
    let before: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let o = under_kib(4, &args("19"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains(&format!("{}: File too large", s(&files[2]))),
        "{err}"
    );
    for (p, was) in files.iter().zip(&before) {
        let now = std::fs::read(p).unwrap_or_default();
        assert!(&now == was, "{} changed or went: {err}", p.display());
    }
    let left = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(left, 4, "a temporary file left: {err}");
}

/// A folder where the row table or record goes beside a features file
/// is refused before any image is read, naming it: the write beside the
/// file came last, after every image's features were computed.
#[test]
fn a_folder_where_a_file_goes_beside_the_features_is_refused_first() {
    let st = setup();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("f.rows.csv")).unwrap();
    let f = dir.path().join("f.npy");
    let (ok, _, err) = features_of(st, &st.store, &f, &[]);
    assert!(!ok && !f.exists(), "{err}");
    assert!(
        err.contains("f.rows.csv: a folder, where the features file")
            && err.contains("keeps its row table; rename or remove the folder"),
        "{err}"
    );

    // neighbors writes its fc7 beside the picture: the same check.
    std::fs::create_dir(dir.path().join("grid.fc7.meta.json")).unwrap();
    let grid = dir.path().join("grid.png");
    let query = s(&fixtures().join("cat/0000.jpg"));
    let (c, d, g) = (s(&st.ckpt), s(&st.store), s(&grid));
    let (ok, _, err) = cli(&[
        "neighbors",
        "--cpu",
        "--checkpoint",
        &c,
        "--data",
        &d,
        "--out",
        &g,
        "--query",
        &query,
    ]);
    assert!(!ok && !grid.exists(), "{err}");
    assert!(
        err.contains("grid.fc7.meta.json: a folder") && err.contains("keeps its record"),
        "{err}"
    );
}

/// `features` of fc7 for every image of the setup's store, into `out`.
fn fc7_of_all<'a>(st: &'a Setup, out: &'a str) -> [&'a str; 11] {
    let (c, d) = (st.ckpt.to_str().unwrap(), st.store.to_str().unwrap());
    [
        "features",
        "--cpu",
        "--checkpoint",
        c,
        "--data",
        d,
        "--layer",
        "fc7",
        "--out",
        out,
        "--no-progress",
    ]
}

/// The program run with `args` under a file-size limit of 16 KiB.
fn under_16_kib(args: &[&str]) -> Output {
    under_kib(16, args)
}

/// The program run with `args` under a file-size limit of `kib` KiB
/// (`ulimit -f`, SIGXFSZ ignored so that a write past it fails with EFBIG).
fn under_kib(kib: u32, args: &[&str]) -> Output {
    Command::new("bash")
        .arg("-c")
        .arg(format!("trap '' XFSZ; ulimit -f {kib}; exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_alexnet-cuda"))
        .args(args)
        .output()
        .expect("run alexnet-cuda under bash")
}

/// Squared distances by brute force in f64, sorted (distance, row).
fn brute(x: &[f32], dim: usize, q: &[f32], k: usize) -> Vec<Vec<(usize, f64)>> {
    q.chunks_exact(dim)
        .map(|qr| {
            let mut d: Vec<(usize, f64)> = x
                .chunks_exact(dim)
                .enumerate()
                .map(|(i, r)| {
                    let d = r
                        .iter()
                        .zip(qr)
                        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                        .sum();
                    (i, d)
                })
                .collect();
            d.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            d.truncate(k);
            d
        })
        .collect()
}

/// The picture's size for any --k and query count is a size or a refusal:
/// a --k near 2^64 wrapped the width to a few pixels, past the limit.
#[test]
fn a_grid_too_large_is_refused_whatever_its_size() {
    // 2 rows of 1 query and 3 neighbours of 96 px: 6 + 4 x 102 + 12 wide.
    assert_eq!(
        grid_size(2, 4, 96).unwrap(),
        (6 + 4 * 102 + 12, 6 + 2 * (96 + 30 + 6))
    );
    for (rows, cols) in [(1, usize::MAX), (usize::MAX, 2), (usize::MAX, usize::MAX)] {
        let e = grid_size(rows, cols, 96).unwrap_err().to_string();
        assert!(e.contains("more than the"), "{rows} x {cols}: {e}");
    }
}

#[test]
fn blocked_search_equals_brute_force() {
    let (rows, dim, nq) = (103, 37, 5);
    let mut rng = Rng::new(7);
    // An offset shared by every row makes |x|^2 large next to the
    // distances: the cancellation the exact recomputation must survive.
    let x: Vec<f32> = (0..rows * dim)
        .map(|i| rng.normal() as f32 + if i % dim == 0 { 50.0 } else { 0.0 })
        .collect();
    let mut q: Vec<f32> = (0..nq * dim)
        .map(|i| rng.normal() as f32 + if i % dim == 0 { 50.0 } else { 0.0 })
        .collect();
    // One query is a row of the set.
    q[..dim].copy_from_slice(&x[40 * dim..41 * dim]);
    for k in [1, 5, 12, rows] {
        let want = brute(&x, dim, &q, k);
        for block in [1, 7, 10, 64, rows, 4096] {
            let got = nearest_in_matrix(&x, dim, &q, k, block).unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.len(), k);
                for (a, b) in g.iter().zip(w) {
                    assert_eq!(a.row, b.0, "k {k} block {block}");
                    assert!(
                        (a.dist2 as f64 - b.1).abs() <= 1e-5 * b.1.max(1.0),
                        "k {k} block {block}: {} vs {}",
                        a.dist2,
                        b.1
                    );
                }
            }
            assert_eq!(got[0][0].row, 40);
            assert_eq!(got[0][0].dist2, 0.0);
        }
    }
    // The same through a streamed .npy file, read 10 rows at a time.
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("x.npy");
    let mut w = NpyWriter::create(&path, rows, dim).unwrap();
    for part in x.chunks(dim * 9) {
        w.append(part).unwrap();
    }
    w.finish().unwrap();
    assert_eq!(read_npy_f32(&path).unwrap(), (vec![rows, dim], x.clone()));
    let mut r = NpyRows::open(&path).unwrap();
    assert_eq!((r.rows, r.cols), (rows, dim));
    assert_eq!(r.read(100, 10).unwrap(), x[100 * dim..].to_vec());
    let got = nearest_in_npy(&path, &q, 12, 10).unwrap();
    let want = brute(&x, dim, &q, 12);
    for (g, w) in got.iter().zip(&want) {
        let rows_got: Vec<usize> = g.iter().map(|n| n.row).collect();
        let rows_want: Vec<usize> = w.iter().map(|n| n.0).collect();
        assert_eq!(rows_got, rows_want);
    }
    // A row holding NaN would sort as distance 0, the nearest: refused,
    // naming the file and the row, in memory too.
    let mut bad = x.clone();
    bad[57 * dim + 3] = f32::NAN;
    let nan = t.path().join("nan.npy");
    write_npy_f32(&nan, &[rows, dim], &bad).unwrap();
    let e = nearest_in_npy(&nan, &q, 12, 10).unwrap_err().to_string();
    let said = format!("{}: row 57, value 3, is NaN", nan.display());
    assert!(e.contains(&said), "{said}: {e}");
    let e = nearest_in_matrix(&bad, dim, &q, 12, 10).unwrap_err();
    assert!(e.to_string().contains("row 57, value 3, is NaN"), "{e}");
    std::fs::remove_file(&nan).unwrap();
    // k larger than the rows, and a writer given too few rows, are errors.
    let e = nearest_in_matrix(&x, dim, &q, rows + 1, 10).unwrap_err();
    assert!(e.to_string().contains("larger than the set's 103"), "{e}");
    let short = t.path().join("short.npy");
    let mut w = NpyWriter::create(&short, 3, 2).unwrap();
    w.append(&[1.0, 2.0]).unwrap();
    assert!(w.append(&[1.0]).is_err(), "half a row");
    let e = w.finish().unwrap_err();
    assert!(e.to_string().contains("1 rows written, 3 declared"), "{e}");
    assert!(!short.exists());
    assert_eq!(
        std::fs::read_dir(t.path()).unwrap().count(),
        1,
        "no temp left"
    );
}

/// A query whose fc7 overflows (weights as large as f32 allows, as a run
/// near divergence or fp16's range can leave) has no distance to anything:
/// searched in a finite features file kept without its record, its
/// "neighbours" were the set's first rows, printed with exit status 0.
/// Now refused, naming the query and the likely cause.
#[test]
fn a_query_whose_features_overflow_is_refused() {
    use alexnet_cuda::export::Tensor;
    let st = setup();
    let dir = tempfile::tempdir().unwrap();
    let fc7 = dir.path().join("set.npy");
    let (ok, _, err) = features_of(st, &st.store, &fc7, &[]);
    assert!(ok, "{err}");
    std::fs::remove_file(dir.path().join("set.meta.json")).unwrap();
    let ck = checkpoint::load(&st.ckpt).unwrap();
    let mut tensors: Vec<Tensor> = ck.tensors.into_values().collect();
    for t in tensors.iter_mut().filter(|t| t.name.starts_with("fc7.")) {
        t.data.fill(f32::MAX);
    }
    let huge = dir.path().join("huge.safetensors");
    checkpoint::save(&huge, &ck.state, &tensors).unwrap();
    let query = std::fs::read_dir(fixtures().join("cat"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let grid = dir.path().join("grid.png");
    let (ok, out, err) = neighbors_of(&huge, &st.store, &query, (&fc7, "3"), &grid);
    assert!(!ok, "{out}");
    let said = format!("--query {}: its fc7 features hold inf", query.display());
    assert!(err.contains(&said) && err.contains("try fp32"), "{err}");
    assert!(!grid.exists());
}

#[test]
fn bad_input_gets_a_clear_error() {
    let st = setup();
    let (c, d) = (s(&st.ckpt), s(&st.store));
    let no_panic = |err: &str| assert!(!err.contains("panicked"), "{err}");
    let refused = |(ok, _, err): (bool, String, String), wants: &[&str]| {
        assert!(!ok, "succeeded: {err}");
        no_panic(&err);
        for w in wants {
            assert!(err.contains(w), "{w:?}: {err}");
        }
    };

    let out = s(&st.root.join("bad.npy"));
    let (ok, _, err) = cli(&[
        "features",
        "--cpu",
        "--checkpoint",
        &c,
        "--data",
        &d,
        "--layer",
        "fc9",
        "--out",
        &out,
    ]);
    assert!(!ok);
    no_panic(&err);
    assert!(
        err.contains("'fc9' is not a layer of config cifar")
            && err
                .contains("conv1, pool1, conv2, pool2, conv3, conv4, conv5, pool5, fc6, fc7, fc8"),
        "{err}"
    );
    assert!(!st.root.join("bad.npy").exists());
    // An --out in a folder that is not there is refused before the data
    // is opened: here, data that is not there either.
    let nowhere = s(&st.root.join("no-such-folder/f.npy"));
    let missing = s(&st.root.join("no-such-data"));
    let args = ["features", "--cpu", "--checkpoint", &c, "--data", &missing];
    let (ok, _, err) = cli(&[&args[..], &["--out", &nowhere]].concat());
    assert!(!ok);
    assert!(
        err.contains(&format!("--out {nowhere}: the folder"))
            && err.contains("does not exist; create it")
            && !err.contains("no-such-data"),
        "{err}"
    );

    let text = st.root.join("notes.jpg");
    std::fs::write(&text, "not a picture\n").unwrap();
    let grid = s(&st.root.join("bad.png"));
    let neighbors = |extra: &[&str]| {
        let mut a = vec![
            "neighbors",
            "--cpu",
            "--checkpoint",
            &c,
            "--data",
            &d,
            "--out",
            &grid,
        ];
        a.extend_from_slice(extra);
        cli(&a)
    };
    let (ok, _, err) = neighbors(&["--query", &s(&text)]);
    assert!(!ok);
    no_panic(&err);
    assert!(
        err.contains("notes.jpg") && err.contains("not a readable image"),
        "{err}"
    );

    let photo = s(&fixtures().join("cat/0000.jpg"));
    // A picture that would replace a query image, or land among a query
    // folder's images, is refused before anything is read or written.
    let shot = st.root.join("shot.png");
    std::fs::copy(&photo, &shot).unwrap();
    let before = std::fs::read(&shot).unwrap();
    let shots = st.root.join("shots");
    std::fs::create_dir_all(&shots).unwrap();
    std::fs::copy(&photo, shots.join("a.jpg")).unwrap();
    let inside = s(&shots.join("grid.png"));
    for (query, out, want) in [
        (s(&shot), s(&shot), "which the picture would replace"),
        (s(&shots), inside.clone(), "inside the query folder"),
    ] {
        let args = ["neighbors", "--cpu", "--checkpoint", &c, "--data", &d];
        let (ok, _, err) = cli(&[&args[..], &["--out", &out, "--query", &query]].concat());
        assert!(!ok);
        no_panic(&err);
        assert!(err.contains(want) && err.contains(&query), "{err}");
    }
    assert_eq!(std::fs::read(&shot).unwrap(), before);
    assert!(!Path::new(&inside).exists());
    // Every unreadable query in one error, before the set is read: a
    // folder holding a broken image goes unmentioned.
    let folder = st.root.join("folder");
    for class in ["cat", "dog"] {
        std::fs::create_dir_all(folder.join(class)).unwrap();
        let from = fixtures().join(class).join("0000.jpg");
        std::fs::copy(from, folder.join(class).join("a.jpg")).unwrap();
    }
    std::fs::write(folder.join("dog/broken.jpg"), "not pixels").unwrap();
    let gif = st.root.join("anim.gif");
    std::fs::write(&gif, b"GIF89a").unwrap();
    let (ok, _, err) = cli(&[
        "neighbors",
        "--cpu",
        "--checkpoint",
        &c,
        "--data",
        &s(&folder),
        "--out",
        &grid,
        "--query",
        &s(&text),
        &photo,
        &s(&gif),
    ]);
    assert!(!ok);
    no_panic(&err);
    for want in ["2 of 3 images could not be read", "notes.jpg", "anim.gif"] {
        assert!(err.contains(want), "{want}: {err}");
    }
    assert!(!err.contains("broken.jpg"), "{err}");
    // features of that folder: scanned once (one warning for a stray file),
    // and with --limit 2 only the two images picked are read, not the
    // broken one; the rows name their files.
    std::fs::write(folder.join("cat/notes.txt"), "a note").unwrap();
    let out = st.root.join("folder-fc7.npy");
    let (ok, _, err) = cli(&[
        "features",
        "--cpu",
        "--checkpoint",
        &c,
        "--data",
        &s(&folder),
        "--layer",
        "fc7",
        "--out",
        &s(&out),
        "--limit",
        "2",
        "--no-progress",
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        err.matches("1 files not read (cat/notes.txt)").count(),
        1,
        "{err}"
    );
    // Each row names its file under the folder.
    let rows = std::fs::read_to_string(st.root.join("folder-fc7.rows.csv")).unwrap();
    for file in ["cat/a.jpg", "dog/a.jpg"] {
        assert!(
            rows.lines().any(|l| l.ends_with(&format!(",{file}"))),
            "{rows}"
        );
    }

    let (ok, _, err) = neighbors(&["--query", &photo, "--k", "501"]);
    assert!(!ok);
    no_panic(&err);
    assert!(
        err.contains("--k 501 is larger than the set's 500 images"),
        "{err}"
    );
    // Where the picture goes, and whether it can be drawn at all, are
    // checked before the set's features are computed: nothing is written.
    // 501 pictures of 1024 pixels in a row make 1.5 GiB of RGB.
    refused(
        neighbors(&["--query", &photo, "--k", "500", "--cell", "1024"]),
        &["more than the 1 GiB drawn at most", "smaller --cell"],
    );
    assert!(!st.root.join("bad.fc7.npy").exists());
    let folder_out = st.root.join("grid-folder");
    std::fs::create_dir_all(&folder_out).unwrap();
    let args = ["neighbors", "--cpu", "--checkpoint", &c, "--data", &d];
    refused(
        cli(&[&args[..], &["--out", &s(&folder_out), "--query", &photo]].concat()),
        &["--out", "a folder, not a file name"],
    );
    assert!(!st.root.join("grid-folder.fc7.npy").exists());

    // Features of another layer: conv4 of cifar, 192 x 6 x 6 values a row,
    // named by its record; without the record, by the width.
    let conv4 = st.root.join("conv4.npy");
    let (ok, _, err) = cli(&[
        "features",
        "--cpu",
        "--checkpoint",
        &c,
        "--data",
        &d,
        "--layer",
        "conv4",
        "--out",
        &s(&conv4),
        "--no-progress",
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = neighbors(&["--query", &photo, "--features", &s(&conv4)]);
    assert!(
        !ok && err.contains("features of conv4, and neighbours are found by fc7"),
        "{err}"
    );
    std::fs::remove_file(st.root.join("conv4.meta.json")).unwrap();
    let (ok, _, err) = neighbors(&["--query", &photo, "--features", &s(&conv4)]);
    assert!(!ok);
    no_panic(&err);
    for want in [
        "rows of 6912 values, but fc7 of the checkpoint's config cifar has 512",
        "another layer's or another network's features",
        "features --layer fc7",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
    // Features of the same width but another layer (fc6), or of other
    // weights, are refused by the record beside them; a run's best
    // checkpoint (the same weights as its last step) is not.
    let feats = |layer: &str, name: &str| {
        let f = st.root.join(name);
        let (ok, _, err) = cli(&[
            "features",
            "--cpu",
            "--checkpoint",
            &c,
            "--data",
            &d,
            "--layer",
            layer,
            "--out",
            &s(&f),
            "--no-progress",
        ]);
        assert!(ok, "{err}");
        s(&f)
    };
    // Not "fc6.npy": features_are_the_forward_pass_activations writes
    // that name in the same folder, and the tests run side by side.
    let fc6 = feats("fc6", "fc6-here.npy");
    let (ok, _, err) = neighbors(&["--query", &photo, "--features", &fc6]);
    assert!(
        !ok && err.contains("features of fc6, and neighbours are found by fc7"),
        "{err}"
    );
    let fc7 = feats("fc7", "fc7-here.npy");
    let best = st.ckpt.parent().unwrap().join("best.safetensors");
    let with_ck = |ck: &Path| {
        let grid = s(&st.root.join("ck.png"));
        let args = [
            "--checkpoint",
            &s(ck),
            "--data",
            &d,
            "--out",
            &grid,
            "--query",
            &photo,
        ];
        cli(&[&["neighbors", "--cpu", "--features", &fc7][..], &args].concat())
    };
    let (ok, _, err) = with_ck(&best);
    assert!(ok, "{err}");
    let mut ck = checkpoint::load(&st.ckpt).unwrap();
    ck.tensors.get_mut("conv1.weight").unwrap().data[0] += 1e-3;
    let mut tensors: Vec<_> = ck.tensors.into_values().collect();
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let other_ck = st.root.join("other.safetensors");
    checkpoint::save(&other_ck, &ck.state, &tensors).unwrap();
    let (ok, _, err) = with_ck(&other_ck);
    assert!(!ok, "{err}");
    assert!(
        err.contains("computed with the weights of") && err.contains("other.safetensors"),
        "{err}"
    );
    // A features file of another set: the row count differs.
    let few = st.root.join("few.npy");
    write_npy_f32(&few, &[10, 512], &vec![0.0; 10 * 512]).unwrap();
    let (ok, _, err) = neighbors(&["--query", &photo, "--features", &s(&few)]);
    assert!(!ok);
    no_panic(&err);
    assert!(err.contains("10 rows, but the set has 500 images"), "{err}");
    assert!(!st.root.join("bad.png").exists());
    // As many rows as the set, but its .rows.csv lists other images (here
    // the set backwards): refused at the first row that differs.
    let other = st.root.join("other.npy");
    write_npy_f32(&other, &[500, 512], &vec![0.0; 500 * 512]).unwrap();
    let mut csv = String::from("row,index,label,class,name,source\n");
    for r in 0..500 {
        csv += &format!("{r},{},0,c,c,\n", 499 - r);
    }
    std::fs::write(st.root.join("other.rows.csv"), csv).unwrap();
    let (ok, _, err) = neighbors(&["--query", &photo, "--features", &s(&other)]);
    assert!(!ok);
    no_panic(&err);
    assert!(
        err.contains(
            "other.rows.csv: row 0 is image 499 of class 0, and in this set it is image 0"
        ) && err.contains("other data"),
        "{err}"
    );
    // The same images and labels, but one row's source is another file
    // (a set of the same class counts, other photos): refused there, and
    // the fix names the data to compute the features on.
    let real = std::fs::read_to_string(st.root.join("fc7-here.rows.csv")).unwrap();
    let mut lines: Vec<String> = real.lines().map(String::from).collect();
    let mut cells: Vec<String> = lines[4].split(',').map(String::from).collect();
    let was = cells[5].clone();
    cells[5] = "elsewhere/x.jpg".into();
    lines[4] = cells.join(",");
    std::fs::write(st.root.join("other.rows.csv"), lines.join("\n") + "\n").unwrap();
    let (ok, _, err) = neighbors(&["--query", &photo, "--features", &s(&other)]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "row 3 is image 3 of class {} (elsewhere/x.jpg)",
            cells[2]
        )) && err.contains(&format!("({was})"))
            && err.contains(&format!("--layer fc7 --data {}", s(&st.store))),
        "{err}"
    );
    // Without the CSV the rows cannot be checked: the search runs, with a warning.
    std::fs::remove_file(st.root.join("other.rows.csv")).unwrap();
    let (ok, _, err) = neighbors(&["--query", &photo, "--features", &s(&other)]);
    assert!(ok, "{err}");
    assert!(
        err.contains("which images its rows are is not checked"),
        "{err}"
    );
    // A CSV there that cannot be read (here a folder of its name) is not
    // taken for a missing one: the rows would go unchecked unsaid.
    let unreadable = st.root.join("other.rows.csv");
    std::fs::create_dir(&unreadable).unwrap();
    let (ok, _, err) = neighbors(&["--query", &photo, "--features", &s(&other)]);
    std::fs::remove_dir(&unreadable).unwrap();
    assert!(!ok, "{err}");
    assert!(
        err.contains(&format!("{}: cannot be read", s(&unreadable)))
            && err.contains("which images its rows are cannot be checked"),
        "{err}"
    );
}

/// Images of a folder that cannot be read (not an image, cut short) are
/// left out of the rows, not the end of the job: `features` writes the
/// others' rows, equal to those of the folder without the bad files, and
/// then fails naming both; the rows CSV and record say which image each
/// row is, so `neighbors` reports the right image past the gap.
#[test]
fn unreadable_images_are_left_out_of_the_rows_and_named() {
    let st = setup();
    let (clean, dirty) = (st.root.join("clean"), st.root.join("dirty"));
    for class in ["cat", "dog"] {
        for dir in [&clean, &dirty] {
            std::fs::create_dir_all(dir.join(class)).unwrap();
            for i in 0..8 {
                let name = format!("{i:04}.jpg");
                std::fs::copy(
                    fixtures().join(class).join(&name),
                    dir.join(class).join(&name),
                )
                .unwrap();
            }
        }
    }
    // Sorted by path: cat/0000..0007, cat/broken.jpg (8), dog/0000..0007
    // (9-16), dog/cut.jpg (17).
    std::fs::write(dirty.join("cat/broken.jpg"), "not pixels").unwrap();
    let whole = std::fs::read(fixtures().join("dog/0009.jpg")).unwrap();
    std::fs::write(dirty.join("dog/cut.jpg"), &whole[..whole.len() / 2]).unwrap();
    let features = |data: &Path, out: &Path| {
        cli(&[
            "features",
            "--cpu",
            "--checkpoint",
            &s(&st.ckpt),
            "--data",
            &s(data),
            "--out",
            &s(out),
            "--batch",
            "5",
            "--no-progress",
        ])
    };
    let (ok, _, err) = features(&clean, &st.root.join("clean.npy"));
    assert!(ok, "{err}");
    let out = st.root.join("dirty.npy");
    let (ok, stdout, err) = features(&dirty, &out);
    assert!(!ok, "features of a folder with bad files succeeded: {err}");
    for want in [
        "2 of 18 images could not be read",
        "broken.jpg",
        "cut.jpg",
        "the features of the other 16 images are written",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
    assert!(stdout.contains("16 rows x 512 values"), "{stdout}");
    let (shape, x) = read_npy_f32(&out).unwrap();
    let (want_shape, want) = read_npy_f32(&st.root.join("clean.npy")).unwrap();
    assert_eq!((shape.clone(), want_shape), (vec![16, 512], vec![16, 512]));
    assert_close("rows of the readable images", &x, &want, 1e-5);
    let csv = std::fs::read_to_string(st.root.join("dirty.rows.csv")).unwrap();
    let index: Vec<usize> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect();
    let want_index: Vec<usize> = (0..8).chain(9..17).collect();
    assert_eq!(index, want_index, "{csv}");
    assert!(
        !csv.contains("broken.jpg") && !csv.contains("cut.jpg"),
        "{csv}"
    );

    // neighbors reads that file for the dirty folder: the set's image 11
    // (dog/0002.jpg) is row 10, and is reported as image 11.
    let query = s(&dirty.join("dog/0002.jpg"));
    let (ck, data) = (s(&st.ckpt), s(&dirty));
    // neighbors of the query in `data` (the dirty folder as given, unless
    // spelled otherwise), `k` of them, with `extra` flags.
    let neighbors_in = |data: &str, k: &str, extra: &[&str], grid: &str| {
        let grid = s(&st.root.join(grid));
        let mut a = vec![
            "neighbors",
            "--cpu",
            "--checkpoint",
            &ck,
            "--data",
            data,
            "--query",
            &query,
            "--k",
            k,
            "--out",
            &grid,
            "--no-progress",
        ];
        a.extend_from_slice(extra);
        cli(&a)
    };
    let neighbors = |extra: &[&str], grid: &str| neighbors_in(&data, "2", extra, grid);
    let rank1 = |out: &str| -> String {
        let line = out.lines().find(|l| l.contains("\t1\t")).expect("rank 1");
        line.split('\t').nth(4).unwrap().to_string()
    };
    let (ok, stdout, err) = neighbors(&["--features", &s(&out)], "read.png");
    assert!(ok, "{err}");
    assert_eq!(rank1(&stdout), "11", "{stdout}");
    assert!(stdout.contains("among 16 images"), "{stdout}");
    // The same folder spelled another way is the same set: its rows are
    // named under it, not by the path as typed.
    let respelled = format!("{data}/.");
    let (ok, stdout, err) =
        neighbors_in(&respelled, "2", &["--features", &s(&out)], "respelled.png");
    assert!(ok, "{err}");
    assert_eq!(rank1(&stdout), "11", "{stdout}");
    // Computing them itself, neighbors answers the same and then fails
    // naming the two files.
    let (ok, stdout, err) = neighbors(&[], "computed.png");
    assert!(!ok, "{err}");
    assert_eq!(rank1(&stdout), "11", "{stdout}");
    assert!(
        err.contains("broken.jpg") && err.contains("cut.jpg"),
        "{err}"
    );
    assert!(st.root.join("computed.png").exists());
    // A --k that only the unreadable images put out of reach says so.
    let (ok, _, err) = neighbors_in(&data, "17", &[], "k17.png");
    assert!(!ok, "{err}");
    assert!(
        err.contains("--k 17 is larger than the set's 16 images")
            && err.contains("2 of 18 images could not be read")
            && err.contains("broken.jpg"),
        "{err}"
    );
    // The bad files removed, as the error said: the file's record still
    // leaves out image 8 (now dog/0000.jpg; 17 is past the set), and the
    // refusal says why the count is off.
    std::fs::remove_file(dirty.join("cat/broken.jpg")).unwrap();
    std::fs::remove_file(dirty.join("dog/cut.jpg")).unwrap();
    let (ok, _, err) = neighbors(&["--features", &s(&out)], "after.png");
    assert!(!ok, "{err}");
    assert!(
        err.contains("16 rows, but the set has 15 images")
            && err.contains("if those files were removed or replaced since"),
        "{err}"
    );
}
