//! Grouped 2-D convolution on the CPU: forward, backward-data, backward-filter
//! and backward-bias, by im2col + GEMM (the `gemm` crate).
//!
//! Per image and group g (M = c_out/groups, C = c_in/groups, K = C*k*k, P = h_out*w_out):
//!   col[K, P]  = im2col(x_g)                   col[(c*k + i)*k + j, oy*w_out + ox]
//!                                               = x[c, oy*stride - pad + i, ox*stride - pad + j] (0 outside)
//!   forward:     y_g[M, P]  = w_g[M, K] . col[K, P] + b_g
//!   back-data:   dcol[K, P] = w_g^T . dy_g,  dx_g = col2im(dcol)   (scatter-add)
//!   back-filter: dw_g[M, K] += dy_g[M, P] . col^T, summed over images
//! Weights are [c_out, C, k, k], so w_g is a row-major [M, K] matrix.
//! Images (and groups) run in parallel with rayon; each GEMM is single-threaded
//! unless there are fewer images x groups than threads.
use rayon::prelude::*;

use super::{checked_product, sgemm, shape_err, with_partials, with_scratch, MatRef};
use crate::backend::ConvGeom;
use crate::error::{check_len, Result};

/// Checks the geometry (so that `ConvGeom`'s size methods cannot overflow or
/// underflow) and returns (h_out, w_out).
pub fn validate(op: &'static str, g: &ConvGeom) -> Result<(usize, usize)> {
    if g.groups == 0 || g.k == 0 || g.stride == 0 {
        return Err(shape_err(
            op,
            format!("groups, k and stride must be >= 1 in {g:?}"),
        ));
    }
    if g.c_in == 0 || g.c_out == 0 || g.h == 0 || g.w == 0 {
        return Err(shape_err(op, format!("empty channels or image in {g:?}")));
    }
    if !g.c_in.is_multiple_of(g.groups) || !g.c_out.is_multiple_of(g.groups) {
        return Err(shape_err(
            op,
            format!(
                "groups {} must divide c_in {} and c_out {}",
                g.groups, g.c_in, g.c_out
            ),
        ));
    }
    let hp = g.pad.checked_mul(2).and_then(|p| p.checked_add(g.h));
    let wp = g.pad.checked_mul(2).and_then(|p| p.checked_add(g.w));
    match (hp, wp) {
        (Some(hp), Some(wp)) if hp >= g.k && wp >= g.k => {}
        _ => {
            return Err(shape_err(
                op,
                format!(
                    "kernel {} does not fit the padded {}x{} image",
                    g.k, g.h, g.w
                ),
            ))
        }
    }
    let (h_out, w_out) = (g.h_out(), g.w_out());
    checked_product(op, "x", &[g.n, g.c_in, g.h, g.w])?;
    checked_product(op, "y", &[g.n, g.c_out, h_out, w_out])?;
    checked_product(op, "w", &[g.c_out, g.c_in / g.groups, g.k, g.k])?;
    checked_product(op, "im2col", &[g.c_in / g.groups, g.k, g.k, h_out, w_out])?;
    Ok((h_out, w_out))
}

/// Sizes of the per-(image, group) GEMMs.
#[derive(Clone, Copy)]
struct Dims {
    /// input channels per group
    c: usize,
    /// output channels per group (GEMM rows)
    m: usize,
    /// c * k * k (GEMM depth)
    kk: usize,
    h_out: usize,
    w_out: usize,
    /// h_out * w_out (GEMM columns)
    p: usize,
}

impl Dims {
    fn new(g: &ConvGeom, h_out: usize, w_out: usize) -> Dims {
        let c = g.c_in / g.groups;
        Dims {
            c,
            m: g.c_out / g.groups,
            kk: c * g.k * g.k,
            h_out,
            w_out,
            p: h_out * w_out,
        }
    }
}

/// Threading of each GEMM: single-threaded when there are at least as many
/// parallel tasks (images x groups, or batch chunks) as threads, else all
/// threads inside the GEMM (small batches, e.g. one image at test time).
fn gemm_par(tasks: usize) -> gemm::Parallelism {
    if tasks >= rayon::current_num_threads() {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(0)
    }
}

/// The output columns ox whose input column ox*stride - pad + j lies in [0, w):
/// returns [lo, hi).
#[inline]
fn valid_range(j: usize, stride: usize, pad: usize, w: usize, w_out: usize) -> (usize, usize) {
    // need ox*stride + j >= pad  and  ox*stride + j < pad + w
    let lo = if j >= pad {
        0
    } else {
        (pad - j).div_ceil(stride)
    };
    let hi = if pad + w > j {
        (pad + w - j).div_ceil(stride).min(w_out)
    } else {
        0
    };
    (lo.min(hi), hi)
}

/// col[K, P] = im2col(x) for one image and group; x is [C, h, w].
fn im2col(g: &ConvGeom, d: &Dims, x: &[f32], col: &mut [f32]) {
    let (h, w, k, s, pad) = (g.h, g.w, g.k, g.stride, g.pad);
    for c in 0..d.c {
        let xc = &x[c * h * w..(c + 1) * h * w];
        for i in 0..k {
            for j in 0..k {
                let row = (c * k + i) * k + j;
                let dst = &mut col[row * d.p..(row + 1) * d.p];
                let (lo, hi) = valid_range(j, s, pad, w, d.w_out);
                for oy in 0..d.h_out {
                    let out = &mut dst[oy * d.w_out..(oy + 1) * d.w_out];
                    let iy = (oy * s + i) as isize - pad as isize;
                    if iy < 0 || iy >= h as isize || lo >= hi {
                        out.fill(0.0);
                        continue;
                    }
                    let src = &xc[iy as usize * w..(iy as usize + 1) * w];
                    out[..lo].fill(0.0);
                    out[hi..].fill(0.0);
                    // input column of ox is ox*s + j - pad (>= 0 for ox >= lo)
                    let x0 = lo * s + j - pad;
                    if s == 1 {
                        out[lo..hi].copy_from_slice(&src[x0..x0 + (hi - lo)]);
                    } else {
                        for (o, ox) in out[lo..hi].iter_mut().zip(0..) {
                            *o = src[x0 + ox * s];
                        }
                    }
                }
            }
        }
    }
}

/// dx = col2im(dcol) for one image and group: the adjoint of `im2col`, so each
/// column entry is added back to the input pixel it was copied from. dx is [C, h, w].
fn col2im(g: &ConvGeom, d: &Dims, dcol: &[f32], dx: &mut [f32]) {
    let (h, w, k, s, pad) = (g.h, g.w, g.k, g.stride, g.pad);
    dx.fill(0.0);
    for c in 0..d.c {
        let dxc = &mut dx[c * h * w..(c + 1) * h * w];
        for i in 0..k {
            for j in 0..k {
                let row = (c * k + i) * k + j;
                let src = &dcol[row * d.p..(row + 1) * d.p];
                let (lo, hi) = valid_range(j, s, pad, w, d.w_out);
                if lo >= hi {
                    continue;
                }
                for oy in 0..d.h_out {
                    let iy = (oy * s + i) as isize - pad as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    let dst = &mut dxc[iy as usize * w..(iy as usize + 1) * w];
                    let x0 = lo * s + j - pad;
                    let inp = &src[oy * d.w_out + lo..oy * d.w_out + hi];
                    if s == 1 {
                        for (o, v) in dst[x0..x0 + (hi - lo)].iter_mut().zip(inp) {
                            *o += v;
                        }
                    } else {
                        for (ox, v) in inp.iter().enumerate() {
                            dst[x0 + ox * s] += v;
                        }
                    }
                }
            }
        }
    }
}

/// y = conv(x, w) + b. x: [n, c_in, h, w], w: [c_out, c_in/groups, k, k], b: [c_out],
/// y: [n, c_out, h_out, w_out].
pub fn conv2d_forward(g: &ConvGeom, x: &[f32], w: &[f32], b: &[f32], y: &mut [f32]) -> Result<()> {
    const OP: &str = "conv2d_forward";
    let (h_out, w_out) = validate(OP, g)?;
    check_len(OP, "x", x.len(), g.x_len())?;
    check_len(OP, "w", w.len(), g.w_len())?;
    check_len(OP, "b", b.len(), g.c_out)?;
    check_len(OP, "y", y.len(), g.y_len())?;
    let d = Dims::new(g, h_out, w_out);
    let x_group = d.c * g.h * g.w;
    let par = gemm_par(g.n * g.groups);
    // One task per (image, group): y's slice for it is contiguous [M, P].
    y.par_chunks_mut(d.m * d.p)
        .enumerate()
        .for_each(|(t, y_g)| {
            let (img, grp) = (t / g.groups, t % g.groups);
            let x_off = img * g.c_in * g.h * g.w + grp * x_group;
            let x_g = &x[x_off..x_off + x_group];
            let w_g = &w[grp * d.m * d.kk..(grp + 1) * d.m * d.kk];
            // Start from the bias, then accumulate the GEMM on top of it.
            for (m, row) in y_g.chunks_exact_mut(d.p).enumerate() {
                row.fill(b[grp * d.m + m]);
            }
            with_scratch(d.kk * d.p, |col| {
                im2col(g, &d, x_g, col);
                sgemm(
                    d.m,
                    d.p,
                    d.kk,
                    y_g,
                    d.p,
                    true,
                    MatRef {
                        data: w_g,
                        rs: d.kk,
                        cs: 1,
                    },
                    MatRef {
                        data: col,
                        rs: d.p,
                        cs: 1,
                    },
                    par,
                );
            });
        });
    Ok(())
}

/// dx = conv_transpose(dy, w): dx_g = col2im(w_g^T . dy_g), per image and group.
pub fn conv2d_backward_data(g: &ConvGeom, w: &[f32], dy: &[f32], dx: &mut [f32]) -> Result<()> {
    const OP: &str = "conv2d_backward_data";
    let (h_out, w_out) = validate(OP, g)?;
    check_len(OP, "w", w.len(), g.w_len())?;
    check_len(OP, "dy", dy.len(), g.y_len())?;
    check_len(OP, "dx", dx.len(), g.x_len())?;
    let d = Dims::new(g, h_out, w_out);
    let x_group = d.c * g.h * g.w;
    let par = gemm_par(g.n * g.groups);
    // One task per (image, group): dx's slice for it is contiguous [C, h, w].
    dx.par_chunks_mut(x_group)
        .enumerate()
        .for_each(|(t, dx_g)| {
            let (img, grp) = (t / g.groups, t % g.groups);
            let y_off = (img * g.c_out + grp * d.m) * d.p;
            let dy_g = &dy[y_off..y_off + d.m * d.p];
            let w_g = &w[grp * d.m * d.kk..(grp + 1) * d.m * d.kk];
            with_scratch(d.kk * d.p, |dcol| {
                // dcol[K, P] = w_g^T[K, M] . dy_g[M, P]; w_g^T(r, m) = w_g[m*K + r]
                sgemm(
                    d.kk,
                    d.p,
                    d.m,
                    dcol,
                    d.p,
                    false,
                    MatRef {
                        data: w_g,
                        rs: 1,
                        cs: d.kk,
                    },
                    MatRef {
                        data: dy_g,
                        rs: d.p,
                        cs: 1,
                    },
                    par,
                );
                col2im(g, &d, dcol, dx_g);
            });
        });
    Ok(())
}

/// The batch's chunks in a weight gradient: a fixed count, not one per
/// thread, because a float sum depends on its order. With one chunk per
/// thread a run resumed with other --threads, or on a machine with other
/// cores, went on from the checkpoint with other weights.
pub const FILTER_CHUNKS: usize = 16;

/// dw = sum over images of dy_g . im2col(x_g)^T. The batch is split into
/// `FILTER_CHUNKS` contiguous chunks of images (fewer for a smaller batch),
/// run in parallel; each sums into its own copy of dw (the first chunk
/// straight into `dw`; the copies kept between calls, `with_partials`),
/// its first image's product written rather than added to zeros, and the
/// copies are summed in chunk order.
pub fn conv2d_backward_filter(g: &ConvGeom, x: &[f32], dy: &[f32], dw: &mut [f32]) -> Result<()> {
    const OP: &str = "conv2d_backward_filter";
    let (h_out, w_out) = validate(OP, g)?;
    check_len(OP, "x", x.len(), g.x_len())?;
    check_len(OP, "dy", dy.len(), g.y_len())?;
    check_len(OP, "dw", dw.len(), g.w_len())?;
    let d = Dims::new(g, h_out, w_out);
    let w_len = dw.len();
    if g.n == 0 {
        dw.fill(0.0);
        return Ok(());
    }
    let chunks = g.n.min(FILTER_CHUNKS);
    let per_chunk = g.n.div_ceil(chunks);
    let chunks = g.n.div_ceil(per_chunk);
    let par = gemm_par(chunks);

    // The sum of images [i0, i1) into acc (its contents ignored).
    let accumulate = |i0: usize, i1: usize, acc: &mut [f32]| {
        with_scratch(d.kk * d.p, |col| {
            for img in i0..i1 {
                for grp in 0..g.groups {
                    let x_off = (img * g.c_in + grp * d.c) * g.h * g.w;
                    im2col(g, &d, &x[x_off..x_off + d.c * g.h * g.w], col);
                    let y_off = (img * g.c_out + grp * d.m) * d.p;
                    let dw_g = &mut acc[grp * d.m * d.kk..(grp + 1) * d.m * d.kk];
                    // dw_g[M, K] += dy_g[M, P] . col^T[P, K]; col^T(p, r) = col[r*P + p]
                    sgemm(
                        d.m,
                        d.kk,
                        d.p,
                        dw_g,
                        d.kk,
                        img > i0,
                        MatRef {
                            data: &dy[y_off..y_off + d.m * d.p],
                            rs: d.p,
                            cs: 1,
                        },
                        MatRef {
                            data: col,
                            rs: 1,
                            cs: d.p,
                        },
                        par,
                    );
                }
            }
        });
    };

    with_partials((chunks - 1) * w_len, |partial| {
        rayon::scope(|s| {
            for (t, acc) in partial.chunks_mut(w_len).enumerate() {
                let i0 = (t + 1) * per_chunk;
                let i1 = (i0 + per_chunk).min(g.n);
                let accumulate = &accumulate;
                s.spawn(move |_| accumulate(i0, i1, acc));
            }
            accumulate(0, per_chunk.min(g.n), &mut *dw);
        });
        // Reduce the other chunks' partial sums into dw.
        for acc in partial.chunks(w_len) {
            dw.par_chunks_mut(1 << 14)
                .zip(acc.par_chunks(1 << 14))
                .for_each(|(o, a)| o.iter_mut().zip(a).for_each(|(o, a)| *o += a));
        }
    });
    Ok(())
}

/// db[c] = sum over n, h_out, w_out of dy[n, c, :, :].
pub fn conv2d_backward_bias(g: &ConvGeom, dy: &[f32], db: &mut [f32]) -> Result<()> {
    const OP: &str = "conv2d_backward_bias";
    let (h_out, w_out) = validate(OP, g)?;
    check_len(OP, "dy", dy.len(), g.y_len())?;
    check_len(OP, "db", db.len(), g.c_out)?;
    let p = h_out * w_out;
    db.par_iter_mut().enumerate().for_each(|(c, out)| {
        // sum in f64: a channel can hold 16 * 55 * 55 terms
        let mut acc = 0.0f64;
        for img in 0..g.n {
            let plane = &dy[(img * g.c_out + c) * p..(img * g.c_out + c + 1) * p];
            acc += plane.iter().map(|&v| v as f64).sum::<f64>();
        }
        *out = acc as f32;
    });
    Ok(())
}
