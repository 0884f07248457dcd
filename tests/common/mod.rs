//! Helpers the tests share: the narrow paper net, a pixel-scale batch, bit
//! patterns and normwise differences (the executor tests), the program
//! run with arguments (the command-line tests), an image set that
//! reports each read (the loader tests), and the units dropout dropped
//! (the executors' dropout tests).
pub mod live_bytes;

use std::process::Command;

use alexnet_cuda::data::{ImageSet, ImageSource};
use alexnet_cuda::model::net::Mode;
use alexnet_cuda::model::topology::Topology;
use alexnet_cuda::model::trainable::Model;
use alexnet_cuda::rng::Rng;

/// The paper's structure at small width (every choice kept: 11x11/4 conv1
/// on 227x227, groups, exchanges, LRN, overlapping pools).
pub fn narrow() -> Topology {
    Topology::alexnet_widths([6, 16, 24, 24, 16, 32, 32], 10)
}

/// `n` images at pixel scale with the mean removed, as the loader feeds the
/// net (so the LRN's sum term matters), and their labels.
pub fn batch(topo: &Topology, n: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = Rng::new(seed);
    let x = (0..n * topo.channels * topo.crop * topo.crop)
        .map(|_| (rng.normal() * 60.0) as f32)
        .collect();
    let labels = (0..n).map(|_| rng.below(topo.classes) as u32).collect();
    (x, labels)
}

/// Which of fc6's units dropout dropped for one image in the last step:
/// with fc6's biases at 50, every unit is active after the ReLU, so its
/// bias gradient is zero exactly where dropout zeroed it (section 4.2).
pub fn dropped_fc6_units(net: &mut dyn Model, x: &[f32], labels: &[u32]) -> Vec<bool> {
    let _ = net.forward(x, labels, Mode::Train).unwrap();
    net.backward().unwrap();
    net.grad("fc6.bias")
        .unwrap()
        .iter()
        .map(|g| *g == 0.0)
        .collect()
}

/// fc6 wide enough (256) that two independent masks cannot agree by chance.
pub fn wide_fc() -> Topology {
    Topology::alexnet_widths([6, 16, 24, 24, 16, 256, 256], 10)
}

pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

/// The larger of `a` and `b`, NaN if either is: `f32::max` drops a NaN,
/// so a poisoned difference would read as no difference.
pub fn max_nan(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.max(b)
    }
}

/// max |a - b| / max |b|: the difference in units of the tensor's scale.
/// NaN (so every `d <= tol` fails) when either side holds a NaN.
pub fn scaled_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = max_nan(b.iter().fold(0f32, |m, v| max_nan(m, v.abs())), 1e-30);
    a.iter()
        .zip(b)
        .fold(0f32, |m, (x, y)| max_nan(m, (x - y).abs()))
        / scale
}

/// Run the program with `args` (warnings and errors logged): whether it
/// succeeded, its standard output, its standard error.
pub fn cli(args: &[&str]) -> (bool, String, String) {
    cli_logging(args, "warn")
}

/// [`cli`] logging at `level` (RUST_LOG).
pub fn cli_logging(args: &[&str], level: &str) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_alexnet-cuda"))
        .args(args)
        .env("RUST_LOG", level)
        .output()
        .expect("run alexnet-cuda");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// An in-memory set that calls its hook with each image's index before
/// reading it: to count the reads, or to panic on one.
pub struct Watched<F: Fn(usize) + Send + Sync>(pub ImageSet, pub F);

impl<F: Fn(usize) + Send + Sync> ImageSource for Watched<F> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn size(&self) -> usize {
        self.0.size()
    }
    fn label(&self, i: usize) -> u32 {
        ImageSource::label(&self.0, i)
    }
    fn classes(&self) -> &[String] {
        self.0.classes()
    }
    fn pixels<'a>(&'a self, i: usize, s: &'a mut Vec<u8>) -> alexnet_cuda::Result<&'a [u8]> {
        (self.1)(i);
        ImageSource::pixels(&self.0, i, s)
    }
}
