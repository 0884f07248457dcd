//! `summary` and the topology table against numbers written out by hand from
//! the paper (section 3.5, figure 2), not computed by the code under test.
use alexnet_cuda::model::topology::Topology;
use std::process::Command;

fn summary(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_alexnet-cuda"))
        .arg("summary")
        .args(args)
        .output()
        .expect("run alexnet-cuda summary");
    assert!(
        out.status.success(),
        "summary failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Each stage's row must show this output (H x W x C, or the width of an fc layer).
fn assert_rows(text: &str, rows: &[(&str, &str)]) {
    for (stage, shape) in rows {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(stage))
            .unwrap_or_else(|| panic!("no row for {stage} in:\n{text}"));
        assert!(
            line.split_whitespace().any(|w| w == *shape),
            "{stage}: expected output {shape}, row is: {line}"
        );
    }
}

/// The stage's row must hold `cells` as consecutive words.
fn assert_cells(text: &str, stage: &str, cells: &[&str]) {
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(stage))
        .unwrap_or_else(|| panic!("no row for {stage} in:\n{text}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    assert!(
        words.windows(cells.len()).any(|w| w == cells),
        "{stage}: expected {cells:?} in a row, row is: {line}"
    );
}

#[test]
fn alexnet_summary_matches_the_paper() {
    let s = summary(&["--config", "alexnet"]);
    println!("{s}");
    assert!(s.contains("total parameters: 60,965,224"), "{s}");
    // Section 3.3's constants.
    assert!(s.contains("lrn: k=2, n=5, alpha=1e-4, beta=0.75 "), "{s}");
    assert_rows(
        &s,
        &[
            ("conv1", "55x55x96"),
            ("pool1", "27x27x96"),
            ("conv2", "27x27x256"),
            ("pool2", "13x13x256"),
            ("conv3", "13x13x384"),
            ("conv4", "13x13x384"),
            ("conv5", "13x13x256"),
            ("pool5", "6x6x256"),
            ("fc6", "4096"),
            ("fc7", "4096"),
            ("fc8", "1000"),
        ],
    );
    // Per-layer parameters, by hand: out * in/groups * k * k + out.
    for (stage, params) in [
        ("conv1", "34,944"),   // 96*3*11*11 + 96
        ("conv2", "307,456"),  // 256*48*5*5 + 256
        ("conv3", "885,120"),  // 384*256*3*3 + 384
        ("conv4", "663,936"),  // 384*192*3*3 + 384
        ("conv5", "442,624"),  // 256*192*3*3 + 256
        ("fc6", "37,752,832"), // 4096*9216 + 4096
        ("fc7", "16,781,312"), // 4096*4096 + 4096
        ("fc8", "4,097,000"),  // 1000*4096 + 1000
    ] {
        assert_rows(&s, &[(stage, params)]);
    }
    // Groups and tower split, read as the cells right after the output
    // (a lone "2" is in every towers cell): conv2/4/5 are grouped, conv1,
    // conv3 and the fc layers see every input channel; every layer is halved.
    for (stage, cells) in [
        ("conv1", ["55x55x96", "1", "2", "x", "48"]),
        ("conv2", ["27x27x256", "2", "2", "x", "128"]),
        ("conv3", ["13x13x384", "1", "2", "x", "192"]),
        ("conv4", ["13x13x384", "2", "2", "x", "192"]),
        ("conv5", ["13x13x256", "2", "2", "x", "128"]),
        ("fc6", ["4096", "1", "2", "x", "2048"]),
        ("fc8", ["1000", "1", "2", "x", "500"]),
    ] {
        assert_cells(&s, stage, &cells);
    }
    // Exchanges (bytes per image, forward): the other tower's half of the
    // input of conv3 (13*13*256 floats), fc6 (6*6*256), fc7 and fc8 (4096).
    assert_rows(
        &s,
        &[
            ("conv3", "173,056"),
            ("fc6", "36,864"),
            ("fc7", "16,384"),
            ("fc8", "16,384"),
            ("logits", "4,000"),
        ],
    );
    // Per step of 128: (2 * (43264 + 9216 + 4096 + 4096) + 1000) * 4 * 128.
    assert!(s.contains("62,640,128 B per training step of 128"), "{s}");
    // conv1 forward: 55*55*96 outputs * 363 MACs * 2 = 210,830,400 FLOP.
    assert_rows(&s, &[("conv1", "210.8")]);
}

#[test]
fn alexnet_half_is_the_papers_one_gpu_net() {
    let s = summary(&["--config", "alexnet-half"]);
    // conv1 48, conv2 128, conv3 192, conv4 192, conv5 256 (not halved), fc 4096, 4096, 1000:
    // 17,472 + 153,728 + 221,376 + 331,968 + 442,624 + 37,752,832 + 16,781,312 + 4,097,000.
    assert!(s.contains("total parameters: 59,798,312"), "{s}");
    assert_rows(
        &s,
        &[
            ("conv1", "55x55x48"),
            ("conv5", "13x13x256"),
            ("pool5", "6x6x256"),
        ],
    );
    assert!(
        !s.contains("between towers"),
        "one tower exchanges nothing:\n{s}"
    );
}

#[test]
fn ablations_keep_the_shapes() {
    let s = summary(&["--config", "alexnet", "--pool", "2", "--no-lrn"]);
    assert!(s.contains("total parameters: 60,965,224"), "{s}");
    assert_rows(
        &s,
        &[
            ("pool1", "27x27x96"),
            ("pool2", "13x13x256"),
            ("pool5", "6x6x256"),
        ],
    );
    assert!(s.contains("max pool 2x2 s2"), "{s}");
    assert!(
        !s.contains("relu+lrn") && !s.contains("lrn: "),
        "LRN is gone from every layer:\n{s}"
    );
}

#[test]
fn topology_api_agrees() {
    let t = Topology::alexnet();
    assert_eq!(t.param_count().unwrap(), 60_965_224);
    let shapes = t.shapes().unwrap();
    let outs: Vec<(usize, usize, usize)> =
        shapes.iter().map(|s| (s.out.c, s.out.h, s.out.w)).collect();
    assert_eq!(
        outs,
        vec![
            (96, 27, 27),
            (256, 13, 13),
            (384, 13, 13),
            (384, 13, 13),
            (256, 6, 6),
            (4096, 1, 1),
            (4096, 1, 1),
            (1000, 1, 1)
        ]
    );
    let exchanges: Vec<&str> = t
        .layers
        .iter()
        .filter(|l| l.exchange)
        .map(|l| l.name)
        .collect();
    assert_eq!(exchanges, ["conv3", "fc6", "fc7", "fc8"]);
    // The paper's biases: 1 in conv2, conv4, conv5, fc6, fc7; 0 elsewhere.
    let ones: Vec<&str> = t
        .layers
        .iter()
        .filter(|l| l.bias == 1.0)
        .map(|l| l.name)
        .collect();
    assert_eq!(ones, ["conv2", "conv4", "conv5", "fc6", "fc7"]);
    Topology::cifar().validate().unwrap();
    // Dropout right after LRN (no pool between) would mask the output the
    // LRN backward reads: refused, where one pool between is fine.
    let mut t = Topology::alexnet();
    t.layers[0].dropout = 0.5;
    t.validate().unwrap();
    t.layers[0].pool = None;
    let e = t.validate().unwrap_err().to_string();
    assert!(e.contains("conv1: dropout right after LRN"), "{e}");
    // Other data sets: fc8 follows the class count, split unevenly when odd.
    // 60,965,224 - 4,097,000 + 37 * 4096 + 37 = 57,019,813.
    let t37 = Topology::alexnet().with_classes(37).unwrap();
    assert_eq!(t37.param_count().unwrap(), 57_019_813);
    assert_eq!(t37.tower_split(37), vec![19, 18]);
}
