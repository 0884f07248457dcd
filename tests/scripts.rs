//! The scripts' own logic, run as they run, against the rule each states.
//! scripts/bench-paper divides the rate by 10 for the last 30%
//! and the last 10% of N epochs, counted in whole epochs rounded up; the
//! epochs that start at each lower rate must lie in 2..=N (epoch 1 would
//! skip the base rate, one past N never applies) and be listed once.
//! scripts/check_cycles.py finds a cycle through a re-exported name.
//! A store named by a relative path is read from the folder the script is
//! run in, as the shell's own commands read it.
use std::process::Command;

/// `milestones N` for N in 1..=`most`, from the script's own function.
fn script_milestones(most: usize) -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench-paper");
    let text = std::fs::read_to_string(path).expect("scripts/bench-paper");
    let start = text
        .find("\nmilestones() {")
        .expect("the milestones function");
    let end = start + text[start..].find("\n}\n").expect("its end") + 3;
    let script = format!(
        "{}\nfor n in $(seq 1 {most}); do echo \"$(milestones $n)\"; done",
        &text[start..end]
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("text")
        .lines()
        .map(str::to_string)
        .collect()
}

/// The rule: the last ceil(N * tenths / 10) epochs at each lower rate.
fn expected(n: usize) -> String {
    let mut epochs: Vec<usize> = Vec::new();
    for tenths in [3, 1] {
        let at_lower = (n * tenths).div_ceil(10);
        let first = n + 1 - at_lower;
        if (2..=n).contains(&first) && !epochs.contains(&first) {
            epochs.push(first);
        }
    }
    let listed: Vec<String> = epochs.iter().map(usize::to_string).collect();
    listed.join(",")
}

#[test]
fn bench_paper_drops_the_rate_within_the_run() {
    let got = script_milestones(100);
    assert_eq!(got.len(), 100);
    for (i, m) in got.iter().enumerate() {
        assert_eq!(*m, expected(i + 1), "{} epochs", i + 1);
    }
    // The paper-length and default runs, written out.
    assert_eq!(got[9], "8,10");
    assert_eq!(got[29], "22,28");
}

/// Run scripts/check_cycles.py on a crate of `files` (path, text) under a
/// temporary src/; its exit status and output.
fn check_cycles(files: &[(&str, &str)]) -> (bool, String) {
    let t = tempfile::tempdir().expect("temp dir");
    for (path, text) in files {
        let p = t.path().join("src").join(path);
        std::fs::create_dir_all(p.parent().expect("a folder")).expect("folder");
        std::fs::write(&p, text).expect("write");
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/check_cycles.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(t.path().join("src"))
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (
        out.status.success(),
        text + &String::from_utf8_lossy(&out.stderr),
    )
}

/// data::feed uses train, which uses feed's item through data's re-export:
/// a cycle, whatever the re-exported name (one holding "as", such as
/// `Pass`, or an alias); without train's use there is none.
#[test]
fn check_cycles_follows_re_exports_and_aliases() {
    let crate_with = |reexport: &str, train: &str| {
        let data = format!("mod feed;\n{reexport}\n");
        check_cycles(&[
            ("lib.rs", "pub mod data;\npub mod train;\n"),
            ("data/mod.rs", &data),
            (
                "data/feed.rs",
                "use crate::train::Thing;\npub struct Pass;\n",
            ),
            ("train.rs", &format!("{train}\npub struct Thing;\n")),
        ])
    };
    for (reexport, train) in [
        ("pub use feed::Pass;", "use crate::data::Pass;"),
        ("pub use feed::Pass as Step;", "use crate::data::Step;"),
        (
            "pub use feed::{Pass as Step};",
            "fn f(_: crate::data::Step) {}",
        ),
    ] {
        let (ok, out) = crate_with(reexport, train);
        assert!(!ok, "{reexport} / {train}: {out}");
        assert!(
            out.contains("data::feed -> train") && out.contains("train -> data::feed"),
            "{reexport} / {train}: {out}"
        );
    }
    let (ok, out) = crate_with("pub use feed::Pass as Step;", "");
    assert!(ok && out.contains("no import cycles"), "{out}");
}

/// The scripts that move to the repository root print their help when
/// run as `./script` from scripts/: each read it from that relative path
/// after the move, where it names nothing.
#[test]
fn help_is_printed_when_run_from_the_scripts_folder() {
    let scripts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
    for script in [
        "bench-paper",
        "gpu-check",
        "bench-train",
        "bench-cpu",
        "bench-data",
    ] {
        let o = Command::new("bash")
            .args(["-c", &format!("./{script} --help")])
            .current_dir(&scripts)
            .output()
            .expect("run the script");
        let said = String::from_utf8_lossy(&o.stdout) + String::from_utf8_lossy(&o.stderr);
        assert!(
            said.contains(&format!("scripts/{script}: ")),
            "{script}: {said}"
        );
    }
}

/// bench-feed, recipe-probe, recipe-torch and train-torch run from another folder with
/// a relative STORE that is not there: the error names it under that
/// folder (it named it under the repository, where the store made by the
/// command it offered would not have been).
#[test]
fn a_relative_store_is_read_from_the_callers_folder() {
    let scripts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
    let here = tempfile::tempdir().unwrap();
    let want = format!("{}/st/train is missing", here.path().display());
    for script in ["bench-feed", "recipe-probe", "recipe-torch", "train-torch"] {
        let o = Command::new(scripts.join(script))
            .arg("st")
            .current_dir(here.path())
            .output()
            .expect("run the script");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(&want),
            "{script}: {err}"
        );
    }
}

/// An archive named by a relative path in the environment is read from
/// the caller's folder, as one given as an argument is: the error names it
/// there (the scripts read it from the repository, after moving there).
#[test]
fn a_relative_archive_in_the_environment_is_read_from_the_callers_folder() {
    let scripts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
    let here = tempfile::tempdir().unwrap();
    let want = format!("{}/rel/c.tar.gz not found", here.path().display());
    for script in ["bench-data", "make-fixtures"] {
        let o = Command::new(scripts.join(script))
            .env("ALEXNET_CIFAR_TAR", "rel/c.tar.gz")
            .current_dir(here.path())
            .output()
            .expect("run the script");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(&want),
            "{script}: {err}"
        );
    }
}

/// check-export, check-onnx and check-tensorboard empty their output
/// folder: one named relative to the caller's folder that holds someone's
/// files, or a file, is refused with exit 2 and left as it was
/// (check-export emptied `<repo>/<name>/<config>` for a relative name, and
/// took any word as a config; check-tensorboard deleted a file given as
/// its folder), before anything is built or installed.
#[test]
fn the_check_scripts_refuse_to_empty_what_they_did_not_write() {
    let scripts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
    let here = tempfile::tempdir().unwrap();
    let keep = here.path().join("keep");
    std::fs::create_dir_all(keep.join("cifar")).unwrap();
    std::fs::write(keep.join("cifar/run.txt"), "a user's file").unwrap();
    let abs = keep.display().to_string();
    let cases = [
        (
            "check-export",
            "CHECK_EXPORT_OUT",
            "keep",
            vec!["cifar"],
            "holds files this script did not write",
        ),
        (
            "check-export",
            "CHECK_EXPORT_OUT",
            "keep/cifar/run.txt",
            vec![],
            "is a file, not a folder",
        ),
        (
            "check-export",
            "CHECK_EXPORT_OUT",
            "fresh",
            vec!["../keep"],
            "no config named '../keep'",
        ),
        (
            "check-onnx",
            "CHECK_ONNX_OUT",
            "keep",
            vec![],
            "holds files this script did not write",
        ),
        (
            "check-onnx",
            "CHECK_ONNX_OUT",
            "keep/cifar/run.txt",
            vec![],
            "is a file, not a folder",
        ),
        (
            "check-tensorboard",
            "CHECK_TENSORBOARD_OUT",
            "keep",
            vec![],
            "holds files this script did not write",
        ),
        (
            "check-tensorboard",
            "CHECK_TENSORBOARD_OUT",
            "keep/cifar/run.txt",
            vec![],
            "is a file, not a folder",
        ),
    ];
    for (script, var, out, args, want) in cases {
        let o = Command::new(scripts.join(script))
            .args(&args)
            .env(var, out)
            .current_dir(here.path())
            .output()
            .expect("run the script");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{script} {out}: {err}");
        assert!(err.contains(want), "{script} {out}: {err}");
        if want.contains("did not write") {
            assert!(err.contains(&abs), "{script} names {abs}: {err}");
        }
        let kept = std::fs::read_to_string(keep.join("cifar/run.txt"));
        assert_eq!(
            kept.ok().as_deref(),
            Some("a user's file"),
            "{script} {out}"
        );
        assert!(!here.path().join("fresh").exists(), "{script} {out}");
    }
}

/// scripts/prepare-imagenette on an archive that is a plain tar (not
/// gzipped) with the class names inside it, beside train/ under one top
/// folder: both read. It ran `tar xzf`, which refuses a plain tar, and
/// read the names only from beside the archive.
#[test]
fn prepare_imagenette_reads_a_plain_tar_with_its_names_inside() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixture = root.join("tests/fixtures/imagenette");
    let t = tempfile::tempdir().unwrap();
    let top = t.path().join("src/imagenette");
    std::fs::create_dir_all(&top).unwrap();
    let ok = Command::new("cp")
        .args(["-r", &format!("{}/train", fixture.display())])
        .arg(&top)
        .status()
        .unwrap();
    assert!(ok.success());
    std::fs::copy(
        fixture.join("imagenette-names.txt"),
        top.join("imagenette-names.txt"),
    )
    .unwrap();
    let tar = t.path().join("archive/imagenette.tar");
    std::fs::create_dir_all(tar.parent().unwrap()).unwrap();
    let ok = Command::new("tar")
        .arg("cf")
        .arg(&tar)
        .arg("-C")
        .arg(t.path().join("src"))
        .arg("imagenette")
        .status()
        .unwrap();
    assert!(ok.success());
    let out = t.path().join("store");
    let o = Command::new(root.join("scripts/prepare-imagenette"))
        .arg(&out)
        .args(["--size", "40", "--no-progress"])
        .env("ALEXNET_IMAGENETTE_TAR", &tar)
        .env("ALEXNET_BIN", env!("CARGO_BIN_EXE_alexnet-cuda"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let meta = alexnet_cuda::data::packed::read_meta(&out.join("train")).unwrap();
    let names = std::fs::read_to_string(fixture.join("imagenette-names.txt")).unwrap();
    let tench = names.lines().next().unwrap().split_once(' ').unwrap();
    assert_eq!(meta.classes[0], tench.0);
    assert_eq!(meta.names[0], tench.1, "the names inside the archive");
    assert!(out.join("val").join("meta.json").exists(), "{err}");
    // The user's own --names replaces the archive's, not added beside it.
    let own = t.path().join("own-names.txt");
    let renamed = names.replacen(tench.1, "fish", 1);
    std::fs::write(&own, renamed).unwrap();
    let again = t.path().join("store2");
    let o = Command::new(root.join("scripts/prepare-imagenette"))
        .arg(&again)
        .args(["--size", "40", "--no-progress", "--names"])
        .arg(&own)
        .env("ALEXNET_IMAGENETTE_TAR", &tar)
        .env("ALEXNET_BIN", env!("CARGO_BIN_EXE_alexnet-cuda"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let meta = alexnet_cuda::data::packed::read_meta(&again.join("train")).unwrap();
    assert_eq!(meta.names[0], "fish");
}

/// gpu-check given an Imagenette archive that is not there stops, exit
/// 2, rather than train the end-to-end rows on the fixture's photos; its
/// --list goes on.
#[test]
fn gpu_check_refuses_a_named_archive_that_is_missing() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let here = tempfile::tempdir().unwrap();
    let o = Command::new(root.join("scripts/gpu-check"))
        .args(["--no-build", "--phase", "e2e"])
        .env("ALEXNET_IMAGENETTE_TAR", "typo.tar.gz")
        .env("GPU_CHECK_DIR", here.path().join("gc"))
        .current_dir(here.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    let said = format!(
        "ALEXNET_IMAGENETTE_TAR={}/typo.tar.gz is not a file",
        here.path().display()
    );
    assert!(o.status.code() == Some(2) && err.contains(&said), "{err}");
    assert!(!here.path().join("gc").exists());
    // Listing the phases reads no archive: not refused.
    let o = Command::new(root.join("scripts/gpu-check"))
        .arg("--list")
        .env("ALEXNET_IMAGENETTE_TAR", "typo.tar.gz")
        .current_dir(here.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
