//! The per-layer table of `bench-step --per-layer`: each op of a step (the
//! laps of `laps`), its median time over several steps, beside the work it
//! cannot avoid, and the rates that work gives. FLOPs: multiply-adds x 2
//! for conv and fc (as `summary`), a few per element for the rest (below).
//! Bytes: the least traffic, every operand read once and every result
//! written once; activations, and the weights the convolutions and GEMMs
//! read, at the run's element size; the update's weights, gradients and
//! momentum as f32 (the masters every precision keeps), and in 16 bits
//! the rounded copy it writes beside them.
//! A lap that took much longer than its bytes and FLOPs allow at the
//! card's peaks is where the step's time goes.
use std::collections::BTreeMap;

use serde::Serialize;

use super::laps::{Lap, Part};
use super::topology::{LayerShape, Topology};
use crate::error::{Error, Result};

/// FLOPs and least bytes of one op.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCost {
    pub flops: u64,
    pub bytes: u64,
}

/// The batch and element size costs are counted at.
#[derive(Clone, Copy, Debug)]
pub struct CostBasis {
    pub batch: usize,
    /// Bytes per activation element: 4 (fp32) or 2 (fp16, bf16).
    pub act_bytes: u64,
}

/// The cost of `part` of layer `layer` (None: the whole network's parts:
/// upload, loss, its backward, unscale).
pub fn op_cost(topo: &Topology, layer: Option<usize>, part: Part, b: CostBasis) -> Result<OpCost> {
    let shapes = topo.shapes()?;
    let n = b.batch as u64;
    match layer {
        None => Ok(network_cost(topo, &shapes, part, n, b.act_bytes)),
        Some(i) => {
            let sh = shapes.get(i).ok_or_else(|| Error::Shape {
                op: "op_cost",
                detail: format!("layer {i} of {}", shapes.len()),
            })?;
            let lrn_window = topo.lrn.size as u64;
            let pool = topo.layers[i].pool.map_or(1, |p| (p.size * p.size) as u64);
            Ok(layer_cost(sh, part, n, b.act_bytes, lrn_window, pool))
        }
    }
}

/// Parts of no one layer.
fn network_cost(topo: &Topology, shapes: &[LayerShape], part: Part, n: u64, a: u64) -> OpCost {
    let k = topo.classes as u64;
    let params: u64 = shapes
        .iter()
        .map(|s| (s.weight_params + s.bias_params) as u64)
        .sum();
    let input = (topo.channels * topo.crop * topo.crop) as u64;
    match part {
        // f32 pixels and u32 labels from the host.
        Part::Upload => OpCost {
            flops: 0,
            bytes: 4 * n * (input + 1),
        },
        // max, exp, sum, divide, log per logit; logits in, probs out (both
        // activations).
        Part::Loss => OpCost {
            flops: 5 * n * k,
            bytes: 2 * a * n * k,
        },
        // p - onehot, scaled: probs in, logit gradients out.
        Part::LossBackward => OpCost {
            flops: 2 * n * k,
            bytes: 2 * a * n * k,
        },
        // every gradient read, scaled, checked and written.
        Part::Unscale => OpCost {
            flops: 2 * params,
            bytes: 8 * params,
        },
        _ => OpCost::default(),
    }
}

/// Parts of layer `sh` on `n` images; `a` bytes per activation.
fn layer_cost(sh: &LayerShape, part: Part, n: u64, a: u64, lrn_window: u64, pool: u64) -> OpCost {
    let x = n * sh.input.len() as u64;
    let y = n * sh.op_out.len() as u64;
    let out = n * sh.out.len() as u64;
    let (w, bias) = (sh.weight_params as u64, sh.bias_params as u64);
    let gemm = n * sh.flops;
    let (flops, bytes) = match part {
        // The op with its bias and ReLU: input and weights in, output out.
        Part::Forward => (gemm, a * (x + w + y) + 4 * bias),
        // The window's squares and sum, the scale, its power and product;
        // out and the scale (kept for backward) written.
        Part::Lrn => ((2 * lrn_window + 3) * y, 3 * a * y),
        // y, out, scale and the gradient in, dy out.
        Part::LrnBackward => ((2 * lrn_window + 4) * y, 5 * a * y),
        // Each window's comparisons; the max and its u32 index written.
        Part::Pool => ((pool - 1) * out, a * y + (a + 4) * out),
        // Each gradient to its max's place; the rest of dy zeroed.
        Part::PoolBackward => (0, (a + 4) * out + a * y),
        // One compare and scale per element; the mask written beside.
        Part::Dropout | Part::DropoutBackward => (out, 3 * a * out),
        Part::ReluBackward => (y, 3 * a * y),
        Part::BackwardBias => (y, a * y + 4 * bias),
        // Input and output gradient in, f32 weight gradient out.
        Part::BackwardFilter => (gemm, a * (x + y) + 4 * w),
        Part::BackwardData => (gemm, a * (y + w + x)),
        // v = 0.9 v - wd lr w - lr g; w += v: w, g, v in; w, v out, and
        // in 16 bits w's rounded copy (mixed.rs, sgd_update16).
        Part::Sgd => {
            let copy = if a < 4 { a } else { 0 };
            (5 * (w + bias), (20 + copy) * (w + bias))
        }
        _ => (0, 0),
    };
    OpCost { flops, bytes }
}

/// The card's peaks the shares are of (None: no share column).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Peaks {
    pub tflops: f64,
    pub gb_per_s: f64,
}

/// One row of the table.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// The layer's name, or "net" for the whole network's parts.
    pub layer: String,
    pub part: &'static str,
    /// Median over the steps.
    pub ms: f64,
    pub gflop: f64,
    pub mb: f64,
    pub tflop_per_s: f64,
    pub gb_per_s: f64,
    /// Achieved over peak, for the rate that bounds this op: FLOPs for
    /// conv and fc passes, bytes for the rest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_share: Option<f64>,
}

/// The median as Python's `statistics.median` takes it (the PyTorch
/// benchmarks' side of each ratio): the middle value, or the mean of the
/// two middle ones of an even count; None when empty. Sorts `v`.
pub fn median(v: &mut [f64]) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// The table from the laps of whole steps: one row per (layer, part), in
/// the order a step ran them, with the median lap (a 16-bit step skipped
/// for overflow has no SGD laps; the others' median stands).
pub fn table(
    topo: &Topology,
    laps: &[Lap],
    b: CostBasis,
    peaks: Option<Peaks>,
) -> Result<Vec<Row>> {
    let mut order: Vec<(Option<usize>, Part)> = Vec::new();
    let mut times: BTreeMap<(Option<usize>, Part), Vec<f64>> = BTreeMap::new();
    for l in laps {
        let key = (l.layer, l.part);
        let t = times.entry(key).or_default();
        if t.is_empty() {
            order.push(key);
        }
        t.push(l.seconds);
    }
    let mut rows = Vec::with_capacity(order.len());
    for key in order {
        let mut t = times.remove(&key).unwrap_or_default();
        let s = median(&mut t).unwrap_or(f64::NAN);
        rows.push(row(topo, key, s, b, peaks)?);
    }
    Ok(rows)
}

fn row(
    topo: &Topology,
    (layer, part): (Option<usize>, Part),
    s: f64,
    b: CostBasis,
    peaks: Option<Peaks>,
) -> Result<Row> {
    let c = op_cost(topo, layer, part, b)?;
    let tflop_per_s = c.flops as f64 / s / 1e12;
    let gb_per_s = c.bytes as f64 / s / 1e9;
    let compute = matches!(
        part,
        Part::Forward | Part::BackwardFilter | Part::BackwardData
    );
    // The upload crosses the host's link (PCIe), not the memory the
    // GB/s peak is of: no share.
    let peak_share = peaks
        .filter(|_| part != Part::Upload)
        .map(|p| match compute {
            true => tflop_per_s / p.tflops,
            false => gb_per_s / p.gb_per_s,
        });
    Ok(Row {
        layer: layer.map_or("net".into(), |i| topo.layers[i].name.to_string()),
        part: part.name(),
        ms: s * 1e3,
        gflop: c.flops as f64 / 1e9,
        mb: c.bytes as f64 / 1e6,
        tflop_per_s,
        gb_per_s,
        peak_share,
    })
}
