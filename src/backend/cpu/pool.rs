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
/// the first; a NaN counts as the largest.
pub fn max_pool_forward(g: &PoolGeom, x: &[f32], y: &mut [f32], argmax: &mut [u32]) -> Result<()> {
    const OP: &str = "max_pool_forward";
    validate(OP, g)?;
    check_len(OP, "x", x.len(), g.x_len())?;
    check_len(OP, "y", y.len(), g.y_len())?;
    check_len(OP, "argmax", argmax.len(), g.y_len())?;
    let (h_out, w_out) = (g.h_out(), g.w_out());
    let (plane_in, plane_out) = (g.h * g.w, h_out * w_out);
    y.par_chunks_mut(plane_out)
        .zip(argmax.par_chunks_mut(plane_out))
        .zip(x.par_chunks(plane_in))
        .for_each(|((y, am), x)| {
            for oy in 0..h_out {
                for ox in 0..w_out {
                    let (y0, x0) = (oy * g.stride, ox * g.stride);
                    let mut best_i = y0 * g.w + x0;
                    let mut best = x[best_i];
                    for iy in y0..y0 + g.size {
                        for ix in x0..x0 + g.size {
                            let v = x[iy * g.w + ix];
                            // A NaN wins (the first, as ties), so that it
                            // reaches the loss as in PyTorch; see relu_forward.
                            if v > best || (v.is_nan() && !best.is_nan()) {
                                best = v;
                                best_i = iy * g.w + ix;
                            }
                        }
                    }
                    y[oy * w_out + ox] = best;
                    am[oy * w_out + ox] = best_i as u32;
                }
            }
        });
    Ok(())
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
