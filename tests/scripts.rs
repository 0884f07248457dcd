//! The benchmark scripts' own arithmetic, run through bash, against the rule
//! each states. scripts/bench-paper divides the rate by 10 for the last 30%
//! and the last 10% of N epochs, counted in whole epochs rounded up; the
//! epochs that start at each lower rate must lie in 2..=N (epoch 1 would
//! skip the base rate, one past N never applies) and be listed once.
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
