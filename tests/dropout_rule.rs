//! `--dropout paper`: section 4.2's dropout (units zeroed in training,
//! outputs x (1 - p) at test time) trained exactly, in the weights of
//! inverted dropout. With W' = 2W the paper's weights (p = 0.5), the
//! paper's rule v' = 0.9 v' - d lr W' - lr g' (g = dL/dW = 2 g') reads, in W,
//! as the update with lr / 4 and decay d x 4, from N(0, std / 2): only the
//! layers that read a dropped-out output (fc7, fc8) change.
use std::collections::HashMap;
use std::path::Path;

use alexnet_cuda::backend::cpu::CpuBackend;
use alexnet_cuda::checkpoint;
use alexnet_cuda::export::Tensor;
use alexnet_cuda::model::net::Network;
use alexnet_cuda::model::topology::{DropoutRule, Topology, WeightRule};

use crate::common::cli;

#[test]
fn the_paper_rule_scales_the_weights_after_dropout_only() {
    let paper = Topology::alexnet().with_dropout(DropoutRule::Paper);
    for l in &paper.layers {
        let want = match l.name {
            "fc7" | "fc8" => WeightRule {
                lr_mult: 0.25,
                decay_mult: 4.0,
                init_scale: 0.5,
            },
            _ => WeightRule::SAME,
        };
        assert_eq!(l.weight_rule, want, "{}", l.name);
    }
    let inverted = Topology::alexnet().with_dropout(DropoutRule::Inverted);
    assert_eq!(inverted, Topology::alexnet());
    // The starting weights: fc7's and fc8's the same draws at half the
    // standard deviation, every other tensor the same.
    let narrow = || Topology::alexnet_widths([8, 16, 24, 24, 16, 64, 64], 10);
    let be = CpuBackend::new();
    let a = Network::new(&be, &narrow(), 2, 7).expect("network");
    let b = Network::new(&be, &narrow().with_dropout(DropoutRule::Paper), 2, 7).expect("network");
    for l in narrow().layers {
        for part in ["weight", "bias"] {
            let name = format!("{}.{part}", l.name);
            let (x, y) = (a.param(&name).unwrap(), b.param(&name).unwrap());
            let half = part == "weight" && matches!(l.name, "fc7" | "fc8");
            let want: Vec<f32> = x.iter().map(|v| if half { v * 0.5 } else { *v }).collect();
            assert_eq!(y, want, "{name}");
        }
    }
}

/// The tensors of the newest checkpoint of run folder `dir`.
fn weights(dir: &Path) -> HashMap<String, Tensor> {
    checkpoint::load_latest(dir).expect("a checkpoint").tensors
}

/// One step from the same weights, data, seed and dropout masks under
/// each rule. Step 1 starts with no momentum, so the inverted rule moves a
/// weight by D = -lr g - d lr W and the paper's (in our weights) by
/// -(lr / 4) g - 4 d (lr / 4) W = (D + d lr W) / 4 - d lr W on fc7 and fc8,
/// and by D everywhere else.
#[test]
fn one_step_under_the_paper_rule_is_the_papers_update() {
    let t = tempfile::tempdir().unwrap();
    let s = |p: &Path| p.display().to_string();
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cifar10");
    let run = |out: &Path, extra: &[&str]| {
        let out = s(out);
        let mut args = vec![
            "train",
            "--cpu",
            "--config",
            "cifar",
            "--data",
            data,
            "--limit",
            "26",
            "--val",
            "10",
            "--batch",
            "16",
            "--epochs",
            "1",
            "--lr",
            "0.02",
            "--threads",
            "1",
            "--no-progress",
            "--out",
            &out,
        ];
        args.extend(extra);
        let (ok, _, err) = cli(&args);
        assert!(ok, "{args:?}: {err}");
    };
    let start = t.path().join("start");
    run(&start, &[]);
    let from = s(&checkpoint::list(&start).unwrap().pop().unwrap().1);
    let (inv, paper) = (t.path().join("inverted"), t.path().join("paper"));
    run(&inv, &["--init-from", &from, "--dropout", "inverted"]);
    run(&paper, &["--init-from", &from, "--dropout", "paper"]);
    let (w0, a, b) = (weights(&start), weights(&inv), weights(&paper));
    let (lr, d) = (0.02f64, 5e-4f64);
    let mut checked = 0;
    for (name, t0) in &w0 {
        let Some(layer) = name.strip_suffix(".weight") else {
            continue;
        };
        if name.starts_with("momentum.") || name.starts_with("data.") {
            continue;
        }
        let (ta, tb) = (&a[name], &b[name]);
        let scaled = matches!(layer, "fc7" | "fc8");
        for ((&w, &x), &y) in t0.data.iter().zip(&ta.data).zip(&tb.data) {
            let (w, x, y) = (w as f64, x as f64, y as f64);
            let step = x - w;
            let want = match scaled {
                true => w + (step + d * lr * w) / 4.0 - d * lr * w,
                false => x,
            };
            let tol = 1e-6 * w.abs().max(1e-3) + 1e-3 * step.abs();
            assert!(
                (y - want).abs() <= tol,
                "{name}: {y} against {want} (from {w}, inverted {x})"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 8, "the eight layers' weights");
    // Biases follow the same rule under both.
    for l in ["fc7", "fc8", "conv1"] {
        let name = format!("{l}.bias");
        assert_eq!(a[&name].data, b[&name].data, "{name}");
    }
}
