//! Fully connected layers on the CPU, one multi-threaded GEMM per op (the
//! forward and the input gradient, whose batch is their few rows, split
//! by output columns: `sgemm_by_columns`):
//!   forward:  y[n, out]   = x[n, in] . w[out, in]^T + b[out]
//!   data:     dx[n, in]   = dy[n, out] . w[out, in]
//!   weight:   dw[out, in] = dy[n, out]^T . x[n, in]
//!   bias:     db[out]     = sum over n of dy[n, out]
use rayon::prelude::*;

use super::{checked_product, sgemm, sgemm_by_columns, MatRef};
use crate::backend::LinearGeom;
use crate::error::{check_len, Result};

const PAR: gemm::Parallelism = gemm::Parallelism::Rayon(0);

fn validate(op: &'static str, g: &LinearGeom) -> Result<()> {
    checked_product(op, "x", &[g.n, g.inp])?;
    checked_product(op, "y", &[g.n, g.out])?;
    checked_product(op, "w", &[g.out, g.inp])?;
    Ok(())
}

/// y = x w^T + b.
pub fn linear_forward(
    g: &LinearGeom,
    x: &[f32],
    w: &[f32],
    b: &[f32],
    y: &mut [f32],
) -> Result<()> {
    const OP: &str = "linear_forward";
    validate(OP, g)?;
    check_len(OP, "x", x.len(), g.n * g.inp)?;
    check_len(OP, "w", w.len(), g.out * g.inp)?;
    check_len(OP, "b", b.len(), g.out)?;
    check_len(OP, "y", y.len(), g.n * g.out)?;
    if g.out == 0 {
        return Ok(());
    }
    // Start every row from the bias, then accumulate x . w^T on top.
    for row in y.chunks_exact_mut(g.out) {
        row.copy_from_slice(b);
    }
    // w^T(i, o) = w[o*in + i]
    sgemm_by_columns(
        g.n,
        g.out,
        g.inp,
        y,
        g.out,
        true,
        MatRef {
            data: x,
            rs: g.inp,
            cs: 1,
        },
        MatRef {
            data: w,
            rs: 1,
            cs: g.inp,
        },
    );
    Ok(())
}

/// dx = dy w.
pub fn linear_backward_data(g: &LinearGeom, w: &[f32], dy: &[f32], dx: &mut [f32]) -> Result<()> {
    const OP: &str = "linear_backward_data";
    validate(OP, g)?;
    check_len(OP, "w", w.len(), g.out * g.inp)?;
    check_len(OP, "dy", dy.len(), g.n * g.out)?;
    check_len(OP, "dx", dx.len(), g.n * g.inp)?;
    sgemm_by_columns(
        g.n,
        g.inp,
        g.out,
        dx,
        g.inp,
        false,
        MatRef {
            data: dy,
            rs: g.out,
            cs: 1,
        },
        MatRef {
            data: w,
            rs: g.inp,
            cs: 1,
        },
    );
    Ok(())
}

/// dw = dy^T x.
pub fn linear_backward_weight(g: &LinearGeom, x: &[f32], dy: &[f32], dw: &mut [f32]) -> Result<()> {
    const OP: &str = "linear_backward_weight";
    validate(OP, g)?;
    check_len(OP, "x", x.len(), g.n * g.inp)?;
    check_len(OP, "dy", dy.len(), g.n * g.out)?;
    check_len(OP, "dw", dw.len(), g.out * g.inp)?;
    // dy^T(o, j) = dy[j*out + o]
    sgemm(
        g.out,
        g.inp,
        g.n,
        dw,
        g.inp,
        false,
        MatRef {
            data: dy,
            rs: 1,
            cs: g.out,
        },
        MatRef {
            data: x,
            rs: g.inp,
            cs: 1,
        },
        PAR,
    );
    Ok(())
}

/// db = column sums of dy.
pub fn linear_backward_bias(g: &LinearGeom, dy: &[f32], db: &mut [f32]) -> Result<()> {
    const OP: &str = "linear_backward_bias";
    validate(OP, g)?;
    check_len(OP, "dy", dy.len(), g.n * g.out)?;
    check_len(OP, "db", db.len(), g.out)?;
    // Columns in parallel blocks; rows in the inner loop keep the block's reads contiguous.
    const BLOCK: usize = 256;
    db.par_chunks_mut(BLOCK).enumerate().for_each(|(bi, out)| {
        let cols = bi * BLOCK..bi * BLOCK + out.len();
        out.fill(0.0);
        for row in dy.chunks_exact(g.out) {
            for (o, v) in out.iter_mut().zip(&row[cols.clone()]) {
                *o += v;
            }
        }
    });
    Ok(())
}
