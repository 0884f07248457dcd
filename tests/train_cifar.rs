//! End to end on real data: a class-balanced subset of the CIFAR-10 JPEGs
//! (../shared/data/cifar10-train.tar.gz, or $ALEXNET_CIFAR_TAR) is packed by
//! `prepare` into a store, and the cifar config trained from that store must
//! beat chance (10%) by a wide margin within a few minutes. The full
//! 30-minute run that reaches 70% is scripts/train-cifar (docs/cifar10.md).
use std::path::PathBuf;
use std::process::Command;

use alexnet_cuda::backend::cpu::CpuBackend;
use alexnet_cuda::data::prepare::{prepare, PrepareOptions};
use alexnet_cuda::data::Encoding;
use alexnet_cuda::model::spec::NetSpec;
use alexnet_cuda::model::topology::Topology;
use alexnet_cuda::model::trainable::Layout;
use alexnet_cuda::train::{train, Schedule, TrainOptions};

fn cifar_tar() -> PathBuf {
    let p = std::env::var_os("ALEXNET_CIFAR_TAR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cifar10-train.tar.gz")
        });
    assert!(
        p.is_file(),
        "{} is missing: put the CIFAR-10 JPEG archive there or set ALEXNET_CIFAR_TAR",
        p.display()
    );
    p
}

#[test]
fn cifar_subset_learns_well_above_chance() {
    let dir = tempfile::tempdir().expect("temp dir");
    let status = Command::new("tar")
        .arg("xzf")
        .arg(cifar_tar())
        .arg("-C")
        .arg(dir.path())
        .status()
        .expect("run tar");
    assert!(status.success(), "tar failed");
    // Stored raw at 32x32: CIFAR is already that size, so nothing is
    // resampled, and raw keeps JPEG from compressing the JPEGs a second time.
    let store = dir.path().join("store");
    let mut p = PrepareOptions::new(dir.path().join("train"), store.clone());
    p.size = 32;
    p.encoding = Encoding::Raw;
    p.limit = Some(12_000);
    p.progress = false;
    let r = prepare(&p).expect("prepare runs");
    assert_eq!((r.train.count, r.train.skipped), (12_000, 0));
    assert_eq!(r.train.class_counts, vec![1_200; 10]);
    let topo = Topology::cifar();
    let mut opts = TrainOptions::for_topology(&topo, store);
    opts.run.val = 2_000;
    opts.run.epochs = 4;
    opts.run.schedule = Schedule::Milestones(vec![4]);
    opts.progress = false;
    let cpu = CpuBackend::new();
    let report = train(Layout::One(&cpu), &NetSpec::new("cifar"), &opts).expect("training runs");
    for e in &report.epochs {
        println!(
            "epoch {} loss {:.3} val top1 {:.1}% top5 {:.1}% {:.0} img/s",
            e.epoch,
            e.train_loss,
            100.0 * e.val_top1,
            100.0 * e.val_top5,
            e.images_per_s
        );
    }
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
