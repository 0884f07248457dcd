//! Runs that survive: a training run killed with SIGKILL (or stopped with
//! SIGINT) at a random step and resumed ends with the same parameters and
//! momentum, bit for bit, as an uninterrupted run; a checkpoint write that
//! fails (file size limit) leaves the previous checkpoint whole; damaged
//! checkpoints are caught and the previous good one is named. Final weights
//! are compared with the safetensors crate's reader, not our own.
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use alexnet_cuda::checkpoint::{self, Progress};
use alexnet_cuda::data::write_demo_dataset;
use alexnet_cuda::train::{after_validation, set_by_hand, Schedule};
use safetensors::SafeTensors;

const BIN: &str = env!("CARGO_BIN_EXE_alexnet-cuda");
/// 500 training images at batch 25: 20 steps per epoch, 60 in all.
const EPOCHS: usize = 3;
const STEPS: usize = 60;

fn data(dir: &Path) -> PathBuf {
    let d = dir.join("data");
    write_demo_dataset(&d, 10, 60, 32, 5).expect("demo data");
    d
}

fn train_args(data: &Path, out: &Path, epochs: usize) -> Vec<String> {
    let mut a: Vec<String> = [
        "train",
        "--cpu",
        "--config",
        "cifar",
        "--val",
        "100",
        "--batch",
        "25",
        "--checkpoint-every",
        "7",
        "--threads",
        "2",
        "--no-progress",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(["--epochs".into(), epochs.to_string()]);
    a.extend(["--data".into(), data.display().to_string()]);
    a.extend(["--out".into(), out.display().to_string()]);
    a
}

/// `train_args` checkpointing every `n` steps, not 7.
fn checkpoint_every(args: &mut [String], n: &str) {
    set_arg(args, "--checkpoint-every", n);
}

/// `args` with the value of `flag`, one `train_args` gives, set to `value`.
fn set_arg(args: &mut [String], flag: &str, value: &str) {
    let at = args.iter().position(|a| a == flag).expect(flag);
    args[at + 1] = value.into();
}

fn resume_args(out: &Path) -> Vec<String> {
    vec![
        "train".into(),
        "--cpu".into(),
        "--resume".into(),
        out.display().to_string(),
        "--checkpoint-every".into(),
        "7".into(),
        "--threads".into(),
        "2".into(),
        "--no-progress".into(),
    ]
}

fn run(args: &[String]) -> Output {
    run_logging(args, "warn")
}

/// The program run with `args`, logging at `level` and above.
fn run_logging(args: &[String], level: &str) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", level)
        .output()
        .expect("run alexnet-cuda")
}

fn run_ok(args: &[String]) {
    let o = run(args);
    assert!(
        o.status.success(),
        "{args:?} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Steps logged so far (rows of steps.csv).
fn steps_logged(out: &Path) -> usize {
    std::fs::read_to_string(out.join("steps.csv"))
        .map(|s| s.lines().count().saturating_sub(1))
        .unwrap_or(0)
}

/// Start a run and wait until it has logged `step` steps.
fn start_until(args: &[String], out: &Path, step: usize) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    start_cmd_until(cmd, out, step)
}

/// `start_until` for a command that runs the run (under `timeout`, say).
fn start_cmd_until(mut cmd: Command, out: &Path, step: usize) -> Child {
    let mut child = cmd
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn alexnet-cuda");
    // No deadline: a stalled run hangs the test rather than a slow machine
    // failing it.
    while steps_logged(out) < step {
        if let Some(status) = child.try_wait().expect("wait") {
            panic!("the run ended ({status}) before step {step}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child
}

/// SIGINT a run; it must exit 130 (after its checkpoint). Returns its stdout.
fn interrupt(c: Child) -> String {
    let pid = c.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let o = c.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(130), "{stdout}");
    stdout
}

/// A step drawn from the clock, in `lo..hi`, printed so a failure can be replayed.
fn random_step(lo: usize, hi: usize, what: &str) -> usize {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as usize)
        .unwrap_or(0);
    let s = lo + nanos % (hi - lo);
    println!("{what} at step {s}");
    s
}

/// Every tensor of a safetensors file, read with the safetensors crate.
fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).expect("a safetensors file");
    let mut v: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.data().to_vec()))
        .collect();
    v.sort();
    v
}

fn final_ckpt(out: &Path) -> PathBuf {
    out.join(checkpoint::checkpoint_name(STEPS as u64))
}

fn assert_same_run(a: &Path, b: &Path) {
    let (ta, tb) = (tensors(&final_ckpt(a)), tensors(&final_ckpt(b)));
    assert_eq!(ta.len(), tb.len());
    // 8 layers x (weight, bias) x (value, momentum); cifar has no mean image.
    assert_eq!(ta.len(), 32);
    for ((na, da), (nb, db)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        assert!(da == db, "{na} differs between the runs");
    }
    // The logged curves match too, up to the wall-clock columns.
    let cols = |p: PathBuf, n: usize| -> Vec<String> {
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .lines()
            .map(|l| l.split(',').take(n).collect::<Vec<_>>().join(","))
            .collect()
    };
    assert_eq!(cols(a.join("steps.csv"), 5), cols(b.join("steps.csv"), 5));
    assert_eq!(cols(a.join("epochs.csv"), 7), cols(b.join("epochs.csv"), 7));
    assert_eq!(cols(a.join("steps.csv"), 1).len(), STEPS + 1);
}

#[test]
fn sigkill_twice_then_resume_is_bit_identical() {
    let t = tempfile::tempdir().unwrap();
    let d = data(t.path());
    let (whole, killed) = (t.path().join("whole"), t.path().join("killed"));
    run_ok(&train_args(&d, &whole, EPOCHS));

    // After step 8 is logged, the step-7 checkpoint exists to resume from.
    let k1 = random_step(8, 30, "first SIGKILL");
    let mut c = start_until(&train_args(&d, &killed, EPOCHS), &killed, k1);
    c.kill().expect("SIGKILL");
    c.wait().unwrap();
    let k2 = random_step(k1.max(8) + 1, STEPS - 2, "second SIGKILL");
    let mut c = start_until(&resume_args(&killed), &killed, k2);
    c.kill().expect("SIGKILL");
    c.wait().unwrap();
    // A kill during a write leaves a temporary file named by the dead
    // process's pid; plant one too, so the clean-up is always exercised.
    let stale = killed.join("ckpt-0000000007.safetensors.tmp-4194303999");
    std::fs::write(&stale, b"half a checkpoint").unwrap();
    // And one of the metrics a resume keeps aside (NAME.before-resume-STEP).
    let aside = killed.join("steps.csv.before-resume-3.tmp-4194303999");
    std::fs::write(&aside, b"step,epoch").unwrap();
    run_ok(&resume_args(&killed));
    let temps: Vec<_> = std::fs::read_dir(&killed)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(temps.is_empty(), "temporary files left: {temps:?}");
    assert_same_run(&whole, &killed);
    let left: Vec<_> = checkpoint::list(&killed).unwrap();
    assert_eq!(left.len(), 3, "--keep 3: {left:?}");
    assert!(killed.join("best.safetensors").is_file());
}

#[test]
fn sigint_stops_cleanly_with_a_checkpoint_and_resumes_exactly() {
    let t = tempfile::tempdir().unwrap();
    let d = data(t.path());
    let (whole, stopped) = (t.path().join("whole"), t.path().join("stopped"));
    run_ok(&train_args(&d, &whole, EPOCHS));
    let k = random_step(3, STEPS - 3, "SIGINT");
    let stdout = interrupt(start_until(&train_args(&d, &stopped, EPOCHS), &stopped, k));
    assert!(
        stdout.contains("continue with: alexnet-cuda train --resume"),
        "{stdout}"
    );
    // The checkpoint is of the step the run stopped after.
    let (step, path) = checkpoint::list(&stopped)
        .unwrap()
        .pop()
        .expect("a checkpoint");
    assert!(step as usize >= k && step as usize <= STEPS, "step {step}");
    let ck = checkpoint::load(&path).unwrap();
    assert_eq!(ck.state.progress.step, step);
    assert_eq!(steps_logged(&stopped), step as usize);
    run_ok(&resume_args(&stopped));
    assert_same_run(&whole, &stopped);
}

/// A run stopped on one thread and resumed on twenty (more threads than
/// the weight gradient's chunks, so its GEMMs split too) is the run never
/// stopped on two: no sum depends on the thread count, so a resume on a
/// machine with other cores goes on with the same weights.
#[test]
fn a_resume_on_other_threads_is_the_same_run() {
    let t = tempfile::tempdir().unwrap();
    let d = data(t.path());
    let (whole, moved) = (t.path().join("whole"), t.path().join("moved"));
    run_ok(&train_args(&d, &whole, EPOCHS));
    let mut one = train_args(&d, &moved, EPOCHS);
    set_arg(&mut one, "--threads", "1");
    let k = random_step(8, STEPS - 3, "SIGINT");
    interrupt(start_until(&one, &moved, k));
    let mut twenty = resume_args(&moved);
    set_arg(&mut twenty, "--threads", "20");
    run_ok(&twenty);
    assert_same_run(&whole, &moved);
}

#[test]
fn failed_checkpoint_write_keeps_the_previous_one() {
    let t = tempfile::tempdir().unwrap();
    let d = data(t.path());
    let (whole, run_dir) = (t.path().join("whole"), t.path().join("run"));
    run_ok(&train_args(&d, &whole, 2));
    run_ok(&train_args(&d, &run_dir, 1));
    let before = checkpoint::list(&run_dir).unwrap();
    let (last_step, last) = before.last().cloned().unwrap();
    let size = std::fs::metadata(&last).unwrap().len();
    // A file size limit of half a checkpoint: the next write fails part way
    // (EFBIG, SIGXFSZ ignored), like a disk filling up.
    let mut args = resume_args(&run_dir);
    args.extend(["--epochs".into(), "2".into()]);
    let o = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f {}; exec \"$0\" \"$@\"",
            size / 2 / 1024
        ))
        .arg(BIN)
        .args(&args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "the write did not fail: {err}");
    assert!(err.contains("could not write checkpoint"), "{err}");
    assert!(
        err.contains(&format!("previous checkpoint {} is intact", last.display())),
        "{err}"
    );
    // With the device flags and the resume's --epochs, which that
    // checkpoint does not hold.
    let again = format!(
        "`alexnet-cuda train --resume {} --cpu --epochs 2`",
        run_dir.display()
    );
    assert!(err.contains(&again), "{err}");
    // The newest readable checkpoint is the one from before, whole.
    let after = checkpoint::list(&run_dir).unwrap();
    assert_eq!(after, before);
    let ck = checkpoint::load_latest(&run_dir).expect("the previous checkpoint loads");
    assert_eq!(ck.state.progress.step, last_step);
    let stray: Vec<_> = std::fs::read_dir(&run_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(stray.is_empty(), "temporary files left: {stray:?}");
    // And the run still finishes exactly as an uninterrupted one.
    run_ok(&args);
    let (a, b) = (
        tensors(&whole.join(checkpoint::checkpoint_name(40))),
        tensors(&run_dir.join(checkpoint::checkpoint_name(40))),
    );
    assert!(a == b, "the resumed run differs");
}

/// A run whose checkpoints cannot fit on the run folder's disk is refused
/// before it writes anything, with the sizes and the fixes; the size it
/// plans with is a real checkpoint's, from above.
#[test]
fn a_run_whose_checkpoints_cannot_fit_is_refused_before_it_starts() {
    let t = tempfile::tempdir().unwrap();
    let d = data(t.path());
    let run_dir = t.path().join("run");
    run_ok(&train_args(&d, &run_dir, 1));
    let ck = checkpoint::load_latest(&run_dir).unwrap();
    let real = std::fs::metadata(&ck.path).unwrap().len();
    let topo = ck.state.net.topology().unwrap();
    let planned = checkpoint::estimated_size(&topo, ck.state.preprocess.image_size).unwrap();
    assert!(
        planned >= real && planned <= real + (2 << 20),
        "{planned} vs {real}"
    );

    // A billion kept checkpoints fit on no disk.
    let huge = t.path().join("huge");
    let mut args = train_args(&d, &huge, 1);
    args.extend(["--keep".into(), "1000000000".into()]);
    let o = run(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains(&format!("run folder {}: its disk has", huge.display())),
        "{err}"
    );
    assert!(err.contains("--keep 1") && err.contains("--out"), "{err}");
    // Refused before the data is read: the folder is not even made.
    assert!(!huge.exists(), "{} made before the refusal", huge.display());
    // A resume that asks for as many is refused too, with the run as it was.
    let before = checkpoint::list(&run_dir).unwrap();
    let mut args = resume_args(&run_dir);
    args.extend(["--keep".into(), "1000000000".into()]);
    args.extend(["--epochs".into(), "2".into()]);
    let o = run(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("its disk has"), "{err}");
    // A resume takes no --out: the fix is a copy of the folder.
    assert!(err.contains("--keep 1") && err.contains("(cp -a)"), "{err}");
    assert!(!err.contains("--out"), "{err}");
    assert_eq!(checkpoint::list(&run_dir).unwrap(), before);
}

/// A resume keeps the run's own --keep and --checkpoint-every: resumed
/// without them, it neither prunes to the default 3 nor falls back to the
/// 15-minute interval; given again, they replace the run's.
#[test]
fn a_resume_keeps_the_runs_keep_and_checkpoint_interval_unless_given() {
    let t = tempfile::tempdir().unwrap();
    let d = data(t.path());
    let out = t.path().join("run");
    let steps = |dir: &Path| -> Vec<u64> {
        checkpoint::list(dir)
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect()
    };
    // 500 training images at batch 25: 20 steps an epoch.
    let mut args = train_args(&d, &out, 1);
    checkpoint_every(&mut args, "2");
    args.extend(["--keep".into(), "10".into()]);
    run_ok(&args);
    assert_eq!(steps(&out), (1..=10).map(|i| 2 * i).collect::<Vec<u64>>());
    let plain = |epochs: &str| -> Vec<String> {
        let o = out.display().to_string();
        [
            "train",
            "--cpu",
            "--resume",
            &o,
            "--epochs",
            epochs,
            "--no-progress",
        ]
        .map(String::from)
        .to_vec()
    };
    run_ok(&plain("2"));
    assert_eq!(steps(&out), (11..=20).map(|i| 2 * i).collect::<Vec<u64>>());
    let mut given = plain("3");
    given.extend(["--keep", "4", "--checkpoint-every", "5"].map(String::from));
    run_ok(&given);
    assert_eq!(steps(&out), [45, 50, 55, 60]);
}

/// The data file of the store in `dir` (its one generation).
fn store_data_file(dir: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("data") && n.ends_with(".bin")
        })
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files.pop().unwrap()
}

/// A store image damaged on the disk stops the run and loses none of its
/// steps: those before it are written, the error names the checkpoint and
/// the resume, and once the data is whole again the resumed run ends as
/// one that never stopped. Damage in the validation store stops the run
/// after the epoch's training, which is kept the same way.
#[test]
fn a_damaged_store_image_stops_the_run_with_every_step_saved() {
    let t = tempfile::tempdir().unwrap();
    let p = |name: &str| t.path().join(name).display().to_string();
    write_demo_dataset(&t.path().join("train"), 10, 50, 32, 5).unwrap();
    write_demo_dataset(&t.path().join("val"), 10, 10, 32, 6).unwrap();
    let prepare = ["prepare", "--train", &p("train"), "--val", &p("val")];
    let mut prepare: Vec<String> = prepare.map(String::from).to_vec();
    prepare.extend(["--out", &p("store"), "--size", "32", "--format", "raw"].map(String::from));
    prepare.push("--no-progress".into());
    run_ok(&prepare);
    let train = |out: &str| -> Vec<String> {
        let mut a = train_args(Path::new(&p("store")), Path::new(&p(out)), 3);
        let at = a.iter().position(|a| a == "--val").unwrap();
        a.drain(at..at + 2);
        checkpoint_every(&mut a, "0");
        a
    };
    let whole = t.path().join("whole");
    run_ok(&train("whole"));
    for part in ["val", "train"] {
        let data_file = store_data_file(&t.path().join("store").join(part));
        let good = std::fs::read(&data_file).unwrap();
        let mut bad = good.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        std::fs::write(&data_file, &bad).unwrap();
        let out = t.path().join(format!("run-{part}"));
        let o = run(&train(&format!("run-{part}")));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{err}");
        assert!(err.contains("fails its checksum"), "{err}");
        let (step, ckpt) = checkpoint::list(&out)
            .unwrap()
            .pop()
            .unwrap_or_else(|| panic!("no checkpoint of the steps trained: {err}"));
        assert_eq!(step as usize, steps_logged(&out), "{err}");
        match part {
            // 500 training images at batch 25: the epoch's 20 steps.
            "val" => assert_eq!(step, 20, "{err}"),
            _ => assert!(step > 0 && step < 20, "{step}: {err}"),
        }
        assert!(err.contains(&ckpt.display().to_string()), "{err}");
        assert!(
            err.contains(&format!("--resume {}", out.display())),
            "{err}"
        );
        std::fs::write(&data_file, &good).unwrap();
        run_ok(&resume_args(&out));
        assert_same_run(&whole, &out);
        // The epoch resumed (at its validation, for "val") has a rate over
        // its steps, the stopped process's included.
        let epochs = std::fs::read_to_string(out.join("epochs.csv")).unwrap();
        let first: Vec<&str> = epochs.lines().nth(1).unwrap().split(',').collect();
        let rate: f64 = first[7].parse().unwrap();
        let wait: f64 = first[9].parse().unwrap();
        assert!(rate > 0.0 && (0.0..1.0).contains(&wait), "{epochs}");
    }
}

/// A store prepared again in another form (raw pixels after JPEG, as the
/// data-wait hint suggests) keeps its classes, counts and statistics, so
/// the resume goes on: it says the images are kept otherwise now, and
/// that the run is no longer the same to the bit, once.
#[test]
fn a_resume_on_a_store_prepared_again_otherwise_says_so() {
    let t = tempfile::tempdir().unwrap();
    let p = |name: &str| t.path().join(name).display().to_string();
    write_demo_dataset(&t.path().join("train"), 10, 30, 32, 5).unwrap();
    let prepare = |extra: &[&str]| {
        let mut a: Vec<String> = ["prepare", "--train", &p("train"), "--out", &p("store")]
            .map(String::from)
            .to_vec();
        a.extend(["--size", "32", "--no-progress"].map(String::from));
        a.extend(extra.iter().map(|s| s.to_string()));
        run_ok(&a);
    };
    prepare(&[]);
    let out = t.path().join("run");
    run_ok(&train_args(Path::new(&p("store")), &out, 1));
    prepare(&["--format", "raw"]);
    let mut more = resume_args(&out);
    more.extend(["--epochs".into(), "2".into()]);
    let o = run(&more);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(
            "the store keeps its images as raw, and the run's kept them as JPEG quality 90"
        ) && err.contains("no longer the run it would have been to the bit"),
        "{err}"
    );
    // The checkpoints since hold the store as it is: said once.
    let mut more = resume_args(&out);
    more.extend(["--epochs".into(), "3".into()]);
    let o = run(&more);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && !err.contains("keeps its images"),
        "{err}"
    );
}

/// An old checkpoint that `--keep` cannot delete (here a folder in its
/// place) costs disk space, not the run: the run warns, naming it, prunes
/// the others and finishes.
#[test]
fn an_old_checkpoint_that_cannot_be_deleted_is_named_and_the_run_goes_on() {
    let t = tempfile::tempdir().unwrap();
    let d = data(t.path());
    let out = t.path().join("run");
    // 500 training images at batch 25: 20 steps an epoch.
    let mut args = train_args(&d, &out, 1);
    checkpoint_every(&mut args, "10");
    run_ok(&args);
    let stuck = out.join(checkpoint::checkpoint_name(10));
    std::fs::remove_file(&stuck).unwrap();
    std::fs::create_dir(&stuck).unwrap();
    std::fs::write(stuck.join("x"), b"x").unwrap();
    let mut resume = resume_args(&out);
    checkpoint_every(&mut resume, "10");
    resume.extend(["--epochs", "2", "--keep", "1"].map(String::from));
    let o = run(&resume);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("could not delete an old checkpoint"), "{err}");
    assert!(err.contains(&stuck.display().to_string()), "{err}");
    let left: Vec<u64> = checkpoint::list(&out)
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(left, [10, 40]);
}

/// A resume's flags that would do nothing, or undo the run's own, are
/// said: --lr on a run that has finished its epochs is refused, naming
/// --epochs; --checkpoint-every alone warns that it drops the run's
/// --checkpoint-minutes.
#[test]
fn a_resume_says_what_its_flags_would_not_do() {
    let t = tempfile::tempdir().unwrap();
    let d = data(t.path());
    let out = t.path().join("run");
    let mut args = train_args(&d, &out, 1);
    args.extend(["--checkpoint-minutes", "5"].map(String::from));
    run_ok(&args);
    let mut resume = resume_args(&out);
    resume.extend(["--lr", "0.001"].map(String::from));
    let o = run(&resume);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("--lr 1e-3") && err.contains("add --epochs 2 or more"),
        "{err}"
    );
    let before = checkpoint::list(&out).unwrap();
    resume.extend(["--epochs", "2"].map(String::from));
    let o = run(&resume);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let warned = err.matches("pass --checkpoint-minutes 5 as well to keep it");
    assert_eq!(warned.count(), 1, "said once: {err}");
    assert!(checkpoint::list(&out).unwrap() != before);
}

/// A resume sets aside and prunes its folder's checkpoints as its own:
/// with checkpoints of two runs copied into one folder, resuming one is
/// refused before anything moves, naming the other's file; one of its own
/// run there is no obstacle.
#[test]
fn a_resume_beside_another_runs_checkpoints_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let d = data(t.path());
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    run_ok(&train_args(&d, &a, 1));
    let mut other = train_args(&d, &b, 1);
    other.extend(["--seed".into(), "7".into()]);
    run_ok(&other);
    let saved = t.path().join("saved");
    std::fs::create_dir(&saved).unwrap();
    let name = |s: u64| checkpoint::checkpoint_name(s);
    std::fs::copy(a.join(name(20)), saved.join(name(20))).unwrap();
    std::fs::copy(b.join(name(14)), saved.join(name(14))).unwrap();
    let mut resume = resume_args(&saved.join(name(20)));
    resume.extend(["--epochs".into(), "2".into()]);
    let o = run(&resume);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "resumed beside another run's checkpoint"
    );
    let theirs = saved.join(name(14)).display().to_string();
    assert!(
        err.contains(&format!(
            "{theirs}: a checkpoint of another run (another --seed or --batch)"
        )),
        "{err}"
    );
    assert!(saved.join(name(14)).exists());
    assert_eq!(checkpoint::list(&saved).unwrap().len(), 2, "files moved");
    // The other run's best epoch alone, as a file of its own: the resume
    // would replace it with its own best, so it is refused the same way.
    std::fs::remove_file(saved.join(name(14))).unwrap();
    let best = saved.join("best.safetensors");
    std::fs::copy(b.join("best.safetensors"), &best).unwrap();
    let before = std::fs::read(&best).unwrap();
    let o = run(&resume);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "resumed beside another run's best");
    assert!(
        err.contains(&format!(
            "{}: a checkpoint of another run (another --seed or --batch)",
            best.display()
        )),
        "{err}"
    );
    assert_eq!(std::fs::read(&best).unwrap(), before);
    std::fs::remove_file(&best).unwrap();
    // The run's own earlier checkpoint in its place, and a damaged later
    // one (its image count altered, its checksum not): not another run's,
    // so the resume goes on, setting the damaged one aside.
    std::fs::copy(a.join(name(14)), saved.join(name(14))).unwrap();
    let good = std::fs::read(a.join(name(20))).unwrap();
    let at = String::from_utf8_lossy(&good)
        .find("train_images\\\":500")
        .expect("the image count in the header");
    let mut bad = good.clone();
    bad[at + "train_images\\\":".len()] = b'6';
    std::fs::write(saved.join(name(30)), bad).unwrap();
    run_ok(&resume);
    assert!(saved.join(name(40)).exists());
}

/// A checkpoint past the file-size limit (`ulimit -f`) is a named error
/// with its fix, not a process killed by SIGXFSZ without a word, and its
/// temporary file goes.
#[test]
#[cfg(unix)]
fn a_checkpoint_past_the_file_size_limit_is_a_named_error() {
    let t = tempfile::tempdir().unwrap();
    let d = data(t.path());
    let out = t.path().join("run");
    let args: Vec<String> = train_args(&d, &out, 1)
        .iter()
        .map(|a| format!("'{a}'"))
        .collect();
    // 5000 blocks of 512 bytes: the metrics fit, the checkpoint (about 9 MB) not.
    let script = format!("ulimit -f 5000; exec '{BIN}' {}", args.join(" "));
    let o = Command::new("sh").args(["-c", &script]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("File too large") && err.contains("raise the file-size limit"),
        "{err}"
    );
    // The folder is named: a run without --out would start another.
    let again = format!("run the same command again, with --out {}", out.display());
    assert!(err.contains(&again), "{err}");
    let left: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // Run again as said, the limit raised: the folder takes it.
    run_ok(&train_args(&d, &out, 1));
    assert!(!checkpoint::list(&out).unwrap().is_empty());
}

/// A fresh run in a folder of the user's own files: a metrics file train
/// did not write is refused, not replaced; a user's temporary-looking file
/// stays, while a killed write of the run's own files goes even when its
/// pid is running now (pid 1, as in a container; the folder lock says no
/// writer is left).
#[test]
fn a_fresh_run_leaves_a_users_own_files_alone() {
    let t = tempfile::tempdir().unwrap();
    let d = data(t.path());
    let out = t.path().join("proj");
    std::fs::create_dir_all(&out).unwrap();
    let mine = out.join("epochs.csv");
    std::fs::write(&mine, "my,own,data\n1,2,3\n").unwrap();
    let o = run(&train_args(&d, &out, 1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    let said = format!("holds {}, which train did not write", mine.display());
    assert!(
        err.contains(&said) && err.contains("pass another --out"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&mine).unwrap(),
        "my,own,data\n1,2,3\n"
    );

    std::fs::remove_file(&mine).unwrap();
    let notes = out.join("notes.txt.tmp-4242");
    std::fs::write(&notes, "draft").unwrap();
    let killed = out.join("ckpt-0000000003.safetensors.tmp-1");
    std::fs::write(&killed, [0u8; 64]).unwrap();
    run_ok(&train_args(&d, &out, 1));
    assert!(notes.exists(), "a user's file was removed");
    assert!(!killed.exists(), "a killed checkpoint write was left");
}

/// A periodic checkpoint that falls on an epoch's last step is the epoch
/// end's, written after the validation: each step's file is written once.
#[test]
fn a_checkpoint_due_on_an_epochs_last_step_is_written_once() {
    let t = tempfile::tempdir().unwrap();
    let data = data(t.path());
    let out = t.path().join("run");
    let mut args = train_args(&data, &out, 2);
    checkpoint_every(&mut args, "10");
    let o = run_logging(&args, "info");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let writes: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("written in"))
        .filter_map(|l| l.split("ckpt-").nth(1)?.split('.').next())
        .collect();
    // 20 steps an epoch: 10, 20 (its end), 30, 40 (its end).
    let want = ["0000000010", "0000000020", "0000000030", "0000000040"];
    assert_eq!(writes, want, "{err}");
}

/// When checkpoints are written: by default at each epoch end and every 15
/// minutes (none in a short run); `--checkpoint-every 0` at epoch ends
/// only; every N steps; every M minutes (a tiny M: after every step); both
/// together. A bad `--checkpoint-minutes` is refused by name.
#[test]
fn checkpoints_come_at_epoch_ends_every_n_steps_or_every_m_minutes() {
    let t = tempfile::tempdir().unwrap();
    let data = data(t.path());
    let steps_written = |name: &str, flags: &[&str]| {
        let out = t.path().join(name);
        let mut args = train_args(&data, &out, 2);
        // train_args asks for --checkpoint-every 7; take the flags given here.
        let at = args.iter().position(|a| a == "--checkpoint-every").unwrap();
        args.drain(at..at + 2);
        args.extend(["--keep".into(), "100".into()]);
        args.extend(flags.iter().map(|f| f.to_string()));
        run_ok(&args);
        let list = checkpoint::list(&out).unwrap();
        list.into_iter().map(|(step, _)| step).collect::<Vec<_>>()
    };
    assert_eq!(steps_written("default", &[]), [20, 40]);
    assert_eq!(
        steps_written("ends", &["--checkpoint-every", "0"]),
        [20, 40]
    );
    assert_eq!(
        steps_written("steps", &["--checkpoint-every", "15"]),
        [15, 20, 30, 40]
    );
    let every_step: Vec<u64> = (1..=40).collect();
    let tiny = ["--checkpoint-minutes", "0.000001"];
    assert_eq!(steps_written("minutes", &tiny), every_step);
    let both = ["--checkpoint-every", "15", "--checkpoint-minutes", "60"];
    assert_eq!(steps_written("both", &both), [15, 20, 30, 40]);

    // Written as the user would (`--flag -1`, not `--flag=-1`): the value
    // reaches the flag's check. 1e300 minutes used to panic.
    for bad in ["-1", "nan", "inf", "1e300"] {
        let mut args = train_args(&data, &t.path().join("bad"), 1);
        args.extend(["--checkpoint-minutes".into(), bad.into()]);
        let o = run(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && !err.contains("panicked"), "{err}");
        assert!(
            err.contains(&format!("invalid value '{bad}' for '--checkpoint-minutes")),
            "{err}"
        );
    }
}

#[test]
fn damaged_checkpoints_are_caught_and_the_previous_good_one_named() {
    let t = tempfile::tempdir().unwrap();
    let d = data(t.path());
    let run_dir = t.path().join("run");
    run_ok(&train_args(&d, &run_dir, 1));
    let all = checkpoint::list(&run_dir).unwrap();
    assert_eq!(all.len(), 3);
    let (newest, previous) = (all[2].1.clone(), all[1].1.clone());
    let good = std::fs::read(&newest).unwrap();

    // One flipped bit in the tensor data, in the header's state, and a cut.
    let flip = |b: &[u8]| {
        let mut f = b.to_vec();
        let at = f.len() - 1000;
        f[at] ^= 0x10;
        f
    };
    let flipped = flip(&good);
    let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8_lossy(&good[8..8 + n]).into_owned();
    let key = "batches_done\\\":";
    let in_state = 8 + header.find(key).expect("state in header") + key.len();
    let mut state_flip = good.clone();
    state_flip[in_state] = if good[in_state] == b'1' { b'2' } else { b'1' };
    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("data bit", flipped, "checksum mismatch"),
        ("state digit", state_flip, "state checksum mismatch"),
        ("truncated", good[..good.len() / 2].to_vec(), "truncated"),
    ];
    for (what, bytes, needle) in cases {
        std::fs::write(&newest, &bytes).unwrap();
        let e = checkpoint::load(&newest).expect_err(what).to_string();
        assert!(e.contains(needle), "{what}: {e}");
        assert!(e.contains(&newest.display().to_string()), "{what}: {e}");
        let o = run(&resume_args(&run_dir));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{what}: resumed from a damaged file");
        assert!(
            err.contains(&format!(
                "the newest good checkpoint is {}",
                previous.display()
            )),
            "{what}: {err}"
        );
        // With the run's device flags: pasted, it computes as the run did.
        let pass = format!("pass it with --resume {} --cpu (", previous.display());
        assert!(err.contains(&pass), "{what}: {err}");
        let keep = "(in place of the command's --resume and device flags; keep its others, such as --epochs and --lr;";
        assert!(err.contains(keep), "{what}: {err}");
        // The damaged file named itself: the same way on, and so for a
        // command that reads it with --checkpoint.
        let o = run(&resume_args(&newest));
        let err = String::from_utf8_lossy(&o.stderr);
        let named = format!("the newest good checkpoint is {}", previous.display());
        assert!(!o.status.success() && err.contains(&named), "{what}: {err}");
        let (ck, data) = (newest.display().to_string(), d.display().to_string());
        let o = run(&["eval", "--cpu", "--checkpoint", &ck, "--data", &data].map(String::from));
        let err = String::from_utf8_lossy(&o.stderr);
        let pass = format!("pass it with --checkpoint {}", previous.display());
        assert!(!o.status.success() && err.contains(&pass), "{what}: {err}");
        let png = t.path().join("filters.png").display().to_string();
        let o = run(&["filters", "--checkpoint", &ck, "--out", &png].map(String::from));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(&pass),
            "filters, {what}: {err}"
        );
        assert!(err.contains(needle), "filters, {what}: {err}");
        // Nor does a fresh run start from its weights.
        let mut init = train_args(&d, &t.path().join(format!("init-{what}")), 1);
        init.extend(["--init-from".into(), ck.clone()]);
        let o = run(&init);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(&ck), "{what}: {err}");
        assert!(err.contains(needle), "{what}: {err}");
    }
    // An older checkpoint named and damaged: the way back goes no later
    // than it (the run's first), not to the newest.
    let first = all[0].1.clone();
    let was = std::fs::read(&previous).unwrap();
    std::fs::write(&previous, flip(&was)).unwrap();
    let o = run(&resume_args(&previous));
    let err = String::from_utf8_lossy(&o.stderr);
    let named = format!("the newest good checkpoint is {}", first.display());
    assert!(!o.status.success() && err.contains(&named), "{err}");
    std::fs::write(&previous, &was).unwrap();
    // So for a best.safetensors that is a copy, not a link to one of the
    // listed checkpoints (here of the middle one): by its header's step,
    // not the newest, whole again.
    std::fs::write(&newest, &good).unwrap();
    let best = run_dir.join("best.safetensors");
    let kept = std::fs::read(&best).unwrap();
    std::fs::remove_file(&best).unwrap();
    std::fs::write(&best, flip(&was)).unwrap();
    let o = run(&resume_args(&best));
    let err = String::from_utf8_lossy(&o.stderr);
    let named = format!("the newest good checkpoint is {}:", previous.display());
    assert!(!o.status.success() && err.contains(&named), "{err}");
    std::fs::remove_file(&best).unwrap();
    std::fs::write(&best, kept).unwrap();
    // A folder holding only best.safetensors (its checkpoints removed) names it.
    let only_best = t.path().join("only-best");
    std::fs::create_dir_all(&only_best).unwrap();
    std::fs::copy(&previous, only_best.join("best.safetensors")).unwrap();
    let o = run(&resume_args(&only_best));
    let err = String::from_utf8_lossy(&o.stderr);
    let best = only_best.join("best.safetensors");
    assert!(
        err.contains("holds no checkpoint")
            && err.contains(&format!("is one: --resume {}", best.display())),
        "{err}"
    );
    // A checkpoint cut short beside best.safetensors alone is pointed to
    // it, by filters as by eval: that folder is a run's.
    let copy = only_best.join("copy.safetensors");
    std::fs::write(&copy, &was[..was.len() / 2]).unwrap();
    let (c, data) = (copy.display().to_string(), d.display().to_string());
    let png = t.path().join("only-best.png").display().to_string();
    for args in [
        vec!["eval", "--cpu", "--checkpoint", &c, "--data", &data],
        vec!["filters", "--checkpoint", &c, "--out", &png],
    ] {
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        let o = run(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        let named = format!("the newest good checkpoint is {}", best.display());
        assert!(!o.status.success() && err.contains(&named), "{err}");
    }
    // A file outside any run folder is told what to pass, and no other
    // checkpoint is looked for where there is none.
    let elsewhere = t.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let junk = elsewhere.join("weights.safetensors");
    std::fs::write(&junk, &good[..good.len() / 2]).unwrap();
    let j = junk.display().to_string();
    let o = run(&["eval", "--cpu", "--checkpoint", &j, "--data", &data].map(String::from));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("pass a checkpoint written by `train`"),
        "{err}"
    );
    assert!(!err.contains("no other checkpoint"), "{err}");
    // Resuming from the named one works.
    std::fs::write(&newest, &good).unwrap();
    checkpoint::load(&newest).expect("restored file verifies");
    let mut a = resume_args(&previous);
    a.extend(["--epochs".into(), "1".into()]);
    run_ok(&a);
}

/// `ckpt` as a build of checkpoint version `version` would write it: the
/// state's version changed, and its layout (its progress renamed, as a
/// new version may), its checksum made again, the tensors as they were.
fn with_version(ckpt: &[u8], version: u64) -> Vec<u8> {
    let n = u64::from_le_bytes(ckpt[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&ckpt[8..8 + n]).unwrap();
    let meta = &mut header["__metadata__"];
    let mut state: serde_json::Value =
        serde_json::from_str(meta["state"].as_str().unwrap()).unwrap();
    state["version"] = version.into();
    let progress = state["progress"].take();
    state["progress_v99"] = progress;
    let state = state.to_string();
    meta["state_crc32"] = crc32fast::hash(state.as_bytes()).to_string().into();
    meta["state"] = state.into();
    let mut json = header.to_string().into_bytes();
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out.extend_from_slice(&ckpt[8 + n..]);
    out
}

/// Files that are whole but not this build's checkpoints (a note, a
/// checkpoint of a newer version laid out otherwise) are refused for what
/// they are: never called damaged, and the user never told to delete them.
#[test]
fn whole_files_that_are_not_this_builds_checkpoints_are_not_called_damaged() {
    let t = tempfile::tempdir().unwrap();
    let d = data(t.path());
    let run_dir = t.path().join("run");
    run_ok(&train_args(&d, &run_dir, 1));
    let newest = checkpoint::list(&run_dir).unwrap().pop().unwrap().1;
    let newer = run_dir.join("from-a-newer-build.safetensors");
    std::fs::write(&newer, with_version(&std::fs::read(&newest).unwrap(), 99)).unwrap();
    let note = run_dir.join("notes.txt");
    std::fs::write(&note, "lr 0.01, dropped at epoch 30\n").unwrap();
    let newer_needles = [
        "checkpoint version 99 but this build reads version 1",
        "a newer build of alexnet-cuda",
    ];
    for (file, needles) in [(&newer, &newer_needles[..]), (&note, &["notes.txt"][..])] {
        let (ck, data) = (file.display().to_string(), d.display().to_string());
        let o = run(&["eval", "--cpu", "--checkpoint", &ck, "--data", &data].map(String::from));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{ck} was read: {err}");
        for n in needles {
            assert!(err.contains(n), "{ck}: {n:?}: {err}");
        }
        assert!(
            !err.contains("delete") && !err.contains("damaged"),
            "{ck}: {err}"
        );
    }
}

/// A finished run's folder refuses a fresh run; a running one's refuses
/// any second process.
#[test]
fn a_run_folder_is_never_shared_by_two_runs() {
    let t = tempfile::tempdir().unwrap();
    let d = data(t.path());
    let out = t.path().join("run");
    run_ok(&train_args(&d, &out, 1));
    let o = run(&train_args(&d, &out, 1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    let go_on = format!("continue it with --resume {} --cpu or", out.display());
    assert!(
        err.contains("already holds a run") && err.contains(&go_on),
        "{err}"
    );
    // Said before the data is read: with data that is not there, the run
    // folder is still what the error names.
    let o = run(&train_args(&t.path().join("no-such-data"), &out, 1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("already holds a run") && !err.contains("no-such-data"),
        "{err}"
    );
    // Its checkpoints removed to save space, its results kept: a fresh run
    // there would replace best.safetensors and the epoch log, so it is
    // refused too, and they stay as they were.
    for (_, p) in checkpoint::list(&out).unwrap() {
        std::fs::remove_file(p).unwrap();
    }
    let kept = ["best.safetensors", "epochs.csv", "steps.csv"]
        .map(|f| std::fs::read(out.join(f)).unwrap());
    let o = run(&train_args(&d, &out, 1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("holds an earlier run's results"),
        "{err}"
    );
    assert!(
        err.contains("best.safetensors") && err.contains("another --out"),
        "{err}"
    );
    for (f, bytes) in ["best.safetensors", "epochs.csv", "steps.csv"]
        .iter()
        .zip(kept)
    {
        assert_eq!(std::fs::read(out.join(f)).unwrap(), bytes, "{f} changed");
    }
    // Without best.safetensors the epoch log alone is what a first
    // checkpoint that failed leaves, whose error says to run the same
    // command again: that works.
    std::fs::remove_file(out.join("best.safetensors")).unwrap();
    run_ok(&train_args(&d, &out, 1));
    // A log of two epochs is a run's history (its first checkpoint was
    // written): with every checkpoint and best.safetensors removed, it
    // is still refused and kept.
    let two = t.path().join("two");
    run_ok(&train_args(&d, &two, 2));
    for (_, p) in checkpoint::list(&two).unwrap() {
        std::fs::remove_file(p).unwrap();
    }
    std::fs::remove_file(two.join("best.safetensors")).unwrap();
    let epochs = std::fs::read(two.join("epochs.csv")).unwrap();
    let o = run(&train_args(&d, &two, 1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("holds an earlier run's results")
            && err.contains("epochs.csv"),
        "{err}"
    );
    assert_eq!(std::fs::read(two.join("epochs.csv")).unwrap(), epochs);

    // While a run trains, a second process is refused, fresh or resuming,
    // and the running one's files are left alone; once it has stopped, the
    // folder resumes.
    let busy = t.path().join("busy");
    // 30 epochs: long enough to be running while the others try. A resume
    // needs a checkpoint (step 7) before it reaches the folder's lock.
    let first = start_until(&train_args(&d, &busy, 30), &busy, 8);
    while checkpoint::list(&busy).unwrap().is_empty() {
        std::thread::sleep(Duration::from_millis(2));
    }
    let pid = first.id();
    // A new run is told to go elsewhere; a resume, to wait and run again
    // (--out goes with no resume).
    let fixes = [
        "wait for it to end, or pass another --out",
        "then run this command again",
    ];
    for (second, fix) in [train_args(&d, &busy, 30), resume_args(&busy)]
        .iter()
        .zip(fixes)
    {
        let o = run(second);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{err}");
        assert!(
            err.contains("is in use by another training process")
                && err.contains(&format!("(pid {pid})"))
                && err.contains(fix),
            "{err}"
        );
    }
    interrupt(first);
    // Free again once the process is gone: the resume trains through the
    // epoch after the one it stopped in.
    let (_, last) = checkpoint::list(&busy).unwrap().pop().unwrap();
    let epochs = checkpoint::load(&last).unwrap().state.progress.epoch + 1;
    let mut resume = resume_args(&busy);
    resume.extend(["--epochs".into(), epochs.to_string()]);
    run_ok(&resume);
    let (step, _) = checkpoint::list(&busy).unwrap().pop().unwrap();
    assert_eq!(step, 20 * epochs as u64);
}

/// A run started with a relative --data resumes from any working folder:
/// the checkpoint keeps the data folder's absolute path.
#[test]
fn a_relative_data_path_resumes_from_another_folder() {
    let t = tempfile::tempdir().unwrap();
    data(t.path());
    let in_dir = |args: &[String], cwd: &Path| {
        let o = Command::new(BIN)
            .args(args)
            .current_dir(cwd)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run alexnet-cuda");
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let out = t.path().join("run");
    in_dir(&train_args(Path::new("data"), &out, 1), t.path());
    let elsewhere = tempfile::tempdir().unwrap();
    let mut resume = resume_args(&out);
    resume.extend(["--epochs".into(), "2".into()]);
    in_dir(&resume, elsewhere.path());
    assert_eq!(checkpoint::list(&out).unwrap().last().unwrap().0, 40);
}

/// The epoch's log line gives the rate the epoch trained at as set, the
/// way epochs.csv does: not rounded to one digit (`--lr 0.015` once read
/// `lr 1e-2`).
#[test]
fn the_epoch_line_gives_the_rate_in_full() {
    let t = tempfile::tempdir().unwrap();
    let d = data(t.path());
    let mut a = train_args(&d, &t.path().join("run"), 1);
    a.extend(["--lr".into(), "0.015".into()]);
    let o = run_logging(&a, "info");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("epoch 1/1 lr 1.5e-2:"), "{err}");
}

/// The paper's schedule on a hand-made error sequence, patience 2, at most
/// two drops: lr 1 -> 0.1 after two epochs without improvement, then the
/// count restarts; improvements reset it; no third drop.
#[test]
fn plateau_schedule_by_hand() {
    let mut p = Progress::start(1.0, 1);
    let s = Schedule::Plateau {
        patience: 2,
        max_drops: 2,
    };
    let errs = [0.9, 0.8, 0.8, 0.85, 0.7, 0.75, 0.7, 0.71, 0.72, 0.73, 0.6];
    let want_lr = [1.0, 1.0, 1.0, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.01, 0.01];
    let want_best = [
        true, true, false, false, true, false, false, false, false, false, true,
    ];
    for (i, &e) in errs.iter().enumerate() {
        let best = after_validation(&mut p, &s, e);
        assert_eq!(best, want_best[i], "epoch {}", i + 1);
        assert!(
            (p.lr / want_lr[i] as f32 - 1.0).abs() < 1e-6,
            "epoch {}: lr {}",
            i + 1,
            p.lr
        );
    }
    assert_eq!(p.drops, 2);
    assert_eq!(p.best_err, Some(0.6));
    // Milestones leave the plateau state alone.
    let mut q = p.clone();
    after_validation(&mut q, &Schedule::Milestones(vec![3]), 0.99);
    assert_eq!(q.lr, p.lr);

    // A rate set by hand one epoch into a plateau gets its own `patience`
    // epochs: not divided by the next epoch that fails to improve.
    let s = Schedule::Plateau {
        patience: 2,
        max_drops: 3,
    };
    let mut p = Progress::start(1.0, 1);
    for e in [0.5, 0.6] {
        after_validation(&mut p, &s, e);
    }
    set_by_hand(&mut p, 0.3);
    after_validation(&mut p, &s, 0.55);
    assert_eq!((p.lr, p.drops), (0.3, 0));
    after_validation(&mut p, &s, 0.55);
    assert_eq!((p.lr, p.drops), (0.03, 1));
    assert_eq!(p.best_err, Some(0.5));
}

/// The plateau schedule counts no epoch that ends within the warm-up: at
/// a rate too small to move the weights (the validation error ties, which
/// does not improve), patience 1 and a warm-up of 2.5 epochs of 20 steps,
/// epoch 2 (steps 21 to 40) is not counted and epoch 3 is, so the first
/// drop comes after step 60, where counting epoch 2 had dropped the ramp
/// after step 40. The second, after the last epoch, is said to be for
/// epochs a resume adds; with --max-drops 2 then taken, a resume's rate
/// set by hand is said to stay.
#[test]
fn the_plateau_counts_no_epoch_inside_the_warm_up() {
    let t = tempfile::tempdir().unwrap();
    let d = data(t.path());
    let out = t.path().join("run");
    let mut args = train_args(&d, &out, 4);
    let flat = ["--lr", "1e-9", "--patience", "1", "--warmup", "2.5"];
    args.extend(flat.iter().map(|f| f.to_string()));
    args.extend(["--max-drops", "2"].map(String::from));
    let o = run_logging(&args, "info");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("lr now 1e-10 (drop 1 of 2)"), "{err}");
    assert!(
        err.contains("lr for any epochs a resume adds 1e-11 (drop 2 of 2)"),
        "{err}"
    );
    let mut more = resume_args(&out);
    more.extend(["--epochs", "5", "--lr", "1e-9"].map(String::from));
    let o = run_logging(&more, "info");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("all 2 drops of --max-drops are taken, so it stays"),
        "{err}"
    );
    let (got, resumed): (Vec<_>, Vec<_>) = lrs(&out).into_iter().partition(|&(s, _)| s <= 80);
    assert_eq!(got.len(), 80);
    assert_eq!(resumed.len(), 20);
    assert!(resumed.iter().all(|&(_, lr)| lr == 1e-9), "{resumed:?}");
    for (step, lr) in got {
        let base = if step > 60 { 1e-10 } else { 1e-9 };
        let want = base * (step as f64 / 50.0).min(1.0);
        assert!(
            (lr as f64 - want).abs() < 1e-6 * want,
            "step {step}: lr {lr}, want {want}"
        );
    }
}

/// A one-epoch run in `dir/a` whose run folder `edit` changes, then
/// resumed for a second epoch, which must succeed: the folder and stderr.
fn resume_after(dir: &Path, edit: impl FnOnce(&Path)) -> (PathBuf, String) {
    let d = data(dir);
    let a = dir.join("a");
    run_ok(&train_args(&d, &a, 1));
    edit(&a);
    let mut more = resume_args(&a);
    more.extend(["--epochs".into(), "2".into()]);
    let o = run(&more);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    (a, err)
}

/// A resumed run whose steps.csv lost its end (the machine crashed before
/// the rows were on disk, or the file was cut by hand) names the steps
/// missing before its checkpoint, keeps the rows it has, and logs the
/// steps it trains after them.
#[test]
fn a_resume_over_a_step_log_cut_short_names_the_missing_steps() {
    let t = tempfile::tempdir().unwrap();
    let (a, err) = resume_after(t.path(), |a| {
        let path = a.join("steps.csv");
        let text = std::fs::read_to_string(&path).unwrap();
        let cut: Vec<&str> = text.lines().take(1 + 12).collect();
        std::fs::write(&path, cut.join("\n") + "\n").unwrap();
    });
    assert!(
        err.contains("holds steps up to 12 only: steps 13 to 20, before the checkpoint"),
        "{err}"
    );
    let steps: Vec<u64> = lrs(&a).into_iter().map(|(s, _)| s).collect();
    let want: Vec<u64> = (1..=12).chain(21..=40).collect();
    assert_eq!(steps, want);
}

/// A step log saved by a spreadsheet (`;` between fields) reads as no
/// rows: the resume keeps the file as it was beside the new one, says so,
/// and the log goes on from the checkpoint. The same for the epoch log,
/// which a resume writes again from the checkpoint.
#[test]
fn a_resume_over_a_step_log_edited_by_hand_keeps_it_aside() {
    let t = tempfile::tempdir().unwrap();
    // Both logs (the epoch log is written again from the checkpoint's
    // history), as a spreadsheet saves them.
    let semicolons = |p: &Path| {
        let edited = std::fs::read_to_string(p).unwrap().replace(',', ";");
        std::fs::write(p, &edited).unwrap();
        edited
    };
    let (mut edited, mut edited_epochs) = (String::new(), String::new());
    let (a, err) = resume_after(t.path(), |a| {
        edited = semicolons(&a.join("steps.csv"));
        edited_epochs = semicolons(&a.join("epochs.csv"));
    });
    let aside = a.join("steps.csv.before-resume-20");
    assert!(
        err.contains("21 lines do not read as step rows (line 1 the first")
            && err.contains(&aside.display().to_string()),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&aside).unwrap(), edited);
    let epochs_aside = a.join("epochs.csv.before-resume-20");
    assert!(err.contains(&epochs_aside.display().to_string()), "{err}");
    assert_eq!(
        std::fs::read_to_string(&epochs_aside).unwrap(),
        edited_epochs
    );
    let steps: Vec<u64> = lrs(&a).into_iter().map(|(s, _)| s).collect();
    assert_eq!(steps, (21..=40).collect::<Vec<u64>>());
}

/// Step rows this program cannot have written, a rate outside f32 (once
/// drawn into a hang), a loss that is no number, a top-1 past 1 and a step out of order (a row pasted from another
/// run), are not read: the resume keeps the file as it was beside the new
/// one and says which lines, the log goes on without them, and the steps
/// are not wrongly called missing.
#[test]
fn a_resume_over_impossible_step_rows_keeps_them_aside() {
    let t = tempfile::tempdir().unwrap();
    let mut edited = String::new();
    let (a, err) = resume_after(t.path(), |a| {
        let path = a.join("steps.csv");
        let mut lines: Vec<String> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        let mut row7: Vec<&str> = lines[7].split(',').collect();
        row7[4] = "1e308";
        lines[7] = row7.join(",");
        // A loss that is no number and a top-1 past 1: the trainer stops
        // at a non-finite loss before its row, and counts hits of a batch.
        for (line, field, value) in [(10, 2, "NaN"), (12, 3, "1.5")] {
            let mut row: Vec<&str> = lines[line].split(',').collect();
            row[field] = value;
            lines[line] = row.join(",");
        }
        lines.push("5,0.25000,NaN,0.10000,1e-2,1.00".into());
        edited = lines.join("\n") + "\n";
        std::fs::write(&path, &edited).unwrap();
    });
    let aside = a.join("steps.csv.before-resume-20");
    assert!(
        err.contains("4 lines do not read as step rows (line 8 the first")
            && err.contains(&aside.display().to_string()),
        "{err}"
    );
    assert!(!err.contains("missing from it"), "{err}");
    assert_eq!(std::fs::read_to_string(&aside).unwrap(), edited);
    let steps: Vec<u64> = lrs(&a).into_iter().map(|(s, _)| s).collect();
    let want: Vec<u64> = (1..=6).chain([8, 9, 11]).chain(13..=40).collect();
    assert_eq!(steps, want);
}

/// JSONL metrics hold one object per step and per epoch; `--init-from`
/// starts a run from another run's weights (checked with a learning rate
/// too small to move them) or a run folder's best, and refuses weights of
/// another shape by name.
#[test]
fn jsonl_metrics_and_init_from() {
    let t = tempfile::tempdir().unwrap();
    let d = data(t.path());
    let a = t.path().join("a");
    // An earlier attempt in CSV, killed before its first checkpoint: the
    // fresh run replaces its files, or the resume below would carry on
    // its rows.
    std::fs::create_dir_all(&a).unwrap();
    let stale = "step,epoch,loss,top1,lr,elapsed_s\n1,0.05,2.3,0.1,0.01,1.0\n";
    std::fs::write(a.join("steps.csv"), stale).unwrap();
    let epochs = "epoch,lr,train_loss,train_top1,val_loss,val_top1,val_top5,images_per_s,elapsed_s,data_wait\n";
    std::fs::write(a.join("epochs.csv"), epochs).unwrap();
    let mut args = train_args(&d, &a, 1);
    args.extend(["--metrics-format".into(), "jsonl".into()]);
    run_ok(&args);
    let steps = std::fs::read_to_string(a.join("steps.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = steps
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
        .collect();
    assert_eq!(rows.len(), 20);
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["step"].as_u64(), Some(i as u64 + 1));
        assert!(r["loss"].as_f64().is_some_and(|l| l.is_finite() && l > 0.0));
    }
    // The curves are drawn into the run folder.
    let png = image::open(a.join("curves.png")).expect("curves.png is a PNG");
    assert!(png.width() >= 800 && png.height() >= 600);
    let epochs = std::fs::read_to_string(a.join("epochs.jsonl")).unwrap();
    let e: serde_json::Value = serde_json::from_str(epochs.trim()).unwrap();
    assert_eq!(e["epoch"].as_u64(), Some(1));
    assert!(e["val_top1"].as_f64().is_some());

    // A resume keeps the run's format without the flag, and refuses another.
    let mut csv = resume_args(&a);
    csv.extend(["--epochs", "2", "--metrics-format", "csv"].map(String::from));
    let o = run(&csv);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("keeps its metrics as jsonl"),
        "{err}"
    );
    let mut more = resume_args(&a);
    more.extend(["--epochs".into(), "2".into()]);
    run_ok(&more);
    let lines = std::fs::read_to_string(a.join("steps.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 40);
    assert!(!a.join("steps.csv").exists() && !a.join("epochs.csv").exists());

    let from = a.join("best.safetensors");
    let b = t.path().join("b");
    let mut args = train_args(&d, &b, 1);
    args.extend([
        "--init-from".into(),
        from.display().to_string(),
        "--lr".into(),
        "1e-30".into(),
    ]);
    run_ok(&args);
    let want = tensors(&from);
    let got = tensors(&b.join(checkpoint::checkpoint_name(20)));
    let mut checked = 0;
    for (name, w) in &want {
        if name.starts_with("momentum.") {
            continue;
        }
        let g = &got.iter().find(|(n, _)| n == name).expect("same names").1;
        assert_close(name, &f32s(w), &f32s(g));
        checked += 1;
    }
    assert_eq!(checked, 16);

    // Weights for 5 classes do not fit a 10-class run: the error names the
    // tensor. A run folder stands for its best.safetensors.
    let five = t.path().join("five");
    write_demo_dataset(&five, 5, 60, 32, 6).unwrap();
    let c = t.path().join("c");
    let mut args = train_args(&five, &c, 1);
    args[5] = "50".into(); // --val
    run_ok(&args);
    let mut args = train_args(&d, &t.path().join("d"), 1);
    args.extend(["--init-from".into(), c.display().to_string()]);
    let o = run(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("fc8.weight has shape [5, 512] but config cifar needs [10, 512]")
            && err.contains("--fresh fc8"),
        "{err}"
    );

    // With --fresh fc8 they do (fine-tuning on other classes): at a rate
    // too small to move anything, conv1 to fc7 stay the 5-class run's and
    // fc8 is what a run without --init-from starts with (same seed).
    let (tuned, fresh) = (t.path().join("tuned"), t.path().join("fresh"));
    let mut args = train_args(&d, &tuned, 1);
    args.extend(["--init-from", &c.display().to_string(), "--fresh", "fc8"].map(String::from));
    args.extend(["--lr".into(), "1e-30".into()]);
    run_ok(&args);
    let mut args = train_args(&d, &fresh, 1);
    args.extend(["--lr".into(), "1e-30".into()]);
    run_ok(&args);
    let (from, tuned, fresh) = (
        tensors(&c.join("best.safetensors")),
        tensors(&tuned.join(checkpoint::checkpoint_name(20))),
        tensors(&fresh.join(checkpoint::checkpoint_name(20))),
    );
    let mut layers = 0;
    for (name, w) in tuned.iter().filter(|(n, _)| !n.starts_with("momentum.")) {
        let want = match name.starts_with("fc8.") {
            true => &fresh,
            false => &from,
        };
        let x = &want.iter().find(|(n, _)| n == name).expect("same names").1;
        assert_close(name, &f32s(x), &f32s(w));
        layers += 1;
    }
    assert_eq!(layers, 16);
    // Layers not in the config, and --fresh alone, are refused by name.
    let mut args = train_args(&d, &t.path().join("e"), 1);
    args.extend(["--init-from", &c.display().to_string(), "--fresh", "fc9"].map(String::from));
    let err = String::from_utf8_lossy(&run(&args).stderr).into_owned();
    assert!(
        err.contains("config cifar has no layer fc9; its layers are conv1"),
        "{err}"
    );
    let mut args = train_args(&d, &t.path().join("e"), 1);
    args.extend(["--fresh".into(), "fc8".into()]);
    let err = String::from_utf8_lossy(&run(&args).stderr).into_owned();
    assert!(err.contains("--init-from"), "{err}");
    // Every layer fresh would load nothing.
    let every = "conv1,conv2,conv3,conv4,conv5,fc6,fc7,fc8";
    let mut args = train_args(&d, &t.path().join("e"), 1);
    args.extend(["--init-from", &c.display().to_string(), "--fresh", every].map(String::from));
    let o = run(&args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !o.status.success() && err.contains("--fresh names every layer of config cifar"),
        "{err}"
    );
}

/// A safetensors tensor's little-endian f32s.
fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// `got` is `want` but for the few ulps a rate of 1e-30 may move it.
fn assert_close(name: &str, want: &[f32], got: &[f32]) {
    assert_eq!(want.len(), got.len(), "{name}");
    for (x, y) in want.iter().zip(got) {
        assert!(
            (x - y).abs() <= 1e-6 * x.abs().max(1e-3),
            "{name}: {x} vs {y}"
        );
    }
}

/// A time limit that has passed before the first step: one step runs,
/// and the run stops there. (Not a fraction of a measured epoch: tests run
/// side by side, and a run's pace changes with the others' load.)
const PASSED: &str = "0.001";

/// `--time-limit`: one longer than the run leaves it alone; one that has
/// passed before the first step stops the run after that step, within the
/// epoch, with a checkpoint of it, status 0 and the command that
/// continues (with the same limit), and the resumed run ends where the
/// whole one does, bit for bit.
#[test]
fn a_time_limit_within_an_epoch_stops_with_a_checkpoint_and_resumes_exactly() {
    let t = tempfile::tempdir().unwrap();
    let d = data(t.path());
    let (whole, timed) = (t.path().join("whole"), t.path().join("timed"));
    let mut args = train_args(&d, &whole, EPOCHS);
    args.extend(["--time-limit".into(), "3600".into()]);
    run_ok(&args);
    let mut args = train_args(&d, &timed, EPOCHS);
    args.extend(["--time-limit".into(), PASSED.into()]);
    let o = run(&args);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let (step, _) = checkpoint::list(&timed)
        .unwrap()
        .pop()
        .expect("a checkpoint");
    assert_eq!(step, 1, "{stdout}");
    assert_eq!(steps_logged(&timed), step as usize);
    let said = format!("stopped at step {step}, in epoch 1 of 3 at the time limit");
    assert!(stdout.contains(&said), "no {said:?} in: {stdout}");
    // With the limit given: the resume does not keep it, and the next job
    // has one like it.
    let resume = format!(
        "continue with: alexnet-cuda train --resume {} --cpu --time-limit 0.001\n",
        timed.display()
    );
    assert!(stdout.contains(&resume), "no {resume:?} in: {stdout}");
    // No epoch was validated, so there is no best.safetensors to evaluate:
    // the run folder as weights names the checkpoint to pass instead.
    assert!(!stdout.contains("evaluate with"), "{stdout}");
    let newest = timed.join(checkpoint::checkpoint_name(step));
    let ev = |ck: &Path| {
        let mut a = vec!["eval".into(), "--cpu".into(), "--held-out".into()];
        a.extend(["--checkpoint".into(), ck.display().to_string()]);
        run(&a)
    };
    let err = String::from_utf8_lossy(&ev(&timed).stderr).into_owned();
    let want = format!(
        "pass one of its checkpoints, as the newest, {}",
        newest.display()
    );
    assert!(err.contains(&want), "no {want:?} in: {err}");
    let o = ev(&newest);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    run_ok(&resume_args(&timed));
    assert_same_run(&whole, &timed);
}

/// SIGTERM (a scheduler's pre-emption), SIGHUP and SIGUSR1 stop like
/// SIGINT, with status 128 + the signal's number, and the log says at once
/// what happens.
#[test]
fn sigterm_stops_with_a_checkpoint() {
    // SIGHUP (a lost terminal) and SIGUSR1 (Slurm's warning) stop alike,
    // each with 128 + its number.
    for (sig, status) in [("TERM", 143), ("HUP", 129), ("USR1", 138)] {
        let t = tempfile::tempdir().unwrap();
        let d = data(t.path());
        let out = t.path().join("run");
        let c = start_until(&train_args(&d, &out, EPOCHS), &out, 5);
        assert!(Command::new("kill")
            .args([&format!("-{sig}"), &c.id().to_string()])
            .status()
            .unwrap()
            .success());
        let o = c.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(status), "SIG{sig}");
        // The log says at once what the signal does (the step or a validation
        // in progress can take a minute on a CPU).
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("stopping: the step in progress finishes"),
            "SIG{sig}: {err}"
        );
        let (step, path) = checkpoint::list(&out).unwrap().pop().expect("a checkpoint");
        assert!(step >= 5);
        assert_eq!(checkpoint::load(&path).unwrap().state.progress.step, step);
    }
}

/// A run started with SIGHUP ignored (`nohup`) outlives its terminal:
/// SIGHUP does not stop it, and it trains to the end.
#[test]
fn sighup_does_not_stop_a_run_started_under_nohup() {
    let t = tempfile::tempdir().unwrap();
    let d = data(t.path());
    let out = t.path().join("run");
    // `trap '' HUP` ignores it, as nohup does; exec keeps that, and the pid.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "trap '' HUP; exec \"$0\" \"$@\"", BIN]);
    cmd.args(train_args(&d, &out, EPOCHS));
    let c = start_cmd_until(cmd, &out, 5);
    assert!(Command::new("kill")
        .args(["-HUP", &c.id().to_string()])
        .status()
        .unwrap()
        .success());
    let o = c.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("stopping"), "{err}");
    assert_eq!(steps_logged(&out), STEPS);
}

/// A signal while a raw image folder is decoded (minutes for a large one)
/// stops the run within moments, status 130, saying nothing was trained,
/// with no run folder written; not after the whole decode, a first step and
/// a checkpoint of it.
#[test]
fn a_signal_while_the_images_are_decoded_stops_before_any_step() {
    let t = tempfile::tempdir().unwrap();
    let d = slow_to_decode(t.path());
    let out = t.path().join("run");
    let stdout = interrupt_while_decoding(&train_args(&d, &out, 1), &t.path().join("log"));
    let said = format!(
        "stopped at a signal while the images of {} were decoded, before any step: nothing was trained",
        d.display()
    );
    assert!(stdout.contains(&said), "{stdout}");
    assert!(!out.exists(), "a run folder was written");
}

/// The same signal while a resume decodes its images says to run the same
/// command again, naming the checkpoint it resumes: not a command rebuilt
/// from the run folder, which would resume the newest checkpoint instead
/// and drop the command's --lr and --epochs.
#[test]
fn a_signal_while_a_resume_decodes_says_to_run_the_same_command() {
    let t = tempfile::tempdir().unwrap();
    let d = slow_to_decode(t.path());
    let out = t.path().join("run");
    run_ok(&train_args(&d, &out, 1));
    let (_, ck) = checkpoint::list(&out).unwrap().swap_remove(0);
    let mut a = resume_args(&ck);
    a.extend(["--epochs", "3", "--lr", "0.001"].map(String::from));
    let stdout = interrupt_while_decoding(&a, &t.path().join("log"));
    let said = format!(
        "{} is as it was: run the same command again to resume it",
        ck.display()
    );
    assert!(stdout.contains(&said), "{stdout}");
}

/// Two large images of two classes, each linked 1000 times: seconds of
/// decoding.
fn slow_to_decode(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    write_demo_dataset(&src, 2, 1, 1024, 3).expect("demo data");
    let d = dir.join("data");
    for class in std::fs::read_dir(&src).unwrap() {
        let class = class.unwrap().path();
        let to = d.join(class.file_name().unwrap());
        std::fs::create_dir_all(&to).unwrap();
        for file in std::fs::read_dir(&class).unwrap() {
            let file = file.unwrap().path();
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            for k in 0..1000 {
                std::fs::hard_link(&file, to.join(format!("{k}-{name}"))).unwrap();
            }
        }
    }
    d
}

/// The program run with `args` (logging to `log`), sent SIGINT once its
/// images decode: it ends at status 130. Its stdout.
fn interrupt_while_decoding(args: &[String], log: &Path) -> String {
    let mut c = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("spawn alexnet-cuda");
    let decoding = || std::fs::read_to_string(log).is_ok_and(|l| l.contains("decoded into memory"));
    while !decoding() {
        let ended = c.try_wait().expect("the run's status");
        let text = std::fs::read_to_string(log).unwrap_or_default();
        assert!(
            ended.is_none(),
            "the run ended before decoding: {ended:?}\n{text}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let signalled = std::time::Instant::now();
    signal(&c, "-INT");
    let o = c.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let log = std::fs::read_to_string(log).unwrap();
    assert_eq!(o.status.code(), Some(130), "{stdout}\n{log}");
    println!("stopped {:?} after the signal", signalled.elapsed());
    stdout
}

/// A signal during an epoch's validation (minutes on a CPU, past the 30 s
/// a scheduler waits before its kill) stops it at once with a checkpoint
/// of the epoch's steps, the epoch not done; the resumed run validates and
/// ends as a whole one does, bit for bit.
#[test]
fn a_signal_during_validation_stops_it_with_the_epochs_steps_kept() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("data");
    write_demo_dataset(&d, 10, 600, 32, 5).expect("demo data");
    // 100 training images (4 steps), 5,900 to validate.
    let args = |out: &Path| {
        let mut a = train_args(&d, out, 1);
        let at = a.iter().position(|a| a == "--val").expect("--val");
        a[at + 1] = "5900".into();
        a
    };
    let (whole, stopped) = (t.path().join("whole"), t.path().join("stopped"));
    run_ok(&args(&whole));
    let c = start_until(&args(&stopped), &stopped, 4);
    let stdout = interrupt(c);
    let (step, path) = checkpoint::list(&stopped)
        .unwrap()
        .pop()
        .expect("a checkpoint");
    assert_eq!(step, 4, "{stdout}");
    let p = checkpoint::load(&path).unwrap().state.progress;
    assert_eq!((p.batches_done, p.epoch_done), (4, false), "{stdout}");
    assert!(stdout.contains("continue with"), "{stdout}");
    let rows = std::fs::read_to_string(stopped.join("epochs.csv")).unwrap_or_default();
    assert!(
        rows.lines().count() <= 1,
        "an epoch row without its validation: {rows}"
    );
    run_ok(&resume_args(&stopped));
    let last = |dir: &Path| {
        checkpoint::list(dir)
            .unwrap()
            .pop()
            .expect("a checkpoint")
            .1
    };
    let (a, b) = (tensors(&last(&whole)), tensors(&last(&stopped)));
    assert!(
        a == b,
        "the resumed run's weights differ from the whole run's"
    );
    let epochs = |dir: &Path| -> Vec<String> {
        let text = std::fs::read_to_string(dir.join("epochs.csv")).unwrap();
        text.lines()
            .map(|l| l.split(',').take(7).collect::<Vec<_>>().join(","))
            .collect()
    };
    assert_eq!(epochs(&whole), epochs(&stopped));
}

/// GNU `timeout` sends its signal to the run and then to the run's process
/// group, so the run receives it twice at once: still one request to stop,
/// with a checkpoint, not the second Ctrl-C that quits without one.
#[test]
fn a_signal_from_timeout_stops_with_a_checkpoint() {
    let t = tempfile::tempdir().unwrap();
    let d = data(t.path());
    let out = t.path().join("run");
    let mut cmd = Command::new("timeout");
    cmd.arg("600").arg(BIN).args(train_args(&d, &out, EPOCHS));
    let c = start_cmd_until(cmd, &out, 5);
    assert!(Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status()
        .unwrap()
        .success());
    let o = c.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(143), "{err}");
    let (step, _) = checkpoint::list(&out).unwrap().pop().expect("a checkpoint");
    assert!(step >= 5, "{err}");
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains("continue with"), "{said}");
}

/// A second signal a moment after the first is a person's "Ctrl-C again":
/// the run ends at once with the signal's status, without the checkpoint
/// the first one asked for. `alexnet` steps of 48 images take seconds on
/// the CPU, so the second signal, 1.5 s after the first, comes while the
/// step the first one lets finish is still running.
#[test]
fn a_second_signal_later_quits_at_once_without_a_checkpoint() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("run");
    let (status, err) = two_signals(t.path(), &out, "-TERM", "-TERM");
    assert_eq!(status, Some(143), "{err}");
    assert!(err.contains("stopping: the step"), "{err}");
    assert!(checkpoint::list(&out).unwrap().is_empty(), "{err}");
}

/// Another kind of signal after the first is a scheduler going on from
/// its warning (Slurm's `--signal=USR1@T`, then SIGTERM at the time limit,
/// 30 s before its kill): the stop goes on and writes its checkpoint.
#[test]
fn a_schedulers_signal_after_its_warning_still_writes_the_checkpoint() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("run");
    let (status, err) = two_signals(t.path(), &out, "-USR1", "-TERM");
    assert_eq!(status, Some(143), "{err}");
    assert!(
        err.contains("SIGTERM after SIGUSR1: still stopping, the checkpoint first"),
        "{err}"
    );
    let (step, _) = checkpoint::list(&out).unwrap().pop().expect("a checkpoint");
    assert!(step >= 1, "{err}");
}

/// `slow_steps` sent `first`, then `second` 1.5 s later, while the step
/// the first lets finish is still running: its exit status and stderr.
fn two_signals(dir: &Path, out: &Path, first: &str, second: &str) -> (Option<i32>, String) {
    let child = slow_steps(dir, out);
    signal(&child, first);
    std::thread::sleep(Duration::from_millis(1500));
    signal(&child, second);
    let o = child.wait_with_output().unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A run of `alexnet` on the CPU, steps of 48 images taking seconds and no
/// checkpoint but a stop's, started and past its first step.
fn slow_steps(dir: &Path, out: &Path) -> Child {
    let mut args = train_args(&data(dir), out, EPOCHS);
    set_arg(&mut args, "--config", "alexnet");
    set_arg(&mut args, "--batch", "48");
    checkpoint_every(&mut args, "1000");
    start_until(&args, out, 1)
}

/// A demo run stopped by a signal removes its synthetic images, as one
/// that finishes does: the exit on a signal must not skip the cleanup. A
/// demo run removes the folders of demo runs that were killed (their
/// process has ended), and only those.
#[test]
fn a_stopped_demo_run_leaves_no_images_behind() {
    let t = tempfile::tempdir().unwrap();
    let (tmp, out) = (t.path().join("tmp"), t.path().join("run"));
    let mut ended = Command::new("true").spawn().expect("spawn true");
    ended.wait().unwrap();
    let names = |pid: String| format!("alexnet-demo-{pid}-aB3xYz");
    let killed = tmp.join(names(ended.id().to_string()));
    let kept = [
        tmp.join(names(std::process::id().to_string())),
        tmp.join("alexnet-demo-Q1w2E3"),
    ];
    for d in kept.iter().chain([&killed]) {
        std::fs::create_dir_all(d.join("00-hstripes")).unwrap();
        std::fs::write(d.join("00-hstripes/0.jpg"), "x").unwrap();
    }
    let mut child = Command::new(BIN)
        .args(["train", "--cpu", "--demo", "--no-progress", "--out"])
        .arg(&out)
        .env("TMPDIR", &tmp)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn alexnet-cuda");
    while steps_logged(&out) < 2 {
        if let Some(status) = child.try_wait().expect("wait") {
            panic!("the demo run ended ({status}) before step 2");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let listed = || -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(&tmp)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    };
    assert!(!killed.exists(), "the killed run's folder is removed");
    assert_eq!(listed().len(), 3, "the demo's images are in TMPDIR");
    interrupt(child);
    let mut want = kept.to_vec();
    want.sort();
    assert_eq!(listed(), want, "only the other runs' folders are left");
}

#[test]
fn two_towers_stop_and_resume_exactly_and_their_checkpoints_load_grouped() {
    let t = tempfile::tempdir().unwrap();
    let d = data(t.path());
    let (whole, stopped) = (t.path().join("whole"), t.path().join("stopped"));
    let towers = |mut a: Vec<String>| {
        a.extend(["--parallel".to_string(), "model".to_string()]);
        a
    };
    run_ok(&towers(train_args(&d, &whole, EPOCHS)));
    let k = random_step(3, STEPS - 3, "SIGINT (two towers)");
    let stdout = interrupt(start_until(
        &towers(train_args(&d, &stopped, EPOCHS)),
        &stopped,
        k,
    ));
    assert!(
        stdout.contains("--parallel model"),
        "the hint keeps the executor: {stdout}"
    );
    run_ok(&towers(resume_args(&stopped)));
    assert_same_run(&whole, &stopped);

    // The towers' checkpoint holds whole tensors: the grouped network and
    // the towers load it and compute the same logits.
    use alexnet_cuda::backend::cpu::CpuBackend;
    use alexnet_cuda::model::net::{Mode, Network};
    use alexnet_cuda::model::towers::TowerNetwork;
    let ck = checkpoint::load(&final_ckpt(&whole)).unwrap();
    let topo = alexnet_cuda::model::topology::Topology::cifar();
    let (one, a, b) = (CpuBackend::new(), CpuBackend::new(), CpuBackend::new());
    let mut grouped = Network::new(&one, &topo, 4, 0).unwrap();
    let mut two = TowerNetwork::new([&a, &b], &topo, 4, 0).unwrap();
    ck.restore(&mut grouped, false).unwrap();
    ck.restore(&mut two, false).unwrap();
    let x: Vec<f32> = (0..4 * 3 * 28 * 28)
        .map(|i| ((i % 97) as f32 - 48.0) / 30.0)
        .collect();
    let labels = [1, 2, 3, 4];
    let l1 = grouped.forward(&x, &labels, Mode::Eval).unwrap();
    let l2 = two.forward(&x, &labels, Mode::Eval).unwrap();
    assert_eq!(l1.to_bits(), l2.to_bits());
    assert_eq!(grouped.logits().unwrap(), two.logits().unwrap());
}

/// `a` with `--parallel MODE --replicas N` and an even batch (24) that
/// splits over the replicas.
fn parallel_args(mut a: Vec<String>, mode: &str, replicas: &str) -> Vec<String> {
    if let Some(i) = a.iter().position(|s| s == "--batch") {
        a[i + 1] = "24".into();
    }
    a.extend(["--parallel", mode, "--replicas", replicas].map(String::from));
    a
}

/// Rank 0's listener for the all-reduce, bound here on loopback at any free
/// port and handed to rank 0 (`rank_cmd`), so the port is never released
/// for something else to take first; and the MASTER_PORT that names it
/// (the all-reduce listens at MASTER_PORT + 1).
fn master_listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let port = l.local_addr().expect("its address").port();
    (l, (port - 1).to_string())
}

/// `alexnet-cuda ARGS` as rank `rank` of two on this machine. Rank 0 gets
/// `listener` as its standard input and ALEXNET_LISTEN_FD=0 (the inetd
/// way of handing over a listening socket).
fn rank_cmd(args: &[String], rank: &str, master: &(TcpListener, String)) -> Command {
    let (listener, port) = master;
    let mut c = Command::new(env!("CARGO_BIN_EXE_alexnet-cuda"));
    c.args(args).envs([
        ("WORLD_SIZE", "2"),
        ("RANK", rank),
        ("LOCAL_WORLD_SIZE", "2"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", port),
    ]);
    if rank == "0" {
        let socket = std::os::fd::OwnedFd::from(listener.try_clone().expect("dup the listener"));
        c.stdin(socket).env("ALEXNET_LISTEN_FD", "0");
    }
    c
}

/// The bytes of the debug line "memory: about X needed" (X as the program
/// writes sizes: kB, MB or GB, one decimal).
fn planned_bytes(log: &str) -> f64 {
    let line = log
        .lines()
        .find_map(|l| l.split_once("memory: about ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("no memory plan in:\n{log}"));
    let mut words = line.split_whitespace();
    let value: f64 = words.next().and_then(|v| v.parse().ok()).expect("a number");
    let unit = match words.next() {
        Some("kB") => 1e3,
        Some("MB") => 1e6,
        Some("GB") => 1e9,
        other => panic!("unit {other:?} in {line}"),
    };
    value * unit
}

/// Data parallelism on two CPU replicas and hybrid on two pairs of towers:
/// a run stopped by a signal and resumed with the flags the hint repeats
/// equals the uninterrupted run (dropout masks are drawn per replica and
/// tower, from the step).
#[test]
fn data_parallel_and_hybrid_runs_stop_and_resume_exactly() {
    for (mode, hint) in [
        ("data", "--parallel data --replicas 2"),
        ("hybrid", "--parallel hybrid --replicas 2"),
    ] {
        let t = tempfile::tempdir().unwrap();
        let d = data(t.path());
        let (whole, stopped) = (t.path().join("whole"), t.path().join("stopped"));
        let with = |a: Vec<String>| parallel_args(a, mode, "2");
        run_ok(&with(train_args(&d, &whole, EPOCHS)));
        let k = random_step(3, STEPS - 3, mode);
        let stdout = interrupt(start_until(
            &with(train_args(&d, &stopped, EPOCHS)),
            &stopped,
            k,
        ));
        assert!(stdout.contains(hint), "the hint keeps the layout: {stdout}");
        run_ok(&with(resume_args(&stopped)));
        assert_same_run(&whole, &stopped);
    }
}

/// Two processes whose steps diverge: each says so, whichever found it
/// first and stopped the other (gradients meet, so both diverge), not that
/// its peer went away.
#[test]
fn two_processes_that_diverge_both_say_so() {
    let t = tempfile::tempdir().unwrap();
    let d = data(t.path());
    let args = |out: &Path| {
        let mut a = parallel_args(train_args(&d, out, 1), "data", "1");
        a.extend(["--lr", "1e12"].map(String::from));
        a
    };
    let master = master_listener();
    let rank1 = rank_cmd(&args(&t.path().join("rank1")), "1", &master)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rank 1");
    let rank0 = rank_cmd(&args(&t.path().join("run")), "0", &master)
        .output()
        .expect("run rank 0");
    let rank1 = rank1.wait_with_output().expect("rank 1 ends");
    for (r, o) in [(0, &rank0), (1, &rank1)] {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("the run diverged"),
            "rank {r}: {err}"
        );
    }
}

/// A multi-process run (torchrun's variables, two processes on this
/// machine, the gradients meeting over TCP) computes bit for bit what one
/// process with as many replicas does: each rank loads its block of every
/// global batch, and rank 0 sums the replicas in the same order. Rank 0
/// writes the run folder, rank 1 nothing. For data parallelism and hybrid.
#[test]
fn two_processes_train_what_one_process_with_both_replicas_trains() {
    for mode in ["data", "hybrid"] {
        let t = tempfile::tempdir().unwrap();
        let d = data(t.path());
        let (one, two, other) = (
            t.path().join("one"),
            t.path().join("two"),
            t.path().join("rank1"),
        );
        let args =
            |out: &Path, replicas: &str| parallel_args(train_args(&d, out, 2), mode, replicas);
        run_ok(&args(&one, "2"));
        let master = master_listener();
        let rank1 = rank_cmd(&args(&other, "1"), "1", &master)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start rank 1");
        let rank0 = rank_cmd(&args(&two, "1"), "0", &master)
            .env("RUST_LOG", "debug")
            .output()
            .expect("run rank 0");
        let rank1 = rank1.wait_with_output().expect("rank 1 ends");
        for (r, o) in [(0, &rank0), (1, &rank1)] {
            assert!(
                o.status.success(),
                "{mode}: rank {r} failed:\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        assert!(!other.exists(), "{mode}: rank 1 keeps nothing");
        // Each says where it meets the other, and rank 0 when all are in.
        let log = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();
        let at = format!("127.0.0.1:{}", master.1.parse::<u16>().unwrap() + 1);
        let (log0, log1) = (log(&rank0), log(&rank1));
        assert!(
            log0.contains(&format!("rank 0: waiting at {at} for ranks 1 to 1")),
            "{log0}"
        );
        assert!(log0.contains("all 2 processes joined"), "{log0}");
        assert!(
            log1.contains(&format!("rank 1: joining rank 0 at {at}")),
            "{log1}"
        );
        let last = |out: &Path| checkpoint::list(out).unwrap().pop().expect("a checkpoint");
        let ((s1, p1), (s2, p2)) = (last(&one), last(&two));
        assert_eq!(s1, s2);
        let (ta, tb) = (tensors(&p1), tensors(&p2));
        assert_eq!(ta.len(), 32);
        // Only rank 0 writes checkpoints, so only its memory plan holds
        // one: the weights and momentum twice (copied out, then encoded).
        let bytes: usize = tb.iter().map(|(_, d)| d.len()).sum();
        let planned = |o: &Output| {
            let log = String::from_utf8_lossy(&o.stderr);
            // Both processes are on this machine: each plans within half.
            assert!(log.contains("(1 of 2 processes on this machine"), "{log}");
            planned_bytes(&log)
        };
        let extra = planned(&rank0) - planned(&rank1);
        assert!(
            (extra - 2.0 * bytes as f64).abs() < 0.2e6,
            "{mode}: rank 0 plans {extra} bytes more than rank 1, not a checkpoint's 2 x {bytes}"
        );
        for ((na, da), (nb, db)) in ta.iter().zip(&tb) {
            assert_eq!(na, nb);
            assert!(
                da == db,
                "{mode}: {na} differs between one and two processes"
            );
        }
    }
}

/// Two processes of one run started with different flags (here the seed
/// and the learning rate), or one with another network's weights
/// (`--init-from`, which no flag of the run records), would average
/// gradients of different models: both stop before the first step with an
/// error naming what differs, each giving its own values, and rank 0 writes
/// nothing in the run folder.
#[test]
fn processes_started_with_other_flags_stop_naming_what_differs() {
    let t = tempfile::tempdir().unwrap();
    let d = data(t.path());
    let (out, other) = (t.path().join("run"), t.path().join("rank1"));
    let args = |out: &Path| parallel_args(train_args(&d, out, 1), "data", "1");
    let stops = |a0: &[String], a1: &[String], names: &str| -> [String; 2] {
        let (rank0, rank1) = spawn_ranks(a0, a1, &[]);
        let outputs = [rank0, rank1].map(|r| r.wait_with_output().unwrap());
        assert_eq!(steps_logged(&out), 0);
        assert!(checkpoint::list(&out).unwrap().is_empty());
        let mut r = 0;
        outputs.map(|o| {
            let err = String::from_utf8_lossy(&o.stderr).into_owned();
            assert!(!o.status.success(), "rank {r} trained:\n{err}");
            let line = err.lines().find(|l| l.contains("differ in")).unwrap_or("");
            assert!(line.contains(names), "rank {r}: {err}");
            assert!(line.contains(&format!("(RANK {r} of 2)")), "{line}");
            r += 1;
            line.to_string()
        })
    };
    let mut a0 = args(&out);
    a0.extend(["--lr", "0.01"].map(String::from));
    let mut a1 = args(&other);
    a1.extend(["--seed", "7", "--lr", "0.03"].map(String::from));
    // The seed also draws another held-out split, so another mean, and
    // other initial weights.
    let names = "validation split, preparation, --lr, --seed, current learning rate, starting weights and momentum;";
    let lines = stops(&a0, &a1, names);
    for (line, lr, seed) in [(&lines[0], "0.01", "1"), (&lines[1], "0.03", "7")] {
        let values = format!("--lr {lr}, --seed {seed}, current learning rate {lr}, ");
        assert!(line.contains(&values), "{line}");
    }

    // The same flags, but rank 1 starts from another run's weights.
    let donor = t.path().join("donor");
    let mut a = train_args(&d, &donor, 1);
    set_arg(&mut a, "--batch", "24");
    a.extend(["--lr-milestones", "2"].map(String::from));
    run_ok(&a);
    let (_, weights) = checkpoint::list(&donor).unwrap().pop().unwrap();
    let mut a1 = args(&other);
    a1.extend(["--init-from".into(), weights.display().to_string()]);
    let lines = stops(
        &args(&out),
        &a1,
        "differ in: starting weights and momentum;",
    );
    assert_ne!(lines[0], lines[1], "each process gives its own CRC");

    // Both resume that run, rank 0 with --lr at the rate it has reached,
    // which keeps epoch 2's milestone from dividing it: the same state,
    // but the ranks would train at different rates.
    let lr = checkpoint::load_latest(&donor).unwrap().state.progress.lr;
    let resume = || parallel_args(resume_args(&donor), "data", "1");
    let (mut a0, mut a1) = (resume(), resume());
    a0.extend(["--epochs".into(), "2".into(), "--lr".into(), lr.to_string()]);
    a1.extend(["--epochs", "2"].map(String::from));
    let before = checkpoint::list(&donor).unwrap();
    let (rank0, rank1) = spawn_ranks(&a0, &a1, &[]);
    for (r, o) in [rank0, rank1]
        .map(|r| r.wait_with_output().unwrap())
        .iter()
        .enumerate()
    {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "rank {r} trained:\n{err}");
        let line = err.lines().find(|l| l.contains("differ in")).unwrap_or("");
        assert!(
            line.contains("differ in: --lr given to the resume;"),
            "rank {r}: {err}"
        );
    }
    assert_eq!(checkpoint::list(&donor).unwrap(), before);
}

/// A rank killed mid-epoch (SIGKILL: no word to the others) stops rank 0,
/// which first writes a checkpoint of every step it trained (gradients
/// meet before the update, so its weights are the last whole step's, not
/// only the epoch's checkpoint before). Its error names the rank, that
/// checkpoint and the command that continues, with the run's device
/// flags; the run resumed from it ends where the uninterrupted run does,
/// bit for bit.
#[test]
fn a_killed_rank_leaves_every_step_saved_and_the_run_resumes_exactly() {
    let r = RankRuns::new();
    let (out, other) = (&r.out, &r.other);
    let (a0, a1) = (r.epoch_checkpoints(out), r.epoch_checkpoints(other));
    let (mut rank0, mut rank1) = spawn_ranks(&a0, &a1, &[]);
    // Within epoch 2 (steps 21 to 40), early: steps.csv is written up to a
    // second behind the steps, and the test tells most where the newest
    // checkpoint before the kill is the epoch's, step 20.
    let k = random_step(21, 26, "SIGKILL to rank 1");
    wait_for_step(&mut rank0, out, k);
    rank1.kill().expect("kill rank 1");
    rank1.wait().expect("rank 1 ends");
    let o = rank0.wait_with_output().expect("rank 0 ends");
    let line = r.assert_every_step_saved(&o, k);
    assert!(line.contains("rank 1"), "the error names the rank: {line}");
}

/// A rank that hangs (SIGSTOP) while rank 0 gets a signal: rank 0 does not
/// wait out the peer timeout (60 s here, 600 by default), when a
/// scheduler's kill or a second Ctrl-C would take every step since the
/// epoch's checkpoint, but stops within seconds the way it does for a
/// killed rank: a checkpoint of every step, an error naming the silent
/// rank and the signal, the signal's exit status, and a run that resumes
/// bit for bit.
#[test]
fn a_signal_while_a_rank_hangs_saves_every_step_without_the_peer_timeout() {
    let r = RankRuns::new();
    let (out, other) = (&r.out, &r.other);
    let (a0, a1) = (r.epoch_checkpoints(out), r.epoch_checkpoints(other));
    let slow_timeout = [("ALEXNET_PEER_TIMEOUT", "60")];
    let (mut rank0, mut rank1) = spawn_ranks(&a0, &a1, &slow_timeout);
    let k = random_step(21, 26, "SIGSTOP to rank 1, SIGTERM to rank 0");
    wait_for_step(&mut rank0, out, k);
    signal(&rank1, "-STOP");
    signal(&rank0, "-TERM");
    let o = rank0.wait_with_output().expect("rank 0 ends");
    rank1.kill().expect("kill rank 1");
    rank1.wait().expect("rank 1 ends");
    assert_eq!(
        o.status.code(),
        Some(128 + 15),
        "SIGTERM's status, to be requeued"
    );
    let line = r.assert_every_step_saved(&o, k);
    assert!(
        line.contains("rank 1: stopped at a signal after nothing moved for"),
        "{line}"
    );
}

/// Sends `sig` (as kill(1) takes it: "-TERM") to `child`.
fn signal(child: &Child, sig: &str) {
    let id = child.id().to_string();
    let sent = Command::new("kill").args([sig, &id]).status();
    assert!(sent.is_ok_and(|s| s.success()), "kill {sig} {id}");
}

/// Waits until `out`'s steps.csv holds step `k`, rank 0 still running.
fn wait_for_step(rank0: &mut Child, out: &Path, k: usize) {
    while steps_logged(out) < k {
        let ended = rank0.try_wait().expect("rank 0's status");
        assert!(ended.is_none(), "rank 0 ended ({ended:?}) before step {k}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// SIGTERM to one rank of two (a scheduler pre-empting one machine, or a
/// launcher whose signals land between two steps): the ranks agree on the
/// stop, both stop after the same step, rank 0 writes its checkpoint there
/// and says whose signal it was, and the run resumed as one process of two
/// replicas ends where the uninterrupted run does, bit for bit.
#[test]
fn a_signal_to_one_rank_stops_every_rank_after_the_same_step() {
    let r = RankRuns::new();
    let (whole, out, other) = (&r.whole, &r.out, &r.other);
    let (mut rank0, rank1) = spawn_ranks(&r.args(out, "1"), &r.args(other, "1"), &[]);
    let k = random_step(3, STEPS - 3, "SIGTERM to rank 1");
    wait_for_step(&mut rank0, out, k);
    signal(&rank1, "-TERM");
    let (o1, o0) = (
        rank1.wait_with_output().unwrap(),
        rank0.wait_with_output().unwrap(),
    );
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert_eq!(o1.status.code(), Some(143), "rank 1: {}", text(&o1.stderr));
    assert_eq!(o0.status.code(), Some(130), "rank 0: {}", text(&o0.stderr));
    // The ranks agree every 10 steps: the stop is at the first agreement
    // after the signal (two allowed, for the signal's delivery).
    let (step, path) = checkpoint::list(out).unwrap().pop().expect("a checkpoint");
    let k = k as u64;
    assert!(
        step.is_multiple_of(10) && step >= k && step <= k + 20,
        "stopped at step {step}, signalled at {k}"
    );
    assert_eq!(checkpoint::load(&path).unwrap().state.progress.step, step);
    let log0 = text(&o0.stderr);
    // After a step, or after an epoch's validation.
    let epoch = step / 20;
    assert!(
        [
            format!("step {step} as asked"),
            format!("epoch {epoch} as asked")
        ]
        .iter()
        .any(|at| log0.contains(&format!("{at} by another process of the run"))),
        "{log0}"
    );
    assert!(
        text(&o0.stdout).contains("stopped at a signal to another process of the run"),
        "{}",
        text(&o0.stdout)
    );
    // Rank 1 keeps no folder: it points at rank 0's, not at a path of its own.
    let said1 = text(&o1.stdout);
    assert!(
        said1.contains("stopped at a signal; rank 0 wrote the run's checkpoint")
            && said1.contains("--resume RUN_FOLDER --cpu --parallel data --replicas 1"),
        "{said1}"
    );
    run_ok(&parallel_args(resume_args(out), "data", "2"));
    assert_same_weights(whole, out);
}

/// A data-parallel run of two replicas in one process, finished in
/// `whole`, and the run folders of the same run as two processes: rank 0's
/// `out` and rank 1's `other` (which it leaves empty).
struct RankRuns {
    _t: tempfile::TempDir,
    data: PathBuf,
    whole: PathBuf,
    out: PathBuf,
    other: PathBuf,
}

impl RankRuns {
    fn new() -> RankRuns {
        let t = tempfile::tempdir().unwrap();
        let r = RankRuns {
            data: data(t.path()),
            whole: t.path().join("whole"),
            out: t.path().join("run"),
            other: t.path().join("rank1"),
            _t: t,
        };
        run_ok(&r.args(&r.whole, "2"));
        r
    }

    fn args(&self, out: &Path, replicas: &str) -> Vec<String> {
        parallel_args(train_args(&self.data, out, EPOCHS), "data", replicas)
    }

    /// One rank's `args` with checkpoints at epoch ends only (steps 20,
    /// 40, 60).
    fn epoch_checkpoints(&self, out: &Path) -> Vec<String> {
        let mut a = self.args(out, "1");
        let i = a.iter().position(|s| s == "--checkpoint-every").unwrap();
        a[i + 1] = "0".into();
        a
    }

    /// Rank 0 stopped (output `o`) after step `k` by a rank that failed:
    /// its newest checkpoint holds step `k` or later, its error names that
    /// checkpoint and the command that continues, and the run resumed
    /// there (as one process of two replicas) ends where the uninterrupted
    /// run does, bit for bit. The error line.
    fn assert_every_step_saved(&self, o: &Output, k: usize) -> String {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "rank 0 cannot go on alone: {err}");
        let (step, path) = checkpoint::list(&self.out)
            .unwrap()
            .pop()
            .expect("a checkpoint");
        assert!(
            step >= k as u64,
            "newest checkpoint at step {step}, stopped at {k}"
        );
        let line = err.lines().find(|l| l.starts_with("error")).unwrap_or("");
        let said = format!("every step trained before it is in {}", path.display());
        assert!(line.contains(&said), "{err}");
        let resume = format!(
            "--resume {} --cpu --parallel data --replicas 1",
            self.out.display()
        );
        assert!(line.contains(&resume), "{err}");
        run_ok(&parallel_args(resume_args(&self.out), "data", "2"));
        assert_same_weights(&self.whole, &self.out);
        line.to_string()
    }
}

/// Ranks 0 and 1 of a run on this machine, started with `a0` and `a1`,
/// their output piped; rank 0 logs at info, rank 1 warnings only.
fn spawn_ranks(a0: &[String], a1: &[String], env: &[(&str, &str)]) -> (Child, Child) {
    let master = master_listener();
    let start = |a: &[String], rank: &str, log: &str| {
        rank_cmd(a, rank, &master)
            .envs(env.iter().copied())
            .env("RUST_LOG", log)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start rank {rank}: {e}"))
    };
    (start(a0, "0", "info"), start(a1, "1", "warn"))
}

/// Two runs' final weights and momenta, bit for bit. Only these: a run of
/// several processes logs rank 0's shard's losses in steps.csv.
fn assert_same_weights(a: &Path, b: &Path) {
    let (ta, tb) = (tensors(&final_ckpt(a)), tensors(&final_ckpt(b)));
    assert_eq!(ta.len(), 32);
    for ((na, da), (nb, db)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        assert!(da == db, "{na} differs between the runs");
    }
}

/// An epoch of one step (batch 500 of the 500 training images) under a
/// time limit that has passed: after that step comes the epoch's
/// validation, so the run stops before it, says so, and writes no epoch
/// row; the resumed run validates that epoch, trains the next, and ends
/// with the weights and curves of the uninterrupted run.
#[test]
fn a_time_limit_after_an_epochs_last_step_stops_before_its_validation() {
    let t = tempfile::tempdir().unwrap();
    let d = data(t.path());
    let (whole, timed) = (t.path().join("whole"), t.path().join("timed"));
    let one_step = |out: &Path| {
        let mut a = train_args(&d, out, 2);
        let at = a.iter().position(|s| s == "--batch").expect("--batch");
        a[at + 1] = "500".into();
        a
    };
    run_ok(&one_step(&whole));
    let mut args = one_step(&timed);
    args.extend(["--time-limit".into(), PASSED.into()]);
    let o = run_logging(&args, "info");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{said}");
    let want = "stopping at epoch 1, step 1: the time limit would pass before the epoch's validation and a checkpoint";
    assert!(said.contains(want), "no {want:?} in: {said}");
    let steps: Vec<u64> = checkpoint::list(&timed)
        .unwrap()
        .iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(steps, [1], "{said}");
    let rows = std::fs::read_to_string(timed.join("epochs.csv")).unwrap_or_default();
    assert!(rows.lines().count() <= 1, "an epoch was validated: {rows}");
    run_ok(&resume_args(&timed));
    let last = |out: &Path| tensors(&out.join(checkpoint::checkpoint_name(2)));
    let (a, b) = (last(&whole), last(&timed));
    assert_eq!(a.len(), 32);
    assert!(a == b, "the resumed run's weights differ");
    let epochs = |out: &Path| -> Vec<String> {
        let text = std::fs::read_to_string(out.join("epochs.csv")).expect("epochs.csv");
        text.lines()
            .map(|l| l.split(',').take(7).collect::<Vec<_>>().join(","))
            .collect()
    };
    assert_eq!(epochs(&whole).len(), 3);
    assert_eq!(epochs(&whole), epochs(&timed));
}

/// A time limit in one rank of two (one that has passed at once): the
/// ranks agree on it as on a signal, at step 10, both stop there with
/// status 0, rank 0 writes its checkpoint there and says it was another
/// process's limit, and the run resumed as one process of two replicas
/// ends where the whole run does, bit for bit.
#[test]
fn a_time_limit_in_one_rank_stops_every_rank_after_the_same_step() {
    let r = RankRuns::new();
    let (whole, out, other) = (&r.whole, &r.out, &r.other);
    let mut timed = r.args(other, "1");
    timed.extend(["--time-limit".into(), PASSED.into()]);
    let (rank0, rank1) = spawn_ranks(&r.args(out, "1"), &timed, &[]);
    let (o1, o0) = (
        rank1.wait_with_output().unwrap(),
        rank0.wait_with_output().unwrap(),
    );
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(o1.status.success(), "rank 1: {}", text(&o1.stderr));
    assert!(o0.status.success(), "rank 0: {}", text(&o0.stderr));
    // The ranks agree every 10 steps.
    let (step, _) = checkpoint::list(out).unwrap().pop().expect("a checkpoint");
    assert_eq!(step, 10);
    let log0 = text(&o0.stderr);
    let why = format!("step {step}: another process of the run reached its time limit");
    assert!(log0.contains(&why), "no {why:?} in: {log0}");
    let said = format!("stopped at step {step}, in epoch 1 of 3 at another process's time limit");
    assert!(text(&o0.stdout).contains(&said), "{}", text(&o0.stdout));
    run_ok(&parallel_args(resume_args(out), "data", "2"));
    assert_same_weights(whole, out);
}

/// SIGTERM while rank 0 waits for a rank that never comes (a scheduler
/// cancelling a job whose other process did not start): rank 0 stops at
/// once with status 143, saying it trained nothing, instead of waiting out
/// the 120 s it gives a missing rank.
#[test]
fn a_signal_during_the_rendezvous_stops_rank_0_at_once() {
    let t = tempfile::tempdir().unwrap();
    let d = data(t.path());
    let out = t.path().join("run");
    let log = t.path().join("rank0.log");
    let master = master_listener();
    let mut rank0 = rank_cmd(
        &parallel_args(train_args(&d, &out, 1), "data", "1"),
        "0",
        &master,
    )
    .env("RUST_LOG", "info")
    .stdout(Stdio::piped())
    .stderr(std::fs::File::create(&log).expect("the log file"))
    .spawn()
    .expect("start rank 0");
    let waiting = || std::fs::read_to_string(&log).is_ok_and(|l| l.contains("rank 0: waiting at"));
    while !waiting() {
        let ended = rank0.try_wait().expect("rank 0's status");
        assert!(ended.is_none(), "rank 0 ended before waiting: {ended:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let signalled = std::time::Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &rank0.id().to_string()])
        .status()
        .unwrap()
        .success());
    let o = rank0.wait_with_output().expect("rank 0 ends");
    let waited = signalled.elapsed();
    let (stdout, log) = (
        String::from_utf8_lossy(&o.stdout),
        std::fs::read_to_string(&log).unwrap(),
    );
    assert_eq!(o.status.code(), Some(143), "{stdout}\n{log}");
    assert!(waited < Duration::from_secs(60), "stopped after {waited:?}");
    assert!(
        stdout.contains("stopped at a signal while rank 0 waited at 127.0.0.1")
            && stdout.contains("for ranks [1]: nothing was trained"),
        "{stdout}"
    );
    assert!(!log.contains("error"), "a stop is not an error: {log}");
    assert!(checkpoint::list(&out).unwrap().is_empty());
}

/// A run folder copied whole (the checkpoints, metrics and lock file).
fn copy_run(from: &Path, to: &Path) {
    let ok = Command::new("cp")
        .arg("-r")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -r {} {}", from.display(), to.display());
}

/// The lr column of steps.csv, by step.
fn lrs(out: &Path) -> Vec<(u64, f32)> {
    let text = std::fs::read_to_string(out.join("steps.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = header
        .iter()
        .position(|h| *h == "lr")
        .expect("an lr column");
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].parse().unwrap(), f[col].parse().unwrap())
        })
        .collect()
}

/// `--resume RUN --lr X` continues the run at rate X from its checkpoint
/// on: given the rate the run had reached, it is the plain resume, bit for
/// bit; given another, every later step runs at it and the earlier ones
/// are untouched.
#[test]
fn resume_with_lr_sets_the_rate_from_there_on() {
    let t = tempfile::tempdir().unwrap();
    let d = data(t.path());
    let first = t.path().join("first");
    run_ok(&train_args(&d, &first, 1));
    let reached = checkpoint::load_latest(&first).unwrap().state.progress.lr;
    let (same, plain, lower) = (
        t.path().join("same"),
        t.path().join("plain"),
        t.path().join("lower"),
    );
    for to in [&same, &plain, &lower] {
        copy_run(&first, to);
    }
    let resume = |out: &Path, lr: Option<String>| {
        let mut a = resume_args(out);
        a.extend(["--epochs".into(), EPOCHS.to_string()]);
        a.extend(lr.into_iter().flat_map(|v| ["--lr".to_string(), v]));
        run(&a)
    };
    for (out, lr) in [(&same, Some(reached.to_string())), (&plain, None)] {
        let o = resume(out, lr);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_same_run(&same, &plain);

    let mut a = resume_args(&lower);
    a.extend(["--epochs", &EPOCHS.to_string(), "--lr", "0.00125"].map(String::from));
    let o = run_logging(&a, "info");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    // The log says where it goes on (after the epoch the checkpoint ended)
    // and trains at the rate given, not the run's first.
    let steps = STEPS / EPOCHS;
    assert!(
        err.contains(&format!("after epoch 1, step {steps}, lr")),
        "{err}"
    );
    assert!(err.contains("lr 0.00125, "), "{err}");
    let (got, want) = (lrs(&lower), lrs(&plain));
    assert_eq!(got.len(), STEPS);
    for ((step, lr), (_, before)) in got.iter().zip(&want) {
        match *step as usize <= STEPS / EPOCHS {
            true => assert_eq!(lr, before, "step {step} was trained before the resume"),
            false => assert_eq!(*lr, 0.00125, "step {step}"),
        }
    }
    let differs = tensors(&final_ckpt(&lower)) != tensors(&final_ckpt(&plain));
    assert!(differs, "another rate trained the same weights");
}

/// `--resume RUN --lr X` from a checkpoint that ended the epoch before a
/// milestone trains that epoch at X itself: the rate given is the one the
/// epoch trains at, as from a checkpoint inside it (whose milestone has
/// applied). So from one written before the epoch's validation (a stop
/// there), whose next epoch is the first to train. The later milestones
/// divide X by 10; a plain resume of the same checkpoint still takes the
/// milestone's tenth of the run's rate.
#[test]
fn resume_with_lr_before_a_milestone_trains_at_the_rate_given() {
    let t = tempfile::tempdir().unwrap();
    let d = data(t.path());
    let first = t.path().join("first");
    let mut a = train_args(&d, &first, 1);
    a.extend(["--lr", "0.02", "--lr-milestones", "2,3"].map(String::from));
    run_ok(&a);
    let (hand, plain, pending) = (
        t.path().join("hand"),
        t.path().join("plain"),
        t.path().join("pending"),
    );
    for to in [&hand, &plain, &pending] {
        copy_run(&first, to);
    }
    back_before_validation(&pending, |_| {});
    let per_epoch = STEPS / EPOCHS;
    let mut a = resume_args(&plain);
    a.extend(["--epochs", "2"].map(String::from));
    run_ok(&a);
    for (step, lr) in lrs(&plain).into_iter().skip(per_epoch) {
        assert!(
            (lr - 0.002).abs() <= 1e-6 * 0.002,
            "step {step}: {lr}, want 0.02 / 10"
        );
    }

    // `pending` stopped by a limit passed already, once it has validated
    // epoch 1 (at the same step): the command it gives to go on keeps
    // --lr, so that epoch 2's milestone still leaves the rate be.
    let mut a = resume_args(&pending);
    a.extend(["--epochs", "3", "--lr", "0.005", "--time-limit", PASSED].map(String::from));
    let o = run(&a);
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{said}");
    let go_on = said
        .lines()
        .find(|l| l.contains("continue with"))
        .unwrap_or("");
    assert!(go_on.contains(" --lr 0.005"), "{said}");
    assert_eq!(lrs(&pending).len(), per_epoch, "{said}");
    for out in [&hand, &pending] {
        let mut a = resume_args(out);
        a.extend(["--epochs", "3", "--lr", "0.005"].map(String::from));
        let o = run_logging(&a, "info");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        assert!(err.contains("the milestone at epoch 3 divides it"), "{err}");
        let got = lrs(out);
        assert_eq!(got.len(), STEPS);
        for (step, lr) in got.into_iter().skip(per_epoch) {
            let want = match step as usize <= 2 * per_epoch {
                true => 0.005,
                false => 0.0005,
            };
            let run = out.display();
            assert!(
                (lr - want).abs() <= 1e-6 * want,
                "{run}: step {step}: {lr}, want {want}"
            );
        }
    }
}

/// `--resume --lr X` from a checkpoint written before an epoch's
/// validation (its steps all done): that epoch is recorded at the rate it
/// trained at, and its error does not spend X's patience. Here it cannot
/// improve (the best error so far is set to 0), so with --patience 1 a
/// drop counted against X would train the next epoch at X / 10; it trains
/// at X. With only the last epoch's validation left, no step would train
/// at X: --lr is refused, asking for more epochs.
#[test]
fn resume_with_lr_before_a_validation_records_that_epoch_at_its_own_rate() {
    let t = tempfile::tempdir().unwrap();
    let d = data(t.path());
    let out = t.path().join("run");
    let mut a = train_args(&d, &out, 1);
    a.extend(["--lr", "0.02", "--patience", "1"].map(String::from));
    run_ok(&a);
    back_before_validation(&out, |p| p.best_err = Some(0.0));

    let mut a = resume_args(&out);
    a.extend(["--lr", "0.005"].map(String::from));
    let o = run(&a);
    let err = String::from_utf8_lossy(&o.stderr);
    let want = "has trained every step of its 1 epochs (only the last one's validation is left), so no step would train at it; add --epochs 2";
    assert!(!o.status.success() && err.contains(want), "{err}");
    a.extend(["--epochs", "2"].map(String::from));
    run_ok(&a);
    let epochs = std::fs::read_to_string(out.join("epochs.csv")).unwrap();
    let mut rows = epochs.lines().map(|l| l.split(',').collect::<Vec<_>>());
    let header = rows.next().unwrap();
    let col = header
        .iter()
        .position(|h| *h == "lr")
        .expect("an lr column");
    let first: f32 = rows.next().unwrap()[col].parse().unwrap();
    assert_eq!(first, 0.02, "epoch 1 trained at 0.02: {epochs}");
    let per_epoch = STEPS / EPOCHS;
    let got = lrs(&out);
    assert_eq!(got.len(), 2 * per_epoch);
    for (step, lr) in got.into_iter().skip(per_epoch) {
        assert!((lr - 0.005).abs() <= 1e-6 * 0.005, "step {step}: {lr}");
    }
}

/// `out`'s newest checkpoint, of a run's first epoch, as if written before
/// its validation (a stop there: its steps done, no row in the history, no
/// best error nor best.safetensors yet), its progress then changed by `edit`.
fn back_before_validation(out: &Path, edit: impl FnOnce(&mut Progress)) {
    let mut ck = checkpoint::load_latest(out).unwrap();
    ck.state.history.pop().expect("the epoch's row");
    assert!(ck.state.history.is_empty(), "not the first epoch");
    let p = &mut ck.state.progress;
    (p.epoch_done, p.best_err) = (false, None);
    edit(p);
    let tensors: Vec<_> = ck.tensors.values().cloned().collect();
    checkpoint::save(&ck.path, &ck.state, &tensors).unwrap();
    std::fs::remove_file(out.join("best.safetensors")).unwrap();
}

/// `--warmup E`: step s of the first W = E x 20 steps (steps.csv counts
/// from 1) trains at lr x s / W, composed with the schedule (a milestone
/// inside the warm-up divides the ramp by 10), logged as the f32 it
/// trained at; SGD uses that rate (one step at 0.01 with W = 4 leaves the
/// weights of one step at 0.0025, a power of two apart, so exactly); and
/// a run stopped within the warm-up resumes to the run through, bit for
/// bit, and a resume that would end it within the warm-up is refused.
#[test]
fn a_warm_up_ramps_the_rate_linearly_and_resumes_exactly() {
    let t = tempfile::tempdir().unwrap();
    let d = data(t.path());
    let with = |out: &Path, extra: &[&str]| {
        let mut a = train_args(&d, out, EPOCHS);
        a.extend(extra.iter().map(|f| f.to_string()));
        a
    };
    // W = 55 steps, past epoch 3's milestone at step 41; lr x s / 55 has
    // more digits than a short format keeps.
    let ramp = ["--lr", "0.02", "--lr-milestones", "3", "--warmup", "2.75"];
    let whole = t.path().join("whole");
    run_ok(&with(&whole, &ramp));
    let got = lrs(&whole);
    assert_eq!(got.len(), STEPS);
    // Within an f32's rounding of the formula; one step off the ramp is 2%.
    for (step, lr) in got {
        let base = if step > 40 { 0.002 } else { 0.02 };
        let want = base * (step as f64 / 55.0).min(1.0);
        let err = (lr as f64 - want).abs() / want;
        assert!(err < 1e-6, "step {step}: lr {lr}, want {want}");
        // Past the ramp, the milestone's tenth of 0.02 is the f32 of 0.002.
        if step >= 55 {
            assert_eq!(lr, 0.002f32, "step {step}");
        }
    }

    let timed = t.path().join("timed");
    let o = run(&with(
        &timed,
        &[&ramp[..], &["--time-limit", PASSED]].concat(),
    ));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        steps_logged(&timed),
        1,
        "the time limit did not stop at step 1"
    );
    // Ended within its warm-up by a resume's --epochs, the run would never
    // reach its rate: refused, nothing trained.
    let mut short = resume_args(&timed);
    short.extend(["--epochs".into(), "2".into()]);
    let o = run(&short);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("warms up over 2.75 epochs") && err.contains("pass --epochs above 2.75"),
        "{err}"
    );
    assert_eq!(steps_logged(&timed), 1);
    run_ok(&resume_args(&timed));
    assert_same_run(&whole, &timed);

    let one_step = |name: &str, extra: &[&str]| {
        let out = t.path().join(name);
        run_ok(&with(&out, &[extra, &["--time-limit", PASSED]].concat()));
        tensors(&out.join(checkpoint::checkpoint_name(1)))
    };
    let warm = one_step("warm", &["--lr", "0.01", "--warmup", "0.2"]);
    assert!(
        warm == one_step("quarter", &["--lr", "0.0025"]),
        "step 1 did not train at lr / 4"
    );
    assert!(
        warm != one_step("full", &["--lr", "0.01"]),
        "the rate made no difference"
    );
}

/// `resume_args` with a checkpoint after every step, and `extra`.
fn resume_every_step(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = resume_args(out);
    let every = a.iter().position(|f| f == "--checkpoint-every").unwrap();
    a[every + 1] = "1".into();
    a.extend(extra.iter().map(|f| f.to_string()));
    a
}

/// Every f32 of a safetensors file is a finite number.
fn all_finite(path: &Path) -> bool {
    tensors(path).iter().all(|(_, bytes)| {
        bytes
            .chunks_exact(4)
            .all(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite())
    })
}

/// A run that diverges (here resumed at a rate of 1.25e30) stops with an
/// error that names the step and the way back: its newest checkpoint,
/// from before, and the resume at a tenth of the rate, written as it
/// reads back (1.25e29, not 1.2e29). No checkpoint of
/// the run holds a value that is not a finite number.
#[test]
fn a_diverging_run_stops_without_a_checkpoint_of_it_and_says_where_to_go_back() {
    let t = tempfile::tempdir().unwrap();
    let d = data(t.path());
    let out = t.path().join("run");
    run_ok(&train_args(&d, &out, 1));
    let a = resume_every_step(&out, &["--epochs", "2", "--lr", "1.25e30"]);
    let o = run(&a);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a rate of 1.25e30 trained on: {err}");
    let newest = checkpoint::list(&out)
        .unwrap()
        .pop()
        .expect("a checkpoint")
        .1;
    for want in [
        "the run diverged".to_string(),
        format!("the newest checkpoint, {}", newest.display()),
        // The newest, step 21, holds the resume's --epochs; the best, the
        // one resumed, does not: without it, the run would be over.
        format!(
            "alexnet-cuda train --resume {} --cpu --lr 1.25e29",
            out.display()
        ),
        format!(
            "alexnet-cuda train --resume {} --cpu --epochs 2 --lr 1.25e29",
            out.join("best.safetensors").display()
        ),
    ] {
        assert!(err.contains(&want), "{want}: {err}");
    }
    let kept = checkpoint::list(&out).unwrap();
    assert!(!kept.is_empty());
    for (_, p) in &kept {
        assert!(all_finite(p), "{} holds a non-finite value", p.display());
    }
    assert!(all_finite(&out.join("best.safetensors")));
    // Resumed again without --epochs, the run goes on to the 2 its newest
    // checkpoint holds; the best, from before they were given, does not
    // hold them, so its way back gives them again.
    let o = run(&resume_every_step(&out, &["--lr", "1.25e30"]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a rate of 1.25e30 trained on: {err}");
    let want = format!(
        "alexnet-cuda train --resume {} --cpu --epochs 2 --lr 1.25e29",
        out.join("best.safetensors").display()
    );
    assert!(err.contains(&want), "{want}: {err}");
}

/// Weights gone NaN stop the run at the step whose loss they make NaN,
/// not at the next checkpoint, whose check of the weights was until then
/// the only one to see them: ReLU and max pooling pass a NaN on (as in
/// PyTorch) where max(x, 0) made it 0 and the losses stayed finite.
#[test]
fn nan_weights_stop_the_run_at_the_step_not_the_checkpoint() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("run");
    let mut a = train_args(&data(t.path()), &out, 1);
    checkpoint_every(&mut a, "1000");
    a.extend(["--lr", "1e3"].map(String::from));
    let o = run(&a);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a rate of 1e3 trained on: {err}");
    assert!(err.contains("the loss is NaN: the run diverged"), "{err}");
    // 500 training images in steps of 25: the epoch's end is step 20.
    let logged = steps_logged(&out);
    assert!(logged < 19, "{logged} steps logged before the stop: {err}");
    assert!(checkpoint::list(&out).unwrap().is_empty());
}

/// A run of `EPOCHS` epochs on `data` in `dir/run`, every checkpoint kept.
fn run_keeping_every_checkpoint(dir: &Path) -> PathBuf {
    let out = dir.join("run");
    let mut a = train_args(&data(dir), &out, EPOCHS);
    a.extend(["--keep", "100"].map(String::from));
    run_ok(&a);
    out
}

/// Resumed from a checkpoint older than its folder's newest, a run goes
/// on from there at another rate: the later checkpoints, of the history it
/// replaces, are moved aside, so pruning keeps this run's and `--resume
/// RUN` finds its newest, not a stale one, and the metrics files are
/// copied there whole. The same when the checkpoint is
/// named bare from inside its run folder, whose path is then "" (every
/// scan of it found nothing: no set-aside, no pruning).
#[test]
fn resuming_from_an_older_checkpoint_sets_the_later_ones_aside() {
    for bare in [false, true] {
        let t = tempfile::tempdir().unwrap();
        let out = run_keeping_every_checkpoint(t.path());
        let before: Vec<u64> = checkpoint::list(&out)
            .unwrap()
            .iter()
            .map(|c| c.0)
            .collect();
        let at = (STEPS / EPOCHS) as u64;
        let name = checkpoint::checkpoint_name(at);
        let from = if bare {
            PathBuf::from(&name)
        } else {
            out.join(&name)
        };
        let rows = |d: &Path, f: &str| std::fs::read_to_string(d.join(f)).unwrap();
        let (steps, epochs) = (rows(&out, "steps.csv"), rows(&out, "epochs.csv"));
        let mut r = resume_args(&from);
        r.extend(["--epochs", "2", "--lr", "0.00125", "--keep", "3"].map(String::from));
        let o = Command::new(BIN)
            .args(&r)
            .current_dir(&out)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run alexnet-cuda");
        let (err, said) = (
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&o.stdout),
        );
        assert!(o.status.success(), "bare {bare}: {err}");
        assert!(err.contains("moved the"), "bare {bare}: {err}");
        let now = checkpoint::list(&out).unwrap();
        assert_eq!(now.last().map(|c| c.0), Some(2 * at), "{now:?}");
        assert_eq!(now.len(), 3, "--keep 3, bare {bare}: {now:?}");
        for (step, p) in &now {
            let lr = checkpoint::load(p).unwrap().state.progress.lr;
            assert_eq!(lr, 0.00125, "ckpt {step} is not of the resumed run");
        }
        let aside = out.join(format!("replaced-after-step-{at}"));
        let moved: Vec<u64> = checkpoint::list(&aside)
            .unwrap()
            .iter()
            .map(|c| c.0)
            .collect();
        let later: Vec<u64> = before.into_iter().filter(|s| *s > at).collect();
        assert_eq!(moved, later, "bare {bare}");
        // The replaced history's metrics, whole, beside its checkpoints.
        assert_eq!(steps.lines().count(), STEPS + 1);
        assert_eq!(rows(&aside, "steps.csv"), steps, "bare {bare}");
        assert_eq!(rows(&aside, "epochs.csv"), epochs, "bare {bare}");
        // The closing lines name the folder as a command can take it.
        assert!(!said.contains("''"), "bare {bare}: {said}");
    }
}

/// The set-aside copies the metrics before it moves a checkpoint: when the
/// copy fails (here past a 1 KiB file-size limit, SIGXFSZ ignored, as a
/// full disk would), every later checkpoint is still in the run folder and
/// no half-filled aside folder is left, so the same resume, run again once
/// there is room, sets the whole history aside.
#[test]
fn a_set_aside_that_cannot_copy_the_metrics_moves_nothing() {
    let t = tempfile::tempdir().unwrap();
    let out = run_keeping_every_checkpoint(t.path());
    let before = checkpoint::list(&out).unwrap();
    let at = (STEPS / EPOCHS) as u64;
    let from = out.join(checkpoint::checkpoint_name(at));
    let mut r = resume_args(&from);
    r.extend(["--epochs", "2", "--lr", "0.00125"].map(String::from));
    let o = Command::new("bash")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 1; exec \"$0\" \"$@\"")
        .arg(BIN)
        .args(&r)
        .output()
        .expect("run alexnet-cuda under bash");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "the copy past 1 KiB succeeded: {err}");
    assert!(
        err.contains("steps.csv")
            && err.contains("nothing was moved; raise the file-size limit and resume again"),
        "{err}"
    );
    assert_eq!(checkpoint::list(&out).unwrap(), before);
    let aside = out.join(format!("replaced-after-step-{at}"));
    assert!(!aside.exists(), "a half-filled aside folder is left");
    let steps = std::fs::read_to_string(out.join("steps.csv")).unwrap();
    run_ok(&r);
    assert_eq!(
        std::fs::read_to_string(aside.join("steps.csv")).unwrap(),
        steps
    );
}

/// Resumed from a checkpoint older than the folder's best, the best moves
/// aside with the history it belongs to, and the best epoch up to the
/// resume is marked best again: a run that then never beats it (here one
/// that diverges at once, as the divergence error's advice can lead to)
/// still has a best.safetensors, of its own history. It used to have none.
#[test]
fn resuming_before_the_best_marks_the_best_up_to_there_again() {
    let t = tempfile::tempdir().unwrap();
    let out = run_keeping_every_checkpoint(t.path());
    let at = (STEPS / EPOCHS) as u64;
    let (best, from) = (
        out.join("best.safetensors"),
        out.join(checkpoint::checkpoint_name(at)),
    );
    assert!(
        checkpoint::step_of(&best).is_some_and(|s| s > at),
        "the best is after epoch 1"
    );
    let err = diverged(resume_args(&from), "2");
    assert_eq!(checkpoint::step_of(&best), Some(at), "{err}");
    let weights = |p: &Path| checkpoint::load(p).unwrap().weights_crc32();
    assert_eq!(weights(&best), weights(&from));
}

/// A kill between writing a new best epoch's checkpoint and marking it
/// best leaves an older best marked (here epoch 1's, or none where epoch
/// 1 was the best). The resume marks the best of its history again; the
/// stale one used to stay until a later epoch beat the true best.
#[test]
fn a_resume_marks_the_best_again_where_a_kill_left_an_older_one() {
    let t = tempfile::tempdir().unwrap();
    let out = run_keeping_every_checkpoint(t.path());
    let best = out.join("best.safetensors");
    let weights = |p: &Path| checkpoint::load(p).unwrap().weights_crc32();
    let (b, want) = (checkpoint::step_of(&best).unwrap(), weights(&best));
    let first = (STEPS / EPOCHS) as u64;
    std::fs::remove_file(&best).unwrap();
    if b != first {
        std::fs::hard_link(out.join(checkpoint::checkpoint_name(first)), &best).unwrap();
    }
    // A rate that diverges at once: no later epoch can become the best.
    let err = diverged(resume_args(&out), "4");
    assert_eq!(checkpoint::step_of(&best), Some(b), "{err}");
    assert_eq!(weights(&best), want);
}

/// Run the resume `args` up to `epochs` at a rate that diverges at once;
/// the error it stops with, which must say so.
fn diverged(mut args: Vec<String>, epochs: &str) -> String {
    args.extend(["--epochs", epochs, "--lr", "1e30"].map(String::from));
    let o = run(&args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success() && err.contains("diverged"), "{err}");
    err
}

/// The checkpoint a `--resume ARG` an error suggests would load, and ARG.
fn suggested_resume(err: &str) -> (u64, String) {
    let from = err.find("train --resume ").expect("a --resume to run") + 15;
    let arg: String = err[from..]
        .chars()
        .take_while(|c| *c != ' ' && *c != '`')
        .collect();
    let ck = checkpoint::load_latest(Path::new(&arg)).unwrap_or_else(|e| panic!("{arg}: {e}"));
    (ck.state.progress.step, arg)
}

/// A run resumed from `best.safetensors`, whose own checkpoint `--keep`
/// pruned (the later ones set aside by the resume), goes back to it when
/// it diverges or a write fails: the `--resume` the error suggests loads
/// the best's step. It used to name the run folder, whose newest
/// checkpoint was from before the best. A fresh run whose first write
/// fails says to run it again, as `--resume` finds nothing there.
#[test]
fn the_way_back_after_a_resume_from_the_best_leads_to_the_best() {
    let t = tempfile::tempdir().unwrap();
    let out = run_keeping_every_checkpoint(t.path());
    let best = out.join("best.safetensors");
    let b = checkpoint::step_of(&best).unwrap();
    std::fs::remove_file(out.join(checkpoint::checkpoint_name(b))).unwrap();
    let err = diverged(resume_args(&best), "4");
    assert_eq!(suggested_resume(&err).0, b, "{err}");
    assert_eq!(err.matches("--resume").count(), 1, "one way back: {err}");

    let size = std::fs::metadata(&best).unwrap().len();
    let limited = |args: &[String]| {
        Command::new("bash")
            .arg("-c")
            .arg(format!(
                "trap '' XFSZ; ulimit -f {}; exec \"$0\" \"$@\"",
                size / 2048
            ))
            .arg(BIN)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let r = resume_every_step(&best, &["--epochs", "4"]);
    let o = limited(&r);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("could not write checkpoint"), "{err}");
    assert_eq!(suggested_resume(&err).0, b, "{err}");

    let fresh = train_args(&t.path().join("data"), &t.path().join("fresh"), 1);
    let err = String::from_utf8_lossy(&limited(&fresh).stderr).into_owned();
    assert!(err.contains("run the same command again"), "{err}");
    run_ok(&fresh);
}

/// A run that diverges right after its best epoch, whose checkpoint
/// `best.safetensors` links, is offered that checkpoint once, as the
/// newest: it used to be offered again under the best's name (a hard
/// link is another path to the same file).
#[test]
fn a_divergence_right_after_the_best_epoch_offers_one_way_back() {
    let t = tempfile::tempdir().unwrap();
    let d = data(t.path());
    let out = t.path().join("run");
    run_ok(&train_args(&d, &out, 1));
    let best = checkpoint::step_of(&out.join("best.safetensors")).unwrap();
    // No checkpoint between the resume and the divergence.
    let r: Vec<String> = resume_args(&out)
        .into_iter()
        .map(|a| if a == "7" { "0".into() } else { a })
        .collect();
    let err = diverged(r, "2");
    assert_eq!(err.matches("--resume").count(), 1, "one way back: {err}");
    assert_eq!(suggested_resume(&err).0, best, "{err}");
}

/// `ck`'s tensors with a NaN in the first value of `name`, saved to `to`.
fn with_nan(ck: &checkpoint::Checkpoint, name: &str, to: &Path) {
    let mut tensors: Vec<_> = ck.tensors.values().cloned().collect();
    let t = tensors.iter_mut().find(|t| t.name == name).expect(name);
    t.data[0] = f32::NAN;
    checkpoint::save(to, &ck.state, &tensors).unwrap();
}

/// A NaN the loss does not show (here put in conv5's momentum: the next
/// update carries it into conv5's weights, and ReLU passes 0 for it, so
/// the loss stays finite) is never checkpointed: the first save after it
/// refuses, naming the tensor. Weights holding a NaN are refused as a
/// starting point.
#[test]
fn a_nan_weight_the_loss_does_not_show_is_never_checkpointed() {
    let t = tempfile::tempdir().unwrap();
    let d = data(t.path());
    let out = t.path().join("run");
    run_ok(&train_args(&d, &out, 1));
    let ck = checkpoint::load_latest(&out).unwrap();
    with_nan(
        &ck,
        &format!("{}conv5.weight", checkpoint::MOMENTUM),
        &ck.path,
    );
    let a = resume_every_step(&out, &["--epochs", "2"]);
    let o = run(&a);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "trained on with a NaN weight: {err}");
    let step = ck.state.progress.step + 1;
    let want = format!("step {step}: conv5.weight holds values that are not finite numbers");
    assert!(err.contains(&want), "{want}: {err}");
    let newest = checkpoint::list(&out).unwrap().pop().unwrap();
    assert_eq!(newest.1, ck.path, "a checkpoint was written after the NaN");

    let nan = t.path().join("nan.safetensors");
    with_nan(&ck, "conv5.weight", &nan);
    let mut a = train_args(&d, &t.path().join("from-nan"), 1);
    a.extend(["--init-from".into(), nan.display().to_string()]);
    let o = run(&a);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "started from a NaN weight: {err}");
    let want = format!(
        "{}: conv5.weight holds 1 values that are not finite numbers",
        nan.display()
    );
    assert!(err.contains(&want), "{want}: {err}");
}

/// A run state edited (and its checksum summed again) so that it no longer
/// fits the network is refused at load, naming the file and the misfit:
/// read as it is, predict would list nothing for 11 classes of 10 outputs,
/// a padding of 100000 would allocate 120 GB, and so would images of
/// 100000 a side.
#[test]
fn a_run_state_that_does_not_fit_its_network_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("run");
    run_ok(&train_args(&data(t.path()), &out, 1));
    let ck = checkpoint::load_latest(&out).unwrap();
    let tensors: Vec<_> = ck.tensors.values().cloned().collect();
    let path = t.path().join("edited.safetensors");
    let n = ck.state.classes.len();
    type Edit = fn(&mut alexnet_cuda::checkpoint::RunState);
    let cases: [(Edit, String); 8] = [
        (
            |s| s.classes.push("extra".into()),
            format!("{} classes for the {n} outputs", n + 1),
        ),
        (
            |s| s.names = vec!["a".into()],
            format!("1 class names for {n} classes"),
        ),
        (
            |s| s.preprocess.pad = 100_000,
            "crops of 28 padded by 100000 for a network input of 28".into(),
        ),
        (
            |s| s.preprocess.mean_image = true,
            "the mean image subtracted in training, but no data.mean_image".into(),
        ),
        // Images larger than any decoded (eval would allocate 120 GB for
        // a batch), or smaller than the crop cut from them.
        (
            |s| s.preprocess.image_size = 100_000,
            "images of 100000 a side, over the 20000 any is decoded to".into(),
        ),
        (
            |s| s.preprocess.image_size = 27,
            "crops of 28 from images of 27".into(),
        ),
        // An interval no clock counts would panic the resumed run's timer.
        (
            |s| s.saving.checkpoint_minutes = Some(1e300),
            "a checkpoint every 1e300 minutes".into(),
        ),
        (
            |s| s.saving.checkpoint_minutes = Some(-5.0),
            "a checkpoint every -5 minutes".into(),
        ),
    ];
    for (edit, why) in cases {
        let mut state = ck.state.clone();
        edit(&mut state);
        let bare: Vec<_> = tensors
            .iter()
            .filter(|t| t.name != checkpoint::MEAN_IMAGE)
            .cloned()
            .collect();
        checkpoint::save(&path, &state, &bare).unwrap();
        let e = checkpoint::load(&path).unwrap_err().to_string();
        let want = format!(
            "{}: the run state does not fit the network ({why}",
            path.display()
        );
        assert!(e.contains(&want), "{want}\n{e}");
        assert!(e.contains("use another checkpoint"), "{e}");
    }
    // The other way round: a mean image the state says was not subtracted
    // (eval would subtract it; export --pixels the channel means).
    assert!(
        !ck.state.preprocess.mean_image,
        "the run subtracted channel means"
    );
    let size = ck.state.preprocess.image_size;
    let mut with_mean = tensors.clone();
    with_mean.push(alexnet_cuda::export::Tensor {
        name: checkpoint::MEAN_IMAGE.into(),
        shape: vec![size, size, 3],
        data: vec![100.0; size * size * 3],
    });
    checkpoint::save(&path, &ck.state, &with_mean).unwrap();
    let e = checkpoint::load(&path).unwrap_err().to_string();
    let want = "(a data.mean_image, but channel means subtracted in training";
    assert!(e.contains(want), "{want}\n{e}");
    // The untouched state, saved the same way, loads.
    checkpoint::save(&path, &ck.state, &tensors).unwrap();
    checkpoint::load(&path).unwrap();
}

/// The run state's numbers come back from a checkpoint bit for bit: error
/// rates 1 - hits/N (the schedule compares them exactly, and the best is
/// found again by them) and sums of losses. JSON's shortest decimal of an
/// f64 read back with one rounding too many is off by one unit about one
/// time in seven, which moved the plateau schedule after a resume.
#[test]
fn the_run_states_numbers_survive_a_checkpoint_exactly() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("run");
    run_ok(&train_args(&data(t.path()), &out, 1));
    let mut ck = checkpoint::load_latest(&out).unwrap();
    let row = ck.state.history[0].clone();
    let mut rng = alexnet_cuda::rng::Rng::new(3);
    let mut want = Vec::new();
    for h in (0..50_000u32).step_by(7) {
        let (err, loss) = (1.0 - h as f64 / 50_000.0, rng.uniform() * 1e4);
        want.push((err, loss));
        ck.state.history.push(alexnet_cuda::train::EpochStats {
            val_top1: 1.0 - err,
            val_loss: err,
            train_loss: loss,
            ..row.clone()
        });
    }
    ck.state.progress.best_err = Some(1.0 - 25_002.0 / 50_000.0);
    ck.state.progress.loss_sum = want[1].1;
    let tensors: Vec<_> = ck.tensors.values().cloned().collect();
    let path = t.path().join("copy.safetensors");
    checkpoint::save(&path, &ck.state, &tensors).unwrap();
    let back = checkpoint::load(&path).unwrap().state;
    let bits = |x: f64| x.to_bits();
    assert_eq!(
        back.progress.best_err.map(bits),
        ck.state.progress.best_err.map(bits)
    );
    assert_eq!(
        bits(back.progress.loss_sum),
        bits(ck.state.progress.loss_sum)
    );
    for (a, b) in back.history.iter().zip(&ck.state.history).skip(1) {
        assert_eq!(
            [a.val_top1, a.val_loss, a.train_loss].map(bits),
            [b.val_top1, b.val_loss, b.train_loss].map(bits),
            "{a:?} read back from {b:?}"
        );
    }
}

/// A network whose outputs overflow on the validation images (fc8 weights
/// of +-3e38: finite, so the checkpoint loads) stops at validation as a
/// divergence, writing nothing. Its NaN validation loss used to go into
/// the run state, which JSON writes as null: the run went on, and every
/// checkpoint after it failed to load. The checkpoint writer refuses such
/// a state as well, whatever put the NaN there.
#[test]
fn a_validation_loss_that_is_not_a_number_is_never_checkpointed() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("run");
    run_ok(&train_args(&data(t.path()), &out, 1));
    let mut ck = checkpoint::load_latest(&out).unwrap();
    // Back to before the epoch's validation: its steps done, not validated.
    ck.state.progress.epoch_done = false;
    let row = ck.state.history.pop().expect("the epoch's row");
    let mut tensors: Vec<_> = ck.tensors.values().cloned().collect();
    let fc8 = tensors.iter_mut().find(|t| t.name == "fc8.weight").unwrap();
    for (i, w) in fc8.data.iter_mut().enumerate() {
        *w = if i % 2 == 0 { 3e38 } else { -3e38 };
    }
    checkpoint::save(&ck.path, &ck.state, &tensors).unwrap();
    let before = checkpoint::list(&out).unwrap();
    let o = run(&resume_args(&out));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("the validation loss is NaN"), "{err}");
    assert_eq!(checkpoint::list(&out).unwrap(), before, "{err}");
    checkpoint::load_latest(&out).expect("the newest checkpoint loads");

    ck.state.history.push(alexnet_cuda::train::EpochStats {
        val_loss: f64::NAN,
        ..row
    });
    let path = t.path().join("nan.safetensors");
    let e = checkpoint::save(&path, &ck.state, &tensors).unwrap_err();
    assert!(
        e.to_string()
            .contains("a number in the run state is not finite"),
        "{e}"
    );
    assert!(!path.exists());
}
