//! `alexnet-cuda summary`: a per-stage table derived from the topology table
//! (output shape, groups, tower split, parameters, forward FLOPs, bytes the
//! towers exchange), with totals. Shapes print as H x W x C, as the paper does.
use std::fmt::Write;

use super::topology::{Chw, Op, Topology};
use crate::error::Result;

fn hwc(s: Chw) -> String {
    if s.h == 1 && s.w == 1 {
        format!("{}", s.c)
    } else {
        format!("{}x{}x{}", s.h, s.w, s.c)
    }
}

/// Thousands separators: 60965224 -> "60,965,224".
pub fn thousands(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Render the summary for `batch` images per step.
pub fn render(t: &Topology, batch: usize) -> Result<String> {
    let shapes = t.shapes()?;
    let mut s = String::new();
    let towers = if t.towers == 2 {
        "two towers (one per GPU in the paper)"
    } else {
        "one tower"
    };
    let _ = writeln!(
        s,
        "config {}: input {}x{}x{} (crops of {}x{} images), {} classes, {towers}",
        t.name, t.crop, t.crop, t.channels, t.image_size, t.image_size, t.classes
    );
    let _ = writeln!(
        s,
        "{:<7} {:<22} {:>11} {:>6} {:>9} {:>12} {:>12} {:>14}",
        "stage", "op", "output", "groups", "towers", "params", "fwd MFLOP", "exchange B/img"
    );
    let mut total_flops = 0u64;
    for (l, sh) in t.layers.iter().zip(&shapes) {
        let op = match l.op {
            Op::Conv { k, stride, pad, .. } => format!("conv {k}x{k} s{stride} p{pad}"),
            Op::Fc { .. } => "fc".to_string(),
        };
        let mut post = Vec::new();
        if l.relu {
            post.push("relu");
        }
        if l.lrn {
            post.push("lrn");
        }
        if l.dropout > 0.0 {
            post.push("dropout");
        }
        let op = if post.is_empty() {
            op
        } else {
            format!("{op}, {}", post.join("+"))
        };
        let parts = t.tower_split(l.out_channels());
        let split = match parts.as_slice() {
            [a, b] if a == b => format!("2 x {a}"),
            [a, b] => format!("{a} + {b}"),
            _ => format!("{}", l.out_channels()),
        };
        let exch = if l.exchange {
            thousands((sh.exchange_elems * 4) as u64)
        } else {
            "-".into()
        };
        total_flops += sh.flops;
        let _ = writeln!(
            s,
            "{:<7} {:<22} {:>11} {:>6} {:>9} {:>12} {:>12.1} {:>14}",
            l.name,
            op,
            hwc(sh.op_out),
            l.groups(),
            split,
            thousands((sh.weight_params + sh.bias_params) as u64),
            sh.flops as f64 / 1e6,
            exch
        );
        if let Some(p) = l.pool {
            let stage = format!("pool{}", &l.name[l.name.len() - 1..]);
            let _ = writeln!(
                s,
                "{:<7} {:<22} {:>11} {:>6} {:>9} {:>12} {:>12} {:>14}",
                stage,
                format!("max pool {}x{} s{}", p.size, p.size, p.stride),
                hwc(sh.out),
                "",
                "",
                "",
                "",
                ""
            );
        }
    }
    let logits = t.logits_exchange_elems();
    if logits > 0 {
        let _ = writeln!(
            s,
            "{:<7} {:<22} {:>11} {:>6} {:>9} {:>12} {:>12} {:>14}",
            "logits",
            "gather for softmax",
            t.classes,
            "",
            "",
            "",
            "",
            thousands((logits * 4) as u64)
        );
    }
    let params = t.param_count()?;
    let _ = writeln!(s, "total parameters: {}", thousands(params as u64));
    if t.layers.iter().any(|l| l.lrn) {
        let p = t.lrn;
        // Section 3.3's alpha multiplies the sum itself; PyTorch's and
        // Caffe's LRN divide their alpha by n.
        let _ = writeln!(
            s,
            "lrn: k={}, n={}, alpha={:e}, beta={} (alpha times the sum of squares, as the paper; PyTorch's and Caffe's LRN take n times it)",
            p.k, p.size, p.alpha, p.beta
        );
    }
    let _ = writeln!(
        s,
        "forward: {:.3} GFLOP per image (multiply-adds x 2, conv and fc only); training about 3x",
        total_flops as f64 / 1e9
    );
    if t.towers == 2 {
        let fwd: usize = shapes.iter().map(|x| x.exchange_elems).sum::<usize>() + logits;
        let step = t.exchange_bytes_per_step(batch)?;
        let _ = writeln!(
            s,
            "between towers: {} B per image forward, {} B per training step of {batch} (forward + backward)",
            thousands((fwd * 4) as u64),
            thousands(step)
        );
    }
    Ok(s)
}
