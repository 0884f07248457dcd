//! Element-wise ops on the CPU: ReLU, inverted dropout, softmax cross-entropy,
//! a training step's metrics (mean loss, top-1 hits) and the paper's SGD update. Large tensors are split into fixed-size chunks
//! that run in parallel.
use rayon::prelude::*;

use super::{checked_product, shape_err};
use crate::backend::SgdParams;
use crate::error::{check_len, Result};
use crate::rng::hash_uniform;

/// Elements per parallel task: big enough to amortise the task, small enough to balance.
const CHUNK: usize = 1 << 15;

/// x = max(x, 0), in place. A NaN stays NaN (as in PyTorch): f32::max
/// would make it 0, and a network whose weights went NaN would then train
/// on with finite losses, its divergence unseen until a checkpoint.
pub fn relu_forward(x: &mut [f32]) {
    x.par_chunks_mut(CHUNK).for_each(|c| {
        c.iter_mut()
            .for_each(|v| *v = if *v < 0.0 { 0.0 } else { *v })
    });
}

/// dy = dy * (y > 0), in place; y is the ReLU's output.
pub fn relu_backward(y: &[f32], dy: &mut [f32]) -> Result<()> {
    check_len("relu_backward", "dy", dy.len(), y.len())?;
    dy.par_chunks_mut(CHUNK)
        .zip(y.par_chunks(CHUNK))
        .for_each(|(d, y)| {
            // A select, not a branch: the compiler vectorises it, and half
            // of a fresh network's units are off in no predictable order.
            for (d, &y) in d.iter_mut().zip(y) {
                *d = if y <= 0.0 { 0.0 } else { *d };
            }
        });
    Ok(())
}

/// Inverted dropout: mask[i] = 1/(1-p) if hash_uniform(seed, i) >= p else 0
/// (all ones when p == 0); x *= mask. p must be in [0, 1).
pub fn dropout_forward(p: f32, seed: u64, x: &mut [f32], mask: &mut [f32]) -> Result<()> {
    const OP: &str = "dropout_forward";
    if !(0.0..1.0).contains(&p) {
        return Err(shape_err(
            OP,
            format!("drop probability {p} is not in [0, 1)"),
        ));
    }
    check_len(OP, "mask", mask.len(), x.len())?;
    let keep = 1.0 / (1.0 - p);
    mask.par_chunks_mut(CHUNK)
        .zip(x.par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(ci, (m, x))| {
            let base = ci * CHUNK;
            for (j, (m, x)) in m.iter_mut().zip(x.iter_mut()).enumerate() {
                // u < p drops; with p == 0 nothing does, so the mask is all ones.
                *m = if hash_uniform(seed, (base + j) as u64) >= p {
                    keep
                } else {
                    0.0
                };
                *x *= *m;
            }
        });
    Ok(())
}

/// dy *= mask, in place.
pub fn dropout_backward(mask: &[f32], dy: &mut [f32]) -> Result<()> {
    check_len("dropout_backward", "dy", dy.len(), mask.len())?;
    dy.par_chunks_mut(CHUNK)
        .zip(mask.par_chunks(CHUNK))
        .for_each(|(d, m)| d.iter_mut().zip(m).for_each(|(d, m)| *d *= m));
    Ok(())
}

/// Checks buffer sizes and that every label is a valid class.
fn check_xent(
    op: &'static str,
    n: usize,
    classes: usize,
    a: usize,
    labels: &[u32],
    out: usize,
) -> Result<()> {
    let len = checked_product(op, "logits", &[n, classes])?;
    check_len(op, "logits/probs", a, len)?;
    check_len(op, "labels", labels.len(), n)?;
    check_len(op, "output", out, len)?;
    if let Some((i, &l)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= classes)
    {
        return Err(shape_err(
            op,
            format!("label {l} of row {i} is not < {classes} classes"),
        ));
    }
    Ok(())
}

/// probs = softmax(logits) per row; returns mean over rows of -log probs[label].
/// Stable form: with z = logits - max, log p[label] = z[label] - ln(sum exp(z)).
pub fn softmax_xent_forward(
    n: usize,
    classes: usize,
    logits: &[f32],
    labels: &[u32],
    probs: &mut [f32],
) -> Result<f32> {
    const OP: &str = "softmax_xent_forward";
    check_xent(OP, n, classes, logits.len(), labels, probs.len())?;
    if n == 0 {
        return Ok(0.0);
    }
    let total: f64 = probs
        .par_chunks_mut(classes)
        .zip(logits.par_chunks(classes))
        .zip(labels.par_iter())
        .map(|((p, z), &label)| {
            let max = z.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let mut sum = 0.0f64;
            for (p, &v) in p.iter_mut().zip(z) {
                *p = (v - max).exp();
                sum += *p as f64;
            }
            let inv = (1.0 / sum) as f32;
            p.iter_mut().for_each(|p| *p *= inv);
            // -log p[label] = ln(sum) - (z[label] - max)
            sum.ln() - (z[label as usize] - max) as f64
        })
        .sum();
    Ok((total / n as f64) as f32)
}

/// dlogits = (probs - onehot(labels)) / n.
pub fn softmax_xent_backward(
    n: usize,
    classes: usize,
    probs: &[f32],
    labels: &[u32],
    dlogits: &mut [f32],
) -> Result<()> {
    const OP: &str = "softmax_xent_backward";
    check_xent(OP, n, classes, probs.len(), labels, dlogits.len())?;
    if n == 0 {
        return Ok(());
    }
    let inv_n = 1.0 / n as f32;
    dlogits
        .par_chunks_mut(classes)
        .zip(probs.par_chunks(classes))
        .zip(labels.par_iter())
        .for_each(|((d, p), &label)| {
            for (d, &p) in d.iter_mut().zip(p) {
                *d = p * inv_n;
            }
            d[label as usize] = (p[label as usize] - 1.0) * inv_n;
        });
    Ok(())
}

/// One training step's metrics into slot `slot` of `metrics`, a buffer of
/// (loss, hits) pairs: metrics[2 slot] = loss[0], metrics[2 slot + 1] = the
/// rows of `probs` ([n, classes]) where no other class has a probability >=
/// the label's, as f32 (`eval::topk_hits`' top-1 rule).
pub fn record_step_metrics(
    n: usize,
    classes: usize,
    probs: &[f32],
    labels: &[u32],
    loss: &[f32],
    slot: usize,
    metrics: &mut [f32],
) -> Result<()> {
    const OP: &str = "record_step_metrics";
    check_xent(OP, n, classes, probs.len(), labels, probs.len())?;
    check_step_slot(OP, loss.len(), slot, metrics.len())?;
    let hits = probs
        .chunks_exact(classes.max(1))
        .zip(labels)
        .filter(|(row, &label)| top1_hit(row, label as usize))
        .count();
    metrics[2 * slot] = loss[0];
    metrics[2 * slot + 1] = hits as f32;
    Ok(())
}

/// Whether `row[label]` is a number and no other class has a probability
/// >= it (a NaN elsewhere compares false and beats nothing).
fn top1_hit(row: &[f32], label: usize) -> bool {
    let mine = row[label];
    !mine.is_nan()
        && !row
            .iter()
            .enumerate()
            .any(|(j, &q)| j != label && q >= mine)
}

/// A one-float loss buffer and a metrics buffer with room for slot `slot`.
/// Public so that tests' wrappers of the kernels check the same way.
pub fn check_step_slot(op: &'static str, loss: usize, slot: usize, metrics: usize) -> Result<()> {
    if loss == 0 {
        return Err(shape_err(op, "the loss buffer is empty".into()));
    }
    let need = slot.checked_mul(2).and_then(|v| v.checked_add(2));
    if need.is_none_or(|need| need > metrics) {
        return Err(shape_err(
            op,
            format!("slot {slot} does not fit a metrics buffer of {metrics} floats"),
        ));
    }
    Ok(())
}

/// The paper's SGD (section 5), element-wise: v = m*v - wd*lr*w - lr*g; w += v.
pub fn sgd_update(p: &SgdParams, w: &mut [f32], g: &[f32], v: &mut [f32]) -> Result<()> {
    const OP: &str = "sgd_update";
    check_len(OP, "g", g.len(), w.len())?;
    check_len(OP, "v", v.len(), w.len())?;
    let (m, wd_lr, lr) = (p.momentum, p.weight_decay * p.lr, p.lr);
    w.par_chunks_mut(CHUNK)
        .zip(v.par_chunks_mut(CHUNK))
        .zip(g.par_chunks(CHUNK))
        .for_each(|((w, v), g)| {
            for ((w, v), &g) in w.iter_mut().zip(v.iter_mut()).zip(g) {
                *v = m * *v - wd_lr * *w - lr * g;
                *w += *v;
            }
        });
    Ok(())
}
