//! Local response normalisation across channels (paper section 3.3), fused and
//! O(C) per pixel: the window sum over channels is kept as a running row of
//! h*w sums that slides one channel at a time (add the channel entering the
//! window, subtract the one leaving it).
//!
//!   scale[c] = k + alpha * sum_{c' = c - size/2 ..= c + size/2, clipped to [0, C)} x[c']^2
//!   y[c]     = x[c] * scale[c]^-beta
//!   dx[c]    = dy[c] * scale[c]^-beta
//!              - 2 * alpha * beta * x[c] * sum_{c' whose window holds c} dy[c'] * y[c'] / scale[c']
//! The window is symmetric (|c - c'| <= size/2), so "c' whose window holds c" is
//! the same clipped window around c, and backward slides it the same way.
//! alpha is not divided by size (the paper's convention). Images run in parallel;
//! within an image, channels are the outer loop and pixels the inner,
//! contiguous (vectorised) one.
use rayon::prelude::*;

use super::{checked_product, shape_err};
use crate::backend::{LrnParams, Nchw};
use crate::error::{check_len, Result};

fn validate(op: &'static str, p: &LrnParams, s: &Nchw) -> Result<()> {
    checked_product(op, "tensor", &[s.n, s.c, s.h, s.w])?;
    // A window centred on each channel has an odd size; an even one has no
    // centre (PyTorch's even windows lean one way, ours would widen by one).
    if p.size.is_multiple_of(2) {
        return Err(shape_err(
            op,
            format!("window size {} must be odd (the paper: 5)", p.size),
        ));
    }
    Ok(())
}

/// s^-0.75 for the paper's beta, as r * sqrt(r) with r = 1/sqrt(s): unlike
/// powf this vectorises, making the whole op about 3x faster. Other betas use powf.
#[inline]
fn pow_neg_075(s: f32) -> f32 {
    let r = 1.0 / s.sqrt();
    r * r.sqrt()
}

/// sum[i] += sign * v[i]^2
#[inline]
fn add_squares(sum: &mut [f32], v: &[f32], sign: f32) {
    for (s, &v) in sum.iter_mut().zip(v) {
        *s += sign * v * v;
    }
}

/// y = x / scale^beta, keeping scale for backward.
pub fn lrn_forward(
    p: &LrnParams,
    s: &Nchw,
    x: &[f32],
    y: &mut [f32],
    scale: &mut [f32],
) -> Result<()> {
    const OP: &str = "lrn_forward";
    validate(OP, p, s)?;
    let len = s.len();
    check_len(OP, "x", x.len(), len)?;
    check_len(OP, "y", y.len(), len)?;
    check_len(OP, "scale", scale.len(), len)?;
    if len == 0 {
        return Ok(());
    }
    if p.beta == 0.75 {
        lrn_forward_with(p, s, x, y, scale, pow_neg_075);
    } else {
        lrn_forward_with(p, s, x, y, scale, |s: f32| s.powf(-p.beta));
    }
    Ok(())
}

/// The forward pass with `pow_neg(s) = s^-beta` (a generic, so the pixel loop
/// is monomorphised and vectorised for the fast variant).
fn lrn_forward_with(
    p: &LrnParams,
    s: &Nchw,
    x: &[f32],
    y: &mut [f32],
    scale: &mut [f32],
    pow_neg: impl Fn(f32) -> f32 + Sync,
) {
    let (c_n, hw, half) = (s.c, s.h * s.w, p.size / 2);
    let img = c_n * hw;
    y.par_chunks_mut(img)
        .zip(scale.par_chunks_mut(img))
        .zip(x.par_chunks(img))
        .for_each(|((y, scale), x)| {
            let ch = |c: usize| c * hw..(c + 1) * hw;
            // sum[i] = sum of x[c', i]^2 over the current window; start with c = 0's
            // window [0, half] (the channels below 0 are clipped).
            let mut sum = vec![0.0f32; hw];
            for c in 0..(half + 1).min(c_n) {
                add_squares(&mut sum, &x[ch(c)], 1.0);
            }
            for c in 0..c_n {
                let (yc, sc) = (&mut y[ch(c)], &mut scale[ch(c)]);
                for (((yv, sv), &xv), &sm) in
                    yc.iter_mut().zip(sc.iter_mut()).zip(&x[ch(c)]).zip(&sum)
                {
                    *sv = p.k + p.alpha * sm;
                    *yv = xv * pow_neg(*sv);
                }
                // slide: the window of c + 1 gains c + 1 + half and loses c - half
                if c + 1 + half < c_n {
                    add_squares(&mut sum, &x[ch(c + 1 + half)], 1.0);
                }
                if c >= half {
                    add_squares(&mut sum, &x[ch(c - half)], -1.0);
                }
            }
        });
}

/// dx from dy, given forward's x, y and scale (formula at the top of the file).
#[allow(clippy::too_many_arguments)]
pub fn lrn_backward(
    p: &LrnParams,
    s: &Nchw,
    x: &[f32],
    y: &[f32],
    scale: &[f32],
    dy: &[f32],
    dx: &mut [f32],
) -> Result<()> {
    const OP: &str = "lrn_backward";
    validate(OP, p, s)?;
    let len = s.len();
    check_len(OP, "x", x.len(), len)?;
    check_len(OP, "y", y.len(), len)?;
    check_len(OP, "scale", scale.len(), len)?;
    check_len(OP, "dy", dy.len(), len)?;
    check_len(OP, "dx", dx.len(), len)?;
    if len == 0 {
        return Ok(());
    }
    if p.beta == 0.75 {
        lrn_backward_with(p, s, x, y, scale, dy, dx, pow_neg_075);
    } else {
        lrn_backward_with(p, s, x, y, scale, dy, dx, |s: f32| s.powf(-p.beta));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn lrn_backward_with(
    p: &LrnParams,
    s: &Nchw,
    x: &[f32],
    y: &[f32],
    scale: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    pow_neg: impl Fn(f32) -> f32 + Sync,
) {
    let (c_n, hw, half) = (s.c, s.h * s.w, p.size / 2);
    let img = c_n * hw;
    let coef = 2.0 * p.alpha * p.beta;
    dx.par_chunks_mut(img).enumerate().for_each(|(ni, dx)| {
        // channel c of this image, as a range into x, y, scale and dy
        let ch = |c: usize| ni * img + c * hw..ni * img + (c + 1) * hw;
        // sum[i] += sign * dy[c, i] * y[c, i] / scale[c, i]; recomputed when a
        // channel enters or leaves the window (cheaper than storing it).
        let add_ratio = |sum: &mut [f32], c: usize, sign: f32| {
            for (((s, &d), &yv), &sc) in sum
                .iter_mut()
                .zip(&dy[ch(c)])
                .zip(&y[ch(c)])
                .zip(&scale[ch(c)])
            {
                *s += sign * d * yv / sc;
            }
        };
        let mut sum = vec![0.0f32; hw];
        for c in 0..(half + 1).min(c_n) {
            add_ratio(&mut sum, c, 1.0);
        }
        for c in 0..c_n {
            let dxc = &mut dx[c * hw..(c + 1) * hw];
            let inputs = x[ch(c)].iter().zip(&dy[ch(c)]).zip(&scale[ch(c)]).zip(&sum);
            for (o, (((&xv, &d), &sc), &sm)) in dxc.iter_mut().zip(inputs) {
                *o = d * pow_neg(sc) - coef * xv * sm;
            }
            if c + 1 + half < c_n {
                add_ratio(&mut sum, c + 1 + half, 1.0);
            }
            if c >= half {
                add_ratio(&mut sum, c - half, -1.0);
            }
        }
    });
}
