//! tests/memory.rs: the memory check (src/memory.rs). Its plan of the
//! network's buffers (on the host, and on a device at 4 bytes an element)
//! against what the CPU backend really allocates, its
//! loader share against the batches a loader really keeps alive, the
//! checkpoint share against the tensors a checkpoint really holds, the
//! batch and worker counts its errors name against its own need, and the
//! refusals at the command line, where the kernel would otherwise kill the
//! process with no message.
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{self, live_bytes};

use alexnet_cuda::backend::cpu::{Allocated, CpuBackend};
use alexnet_cuda::backend::DeviceMemory;
use alexnet_cuda::checkpoint::network_tensors;
use alexnet_cuda::data::{
    batches, BatchIter, Feed, HostAlloc, HostMemory, ImageSet, ImageSource, LoaderConfig,
};
use alexnet_cuda::dist::{HostAllReduce, Layout};
use alexnet_cuda::memory::{
    cpu_scratch, device_room_of, gemm_slab, least, run_batches, DeviceStorage, MemoryNeed, Room,
};
use alexnet_cuda::model::net::{buffer_elements, Mode, Network};
use alexnet_cuda::model::topology::Topology;
use alexnet_cuda::model::towers::{extra_elements, TowerNetwork};

fn topologies() -> Vec<Topology> {
    let alexnet = Topology::alexnet();
    vec![
        Topology::cifar(),
        alexnet.clone(),
        alexnet.clone().without_lrn(),
        alexnet.with_pool_size(2).expect("pool 2"),
        Topology::by_name("alexnet-half").expect("alexnet-half"),
    ]
}

/// Every buffer `Network` allocates, counted by the CPU backend, is in the
/// plan, and nothing else: for each config and ablation, at two batches.
#[test]
fn the_plan_counts_every_buffer_a_network_allocates() {
    for topo in topologies() {
        for n in [1, 3] {
            let be = CpuBackend::new();
            let _net = Network::zeroed(&be, &topo, n).expect("network");
            let plan = buffer_elements(&topo, n, 1).expect("plan");
            assert_eq!(be.allocated_elements(), plan, "{} at batch {n}", topo.name);
        }
    }
}

/// Two towers hold one grouped network's buffers and those
/// `towers::extra_elements` counts, and nothing else: counted by the
/// CPU backends of both towers, for each two-tower config, at two batches.
#[test]
fn the_plan_counts_every_buffer_two_towers_allocate() {
    for topo in topologies().into_iter().filter(|t| t.towers == 2) {
        for n in [1, 3] {
            let (a, b) = (CpuBackend::new(), CpuBackend::new());
            let _net = TowerNetwork::new([&a, &b], &topo, n, 5).expect("towers");
            let plan = buffer_elements(&topo, n, 1).expect("plan")
                + extra_elements(&topo, n, 1).expect("extra");
            let got = a.allocated_elements() + b.allocated_elements();
            assert_eq!(got, plan, "{} at batch {n}", topo.name);
        }
    }
}

/// A host allocator that counts the buffers alive, the most at once, and
/// all it made.
fn counting_alloc(
    live: &Arc<AtomicUsize>,
    peak: &Arc<AtomicUsize>,
    made: &Arc<AtomicUsize>,
) -> HostAlloc {
    struct Counted(Vec<f32>, Arc<AtomicUsize>);
    impl HostMemory for Counted {
        fn as_slice(&self) -> &[f32] {
            &self.0
        }
        fn as_mut_slice(&mut self) -> &mut [f32] {
            &mut self.0
        }
    }
    impl Drop for Counted {
        fn drop(&mut self) {
            self.1.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let (live, peak, made) = (Arc::clone(live), Arc::clone(peak), Arc::clone(made));
    HostAlloc(Arc::new(move |len| {
        made.fetch_add(1, Ordering::SeqCst);
        let now = live.fetch_add(1, Ordering::SeqCst) + 1;
        peak.fetch_max(now, Ordering::SeqCst);
        Ok(Box::new(Counted(vec![0.0; len], Arc::clone(&live))) as Box<dyn HostMemory>)
    }))
}

fn image_set(n: usize, size: usize) -> Arc<dyn ImageSource> {
    let px = (0..n * size * size * 3).map(|i| (i % 251) as u8).collect();
    let labels = (0..n as u32).map(|i| i % 2).collect();
    let set = ImageSet::from_parts(size, px, labels, vec!["a".into(), "b".into()]);
    Arc::new(set.expect("set"))
}

/// Read every batch of `it`, `ms` milliseconds each (a slow consumer),
/// handing each back to the pool.
fn read_slowly(mut it: BatchIter, ms: u64) {
    while let Some(b) = it.next() {
        std::thread::sleep(Duration::from_millis(ms));
        it.recycle(b.expect("batch"));
    }
}

/// A loader of 2 images of 8x8 a batch on `workers` threads whose batch
/// buffers are counted, and the most alive at once.
fn counted_loader(workers: usize, train: bool) -> (LoaderConfig, Arc<AtomicUsize>) {
    let peak = Arc::new(AtomicUsize::new(0));
    let cfg = LoaderConfig {
        workers,
        host_alloc: Some(counting_alloc(&Arc::default(), &peak, &Arc::default())),
        ..LoaderConfig::new(2, 8, train)
    };
    (cfg, peak)
}

/// The plan's bound, 2W + 1 batches alive, held and reached.
fn assert_bound_reached(peak: &AtomicUsize, workers: usize) {
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= 2 * workers + 1, "{peak} batches alive at once");
    assert!(peak > workers + 1, "only {peak} batches alive at once");
}

/// With W workers and a slow consumer, a loader never keeps more than the
/// 2W + 1 batches the plan counts (one queued and one being filled per
/// worker, one being read) alive, and with a slow consumer it keeps more
/// than one per worker: the bound is reached, not merely respected.
#[test]
fn a_loader_keeps_at_most_two_batches_per_worker_and_one_more() {
    let workers = 3;
    let (cfg, peak) = counted_loader(workers, false);
    let idx: Vec<usize> = (0..60).collect();
    read_slowly(
        batches(image_set(60, 8), &idx, &cfg, 0).expect("loader"),
        15,
    );
    assert_bound_reached(&peak, workers);
}

/// The same bound holds for a feed whose workers go on from one queued
/// pass to the next (a run's epochs and validations): 2W + 1 batches at
/// most, however many passes are queued ahead.
#[test]
fn a_feed_keeps_the_bound_across_passes() {
    let workers = 3;
    let (cfg, peak) = counted_loader(workers, true);
    let set = image_set(24, 8);
    let idx: Vec<usize> = (0..24).collect();
    let feed = Feed::new(workers).expect("feed");
    let passes: Vec<_> = (0..4)
        .map(|e| {
            feed.queue(Arc::clone(&set), &idx, &cfg, e, 0)
                .expect("pass")
        })
        .collect();
    for pass in passes {
        read_slowly(feed.open(pass), 5);
    }
    drop(feed);
    assert_bound_reached(&peak, workers);
}

/// A run of short epochs (2 batches) with more workers (8) than an epoch
/// has batches: the workers fill the queued validation and next epoch too,
/// so more batches are alive than one epoch's count allows (2 x 2 + 1),
/// yet no more buffers than the three passes have batches (6: recycled
/// ones are filled again, none made beside them), which the training
/// check's plan (`run_batches`) covers.
#[test]
fn short_epochs_fill_the_passes_queued_behind_them() {
    let workers = 8;
    let (cfg, peak) = counted_loader(workers, true);
    let set = image_set(8, 8);
    let (train, val): (Vec<usize>, Vec<usize>) = ((0..4).collect(), (4..8).collect());
    let feed = Feed::new(workers).expect("feed");
    // As train::passes queues them: an epoch, its validation, the next.
    let passes: Vec<_> = [(&train, 0), (&val, 0), (&train, 1)]
        .into_iter()
        .map(|(idx, e)| feed.queue(Arc::clone(&set), idx, &cfg, e, 0).expect("pass"))
        .collect();
    for pass in passes {
        read_slowly(feed.open(pass), 50);
    }
    drop(feed);
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak > 2 * 2 + 1, "{peak} batches alive at once");
    let all = 3 * 2;
    assert!(peak <= all, "{peak} alive, the passes have {all} batches");
    let planned = 2 * workers.min(run_batches(4, 4, 2)) + 1;
    assert!(planned >= all, "{planned} planned, {all} needed");
}

/// A run's epochs and validation passes, loaders cloned from one config,
/// refill the first epoch's batches: nothing is allocated after it (on a
/// GPU each allocation pins memory), the batches alive stay within the
/// plan's 2W + 1, and they are freed with the config.
#[test]
fn epochs_and_validation_refill_the_first_epochs_batches() {
    let (live, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let made = Arc::new(AtomicUsize::new(0));
    let workers = 3;
    let train = LoaderConfig {
        workers,
        host_alloc: Some(counting_alloc(&live, &peak, &made)),
        drop_last: true,
        ..LoaderConfig::new(2, 8, true)
    };
    let val = LoaderConfig {
        train: false,
        drop_last: false,
        ..train.clone()
    };
    let set = image_set(60, 10);
    let idx: Vec<usize> = (0..60).collect();
    let pass = |cfg: &LoaderConfig, epoch| {
        read_slowly(
            batches(Arc::clone(&set), &idx, cfg, epoch).expect("loader"),
            5,
        );
    };
    pass(&train, 0);
    let first = made.load(Ordering::SeqCst);
    for epoch in 1..4 {
        pass(&val, 0);
        pass(&train, epoch);
    }
    let made = made.load(Ordering::SeqCst);
    assert_eq!(
        made, first,
        "epochs 2 to 4 and validation allocated batches"
    );
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= 2 * workers + 1, "{peak} batches alive at once");
    drop((train, val));
    assert_eq!(
        live.load(Ordering::SeqCst),
        0,
        "batches outlived their config"
    );
}

/// The need at `rows` and `workers` is the network's buffers as allocated,
/// plus the loader's batches (each the size of a real batch), plus, for a
/// run that saves, twice the checkpoint's tensors (the copies and the
/// encoded file).
#[test]
fn the_need_is_the_buffers_the_batches_and_the_checkpoint() {
    let topo = Topology::cifar();
    let rows = 5;
    let be = CpuBackend::new();
    let net = Network::zeroed(&be, &topo, rows).expect("network");
    let net_bytes = 4 * be.allocated_elements();
    let cfg = LoaderConfig::new(rows, topo.crop, false);
    let idx: Vec<usize> = (0..20).collect();
    let set = image_set(20, topo.crop);
    let batch = batches(set, &idx, &cfg, 0).expect("loader").next();
    let batch_bytes = 4 * batch.expect("a batch").expect("batch").x.len() as u64;

    let need = MemoryNeed::network(&be, &topo, 1)
        .expect("need")
        .with_loader(&cfg, 4);
    assert_eq!(need.bytes(rows, 0), net_bytes + batch_bytes);
    assert_eq!(need.bytes(rows, 3), net_bytes + 7 * batch_bytes);
    // Workers past the epoch's batches have nothing to hold.
    assert_eq!(need.bytes(rows, 9), need.bytes(rows, 4));

    let tensors = network_tensors(&net, true).expect("tensors");
    let floats: usize = tensors.iter().map(|t| t.data.len()).sum();
    let saving = need.with_checkpoint(&topo).expect("checkpoint");
    assert_eq!(
        saving.bytes(rows, 0) - need.bytes(rows, 0),
        2 * 4 * floats as u64
    );

    // Two replicas hold two copies of the weights, not of the activations.
    let two = MemoryNeed::network(&be, &topo, 2).expect("need");
    let one = MemoryNeed::network(&be, &topo, 1).expect("need");
    assert_eq!(two.bytes(rows, 0) - one.bytes(rows, 0), one.bytes(0, 0));
}

/// The number in "pass --FLAG N or ..." of an error message.
fn suggested(err: &str, flag: &str) -> u64 {
    let at = err
        .find(flag)
        .unwrap_or_else(|| panic!("no {flag} in: {err}"));
    let rest = &err[at + flag.len()..];
    let n = rest.split_whitespace().next().expect("a number");
    n.parse().unwrap_or_else(|_| panic!("{n:?} in: {err}"))
}

/// A refusal names the largest batch that fits (the next one would not),
/// or the most workers that fit when one worker would; a need within the
/// room passes.
#[test]
fn refusals_name_the_largest_batch_or_worker_count_that_fits() {
    let be = CpuBackend::new();
    let topo = Topology::alexnet();
    let cfg = LoaderConfig::new(128, topo.crop, true);
    let need = MemoryNeed::network(&be, &topo, 1)
        .and_then(|n| n.with_checkpoint(&topo))
        .expect("need")
        .with_loader(&cfg, 10_000);
    let room = |bytes| Room {
        bytes,
        limit: "free".into(),
    };
    for gb in [3u64, 5, 24, 100] {
        let free = gb * 1_000_000_000;
        for workers in [0, 1, 4] {
            let rows = 20_000;
            let err = need
                .check(rows, workers, room(free))
                .unwrap_err()
                .to_string();
            let b = suggested(&err, "--batch ") as usize;
            assert!(need.bytes(b, workers) <= free, "{err}");
            assert!(need.bytes(b + 1, workers) > free, "{err}");
            assert!(need.check(b, workers, room(free)).is_ok());
        }
        // A batch that fits with one worker but not with 5000.
        let err = need.check(64, 5000, room(free)).unwrap_err().to_string();
        let w = suggested(&err, "--workers ") as usize;
        assert!(
            need.bytes(64, w) <= free && need.bytes(64, w + 1) > free,
            "{err}"
        );
    }
    // Less than the weights: no batch fits.
    let err = need
        .check(1, 1, room(1_000_000_000))
        .unwrap_err()
        .to_string();
    assert!(err.contains("leaving no room for a batch"), "{err}");

    // Ten crops: a whole number of images. Four processes: --batch is the
    // global batch, four times a step's rows.
    let ten = LoaderConfig {
        ten_crop: true,
        ..LoaderConfig::new(100, topo.crop, false)
    };
    let mut need = MemoryNeed::network(&be, &topo, 1)
        .expect("need")
        .with_loader(&ten, 50);
    let err = need
        .check(1000, 1, room(5_000_000_000))
        .unwrap_err()
        .to_string();
    assert!(err.contains("100 images x 10 crops"), "{err}");
    assert!(suggested(&err, "--batch ").is_multiple_of(10), "{err}");
    need.crops = 1;
    need.world = 4;
    let err = need
        .check(1000, 1, room(5_000_000_000))
        .unwrap_err()
        .to_string();
    let b = suggested(&err, "--batch ") as usize;
    assert!(
        b.is_multiple_of(4) && need.bytes(b / 4, 1) <= 5_000_000_000,
        "{err}"
    );

    // Three replicas in each of two processes: the step is the world's,
    // and the batch named is the largest that splits over all six (what
    // `train` asks of --batch), not merely the largest that fits.
    let mut need = MemoryNeed::network(&be, &topo, 3)
        .expect("need")
        .with_loader(&cfg, 50);
    need.world = 2;
    let free = 5_000_000_000;
    let err = need.check(1000, 1, room(free)).unwrap_err().to_string();
    assert!(
        err.contains("a step of 2000 images (1000 of them in this process, 1 of WORLD_SIZE=2)"),
        "{err}"
    );
    let b = suggested(&err, "--batch ") as usize;
    let rows = b / 2;
    assert!(b.is_multiple_of(6), "{err}");
    assert!(need.bytes(rows, 1) <= free, "{err}");
    assert!(need.bytes(rows + 3, 1) > free, "{err}");
}

/// The batch named fits at the workers given, however many batches the
/// epoch then has: a smaller batch makes more of them, and keeps more
/// workers busy (264 images, 16 workers: 4 batches of 64, 6 of 38, 26 of 10).
#[test]
fn the_batch_named_fits_with_the_workers_a_smaller_batch_keeps_busy() {
    let be = CpuBackend::new();
    let topo = Topology::alexnet();
    let cfg = LoaderConfig::new(64, topo.crop, true);
    let base = MemoryNeed::network(&be, &topo, 1).expect("need");
    let at = |b: usize| base.with_loader(&cfg, 264 / b);
    let room = |bytes| Room {
        bytes,
        limit: "free".into(),
    };
    let workers = 16;
    // Below what one worker needs at 64: a smaller batch is the fix.
    let one = at(64).bytes(64, 1);
    for percent in [70, 85, 99] {
        let free = one / 100 * percent;
        let err = at(64)
            .check(64, workers, room(free))
            .unwrap_err()
            .to_string();
        let b = suggested(&err, "--batch ") as usize;
        assert!(at(b).check(b, workers, room(free)).is_ok(), "{err}");
    }
}

/// Processes of one run on one machine (LOCAL_WORLD_SIZE) share its
/// memory: each plans within its part, and the error says so.
#[test]
fn processes_on_one_machine_plan_within_their_share() {
    let be = CpuBackend::new();
    let topo = Topology::alexnet();
    let need = MemoryNeed::network(&be, &topo, 1)
        .expect("need")
        .with_loader(&LoaderConfig::new(128, topo.crop, true), 100);
    let free = 12_000_000_000;
    let whole = || Room {
        bytes: free,
        limit: "free".into(),
    };
    // A step that takes a third of the machine fits alone, not as one of four.
    let rows = (1..).find(|&r| need.bytes(r, 1) > free / 3).expect("rows");
    assert!(need.check(rows, 1, whole()).is_ok());
    assert!(need.check(rows, 1, whole().shared(1)).is_ok());
    let err = need
        .check(rows, 1, whole().shared(4))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("this process's share of what is free (1 of 4 processes"),
        "{err}"
    );
    let b = suggested(&err, "--batch ") as usize;
    assert!(
        need.bytes(b, 1) <= free / 4 && need.bytes(b + 1, 1) > free / 4,
        "{err}"
    );
    // An address-space limit (ulimit -v) is each process's own, not
    // divided: the least of the machine's share and it.
    let own = (
        5_000_000_000,
        "left under the address-space limit (ulimit -v)",
        false,
    );
    let limits = |p| least([(free, "free", true), own], p).expect("a room");
    assert_eq!(limits(2).bytes, 5_000_000_000);
    assert_eq!(limits(4).bytes, free / 4);
    assert!(limits(4).limit.contains("share of what is free"));
}

fn cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_alexnet-cuda"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run alexnet-cuda");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    (out.status.success(), err)
}

/// A bench-step of `alexnet` at a batch no machine holds.
const ALEXNET_REFUSED: [&str; 6] = [
    "bench-step",
    "--cpu",
    "--config",
    "alexnet",
    "--batch",
    "100000000",
];

/// A batch no machine holds is refused before anything is allocated, with
/// the batch that fits here.
#[test]
fn a_batch_past_the_memory_is_refused_with_the_one_that_fits() {
    let (ok, err) = cli(&ALEXNET_REFUSED);
    assert!(!ok, "{err}");
    assert!(
        err.contains("a step of 100000000 images needs about"),
        "{err}"
    );
    assert!(suggested(&err, "--batch ") < 100_000_000, "{err}");
}

/// Two towers are refused with their own buffers per image, as the CPU
/// backends count them (towers at 3 images less at 1, halved), not the
/// grouped network's: for `alexnet` those hold 1.9 MB more per image.
#[test]
fn two_towers_are_planned_with_the_buffers_they_allocate() {
    let topo = Topology::alexnet();
    let counted = |n: usize| {
        let (a, b) = (CpuBackend::new(), CpuBackend::new());
        let _net = TowerNetwork::new([&a, &b], &topo, n, 5).expect("towers");
        a.allocated_elements() + b.allocated_elements()
    };
    let per_image = 4 * (counted(3) - counted(1)) / 2;
    let (ok, err) = cli(&[&ALEXNET_REFUSED[..], &["--parallel", "model"]].concat());
    assert!(!ok, "{err}");
    let said = format!(
        "activations {} per image",
        alexnet_cuda::fsutil::size(per_image)
    );
    assert!(err.contains(&said), "{said}: {err}");
}

/// bench-step's upload probe (an input-sized buffer, made only where
/// phases are timed) is in its plan when it is made: the CPU backend's
/// count of the network per image, plus one input with --phase-steps 1.
#[test]
fn bench_steps_upload_probe_is_planned_only_when_made() {
    let topo = Topology::alexnet();
    let counted = |n: usize| {
        let be = CpuBackend::new();
        let _net = Network::zeroed(&be, &topo, n).expect("network");
        be.allocated_elements()
    };
    let network = 4 * (counted(3) - counted(1)) / 2;
    let input = 4 * (3 * 227 * 227) as u64;
    for (phases, per_image) in [("0", network), ("1", network + input)] {
        let (ok, err) = cli(&[&ALEXNET_REFUSED[..], &["--phase-steps", phases]].concat());
        assert!(!ok, "{err}");
        let said = format!(
            "activations {} per image",
            alexnet_cuda::fsutil::size(per_image)
        );
        assert!(err.contains(&said), "--phase-steps {phases}: {said}: {err}");
    }
}

/// Under an address-space limit (`ulimit -v`, as shared clusters set),
/// `train --config alexnet` is refused by name, where it used to abort
/// in an allocation: the weights with their gradients, momentum and a
/// checkpoint take about 1.6 GB, more than a 1.5 GB limit leaves.
#[cfg(target_os = "linux")]
#[test]
fn an_address_space_limit_is_planned_within() {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/imagenette/train");
    let out = tempfile::tempdir().expect("tempdir");
    let cmd = format!(
        "ulimit -v 1500000 && exec '{}' train --cpu --threads 2 --workers 1 --config alexnet --data '{}' --val 10 --batch 32 --out '{}' --epochs 1 --no-progress",
        env!("CARGO_BIN_EXE_alexnet-cuda"),
        data.display(),
        out.path().join("run").display()
    );
    let o = Command::new("sh")
        .args(["-c", &cmd])
        .env("RUST_LOG", "warn")
        .output()
        .expect("sh");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("left under the address-space limit (ulimit -v)")
            && err.contains("leaving no room for a batch"),
        "{err}"
    );
    assert!(
        !out.path().join("run").exists(),
        "a refused run made its folder"
    );
}

/// `bench-step ARGS` under `ulimit -v limit_kb`: (exit status, stderr).
#[cfg(target_os = "linux")]
fn bench_step_limited(limit_kb: u64, args: &str) -> (Option<i32>, String) {
    let cmd = format!(
        "ulimit -v {limit_kb} && exec '{}' bench-step --cpu --config cifar --phase-steps 0 --steps 1 --warmup 0 {args}",
        env!("CARGO_BIN_EXE_alexnet-cuda"),
    );
    let o = Command::new("sh")
        .args(["-c", &cmd])
        .env("RUST_LOG", "warn")
        .output()
        .expect("sh");
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Under an address-space limit the batch a refusal names runs: past the
/// limit an allocation aborts the process (status 134, no checkpoint),
/// so the plan must hold what the threads and the step's working memory
/// take beside its buffers, however many of them had started when it
/// looked. Tried at three limits, on the machine's threads and on 48
/// (whose scratch is 0.2 GB for `cifar`).
#[cfg(target_os = "linux")]
#[test]
fn under_an_address_space_limit_the_batch_named_runs() {
    for threads in ["", "--threads 48"] {
        for limit_kb in [600_000, 800_000, 1_200_000] {
            let (code, err) = bench_step_limited(limit_kb, &format!("{threads} --batch 100000"));
            assert_eq!(code, Some(1), "{err}");
            assert!(err.contains("left under the address-space limit"), "{err}");
            let b = suggested(&err, "--batch ");
            assert!(b > 0, "{err}");
            let (code, err) = bench_step_limited(limit_kb, &format!("{threads} --batch {b}"));
            assert_eq!(
                code,
                Some(0),
                "ulimit -v {limit_kb}, {threads} --batch {b}: {err}"
            );
        }
    }
}

/// The device plan (`MemoryNeed::on_device`) at 4 bytes an element, as on a
/// GPU in fp32, is every buffer the networks allocate: checked on the CPU
/// backend, which counts them, for each config, batch and copy count.
#[test]
fn the_device_plan_in_fp32_counts_every_buffer_the_networks_allocate() {
    for topo in topologies() {
        for (n, copies) in [(1, 1), (3, 1), (3, 2)] {
            let be = CpuBackend::new();
            let _nets: Vec<_> = (0..copies)
                .map(|_| Network::zeroed(&be, &topo, n).expect("network"))
                .collect();
            let need = MemoryNeed::on_device(&be, &topo, copies).expect("need");
            // Each copy holds its share of the rows: n in all.
            let rows_of_copies = copies * n;
            assert_eq!(
                need.bytes(rows_of_copies, 0),
                4 * be.allocated_elements(),
                "{} at batch {n}, {copies} copies",
                topo.name
            );
        }
    }
}

/// Bytes a GPU stores for each kind of buffer the CPU backend counts, as
/// `backend/cuda/mod.rs` allocates them, and the plan's storage for it.
struct GpuStorage {
    plan: DeviceStorage,
    /// `alloc`: an activation.
    activation: u64,
    /// `alloc_param`: the f32 master, and in 16 bits its copy beside it.
    param: u64,
    /// One input element: two input buffers (`input_buffers`), and in 16
    /// bits the f32 scratch that an upload from pinned memory lands in.
    input: u64,
}

const FP32: GpuStorage = GpuStorage {
    plan: DeviceStorage {
        activation_bytes: 4,
        inputs: 2,
    },
    activation: 4,
    param: 4,
    input: 2 * 4,
};

const HALF: GpuStorage = GpuStorage {
    plan: DeviceStorage {
        activation_bytes: 2,
        inputs: 2,
    },
    activation: 2,
    param: 4 + 2,
    input: 2 * 2 + 4,
};

/// What a GPU stores for buffers counted as `got`, of which `x` input
/// elements (the CPU network holds one input buffer). `alloc_f32` and
/// `alloc_idx` are 4 bytes in every precision.
fn gpu_bytes(st: &GpuStorage, got: Allocated, x: u64) -> u64 {
    st.activation * (got.activations - x)
        + st.input * x
        + st.param * got.params
        + 4 * got.f32s
        + 4 * got.indices
}

/// The device plan in fp32 and in fp16 / bf16 is what a GPU stores for
/// every buffer a network allocates, each kind as the CUDA backend keeps
/// it: for each config, at two batches.
#[test]
fn the_device_plan_counts_each_kind_of_buffer_as_a_gpu_stores_it() {
    for topo in topologies() {
        let input = (topo.channels * topo.crop * topo.crop) as u64;
        for n in [1, 3] {
            let be = CpuBackend::new();
            let _net = Network::zeroed(&be, &topo, n).expect("network");
            for st in [FP32, HALF] {
                let plan = MemoryNeed::on_device_as(st.plan, &topo, 1).expect("plan");
                let want = gpu_bytes(&st, be.allocated(), n as u64 * input);
                assert_eq!(
                    plan.bytes(n, 0),
                    want,
                    "{} at batch {n}, {:?}",
                    topo.name,
                    st.plan
                );
            }
        }
    }
}

/// Only the weights, biases and their gradients keep a 16-bit copy on a
/// GPU: the momentum is f32 alone. For `alexnet`'s 60,965,224 parameters
/// (the paper's count), two sets are `alloc_param`s, and the momentum is
/// among the `alloc_f32`s with the loss and the step metrics.
#[test]
fn momentum_is_allocated_without_a_16_bit_copy() {
    const PAPER: u64 = 60_965_224;
    let be = CpuBackend::new();
    let _net = Network::zeroed(&be, &Topology::alexnet(), 1).expect("network");
    let got = be.allocated();
    assert_eq!(got.params, 2 * PAPER, "{got:?}");
    assert!(
        (PAPER..PAPER + 1000).contains(&got.f32s),
        "momentum, loss and metrics: {got:?}"
    );
}

/// Two towers' device plan for two more images is what GPUs store for the
/// buffers both towers' CPU backends count for them (towers at 3 images
/// less at 1), each tower's input held as a GPU holds it: in fp32 and in
/// fp16 / bf16, for each two-tower config.
#[test]
fn the_device_plan_of_two_towers_counts_each_kind_as_gpus_store_it() {
    let counted = |topo: &Topology, n: usize| {
        let (a, b) = (CpuBackend::new(), CpuBackend::new());
        let _net = TowerNetwork::new([&a, &b], topo, n, 5).expect("towers");
        let (a, b) = (a.allocated(), b.allocated());
        Allocated {
            activations: a.activations + b.activations,
            params: a.params + b.params,
            f32s: a.f32s + b.f32s,
            indices: a.indices + b.indices,
        }
    };
    for topo in topologies().into_iter().filter(|t| t.towers == 2) {
        let input = (topo.channels * topo.crop * topo.crop) as u64;
        let (one, three) = (counted(&topo, 1), counted(&topo, 3));
        for st in [FP32, HALF] {
            let plan = MemoryNeed::on_device_as(st.plan, &topo, 1)
                .and_then(|p| p.with_device_towers(st.plan, &topo))
                .expect("plan");
            // Each of the two towers holds its own input.
            let want = gpu_bytes(&st, three, 2 * 3 * input) - gpu_bytes(&st, one, 2 * input);
            assert_eq!(
                plan.bytes(3, 0) - plan.bytes(1, 0),
                want,
                "{} {:?}",
                topo.name,
                st.plan
            );
        }
    }
}

fn gpu(ordinal: usize, free_gib: u64) -> DeviceMemory {
    DeviceMemory {
        ordinal,
        name: format!("GPU {ordinal} (test)"),
        free: free_gib << 30,
    }
}

/// Each GPU holds its own networks' shares, so a run fits where it fits
/// on the tightest one: of 80 and 20 GiB free, less a tenth and 1 GiB per
/// network, two equal shares have 2 x 17 GiB, not the 88 that summing
/// both memories gave. A GPU named twice holds two shares in one memory.
#[test]
fn the_device_room_is_the_tightest_gpus_share() {
    const GIB: u64 = 1 << 30;
    let one = device_room_of(&[gpu(0, 80)]).expect("room");
    assert_eq!(one.bytes, 71 * GIB, "{one:?}");
    let two = device_room_of(&[gpu(0, 80), gpu(1, 20)]).expect("room");
    assert_eq!(two.bytes, 2 * 17 * GIB, "{two:?}");
    assert!(
        two.limit
            .contains("GPU 1 (test) has 21.5 GB free and holds 1 of the 2"),
        "{}",
        two.limit
    );
    // --gpus 0,0,1: GPU 0 holds two of three shares in 72 - 2 GiB.
    let shared = device_room_of(&[gpu(0, 80), gpu(0, 80), gpu(1, 80)]).expect("room");
    assert_eq!(shared.bytes, 70 * GIB / 2 * 3, "{shared:?}");
    assert!(
        shared.limit.contains("GPU 0 (test) has"),
        "{}",
        shared.limit
    );
    assert_eq!(device_room_of(&[]), None);
}

/// Replicas averaged in this process's memory (`HostAllReduce`) keep the
/// reduce's buffers for the run, the size of the largest gradient it
/// averages: the plan counts them. Measured by the bytes this thread
/// holds after a backward pass (which averages every gradient) beyond
/// those it held before it, for one pair of replicas and for hybrid's
/// pairs of towers, whose reduce takes a tower's half of each tensor.
#[test]
fn the_plan_counts_the_host_all_reduce_buffers() {
    let topo = Topology::alexnet();
    let (x, labels) = common::batch(&topo, 2, 4);
    let devs: Vec<CpuBackend> = (0..4).map(|_| CpuBackend::new()).collect();
    let d: Vec<&CpuBackend> = devs.iter().collect();
    let reduce = || Box::new(HostAllReduce::default());
    let layouts = [
        Layout::Data(vec![d[0], d[1]], reduce()),
        Layout::Hybrid(vec![[d[0], d[1]], [d[2], d[3]]], reduce()),
    ];
    for layout in layouts {
        let shape = layout.shape();
        let planned = layout.memory_needs(&topo).expect("need").0.reduce;
        let mut model = layout.build(&topo, 2, 9).expect("model");
        model.forward(&x, &labels, Mode::Train).expect("forward");
        let before = live_bytes::live();
        model.backward().expect("backward");
        let held = (live_bytes::live() - before) as u64;
        // Within 1%: a few small buffers of the step stay too.
        assert!(
            held.abs_diff(planned) <= planned / 100,
            "{shape}: the reduce holds {held} bytes, the plan counts {planned}"
        );
    }
}

/// The bytes each of a pool's threads held at its most during a training
/// step of `topo` at batch `n`, the pool's threads alone doing the work.
fn thread_peaks(topo: &Topology, n: usize, threads: usize) -> Vec<isize> {
    let be = CpuBackend::new();
    let mut net = Network::new(&be, topo, n, 5).expect("network");
    let (x, labels) = common::batch(topo, n, 4);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    pool.broadcast(|_| live_bytes::reset_peak());
    let before: Vec<isize> = pool.broadcast(|_| live_bytes::live());
    pool.install(|| {
        net.forward(&x, &labels, Mode::Train).expect("forward");
        net.backward().expect("backward");
    });
    let peaks: Vec<isize> = pool.broadcast(|_| live_bytes::peak());
    peaks.iter().zip(&before).map(|(p, b)| p - b).collect()
}

/// On the CPU the compute threads hold scratch beside the network's
/// buffers (im2col, gemm's packing, a filter gradient's partial sums):
/// the plan counts the most a step's threads hold, every thread at its
/// peak at once, and no more than a tenth over it on one thread. Its
/// size for the paper's network, worked from section 3.5's layers: conv1's
/// im2col matrix, 3 x 11 x 11 rows by 55 x 55 positions, is the largest,
/// and conv3's 384 x 256 x 3 x 3 weights the largest partial sum, one for
/// each of a batch's 16 chunks but the first.
#[test]
fn the_plan_counts_the_compute_threads_scratch() {
    let topo = Topology::alexnet();
    let slab = gemm_slab();
    for threads in [1u64, 4] {
        let by_hand =
            threads * (2 * 4 * (3 * 11 * 11) * (55 * 55) + slab) + 15 * 4 * (384 * 256 * 3 * 3);
        let plan = cpu_scratch(&topo, threads as usize).expect("plan");
        assert_eq!(plan, by_hand, "{threads} threads");
        let held: isize = thread_peaks(&topo, 16, threads as usize).iter().sum();
        assert!(
            held as u64 <= plan,
            "{threads} threads held {held} bytes at their peaks; the plan counts {plan}"
        );
        if threads == 1 {
            assert!(plan <= held as u64 / 10 * 11, "{held} held, {plan} planned");
        }
    }

    // Weights and scratch past the room: the error names the threads.
    let be = CpuBackend::new();
    let need = MemoryNeed::network(&be, &topo, 1)
        .and_then(|n| n.with_compute_threads(&be, &topo, 64))
        .expect("need");
    let room = Room {
        bytes: need.fixed + need.scratch / 2,
        limit: "free".into(),
    };
    let err = need.check(1, 0, room).unwrap_err().to_string();
    assert!(err.contains("the scratch of 64 compute threads"), "{err}");
    assert!(err.contains("fewer --threads"), "{err}");
}
