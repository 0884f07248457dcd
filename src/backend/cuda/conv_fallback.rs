//! Grouped convolution without cuDNN: im2col / col2im kernels + cuBLAS GEMMs.
//! Used when libcudnn is absent, or when `CudaOptions::force_fallback_conv`
//! asks for it. This file owns that path and its scratch memory (the column
//! buffer, bounded by chunking the batch, and the bias partial sums, which
//! the cuDNN path uses too).
//!
//! Per image and group gg (C = c_in/groups, M = c_out/groups, K = C*k*k,
//! P = h_out*w_out), exactly as the CPU reference (cpu/conv.rs):
//!   col[K, P]   = im2col(x_gg)   (the kernel does all c_in channels at once:
//!                 col is [images][c_in*k*k][P], and group gg's rows are the
//!                 contiguous block [gg*K, (gg+1)*K), because row = (c*k + i)*k + j)
//!   forward     y_gg[M, P]  = w_gg[M, K] . col[K, P]             then y += b
//!   back-data   dcol[K, P]  = w_gg^T[K, M] . dy_gg[M, P]         then dx = col2im(dcol)
//!   back-filter dw_gg[M, K] = sum over images of dy_gg[M, P] . col[K, P]^T
//! Row-major products go to column-major cuBLAS as C^T = B^T . A^T (see
//! linear.rs): a row-major [r, c] block is the column-major [c x r] one with
//! leading dimension c. Worked out for each product:
//!   forward:  y^T [P x M]  = col^T-view [P x K] . w^T-view [K x M]
//!             gemm(N, N, m = P, n = M, k = K, A = col (lda P), B = w_gg (ldb K), C = y_gg (ldc P)),
//!             strided-batched over the chunk's images (A stride c_in*k*k*P, B stride 0,
//!             C stride c_out*P).
//!   data:     dcol^T [P x K] = dy^T-view [P x M] . op_T(w^T-view [K x M])
//!             gemm(N, T, m = P, n = K, k = M, A = dy_gg (lda P), B = w_gg (ldb K), C = dcol (ldc P)),
//!             strided-batched over images likewise.
//!   filter:   dw^T [K x M] = op_T(col^T-view [P x K]) . dy^T-view [P x M]
//!             gemm(T, N, m = K, n = M, k = P, A = col (lda P), B = dy_gg (ldb P), C = dw_gg (ldc K)),
//!             strided-batched over the groups of one image (A stride K*P, B stride M*P,
//!             C stride M*K), beta = 0 for the first image and 1 after: images
//!             accumulate into the same dw, so they cannot be one batch.
//!
//! In 16-bit mode (mixed.rs) the same products run as cublasGemmStridedBatchedEx
//! on 16-bit operands with f32 accumulation (`*16` functions): the column
//! buffer is 16-bit (im2col_H / col2im_H), y and dcol are written in 16 bits,
//! and the filter gradient is written and accumulated over images straight
//! into the f32 master dw (C in f32: no rounding between images).
use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N as N, CUBLAS_OP_T as T};
use cudarc::cublas::sys::cudaDataType;
use cudarc::cublas::{Gemm, GemmConfig, StridedBatchedConfig};
use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr, PushKernelArg};

use super::storage16::{check_master, half_of, half_out, GemmEx};
use super::{cfg, cuda_err, int, long, CudaBackend, CudaBuf};
use crate::backend::ConvGeom;
use crate::error::{Error, Result};

/// Most floats the column buffer may hold (256 MiB); the batch is processed in
/// chunks of as many images as fit, at least one.
const COL_BUDGET: usize = 64 << 20;

/// Grow-only scratch of the fallback path.
#[derive(Default)]
pub struct Scratch {
    col: Option<CudaSlice<f32>>,
    /// The 16-bit column buffer (16-bit mode).
    col16: Option<CudaSlice<u16>>,
    partial: Option<CudaSlice<f32>>,
}

/// Sizes derived once per call, as ints for the kernels and cuBLAS.
struct Dims {
    /// c_in/groups, c_out/groups, C*k*k, h_out*w_out
    c: usize,
    m: usize,
    kk: usize,
    p: usize,
    /// floats of one image's column block: c_in*k*k*P
    col_img: usize,
    /// images per chunk
    chunk: usize,
    // kernel ints
    ci: i32,
    h: i32,
    w: i32,
    k: i32,
    stride: i32,
    pad: i32,
    ho: i32,
    wo: i32,
}

fn dims(op: &'static str, g: &ConvGeom) -> Result<Dims> {
    let (ho, wo) = (g.h_out(), g.w_out());
    let c = g.c_in / g.groups;
    let kk = c * g.k * g.k;
    let p = ho * wo;
    let col_img = g
        .c_in
        .checked_mul(g.k * g.k)
        .and_then(|v| v.checked_mul(p))
        .ok_or_else(|| Error::Shape {
            op,
            detail: format!("im2col of {g:?} overflows"),
        })?;
    let chunk = (COL_BUDGET / col_img.max(1)).clamp(1, g.n.max(1));
    // Everything cuBLAS and the kernels index must fit their int arguments.
    int(op, "c_out*P", g.c_out * p)?;
    int(op, "im2col rows", g.c_in * g.k * g.k)?;
    int(op, "images", chunk)?;
    Ok(Dims {
        c,
        m: g.c_out / g.groups,
        kk,
        p,
        col_img,
        chunk,
        ci: int(op, "c_in", g.c_in)?,
        h: int(op, "h", g.h)?,
        w: int(op, "w", g.w)?,
        k: int(op, "k", g.k)?,
        stride: int(op, "stride", g.stride)?,
        pad: int(op, "pad", g.pad)?,
        ho: int(op, "h_out", ho)?,
        wo: int(op, "w_out", wo)?,
    })
}

/// The column buffer, grown to one chunk.
fn col<'a>(
    be: &CudaBackend,
    op: &'static str,
    s: &'a mut Scratch,
    d: &Dims,
) -> Result<&'a mut CudaSlice<f32>> {
    be.ensure(op, &mut s.col, d.chunk * d.col_img)?;
    s.col.as_mut().ok_or_else(|| Error::Cuda {
        op,
        detail: "im2col scratch missing".into(),
    })
}

/// The 16-bit column buffer, grown to one chunk.
fn col16<'a>(
    be: &CudaBackend,
    op: &'static str,
    s: &'a mut Scratch,
    d: &Dims,
) -> Result<&'a mut CudaSlice<u16>> {
    be.ensure(op, &mut s.col16, d.chunk * d.col_img)?;
    s.col16.as_mut().ok_or_else(|| Error::Cuda {
        op,
        detail: "im2col scratch missing".into(),
    })
}

/// col[images][c_in*k*k][P] = im2col(x[i0 .. i0 + images]), with `f` the
/// kernel for x's element type (im2col_f32, or im2col_f16 / _bf16 on u16).
#[allow(clippy::too_many_arguments)]
fn im2col<E: DeviceRepr>(
    be: &CudaBackend,
    op: &'static str,
    f: &CudaFunction,
    g: &ConvGeom,
    d: &Dims,
    x: &CudaSlice<E>,
    i0: usize,
    images: usize,
    col: &mut CudaSlice<E>,
) -> Result<()> {
    let x_img = g.c_in * g.h * g.w;
    let xv = x.slice(i0 * x_img..(i0 + images) * x_img);
    let mut cv = col.slice_mut(..images * d.col_img);
    let imgs = int(op, "images", images)?;
    let mut l = be.stream.launch_builder(f);
    l.arg(&xv)
        .arg(&mut cv)
        .arg(&imgs)
        .arg(&d.ci)
        .arg(&d.h)
        .arg(&d.w);
    l.arg(&d.k).arg(&d.stride).arg(&d.pad).arg(&d.ho).arg(&d.wo);
    // SAFETY: im2col_f32(const float* x, float* col, int images, int c, int h, int w,
    // int k, int stride, int pad, int ho, int wo) and its 16-bit twins (same
    // arguments on unsigned short, matching E = u16): x view holds
    // images*c*h*w, col view images*c*k*k*ho*wo; one thread per column element.
    unsafe { l.launch(cfg(images * d.col_img)) }.map_err(cuda_err(op))?;
    Ok(())
}

/// y = conv(x, w) + b, then max(y, 0) in the same bias pass when `relu`.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    be: &CudaBackend,
    s: &mut Scratch,
    g: &ConvGeom,
    x: &CudaBuf<f32>,
    w: &CudaBuf<f32>,
    b: &CudaBuf<f32>,
    y: &mut CudaBuf<f32>,
    relu: bool,
) -> Result<()> {
    const OP: &str = "conv2d_forward";
    let d = dims(OP, g)?;
    let col = col(be, OP, s, &d)?;
    let y_img = g.c_out * d.p;
    let mut i0 = 0;
    while i0 < g.n {
        let images = d.chunk.min(g.n - i0);
        im2col(
            be,
            OP,
            be.kernels.get("im2col_f32")?,
            g,
            &d,
            &x.data,
            i0,
            images,
            col,
        )?;
        for gg in 0..g.groups {
            let cfg = StridedBatchedConfig {
                gemm: GemmConfig {
                    transa: N,
                    transb: N,
                    m: d.p as i32,
                    n: d.m as i32,
                    k: d.kk as i32,
                    alpha: 1.0f32,
                    lda: d.p as i32,
                    ldb: d.kk as i32,
                    beta: 0.0f32,
                    ldc: d.p as i32,
                },
                batch_size: images as i32,
                stride_a: d.col_img as i64,
                stride_b: 0,
                stride_c: y_img as i64,
            };
            let a = col.slice(gg * d.kk * d.p..images * d.col_img);
            let wv = w.data.slice(gg * d.m * d.kk..(gg + 1) * d.m * d.kk);
            let mut yv = y
                .data
                .slice_mut((i0 * g.c_out + gg * d.m) * d.p..(i0 + images) * y_img);
            // SAFETY: image j of the batch reads col[j*col_img + gg*K*P ..][K*P]
            // (inside the view: j < images), w_gg [M*K] (stride 0), and writes
            // y[(i0 + j)*c_out*P + gg*M*P ..][M*P], inside y (len n*c_out*P, checked).
            unsafe { be.blas.gemm_strided_batched(cfg, &a, &wv, &mut yv) }.map_err(cuda_err(OP))?;
        }
        i0 += images;
    }
    // y += b[channel] (then the ReLU, when fused): y as [n][c_out][P].
    let (c, hw, len, relu) = (
        int(OP, "c_out", g.c_out)?,
        int(OP, "P", d.p)?,
        long(OP, g.y_len())?,
        i32::from(relu),
    );
    let f = be.kernels.get("bias_relu_forward_f32")?;
    let mut l = be.stream.launch_builder(f);
    l.arg(&mut y.data)
        .arg(&b.data)
        .arg(&c)
        .arg(&hw)
        .arg(&len)
        .arg(&relu);
    // SAFETY: bias_relu_forward_f32(float* y, const float* b, int c, int hw,
    // long long len, int relu): y holds len, b holds c.
    unsafe { l.launch(cfg(g.y_len())) }.map_err(cuda_err(OP))?;
    Ok(())
}

/// dx = col2im(w^T . dy), per chunk of images.
pub fn backward_data(
    be: &CudaBackend,
    s: &mut Scratch,
    g: &ConvGeom,
    w: &CudaBuf<f32>,
    dy: &CudaBuf<f32>,
    dx: &mut CudaBuf<f32>,
) -> Result<()> {
    const OP: &str = "conv2d_backward_data";
    let d = dims(OP, g)?;
    let col = col(be, OP, s, &d)?;
    let y_img = g.c_out * d.p;
    let x_img = g.c_in * g.h * g.w;
    let mut i0 = 0;
    while i0 < g.n {
        let images = d.chunk.min(g.n - i0);
        for gg in 0..g.groups {
            let cfg = StridedBatchedConfig {
                gemm: GemmConfig {
                    transa: N,
                    transb: T,
                    m: d.p as i32,
                    n: d.kk as i32,
                    k: d.m as i32,
                    alpha: 1.0f32,
                    lda: d.p as i32,
                    ldb: d.kk as i32,
                    beta: 0.0f32,
                    ldc: d.p as i32,
                },
                batch_size: images as i32,
                stride_a: y_img as i64,
                stride_b: 0,
                stride_c: d.col_img as i64,
            };
            let a = dy
                .data
                .slice((i0 * g.c_out + gg * d.m) * d.p..(i0 + images) * y_img);
            let wv = w.data.slice(gg * d.m * d.kk..(gg + 1) * d.m * d.kk);
            let mut cv = col.slice_mut(gg * d.kk * d.p..images * d.col_img);
            // SAFETY: image j reads dy_gg at (i0 + j)*c_out*P + gg*M*P [M*P] and
            // w_gg [M*K], and writes col[j*col_img + gg*K*P ..][K*P]: all inside
            // the views (j < images), which lie inside the checked buffers.
            unsafe { be.blas.gemm_strided_batched(cfg, &a, &wv, &mut cv) }.map_err(cuda_err(OP))?;
        }
        // dx[i0 .. i0 + images] = col2im(col): a gather, so it overwrites dx.
        let imgs = int(OP, "images", images)?;
        let cv = col.slice(..images * d.col_img);
        let mut xv = dx.data.slice_mut(i0 * x_img..(i0 + images) * x_img);
        let f = be.kernels.get("col2im_f32")?;
        let mut l = be.stream.launch_builder(f);
        l.arg(&cv)
            .arg(&mut xv)
            .arg(&imgs)
            .arg(&d.ci)
            .arg(&d.h)
            .arg(&d.w);
        l.arg(&d.k).arg(&d.stride).arg(&d.pad).arg(&d.ho).arg(&d.wo);
        // SAFETY: col2im_f32(const float* col, float* x, int images, int c, int h, int w,
        // int k, int stride, int pad, int ho, int wo): one thread per input element
        // of the images*c*h*w view, reading the images*c*k*k*P column view.
        unsafe { l.launch(cfg(images * x_img)) }.map_err(cuda_err(OP))?;
        i0 += images;
    }
    Ok(())
}

/// dw = sum over images of dy . col^T, one strided-batched GEMM (over groups) per image.
pub fn backward_filter(
    be: &CudaBackend,
    s: &mut Scratch,
    g: &ConvGeom,
    x: &CudaBuf<f32>,
    dy: &CudaBuf<f32>,
    dw: &mut CudaBuf<f32>,
) -> Result<()> {
    const OP: &str = "conv2d_backward_filter";
    let d = dims(OP, g)?;
    let col = col(be, OP, s, &d)?;
    let y_img = g.c_out * d.p;
    let mut i0 = 0;
    while i0 < g.n {
        let images = d.chunk.min(g.n - i0);
        im2col(
            be,
            OP,
            be.kernels.get("im2col_f32")?,
            g,
            &d,
            &x.data,
            i0,
            images,
            col,
        )?;
        for j in 0..images {
            let img = i0 + j;
            let cfg = StridedBatchedConfig {
                gemm: GemmConfig {
                    transa: T,
                    transb: N,
                    m: d.kk as i32,
                    n: d.m as i32,
                    k: d.p as i32,
                    alpha: 1.0f32,
                    lda: d.p as i32,
                    ldb: d.p as i32,
                    // The first image overwrites dw, the rest accumulate.
                    beta: if img == 0 { 0.0f32 } else { 1.0f32 },
                    ldc: d.kk as i32,
                },
                batch_size: g.groups as i32,
                stride_a: (d.kk * d.p) as i64,
                stride_b: (d.m * d.p) as i64,
                stride_c: (d.m * d.kk) as i64,
            };
            let a = col.slice(j * d.col_img..(j + 1) * d.col_img);
            let bv = dy.data.slice(img * y_img..(img + 1) * y_img);
            // SAFETY: group gg reads col block gg*K*P [K*P] of image j, dy block
            // gg*M*P [M*P] of image img, and writes dw block gg*M*K [M*K]: the
            // views hold groups times each (c_in*k*k*P, c_out*P, c_out*C*k*k).
            unsafe { be.blas.gemm_strided_batched(cfg, &a, &bv, &mut dw.data) }
                .map_err(cuda_err(OP))?;
        }
        i0 += images;
    }
    debug_assert!(d.c * g.groups == g.c_in);
    Ok(())
}

/// db[c] = sum over n and P of dy: per-(image, channel) sums, then per channel
/// (both in f64 inside the kernels, as the CPU reference). The bias
/// gradient of every path, cuDNN's too (faster than cuDNN's own).
pub fn backward_bias(
    be: &CudaBackend,
    s: &mut Scratch,
    n: usize,
    c: usize,
    p: usize,
    dy: &CudaBuf<f32>,
    db: &mut CudaBuf<f32>,
) -> Result<()> {
    const OP: &str = "conv2d_backward_bias";
    if c == 0 {
        return Ok(());
    }
    let (ni, ci, hw) = (int(OP, "n", n)?, int(OP, "c_out", c)?, int(OP, "P", p)?);
    be.ensure(OP, &mut s.partial, n * c)?;
    let Some(partial) = s.partial.as_mut() else {
        return Err(Error::Cuda {
            op: OP,
            detail: "bias scratch missing".into(),
        });
    };
    let half = be.precision().is_half();
    if half {
        // db is f32: a parameter's master (a 16-bit activation's `data` is a placeholder).
        check_master(OP, "db", db)?;
    }
    if n > 0 && half {
        // The 16-bit dy's plane sums, in double into f32 partials.
        let dy16 = half_of(OP, "dy", dy)?;
        let f = be.kernel16("bias_backward_partial_f16", "bias_backward_partial_bf16")?;
        let mut l = be.stream.launch_builder(f);
        l.arg(dy16).arg(&mut *partial).arg(&ni).arg(&ci).arg(&hw);
        // SAFETY: bias_backward_partial_H(const us* dy, float* partial, int n,
        // int c, int hw): dy holds n*c*hw 16-bit values, partial at least n*c.
        unsafe { l.launch(cfg(n * c)) }.map_err(cuda_err(OP))?;
    } else if n > 0 {
        let f = be.kernels.get("bias_backward_partial_f32")?;
        let mut l = be.stream.launch_builder(f);
        l.arg(&dy.data)
            .arg(&mut *partial)
            .arg(&ni)
            .arg(&ci)
            .arg(&hw);
        // SAFETY: bias_backward_partial_f32(const float* dy, float* partial, int n,
        // int c, int hw): dy holds n*c*hw, partial at least n*c.
        unsafe { l.launch(cfg(n * c)) }.map_err(cuda_err(OP))?;
    }
    let f = be.kernels.get("bias_backward_reduce_f32")?;
    let mut l = be.stream.launch_builder(f);
    l.arg(&*partial).arg(&mut db.data).arg(&ni).arg(&ci);
    // SAFETY: bias_backward_reduce_f32(const float* partial, float* db, int n, int c):
    // partial holds n*c, db holds c.
    unsafe { l.launch(cfg(c)) }.map_err(cuda_err(OP))?;
    Ok(())
}

// -- 16-bit (mixed precision) ----------------------------------------------------------

/// As `forward`, on 16-bit x, w (its shadow), y with an f32 bias.
#[allow(clippy::too_many_arguments)]
pub fn forward16(
    be: &CudaBackend,
    s: &mut Scratch,
    g: &ConvGeom,
    x: &CudaBuf<f32>,
    w: &CudaBuf<f32>,
    b: &CudaBuf<f32>,
    y: &mut CudaBuf<f32>,
    relu: bool,
) -> Result<()> {
    const OP: &str = "conv2d_forward";
    let d = dims(OP, g)?;
    let col = col16(be, OP, s, &d)?;
    let (x16, w16) = (half_of(OP, "x", x)?, half_of(OP, "w", w)?);
    let ab = be.precision().blas_type();
    let f = be.kernel16("im2col_f16", "im2col_bf16")?;
    let y_img = g.c_out * d.p;
    {
        let y16 = half_out(OP, "y", y)?;
        let mut i0 = 0;
        while i0 < g.n {
            let images = d.chunk.min(g.n - i0);
            im2col(be, OP, f, g, &d, x16, i0, images, col)?;
            for gg in 0..g.groups {
                let c = GemmEx {
                    transa: N,
                    transb: N,
                    m: d.p as i32,
                    n: d.m as i32,
                    k: d.kk as i32,
                    lda: d.p as i32,
                    ldb: d.kk as i32,
                    ldc: d.p as i32,
                    stride_a: d.col_img as i64,
                    stride_b: 0,
                    stride_c: y_img as i64,
                    batch: images as i32,
                    beta: 0.0,
                };
                let a = col.slice(gg * d.kk * d.p..images * d.col_img);
                let wv = w16.slice(gg * d.m * d.kk..(gg + 1) * d.m * d.kk);
                let mut yv = y16.slice_mut((i0 * g.c_out + gg * d.m) * d.p..(i0 + images) * y_img);
                let (ap, _ga) = a.device_ptr(&be.stream);
                let (bp, _gb) = wv.device_ptr(&be.stream);
                let (cp, _gc) = yv.device_ptr_mut(&be.stream);
                // The same products and bounds as `forward` (see its SAFETY note).
                be.gemm_ex(OP, &c, ap, bp, cp, ab)?;
            }
            i0 += images;
        }
    }
    be.bias_relu16(OP, y, b, g.c_out, d.p, relu)
}

/// As `backward_data`, on 16-bit w (its shadow), dy and dx.
pub fn backward_data16(
    be: &CudaBackend,
    s: &mut Scratch,
    g: &ConvGeom,
    w: &CudaBuf<f32>,
    dy: &CudaBuf<f32>,
    dx: &mut CudaBuf<f32>,
) -> Result<()> {
    const OP: &str = "conv2d_backward_data";
    let d = dims(OP, g)?;
    let col = col16(be, OP, s, &d)?;
    let (w16, dy16) = (half_of(OP, "w", w)?, half_of(OP, "dy", dy)?);
    let dx16 = half_out(OP, "dx", dx)?;
    let ab = be.precision().blas_type();
    let f = be.kernel16("col2im_f16", "col2im_bf16")?;
    let y_img = g.c_out * d.p;
    let x_img = g.c_in * g.h * g.w;
    let mut i0 = 0;
    while i0 < g.n {
        let images = d.chunk.min(g.n - i0);
        for gg in 0..g.groups {
            let c = GemmEx {
                transa: N,
                transb: T,
                m: d.p as i32,
                n: d.kk as i32,
                k: d.m as i32,
                lda: d.p as i32,
                ldb: d.kk as i32,
                ldc: d.p as i32,
                stride_a: y_img as i64,
                stride_b: 0,
                stride_c: d.col_img as i64,
                batch: images as i32,
                beta: 0.0,
            };
            let a = dy16.slice((i0 * g.c_out + gg * d.m) * d.p..(i0 + images) * y_img);
            let wv = w16.slice(gg * d.m * d.kk..(gg + 1) * d.m * d.kk);
            let mut cv = col.slice_mut(gg * d.kk * d.p..images * d.col_img);
            let (ap, _ga) = a.device_ptr(&be.stream);
            let (bp, _gb) = wv.device_ptr(&be.stream);
            let (cp, _gc) = cv.device_ptr_mut(&be.stream);
            // The same products and bounds as `backward_data`.
            be.gemm_ex(OP, &c, ap, bp, cp, ab)?;
        }
        let imgs = int(OP, "images", images)?;
        let cv = col.slice(..images * d.col_img);
        let mut xv = dx16.slice_mut(i0 * x_img..(i0 + images) * x_img);
        let mut l = be.stream.launch_builder(f);
        l.arg(&cv)
            .arg(&mut xv)
            .arg(&imgs)
            .arg(&d.ci)
            .arg(&d.h)
            .arg(&d.w);
        l.arg(&d.k).arg(&d.stride).arg(&d.pad).arg(&d.ho).arg(&d.wo);
        // SAFETY: col2im_H(const us* col, us* x, int images, int c, int h, int w,
        // int k, int stride, int pad, int ho, int wo): col2im_f32's arguments on
        // 16-bit data; one thread per element of the images*c*h*w view.
        unsafe { l.launch(cfg(images * x_img)) }.map_err(cuda_err(OP))?;
        i0 += images;
    }
    Ok(())
}

/// As `backward_filter`, on 16-bit x and dy, accumulating in the f32 master dw.
pub fn backward_filter16(
    be: &CudaBackend,
    s: &mut Scratch,
    g: &ConvGeom,
    x: &CudaBuf<f32>,
    dy: &CudaBuf<f32>,
    dw: &mut CudaBuf<f32>,
) -> Result<()> {
    const OP: &str = "conv2d_backward_filter";
    check_master(OP, "dw", dw)?;
    let d = dims(OP, g)?;
    let col = col16(be, OP, s, &d)?;
    let (x16, dy16) = (half_of(OP, "x", x)?, half_of(OP, "dy", dy)?);
    let f = be.kernel16("im2col_f16", "im2col_bf16")?;
    let y_img = g.c_out * d.p;
    let mut i0 = 0;
    while i0 < g.n {
        let images = d.chunk.min(g.n - i0);
        im2col(be, OP, f, g, &d, x16, i0, images, col)?;
        for j in 0..images {
            let img = i0 + j;
            let c = GemmEx {
                transa: T,
                transb: N,
                m: d.kk as i32,
                n: d.m as i32,
                k: d.p as i32,
                lda: d.p as i32,
                ldb: d.p as i32,
                ldc: d.kk as i32,
                stride_a: (d.kk * d.p) as i64,
                stride_b: (d.m * d.p) as i64,
                stride_c: (d.m * d.kk) as i64,
                batch: g.groups as i32,
                // The first image overwrites dw, the rest accumulate (in f32).
                beta: if img == 0 { 0.0 } else { 1.0 },
            };
            let a = col.slice(j * d.col_img..(j + 1) * d.col_img);
            let bv = dy16.slice(img * y_img..(img + 1) * y_img);
            let (ap, _ga) = a.device_ptr(&be.stream);
            let (bp, _gb) = bv.device_ptr(&be.stream);
            let (cp, _gc) = dw.data.device_ptr_mut(&be.stream);
            // The same products and bounds as `backward_filter`; dw is the f32
            // master of c_out*C*k*k floats (checked).
            be.gemm_ex(OP, &c, ap, bp, cp, cudaDataType::CUDA_R_32F)?;
        }
        i0 += images;
    }
    Ok(())
}
