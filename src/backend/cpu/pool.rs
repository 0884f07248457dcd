//! Max pooling on the CPU (overlapping when size > stride, paper section 3.4),
//! floor mode, no padding. Forward records, per output, the winner's index
//! within its (n, c) plane (row * w + col); backward zeroes dx and scatter-adds
//! dy to the winners (overlapping windows can share a winner). (n, c) planes
//! run in parallel.
use rayon::prelude::*;

use super::{checked_product, shape_err};
use crate::backend::PoolGeom;
use crate::error::{check_len, Result};

/// Checks the geometry so that `PoolGeom`'s size methods cannot underflow,
/// and that plane indices fit in u32.
fn validate(op: &'static str, g: &PoolGeom) -> Result<()> {
    if g.size == 0 || g.stride == 0 || g.size > g.h || g.size > g.w {
        return Err(shape_err(
            op,
            format!(
                "window {}x{} stride {} does not fit {g:?}",
                g.size, g.size, g.stride
            ),
        ));
    }
    let plane = checked_product(op, "x", &[g.n, g.c, g.h, g.w]).map(|_| g.h * g.w)?;
    if plane > u32::MAX as usize {
        return Err(shape_err(
            op,
            format!("plane {}x{} too large for u32 indices", g.h, g.w),
        ));
    }
    Ok(())
}

/// y = window max over x; argmax = winner's index in its plane. Ties keep
/// the first in row-major order; a NaN counts as the largest.
pub fn max_pool_forward(g: &PoolGeom, x: &[f32], y: &mut [f32], argmax: &mut [u32]) -> Result<()> {
    const OP: &str = "max_pool_forward";
    validate(OP, g)?;
    check_len(OP, "x", x.len(), g.x_len())?;
    check_len(OP, "y", y.len(), g.y_len())?;
    check_len(OP, "argmax", argmax.len(), g.y_len())?;
    let (plane_in, plane_out) = (g.h * g.w, g.h_out() * g.w_out());
    y.par_chunks_mut(plane_out)
        .zip(argmax.par_chunks_mut(plane_out))
        .zip(x.par_chunks(plane_in))
        .for_each_init(Vec::new, |phases, ((y, am), x)| {
            pool_plane(g, x, y, am, phases)
        });
    Ok(())
}

/// One (n, c) plane. Each input row is split into its `stride` phases
/// (phase p holds columns p, p + stride, ...), so that element (iy, x0 + k)
/// of the windows of one output row is a contiguous run. The windows are
/// then scanned in row-major order a whole output row at a time.
fn pool_plane(g: &PoolGeom, x: &[f32], y: &mut [f32], am: &mut [u32], phases: &mut Vec<f32>) {
    let (s, w_out) = (g.stride, g.w_out());
    let wp = g.w.div_ceil(s);
    phases.resize(g.h * s * wp, 0.0);
    for (row, split) in x.chunks_exact(g.w).zip(phases.chunks_exact_mut(s * wp)) {
        for (p, phase) in split.chunks_exact_mut(wp).enumerate() {
            for (to, &v) in phase.iter_mut().zip(row.iter().skip(p).step_by(s)) {
                *to = v;
            }
        }
    }
    let rows = y.chunks_exact_mut(w_out).zip(am.chunks_exact_mut(w_out));
    for (oy, (y, am)) in rows.enumerate() {
        for iy in oy * s..oy * s + g.size {
            for k in 0..g.size {
                let run = &phases[(iy * s + k % s) * wp + k / s..][..w_out];
                let first = (iy * g.w + k) as u32;
                if iy == oy * s && k == 0 {
                    y.copy_from_slice(run);
                    let cols = am.iter_mut().enumerate();
                    cols.for_each(|(ox, a)| *a = first + (ox * s) as u32);
                } else {
                    take_larger(run, first, s, y, am);
                }
            }
        }
    }
}

/// best = v, at = its index, where v is larger or the first NaN (so that a
/// NaN reaches the loss as in PyTorch; see relu_forward). Selected by bit
/// masks: the compiler vectorises these for baseline x86-64, where an `if`
/// stayed a branch per element at a third of the speed.
fn take_larger(run: &[f32], first: u32, s: usize, best: &mut [f32], at: &mut [u32]) {
    for (i, ((b, a), &v)) in best.iter_mut().zip(at.iter_mut()).zip(run).enumerate() {
        let take = (v > *b) | (v.is_nan() & !b.is_nan());
        let m = (take as u32).wrapping_neg();
        *b = f32::from_bits((v.to_bits() & m) | (b.to_bits() & !m));
        *a = ((first + (i * s) as u32) & m) | (*a & !m);
    }
}

/// dx = 0, then dx[argmax] += dy. An argmax outside its plane is a shape error.
pub fn max_pool_backward(g: &PoolGeom, dy: &[f32], argmax: &[u32], dx: &mut [f32]) -> Result<()> {
    const OP: &str = "max_pool_backward";
    validate(OP, g)?;
    check_len(OP, "dy", dy.len(), g.y_len())?;
    check_len(OP, "argmax", argmax.len(), g.y_len())?;
    check_len(OP, "dx", dx.len(), g.x_len())?;
    let (plane_in, plane_out) = (g.h * g.w, g.h_out() * g.w_out());
    dx.par_chunks_mut(plane_in)
        .zip(dy.par_chunks(plane_out))
        .zip(argmax.par_chunks(plane_out))
        .try_for_each(|((dx, dy), am)| {
            dx.fill(0.0);
            for (&i, &d) in am.iter().zip(dy) {
                let slot = dx.get_mut(i as usize).ok_or_else(|| {
                    shape_err(OP, format!("argmax {i} outside a {}x{} plane", g.h, g.w))
                })?;
                *slot += d;
            }
            Ok(())
        })
}
