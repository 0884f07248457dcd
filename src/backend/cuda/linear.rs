//! Fully connected layers on cuBLAS (this file owns every GEMM call of the
//! FC layers and the bias handling around them).
//!
//! Row-major vs column-major: our matrices are row-major, cuBLAS's are
//! column-major. A row-major [r, c] matrix with row stride c is, byte for
//! byte, the column-major [c, r] matrix with leading dimension c, i.e. its
//! transpose. So a row-major product C = A . B is issued as the column-major
//! product C^T = B^T . A^T: swap the operands, keep each one's memory as is.
//! With that, for x [n, in], w [out, in], y [n, out] (all row-major):
//!   forward   y  = x . w^T   ->  y^T [out x n]  = op_T(w^T-view [in x out]) . x^T-view [in x n]
//!             gemm(T, N, m = out, n = n,   k = in,  A = w (lda in),  B = x (ldb in),   C = y (ldc out))
//!   data      dx = dy . w    ->  dx^T [in x n]  = w^T-view [in x out] . dy^T-view [out x n]
//!             gemm(N, N, m = in,  n = n,   k = out, A = w (lda in),  B = dy (ldb out), C = dx (ldc in))
//!   weight    dw = dy^T . x  ->  dw^T [in x out] = x^T-view [in x n] . op_T(dy^T-view [out x n])
//!             gemm(N, T, m = in,  n = out, k = n,   A = x (lda in),  B = dy (ldb out), C = dw (ldc in))
//!   bias      db = column sums of dy: bias_backward_reduce_f32 over dy seen as
//!             [n][c = out] "planes" of one pixel (the partial-sum layout it expects).
//!
//! 16-bit mode (mixed.rs): the same three products through cublasGemmEx with
//! 16-bit A and B (w's shadow, 16-bit activations) and f32 accumulation; y
//! and dx are written in 16 bits, dw straight into its f32 master (C in f32).
//! The f32 bias is added by bias_relu_forward_H; db goes through
//! bias_backward_partial_H with hw = 1 (each partial is one dy widened) and
//! the f32 reduce.
use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N as N, CUBLAS_OP_T as T};
use cudarc::cublas::sys::cudaDataType;
use cudarc::cublas::{Gemm, GemmConfig};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, PushKernelArg};

use super::storage16::{check_master, half_of, half_out, GemmEx};
use super::{cfg, conv_fallback, cuda_err, int, lock, long, CudaBackend, CudaBuf};
use crate::backend::LinearGeom;
use crate::error::{check_len, Error, Result};

fn validate(op: &'static str, g: &LinearGeom) -> Result<(i32, i32, i32)> {
    for (what, a, b) in [("x", g.n, g.inp), ("y", g.n, g.out), ("w", g.out, g.inp)] {
        a.checked_mul(b).ok_or_else(|| Error::Shape {
            op,
            detail: format!("{what} [{a}, {b}] overflows"),
        })?;
    }
    Ok((
        int(op, "n", g.n)?,
        int(op, "in", g.inp)?,
        int(op, "out", g.out)?,
    ))
}

/// y = x w^T + b, then max(y, 0) in the same bias pass when `relu`.
pub fn forward(
    be: &CudaBackend,
    g: &LinearGeom,
    x: &CudaBuf<f32>,
    w: &CudaBuf<f32>,
    b: &CudaBuf<f32>,
    y: &mut CudaBuf<f32>,
    relu: bool,
) -> Result<()> {
    const OP: &str = "linear_forward";
    let (n, inp, out) = validate(OP, g)?;
    check_len(OP, "x", x.len(), g.n * g.inp)?;
    check_len(OP, "w", w.len(), g.out * g.inp)?;
    check_len(OP, "b", b.len(), g.out)?;
    check_len(OP, "y", y.len(), g.n * g.out)?;
    if g.n == 0 || g.out == 0 {
        return Ok(());
    }
    be.bind(OP)?;
    if be.precision().is_half() {
        check_master(OP, "b", b)?;
        {
            let (w16, x16) = (half_of(OP, "w", w)?, half_of(OP, "x", x)?);
            let y16 = half_out(OP, "y", y)?;
            if g.inp == 0 {
                be.stream.memset_zeros(y16).map_err(cuda_err(OP))?;
            } else {
                gemm16(
                    be,
                    OP,
                    (T, N),
                    (out, n, inp),
                    (inp, inp, out),
                    w16,
                    x16,
                    y16,
                )?;
            }
        }
        return be.bias_relu16(OP, y, b, g.out, 1, relu);
    }
    if g.inp == 0 {
        be.stream.memset_zeros(&mut y.data).map_err(cuda_err(OP))?;
    } else {
        let c = GemmConfig {
            transa: T,
            transb: N,
            m: out,
            n,
            k: inp,
            alpha: 1.0f32,
            lda: inp,
            ldb: inp,
            beta: 0.0f32,
            ldc: out,
        };
        // SAFETY: w holds out*in, x n*in, y n*out floats (checked), which is
        // exactly what the dimensions and leading dimensions above address.
        unsafe { be.blas.gemm(c, &w.data, &x.data, &mut y.data) }.map_err(cuda_err(OP))?;
    }
    // y[i] += b[i % out] (then the ReLU, when fused): y as [n][c = out][hw = 1].
    let (c, hw, len, relu) = (out, 1i32, long(OP, g.n * g.out)?, i32::from(relu));
    let f = be.kernels.get("bias_relu_forward_f32")?;
    let mut l = be.stream.launch_builder(f);
    l.arg(&mut y.data)
        .arg(&b.data)
        .arg(&c)
        .arg(&hw)
        .arg(&len)
        .arg(&relu);
    // SAFETY: bias_relu_forward_f32(float* y, const float* b, int c, int hw,
    // long long len, int relu); y holds len = n*out, b holds c = out.
    unsafe { l.launch(cfg(g.n * g.out)) }.map_err(cuda_err(OP))?;
    Ok(())
}

/// dx = dy w.
pub fn backward_data(
    be: &CudaBackend,
    g: &LinearGeom,
    w: &CudaBuf<f32>,
    dy: &CudaBuf<f32>,
    dx: &mut CudaBuf<f32>,
) -> Result<()> {
    const OP: &str = "linear_backward_data";
    let (n, inp, out) = validate(OP, g)?;
    check_len(OP, "w", w.len(), g.out * g.inp)?;
    check_len(OP, "dy", dy.len(), g.n * g.out)?;
    check_len(OP, "dx", dx.len(), g.n * g.inp)?;
    if g.n == 0 || g.inp == 0 {
        return Ok(());
    }
    be.bind(OP)?;
    if be.precision().is_half() {
        let (w16, dy16) = (half_of(OP, "w", w)?, half_of(OP, "dy", dy)?);
        let dx16 = half_out(OP, "dx", dx)?;
        if g.out == 0 {
            return be.stream.memset_zeros(dx16).map_err(cuda_err(OP));
        }
        return gemm16(
            be,
            OP,
            (N, N),
            (inp, n, out),
            (inp, out, inp),
            w16,
            dy16,
            dx16,
        );
    }
    if g.out == 0 {
        return be.stream.memset_zeros(&mut dx.data).map_err(cuda_err(OP));
    }
    let c = GemmConfig {
        transa: N,
        transb: N,
        m: inp,
        n,
        k: out,
        alpha: 1.0f32,
        lda: inp,
        ldb: out,
        beta: 0.0f32,
        ldc: inp,
    };
    // SAFETY: w holds out*in, dy n*out, dx n*in floats (checked).
    unsafe { be.blas.gemm(c, &w.data, &dy.data, &mut dx.data) }.map_err(cuda_err(OP))
}

/// dw = dy^T x.
pub fn backward_weight(
    be: &CudaBackend,
    g: &LinearGeom,
    x: &CudaBuf<f32>,
    dy: &CudaBuf<f32>,
    dw: &mut CudaBuf<f32>,
) -> Result<()> {
    const OP: &str = "linear_backward_weight";
    let (n, inp, out) = validate(OP, g)?;
    check_len(OP, "x", x.len(), g.n * g.inp)?;
    check_len(OP, "dy", dy.len(), g.n * g.out)?;
    check_len(OP, "dw", dw.len(), g.out * g.inp)?;
    if g.out == 0 || g.inp == 0 {
        return Ok(());
    }
    be.bind(OP)?;
    if be.precision().is_half() {
        // dw is an f32 master; its `data` is what is zeroed or written below.
        check_master(OP, "dw", dw)?;
    }
    if g.n == 0 {
        // An empty sum: the overwritten gradient is zero.
        return be.stream.memset_zeros(&mut dw.data).map_err(cuda_err(OP));
    }
    if be.precision().is_half() {
        let (x16, dy16) = (half_of(OP, "x", x)?, half_of(OP, "dy", dy)?);
        let c = GemmEx {
            transa: N,
            transb: T,
            m: inp,
            n: out,
            k: n,
            lda: inp,
            ldb: out,
            ldc: inp,
            stride_a: 0,
            stride_b: 0,
            stride_c: 0,
            batch: 1,
            beta: 0.0,
        };
        let (ap, _ga) = x16.device_ptr(&be.stream);
        let (bp, _gb) = dy16.device_ptr(&be.stream);
        let (cp, _gc) = dw.data.device_ptr_mut(&be.stream);
        // x holds n*in and dy n*out 16-bit values, dw out*in floats (checked).
        return be.gemm_ex(OP, &c, ap, bp, cp, cudaDataType::CUDA_R_32F);
    }
    let c = GemmConfig {
        transa: N,
        transb: T,
        m: inp,
        n: out,
        k: n,
        alpha: 1.0f32,
        lda: inp,
        ldb: out,
        beta: 0.0f32,
        ldc: inp,
    };
    // SAFETY: x holds n*in, dy n*out, dw out*in floats (checked).
    unsafe { be.blas.gemm(c, &x.data, &dy.data, &mut dw.data) }.map_err(cuda_err(OP))
}

/// db = column sums of dy (sums in f64 inside the kernel; the CPU keeps an
/// f32 running sum per column, so the two can differ by its rounding).
pub fn backward_bias(
    be: &CudaBackend,
    g: &LinearGeom,
    dy: &CudaBuf<f32>,
    db: &mut CudaBuf<f32>,
) -> Result<()> {
    const OP: &str = "linear_backward_bias";
    let (n, _, out) = validate(OP, g)?;
    check_len(OP, "dy", dy.len(), g.n * g.out)?;
    check_len(OP, "db", db.len(), g.out)?;
    if g.out == 0 {
        return Ok(());
    }
    if be.precision().is_half() {
        // Per-(row, unit) partials of one pixel each, widened, then the reduce.
        return conv_fallback::backward_bias(
            be,
            &mut *lock(OP, &be.fallback)?,
            g.n,
            g.out,
            1,
            dy,
            db,
        );
    }
    let f = be.kernels.get("bias_backward_reduce_f32")?;
    let mut l = be.stream.launch_builder(f);
    l.arg(&dy.data).arg(&mut db.data).arg(&n).arg(&out);
    // SAFETY: bias_backward_reduce_f32(const float* partial, float* db, int n, int c)
    // reads partial[i * c + ch] for i < n, ch < c: dy is [n][out]; db holds out.
    unsafe { l.launch(cfg(g.out)) }.map_err(cuda_err(OP))?;
    Ok(())
}

/// One plain GEMM on 16-bit operands into a 16-bit C: `t` = (transa, transb),
/// `mnk` = (m, n, k), `ld` = (lda, ldb, ldc), as in the f32 configs above.
#[allow(clippy::too_many_arguments)]
fn gemm16(
    be: &CudaBackend,
    op: &'static str,
    t: (
        cudarc::cublas::sys::cublasOperation_t,
        cudarc::cublas::sys::cublasOperation_t,
    ),
    mnk: (i32, i32, i32),
    ld: (i32, i32, i32),
    a: &CudaSlice<u16>,
    b: &CudaSlice<u16>,
    c: &mut CudaSlice<u16>,
) -> Result<()> {
    let cfg = GemmEx {
        transa: t.0,
        transb: t.1,
        m: mnk.0,
        n: mnk.1,
        k: mnk.2,
        lda: ld.0,
        ldb: ld.1,
        ldc: ld.2,
        stride_a: 0,
        stride_b: 0,
        stride_c: 0,
        batch: 1,
        beta: 0.0,
    };
    let (ap, _ga) = a.device_ptr(&be.stream);
    let (bp, _gb) = b.device_ptr(&be.stream);
    let (cp, _gc) = c.device_ptr_mut(&be.stream);
    // The callers checked every buffer's length against the same dimensions
    // as the f32 path's (see the module note).
    be.gemm_ex(op, &cfg, ap, bp, cp, be.precision().blas_type())
}
