//! Helpers the executor tests (towers.rs, replicas.rs) share: the narrow
//! paper net, a pixel-scale batch, bit patterns and normwise differences.
use alexnet_cuda::model::topology::Topology;
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

pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

/// max |a - b| / max |b|: the difference in units of the tensor's scale.
pub fn scaled_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}
