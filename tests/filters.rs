//! tests/filters.rs: owns the checks of `filters` (the paper's figure 3).
//! Picture sizes are worked out here from the paper's figure (48 kernels a
//! tower as 3 rows of 16, 11x11 kernels at 4x) and the configs' widths, not
//! from the library's layout; PNGs are read back with the `image` crate; the
//! colour share is checked on kernels worked by hand and against a second
//! formula (projection on the grey axis) written here.
use std::collections::BTreeMap;
use std::path::Path;

use alexnet_cuda::backend::cpu::CpuBackend;
use alexnet_cuda::checkpoint::{self, Preprocess, Progress, RunOptions, RunState};
use alexnet_cuda::export::{write_safetensors, Tensor};
use alexnet_cuda::model::net::Network;
use alexnet_cuda::model::spec::NetSpec;
use alexnet_cuda::model::topology::{InitRecipe, Topology};
use alexnet_cuda::rng::Rng;
use alexnet_cuda::train::Schedule;
use alexnet_cuda::viz::filters::{self, colour_share, Conv1, BACKGROUND, KERNEL_GAP, TOWER_GAP};

use crate::common::cli;

/// Fails, does not panic, and its error line holds every needle.
fn assert_error(args: &[&str], needles: &[&str]) {
    let (ok, _, err) = cli(args);
    assert!(!ok, "{args:?} should fail; stderr:\n{err}");
    assert!(!err.contains("panicked"), "{args:?} panicked:\n{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("error"))
        .unwrap_or_else(|| panic!("{args:?}: no error line in:\n{err}"));
    for n in needles {
        assert!(line.contains(n), "{args:?}: error line lacks {n:?}: {line}");
    }
}

/// `filters` of `ck` into `out` with `--config config`.
fn with_config<'a>(ck: &'a str, out: &'a str, config: &'a str) -> [&'a str; 7] {
    [
        "filters",
        "--checkpoint",
        ck,
        "--out",
        out,
        "--config",
        config,
    ]
}

/// An exported-style safetensors file holding only `conv1.weight`.
fn conv1_file(path: &Path, config: &str, shape: &[usize], data: Vec<f32>) {
    let t = Tensor {
        name: "conv1.weight".into(),
        shape: shape.to_vec(),
        data,
    };
    let mut meta = BTreeMap::new();
    meta.insert("config".to_string(), config.to_string());
    write_safetensors(path, &[t], &meta).unwrap();
}

fn normal(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.normal() as f32).collect()
}

/// The picture's size by hand: a grid of `rows x cols` cells of `cell`
/// pixels per tower, towers stacked, gaps between cells and around.
fn size_by_hand(towers: usize, rows: usize, cols: usize, cell: usize) -> (u32, u32) {
    let w = KERNEL_GAP + cols * (cell + KERNEL_GAP);
    let block = rows * cell + (rows - 1) * KERNEL_GAP;
    let h = 2 * KERNEL_GAP + towers * block + (towers - 1) * TOWER_GAP;
    (w as u32, h as u32)
}

#[test]
fn the_picture_size_follows_the_table() {
    let dir = tempfile::tempdir().unwrap();
    // (config, conv1 shape, towers, kernels per tower, rows, cols, cell px)
    let cases = [
        // The paper: 96 kernels of 11x11x3, 48 a tower, drawn as figure 3's 3 x 16.
        ("alexnet", [96, 3, 11, 11], 2, 48, 3, 16, 44),
        // The one-GPU ablation: 48 kernels, one tower, one block.
        ("alexnet-half", [48, 3, 11, 11], 1, 48, 3, 16, 44),
        // cifar: 64 kernels of 5x5, 32 a tower; 2 rows of 16 is wider than
        // 16:3, so 3 rows of 11; a 5x5 kernel at 9x is 45 px (>= 44).
        ("cifar", [64, 3, 5, 5], 2, 32, 3, 11, 45),
    ];
    for (config, shape, towers, per, rows, cols, cell) in cases {
        let w = dir.path().join(format!("{config}.safetensors"));
        conv1_file(&w, config, &shape, normal(shape.iter().product(), 1));
        let conv1 = filters::load(&w, None).unwrap();
        assert_eq!(conv1.towers, vec![per; towers], "{config}");
        let png = dir.path().join(format!("{config}.png"));
        filters::write_png(&conv1, &png, filters::Scale::Kernel).unwrap();
        let img = image::open(&png).unwrap().to_rgb8();
        assert_eq!(
            img.dimensions(),
            size_by_hand(towers, rows, cols, cell),
            "{config}"
        );
    }
    // The CLI writes the same picture.
    let png = dir.path().join("cli.png");
    let (ok, out, err) = cli(&[
        "filters",
        "--checkpoint",
        dir.path().join("alexnet.safetensors").to_str().unwrap(),
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("tower") && out.contains("median"), "{out}");
    let img = image::open(&png).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), size_by_hand(2, 3, 16, 44));
}

#[test]
fn colour_share_by_hand() {
    // Grey: R = G = B at every pixel (an 11x11 kernel).
    let grey = normal(121, 2);
    let k: Vec<f32> = grey.iter().chain(&grey).chain(&grey).copied().collect();
    assert!(colour_share(&k).abs() < 1e-12, "{}", colour_share(&k));
    // Opposite R and B, G = 0: every pixel's grey level is 0, the mean is
    // 0, so all the energy is off the grey axis.
    let a = normal(121, 3);
    let k: Vec<f32> = a
        .iter()
        .copied()
        .chain(vec![0.0; 121])
        .chain(a.iter().map(|v| -v))
        .collect();
    assert!(
        (colour_share(&k) - 1.0).abs() < 1e-9,
        "{}",
        colour_share(&k)
    );
    // Two pixels, (2,2,2) and (1,0,2): mean 1.5, grey levels 2 and 1.
    // Off-grey: 0 + (0^2 + 1^2 + 1^2) = 2. About the mean:
    // 3 x 0.5^2 + (0.5^2 + 1.5^2 + 0.5^2) = 3.5. Share 2 / 3.5 = 4/7.
    let k = [2.0, 1.0, 2.0, 0.0, 2.0, 2.0];
    assert!((colour_share(&k) - 4.0 / 7.0).abs() < 1e-12);
    // A flat kernel has no energy: grey.
    assert_eq!(colour_share(&[0.5; 27]), 0.0);
}

#[test]
fn towers_are_measured_apart() {
    // Tower 0 (the first 48 kernels) all grey; tower 1 colour but for one grey kernel.
    let mut data = Vec::new();
    for i in 0..96 {
        let a = normal(121, 10 + i);
        if i < 48 || i == 95 {
            data.extend(a.iter().chain(&a).chain(&a));
        } else {
            data.extend(
                a.iter()
                    .copied()
                    .chain(vec![0.0; 121])
                    .chain(a.iter().map(|v| -v)),
            );
        }
    }
    let t = Tensor {
        name: "conv1.weight".into(),
        shape: vec![96, 3, 11, 11],
        data,
    };
    let conv1 = Conv1::from_tensor(&t, &Topology::alexnet(), Path::new("x")).unwrap();
    let rows = filters::tower_colour(&conv1);
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].kernels, rows[1].kernels), (48, 48));
    assert!(rows[0].mean < 1e-9 && rows[0].median < 1e-9 && rows[0].above_half == 0.0);
    assert!(
        (rows[1].mean - 47.0 / 48.0).abs() < 1e-9,
        "{}",
        rows[1].mean
    );
    assert!((rows[1].median - 1.0).abs() < 1e-9);
    assert!((rows[1].above_half - 47.0 / 48.0).abs() < 1e-12);
    assert!(rows[1].shares[47] < 1e-9);
}

/// A checkpoint as `train` writes it, of a real `cifar` network.
fn cifar_checkpoint(path: &Path) -> Vec<f32> {
    let topo = Topology::cifar();
    let be = CpuBackend::new();
    let net = Network::new(&be, &topo, 1, 5).unwrap();
    let tensors = checkpoint::network_tensors(&net, true).unwrap();
    let state = RunState {
        format: checkpoint::FORMAT.into(),
        version: checkpoint::VERSION,
        net: NetSpec::new("cifar"),
        classes: (0..10).map(|c| c.to_string()).collect(),
        names: Vec::new(),
        data: "test".into(),
        train_images: 10,
        val_images: 0,
        val_digest: None,
        options: RunOptions {
            epochs: 1,
            batch: 1,
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 5e-4,
            schedule: Schedule::Plateau {
                patience: 1,
                max_drops: 3,
            },
            val: 0,
            limit: None,
            seed: 5,
            crop: None,
            init: InitRecipe::Caffe,
            demo: false,
            limit_by_class: true,
            warmup: 0.0,
            dropout: Default::default(),
        },
        preprocess: Preprocess {
            image_size: 32,
            crop: 28,
            pad: 0,
            mean: [0.0; 3],
            std: None,
            mean_image: false,
            stored: None,
        },
        progress: Progress::start(0.01, 1),
        history: Vec::new(),
        saving: Default::default(),
        compute: None,
    };
    checkpoint::save(path, &state, &tensors).unwrap();
    tensors
        .into_iter()
        .find(|t| t.name == "conv1.weight")
        .unwrap()
        .data
}

/// The share as a projection: each pixel's RGB vector v minus its part
/// along u = (1,1,1)/sqrt(3), over the energy of v minus the kernel's mean.
fn share_by_projection(k: &[f32]) -> f64 {
    let n = k.len() / 3;
    let m = k.iter().map(|&v| v as f64).sum::<f64>() / k.len() as f64;
    let u = 1.0 / 3f64.sqrt();
    let (mut off, mut all) = (0.0, 0.0);
    for p in 0..n {
        let v = [k[p] as f64, k[n + p] as f64, k[2 * n + p] as f64];
        let along = (v[0] + v[1] + v[2]) * u;
        for x in v {
            off += (x - along * u).powi(2);
            all += (x - m).powi(2);
        }
    }
    off / all
}

#[test]
fn a_checkpoint_gives_the_table_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ckpt.safetensors");
    let w = cifar_checkpoint(&ck);
    let png = dir.path().join("c.png");
    let (ok, out, err) = cli(&[
        "filters",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--out",
        png.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(j["config"], "cifar");
    assert_eq!(j["kernels"], 64);
    let (w_px, h_px) = size_by_hand(2, 3, 11, 45);
    assert_eq!(
        (j["width"].as_u64(), j["height"].as_u64()),
        (Some(w_px as u64), Some(h_px as u64))
    );
    assert_eq!(
        image::open(&png).unwrap().to_rgb8().dimensions(),
        (w_px, h_px)
    );
    let towers = j["towers"].as_array().unwrap();
    assert_eq!(towers.len(), 2);
    let per = 3 * 5 * 5;
    for (t, row) in towers.iter().enumerate() {
        let shares: Vec<f64> = row["shares"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(shares.len(), 32);
        for (i, s) in shares.iter().enumerate() {
            let j = t * 32 + i;
            let want = share_by_projection(&w[j * per..(j + 1) * per]);
            assert!((s - want).abs() < 1e-9, "kernel {j}: {s} vs {want}");
        }
        let mean = shares.iter().sum::<f64>() / 32.0;
        assert!((row["mean"].as_f64().unwrap() - mean).abs() < 1e-12);
        let above = shares.iter().filter(|&&s| s > 0.5).count() as f64 / 32.0;
        assert_eq!(row["above_half"].as_f64().unwrap(), above);
    }
}

#[test]
fn every_kernel_spans_the_full_range_and_sits_in_its_tower() {
    let dir = tempfile::tempdir().unwrap();
    // Kernels at wildly different scales and offsets: one scaling for the
    // whole layer would leave most blocks flat.
    let n = 363;
    let mut data = Vec::with_capacity(96 * n);
    for i in 0..96i32 {
        let scale = 10f32.powi(i % 7 - 3);
        data.extend(
            normal(n, 100 + i as u64)
                .iter()
                .map(|v| v * scale + i as f32),
        );
    }
    // Kernel 50 (tower 1, third kernel) is a ramp: value c*121 + y*11 + x.
    for (j, v) in data[50 * n..51 * n].iter_mut().enumerate() {
        *v = j as f32;
    }
    let (lo, hi) = data
        .iter()
        .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    let w = dir.path().join("w.safetensors");
    conv1_file(&w, "alexnet", &[96, 3, 11, 11], data);
    let png = dir.path().join("p.png");
    // The picture `filters` draws with `flags`.
    let draw = |flags: &[&str]| {
        let (w, p) = (w.to_str().unwrap(), png.to_str().unwrap());
        let (ok, _, err) = cli(&[&["filters", "--checkpoint", w, "--out", p][..], flags].concat());
        assert!(ok, "{err}");
        image::open(&png).unwrap().to_rgb8()
    };
    let img = draw(&[]);
    // Kernel i of tower t: 3 x 16 grid of 44 px cells, a tower block 136 px high.
    let origin = |t: u32, i: u32| {
        let step = 44 + KERNEL_GAP as u32;
        let block = 3 * 44 + 2 * KERNEL_GAP as u32;
        (
            KERNEL_GAP as u32 + (i % 16) * step,
            KERNEL_GAP as u32 + t * (block + TOWER_GAP as u32) + (i / 16) * step,
        )
    };
    for j in 0..96u32 {
        let (x0, y0) = origin(j / 48, j % 48);
        let (mut lo, mut hi) = (255u8, 0u8);
        for y in y0..y0 + 44 {
            for x in x0..x0 + 44 {
                for &c in &img.get_pixel(x, y).0 {
                    lo = lo.min(c);
                    hi = hi.max(c);
                }
            }
        }
        assert_eq!((lo, hi), (0, 255), "kernel {j}");
        // Left of every block is the gap.
        assert_eq!(img.get_pixel(x0 - 1, y0).0, BACKGROUND, "kernel {j}");
    }
    // The ramp, pixel by pixel: 0..362 to 0..255, each value a 4x4 square.
    let (x0, y0) = origin(1, 2);
    for ky in 0..11u32 {
        for kx in 0..11u32 {
            let want: [u8; 3] = std::array::from_fn(|c| {
                ((c as u32 * 121 + ky * 11 + kx) as f32 * 255.0 / 362.0).round() as u8
            });
            for (dx, dy) in (0..4).flat_map(|dx| (0..4).map(move |dy| (dx, dy))) {
                let got = img.get_pixel(x0 + kx * 4 + dx, y0 + ky * 4 + dy).0;
                assert_eq!(got, want, "ramp at ({kx}, {ky})");
            }
        }
    }
    // --scale layer: the ramp by the layer's range, lo..hi to 0..255.
    let img = draw(&["--scale", "layer"]);
    for ky in 0..11u32 {
        for kx in 0..11u32 {
            let want: [u8; 3] = std::array::from_fn(|c| {
                let v = (c as u32 * 121 + ky * 11 + kx) as f32;
                ((v - lo) / (hi - lo) * 255.0).round() as u8
            });
            let got = img.get_pixel(x0 + kx * 4, y0 + ky * 4).0;
            assert_eq!(got, want, "ramp at ({kx}, {ky}), layer scale");
        }
    }
}

#[test]
fn bad_inputs_are_errors_that_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let out = d("out.png");

    // Missing file.
    let missing = d("nope.safetensors");
    assert_error(
        &["filters", "--checkpoint", &missing, "--out", &out],
        &[
            &missing,
            "no such file",
            "from `train`",
            "`export --format safetensors`",
        ],
    );
    // Garbage.
    let junk = d("junk.safetensors");
    std::fs::write(&junk, b"\x89PNG\r\n\x1a\nnot weights at all").unwrap();
    assert_error(
        &["filters", "--checkpoint", &junk, "--out", &out],
        &[&junk, "safetensors file", "pass a checkpoint from `train`"],
    );
    // conv1 not 4-D.
    let flat = d("flat.safetensors");
    conv1_file(Path::new(&flat), "alexnet", &[96, 363], vec![0.0; 96 * 363]);
    assert_error(
        &["filters", "--checkpoint", &flat, "--out", &out],
        &[&flat, "conv1.weight", "not a 4-D"],
    );
    // conv1 with one input channel.
    let mono = d("mono.safetensors");
    conv1_file(
        Path::new(&mono),
        "alexnet",
        &[96, 1, 11, 11],
        vec![0.0; 96 * 121],
    );
    assert_error(
        &["filters", "--checkpoint", &mono, "--out", &out],
        &[&mono, "1 input channels", "needs 3 (RGB)"],
    );
    // Another program's "config" in the metadata: not taken for one of
    // ours; --config names it.
    let foreign = d("foreign.safetensors");
    conv1_file(
        Path::new(&foreign),
        "resnet18",
        &[96, 3, 11, 11],
        normal(96 * 363, 3),
    );
    assert_error(
        &["filters", "--checkpoint", &foreign, "--out", &out],
        &[
            &foreign,
            "config \"resnet18\" is not one of this program's",
            "pass --config",
        ],
    );
    let (ok, _, err) = cli(&[
        "filters",
        "--checkpoint",
        &foreign,
        "--config",
        "alexnet",
        "--out",
        &d("f.png"),
    ]);
    assert!(ok, "{err}");
    // Kernels holding NaN or infinities: no picture of them means anything.
    let nan = d("nan.safetensors");
    let mut v = normal(96 * 363, 5);
    v[7] = f32::NAN;
    v[300] = f32::INFINITY;
    conv1_file(Path::new(&nan), "alexnet", &[96, 3, 11, 11], v);
    assert_error(
        &["filters", "--checkpoint", &nan, "--out", &out],
        &[&nan, "conv1.weight holds 2 values that are not finite"],
    );
    assert!(!Path::new(&out).exists());
    // The output folder does not exist (checked before the file is read).
    let good = d("good.safetensors");
    conv1_file(
        Path::new(&good),
        "alexnet",
        &[96, 3, 11, 11],
        normal(96 * 363, 4),
    );
    let nowhere = d("no/such/folder");
    let bad_out = format!("{nowhere}/conv1.png");
    assert_error(
        &["filters", "--checkpoint", &good, "--out", &bad_out],
        &[&nowhere, "does not exist", "mkdir -p"],
    );
    // A file where a folder on the way should be.
    let file_out = format!("{good}/x/conv1.png");
    assert_error(
        &["filters", "--checkpoint", &good, "--out", &file_out],
        &[&good, "is a file, not a folder"],
    );
    // A file that names no config, and --config that disagrees with the file's.
    let bare = d("bare.safetensors");
    let t = Tensor {
        name: "conv1.weight".into(),
        shape: vec![48, 3, 11, 11],
        data: normal(48 * 363, 5),
    };
    write_safetensors(Path::new(&bare), &[t], &BTreeMap::new()).unwrap();
    assert_error(
        &["filters", "--checkpoint", &bare, "--out", &out],
        &[&bare, "--config"],
    );
    assert_error(
        &with_config(&good, &out, "cifar"),
        &["--config cifar", "alexnet"],
    );
    // The failing runs wrote nothing.
    assert!(!Path::new(&out).exists());
    // An ablation's export names itself "alexnet+no-lrn"; passed back as
    // --config, it names the base config, whose conv1 is the same.
    let (ok, _, err) = cli(&with_config(&good, &out, "alexnet+no-lrn"));
    assert!(ok, "{err}");
    std::fs::remove_file(&out).unwrap();
    assert!(!Path::new(&nowhere).exists());
    let (ok, _, err) = cli(&with_config(&bare, &out, "alexnet-half"));
    assert!(ok, "{err}");
    assert!(Path::new(&out).exists());
}
