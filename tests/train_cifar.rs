//! End to end on real photos: CIFAR-10 JPEGs packed by `prepare` into a
//! store, and the cifar config trained from that store must learn them.
//!
//! By default on the committed fixture (tests/fixtures/cifar10: 500 images,
//! 50 per class): after a short run the network must classify its own
//! training photos far above chance, counted here from the class folders
//! and the photos decoded by the `image` crate, not by the trainer's numbers.
//!
//! The full-archive version (12,000 images, 2,000 held out, validation top-1
//! above 35%) takes minutes and the archive, so it is ignored by default:
//!   ALEXNET_CIFAR_TAR=PATH cargo test --release --test integration train_cifar -- --ignored
//! (without the variable it reads ../shared/data/cifar10-train.tar.gz). The
//! 30-minute run that reaches 70% is scripts/train-cifar (docs/cifar10.md).
use std::path::{Path, PathBuf};
use std::process::Command;

use alexnet_cuda::backend::cpu::CpuBackend;
use alexnet_cuda::checkpoint::{self, Checkpoint};
use alexnet_cuda::data::prepare::{prepare, PrepareOptions};
use alexnet_cuda::data::Encoding;
use alexnet_cuda::dist::Layout;
use alexnet_cuda::eval::forward_rows;
use alexnet_cuda::model::net::Network;
use alexnet_cuda::model::spec::NetSpec;
use alexnet_cuda::model::topology::Topology;
use alexnet_cuda::train::{train, Schedule, TrainOptions, TrainReport};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cifar10")
}

/// Pack `train` (`limit` images of it, or the 500 of the fixture) as raw
/// 32x32 images: CIFAR is already that size, so nothing is resampled, and
/// raw keeps JPEG from compressing the JPEGs a second time.
fn prepare_raw(train: &Path, limit: Option<usize>, store: &Path) {
    let mut p = PrepareOptions::new(train.to_path_buf(), store.to_path_buf());
    p.size = 32;
    p.encoding = Encoding::Raw;
    p.limit = limit;
    p.progress = false;
    let r = prepare(&p).expect("prepare runs");
    let n = limit.unwrap_or(500);
    assert_eq!((r.train.count, r.train.skipped), (n, 0));
    assert_eq!(r.train.class_counts, vec![n as u64 / 10; 10]);
}

fn print_epochs(report: &TrainReport) {
    for e in &report.epochs {
        println!(
            "epoch {} lr {} loss {:.3} train top1 {:.1}% val top1 {:.1}% {:.0} img/s",
            e.epoch,
            e.lr,
            e.train_loss,
            100.0 * e.train_top1,
            100.0 * e.val_top1,
            e.images_per_s
        );
    }
}

/// The fixture's photos with their labels: class folders in sorted order
/// (CIFAR-10's own order, airplane to truck), files sorted in each.
fn labelled_photos(root: &Path) -> Vec<(PathBuf, usize)> {
    let sorted = |dir: &Path| {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .expect("read the fixture")
            .map(|e| e.expect("fixture entry").path())
            .collect();
        v.sort();
        v
    };
    let classes = sorted(root);
    assert_eq!(classes.len(), 10, "CIFAR-10 has 10 classes");
    let mut out = Vec::new();
    for (label, dir) in classes.iter().enumerate() {
        out.extend(sorted(dir).into_iter().map(|p| (p, label)));
    }
    out
}

/// The network input for `photo` as evaluation defines it, cut here by
/// hand: the centre `crop` x `crop` of the 32x32 image, minus the
/// checkpoint's channel mean, over its std, channels first.
fn input_of(photo: &Path, ck: &Checkpoint) -> Vec<f32> {
    let pre = &ck.state.preprocess;
    let std = pre.std.expect("the cifar config divides by the std");
    let img = image::open(photo)
        .expect("decode a fixture photo")
        .to_rgb8();
    assert_eq!(img.dimensions(), (32, 32), "{}", photo.display());
    let off = (32 - pre.crop as u32) / 2;
    let mut x = Vec::with_capacity(3 * pre.crop * pre.crop);
    for (c, (mean, sd)) in pre.mean.iter().zip(std).enumerate() {
        for y in 0..pre.crop as u32 {
            for xx in 0..pre.crop as u32 {
                let v = img.get_pixel(xx + off, y + off)[c] as f32;
                x.push((v - mean) / sd);
            }
        }
    }
    x
}

/// The share of `photos` whose highest logit is their own class.
fn accuracy(ck: &Checkpoint, photos: &[(PathBuf, usize)]) -> f64 {
    let topo = ck.state.net.topology().expect("the checkpoint's network");
    let cpu = CpuBackend::new();
    let mut net = Network::new(&cpu, &topo, 100, 0).expect("network");
    ck.restore(&mut net, false).expect("restore the weights");
    let x: Vec<f32> = photos.iter().flat_map(|(p, _)| input_of(p, ck)).collect();
    let logits = forward_rows(&mut net, &x, 100).expect("forward");
    let hits = logits
        .chunks_exact(topo.classes)
        .zip(photos)
        .filter(|(row, (_, label))| {
            let best = (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b]));
            best == Some(*label)
        })
        .count();
    hits as f64 / photos.len() as f64
}

/// 495 of the 500 photos, 24 epochs of 19 steps at batch 25 (lr 0.01, the
/// recipe's 0.02 halved for the small batch, / 10 from epoch 20). The net
/// then gets 42.4% of the photos right (seeds 2, 3, 4: 42.6, 47.0, 44.6%);
/// chance is 10%. 35% leaves 7 points below the lowest seed for seeds and
/// machines. With learning broken the count stays near chance and the test
/// fails: checked with a learning rate of 1e-6 (10.0%, loss 3.7) and with
/// the labels shuffled between the class folders before `prepare` (11.2%,
/// loss 2.30).
#[test]
fn cifar_fixture_is_learned_far_above_chance() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = dir.path().join("store");
    prepare_raw(&fixture(), None, &store);
    let topo = Topology::cifar();
    let mut opts = TrainOptions::for_topology(&topo, store);
    // The run's own validation is beside the point: what it fits is counted below.
    opts.run.val = 5;
    opts.run.batch = 25;
    opts.run.lr = 0.01;
    opts.run.epochs = 24;
    opts.run.schedule = Schedule::Milestones(vec![20]);
    opts.out = Some(dir.path().join("run"));
    opts.checkpoint_every = 0;
    opts.keep = 1;
    opts.progress = false;
    let cpu = CpuBackend::new();
    let report =
        train(Layout::One(&cpu), &NetSpec::new("cifar"), &mut opts).expect("training runs");
    print_epochs(&report);
    let path = report.checkpoint.as_deref().expect("a checkpoint");
    let ck = checkpoint::load(path).expect("load the checkpoint");
    let acc = accuracy(&ck, &labelled_photos(&fixture()));
    println!(
        "the trained net classifies {:.1}% of the 500 photos correctly (chance 10%)",
        100.0 * acc
    );
    assert!(
        acc >= 0.35,
        "{:.1}% of its photos: not far above chance (10%)",
        100.0 * acc
    );
    // A uniform guess over 10 classes costs ln 10 = 2.30 per image.
    let last = report.epochs.last().expect("epochs");
    assert!(
        last.train_loss < 2.0,
        "training loss {:.3} is not well below ln 10",
        last.train_loss
    );
}

fn cifar_tar() -> PathBuf {
    let p = std::env::var_os("ALEXNET_CIFAR_TAR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cifar10-train.tar.gz")
        });
    assert!(
        p.is_file(),
        "{} is missing: set ALEXNET_CIFAR_TAR to the CIFAR-10 JPEG archive (train/<class>/*.jpg)",
        p.display()
    );
    p
}

#[test]
#[ignore = "needs the full CIFAR-10 archive and minutes: ALEXNET_CIFAR_TAR=PATH cargo test --release --test integration train_cifar -- --ignored"]
fn cifar_archive_subset_learns_well_above_chance() {
    let dir = tempfile::tempdir().expect("temp dir");
    let status = Command::new("tar")
        .arg("xzf")
        .arg(cifar_tar())
        .arg("-C")
        .arg(dir.path())
        .status()
        .expect("run tar");
    assert!(status.success(), "tar failed");
    let store = dir.path().join("store");
    prepare_raw(&dir.path().join("train"), Some(12_000), &store);
    let topo = Topology::cifar();
    let mut opts = TrainOptions::for_topology(&topo, store);
    opts.run.val = 2_000;
    opts.run.epochs = 4;
    opts.run.schedule = Schedule::Milestones(vec![4]);
    opts.progress = false;
    let cpu = CpuBackend::new();
    let report =
        train(Layout::One(&cpu), &NetSpec::new("cifar"), &mut opts).expect("training runs");
    print_epochs(&report);
    let last = report.epochs.last().expect("at least one epoch");
    assert_eq!(report.classes.len(), 10);
    assert!(
        last.val_top1 > 0.35,
        "val top-1 {:.3} is not far above chance (0.10)",
        last.val_top1
    );
    assert!(
        last.train_loss < report.epochs[0].train_loss,
        "training loss did not fall"
    );
}
