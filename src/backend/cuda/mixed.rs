//! Mixed-precision training on the CUDA backend (Micikevicius et al., "Mixed
//! Precision Training", ICLR 2018): activations, their gradients and the
//! weights cuDNN / cuBLAS read are stored in 16 bits (fp16 or bf16), so the
//! libraries run on tensor cores and activations take half the memory and
//! bandwidth; every GEMM and convolution accumulates in f32; parameters and
//! gradients keep an f32 master copy (`alloc_param`), momentum is f32
//! alone (`alloc_f32`); the paper's SGD updates the weights and momentum in
//! f32 and writes the rounded 16-bit copy the next forward reads. fp16 (5
//! exponent bits, smallest normal 6.1e-5) needs dynamic loss scaling so
//! small gradients survive; the network does it
//! (model/loss_scale.rs) and this backend only provides the scaled loss
//! gradient in one pass. bf16 has f32's 8 exponent bits and needs no scaling.
//!
//! This file owns every 16-bit single-kernel op; the 16-bit convolution dispatch
//! (cuDNN or the im2col fallback); and `gemm_ex`, the one cublasGemmEx call
//! of the 16-bit GEMMs (FC layers and the fallback convolution).
//!
//! 16-bit kernels are the f32 ones' twins, named `op_f16` / `op_bf16`, with
//! 16-bit values as `unsigned short` (u16 here) and f32 where noted (bias,
//! partial sums, row losses, masters).
use cudarc::cublas::sys as blas;
use cudarc::driver::{CudaFunction, CudaSlice, PushKernelArg};

use super::storage16::{check_master, half_of, half_out, no_half, GemmEx, Precision};
use super::{
    cfg, conv_fallback, cuda_err, int, lock, long, CudaBackend, CudaBuf, ALLOC_LIMIT_NOTE,
};
use crate::backend::{ConvGeom, LrnParams, SgdParams};
use crate::error::{Error, Result};

/// The kernel `base_f16` or `base_bf16`, as the backend's precision.
macro_rules! k16 {
    ($be:expr, $base:literal) => {
        $be.kernel16(concat!($base, "_f16"), concat!($base, "_bf16"))
    };
}

// -- the 16-bit ops -----------------------------------------------------------------------

impl CudaBackend {
    /// The kernel named for the backend's 16-bit format.
    pub(crate) fn kernel16(
        &self,
        f16_name: &'static str,
        bf16_name: &'static str,
    ) -> Result<&CudaFunction> {
        match self.precision {
            Precision::F16 => self.kernels.get(f16_name),
            Precision::Bf16 => self.kernels.get(bf16_name),
            Precision::F32 => Err(Error::Cuda {
                op: "kernel lookup",
                detail: format!("{f16_name}: a 16-bit kernel asked for in fp32 mode"),
            }),
        }
    }

    /// A zeroed device buffer of `len` u16 (one when len is 0).
    pub(crate) fn alloc_u16(&self, op: &'static str, len: usize) -> Result<CudaSlice<u16>> {
        let s = self
            .stream
            .alloc_zeros::<u16>(len.max(1))
            .map_err(|e| Error::Cuda {
                op,
                detail: format!(
                    "allocating {len} 16-bit elements on {}: {e:?}{ALLOC_LIMIT_NOTE}",
                    self.info
                ),
            })?;
        self.count_alloc();
        Ok(s)
    }

    /// A 16-bit activation of `len` values (zero: all-zero bits are +0.0 in
    /// both formats) with a one-element f32 placeholder as `data`.
    pub(crate) fn alloc_half(&self, op: &'static str, len: usize) -> Result<CudaBuf<f32>> {
        let mut b = self.alloc_buf::<f32>(op, 0)?;
        b.len = len;
        b.half = Some(self.alloc_u16(op, len)?);
        b.master = false;
        Ok(b)
    }

    /// half = f32_to_H(data): a parameter's 16-bit shadow after its master
    /// was written (upload).
    pub(crate) fn refresh_shadow(&self, op: &'static str, b: &mut CudaBuf<f32>) -> Result<()> {
        check_master(op, "parameter", b)?;
        let n = b.len;
        let Some(half) = b.half.as_mut() else {
            return Ok(()); // fp32 mode: no shadow
        };
        if n == 0 {
            return Ok(());
        }
        let len = long(op, n)?;
        let f = self.kernel16("f32_to_f16", "f32_to_bf16")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(&b.data).arg(&mut *half).arg(&len);
        // SAFETY: f32_to_H(const float* src, unsigned short* dst, long long len):
        // a parameter's data and shadow both hold len elements (alloc_param).
        unsafe { l.launch(cfg(n)) }.map_err(cuda_err(op))?;
        Ok(())
    }

    /// y = y + b[channel] (then max(y, 0) when `relu`) over a 16-bit y as
    /// [n][c][hw], with the f32 bias: one pass, rounding once.
    pub(crate) fn bias_relu16(
        &self,
        op: &'static str,
        y: &mut CudaBuf<f32>,
        b: &CudaBuf<f32>,
        c: usize,
        hw: usize,
        relu: bool,
    ) -> Result<()> {
        check_master(op, "bias", b)?;
        let n = y.len;
        let (ci, hwi, len, relu) = (
            int(op, "c", c)?,
            int(op, "hw", hw)?,
            long(op, n)?,
            i32::from(relu),
        );
        let y16 = half_out(op, "y", y)?;
        let f = k16!(self, "bias_relu_forward")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(y16)
            .arg(&b.data)
            .arg(&ci)
            .arg(&hwi)
            .arg(&len)
            .arg(&relu);
        // SAFETY: bias_relu_forward_H(us* y, const float* b, int c, int hw,
        // long long len, int relu): y holds len = n*c*hw 16-bit values, b is an
        // f32 master of c floats (both checked by the callers).
        unsafe { l.launch(cfg(n)) }.map_err(cuda_err(op))?;
        Ok(())
    }

    /// The GEMM of `c` on 16-bit A and B (device pointers) into C of `c_type`.
    /// The caller holds the buffers' access guards and has bound the context.
    pub(crate) fn gemm_ex(
        &self,
        op: &'static str,
        c: &GemmEx,
        a: u64,
        b: u64,
        out: u64,
        c_type: blas::cudaDataType,
    ) -> Result<()> {
        let ab = self.precision.blas_type();
        let (alpha, beta) = (1.0f32, c.beta);
        // SAFETY: the callers derive m, n, k, the leading dimensions, strides
        // and batch from buffers whose lengths they checked, so every matrix
        // cuBLAS addresses lies inside them; A and B hold 16-bit values of this
        // backend's format (`ab`) and C holds `c_type`; alpha and beta are f32
        // as CUBLAS_COMPUTE_32F requires; the handle's stream is the compute
        // stream the access guards were recorded on.
        unsafe {
            cudarc::cublas::result::gemm_strided_batched_ex(
                *self.blas.handle(),
                c.transa,
                c.transb,
                c.m,
                c.n,
                c.k,
                (&alpha as *const f32).cast(),
                a as usize as *const std::ffi::c_void,
                ab,
                c.lda,
                c.stride_a,
                b as usize as *const std::ffi::c_void,
                ab,
                c.ldb,
                c.stride_b,
                (&beta as *const f32).cast(),
                out as usize as *mut std::ffi::c_void,
                c_type,
                c.ldc,
                c.stride_c,
                c.batch,
                blas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas::cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
            )
        }
        .map_err(cuda_err(op))
    }

    // -- convolution (checks and bind done by the callers in mod.rs) ----------------------

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn conv_forward16(
        &self,
        op: &'static str,
        g: &ConvGeom,
        x: &CudaBuf<f32>,
        w: &CudaBuf<f32>,
        b: &CudaBuf<f32>,
        y: &mut CudaBuf<f32>,
        relu: bool,
    ) -> Result<()> {
        check_master(op, "b", b)?;
        match (&self.dnn, self.uses_cudnn()) {
            (Some(d), true) => {
                let (x16, w16) = (half_of(op, "x", x)?, half_of(op, "w", w)?);
                let y16 = half_out(op, "y", y)?;
                lock(op, d)?.forward(self.precision, g, x16, w16, None, y16)?;
                // cuDNN's bias add wants the bias in y's type; ours stays f32.
                self.bias_relu16(op, y, b, g.c_out, g.h_out() * g.w_out(), relu)
            }
            _ => {
                conv_fallback::forward16(self, &mut *lock(op, &self.fallback)?, g, x, w, b, y, relu)
            }
        }
    }

    pub(crate) fn conv_backward_data16(
        &self,
        op: &'static str,
        g: &ConvGeom,
        w: &CudaBuf<f32>,
        dy: &CudaBuf<f32>,
        dx: &mut CudaBuf<f32>,
    ) -> Result<()> {
        match (&self.dnn, self.uses_cudnn()) {
            (Some(d), true) => {
                let (w16, dy16) = (half_of(op, "w", w)?, half_of(op, "dy", dy)?);
                let dx16 = half_out(op, "dx", dx)?;
                lock(op, d)?.backward_data(self.precision, g, w16, dy16, dx16)
            }
            _ => {
                conv_fallback::backward_data16(self, &mut *lock(op, &self.fallback)?, g, w, dy, dx)
            }
        }
    }

    /// cuDNN writes the 16-bit filter gradient into dw's shadow (its f32 sums
    /// rounded once; a scaled gradient beyond fp16's range becomes inf, which
    /// the network's unscale_check then reports), widened into the f32 master.
    /// The fallback's GEMM writes the f32 master directly.
    pub(crate) fn conv_backward_filter16(
        &self,
        op: &'static str,
        g: &ConvGeom,
        x: &CudaBuf<f32>,
        dy: &CudaBuf<f32>,
        dw: &mut CudaBuf<f32>,
    ) -> Result<()> {
        check_master(op, "dw", dw)?;
        match (&self.dnn, self.uses_cudnn()) {
            (Some(d), true) => {
                let (x16, dy16) = (half_of(op, "x", x)?, half_of(op, "dy", dy)?);
                let n = dw.len;
                let Some(dw16) = dw.half.as_mut() else {
                    return Err(no_half(op, "dw"));
                };
                lock(op, d)?.backward_filter(self.precision, g, x16, dy16, dw16)?;
                let len = long(op, n)?;
                let f = self.kernel16("f16_to_f32", "bf16_to_f32")?;
                let mut l = self.stream.launch_builder(f);
                l.arg(&*dw16).arg(&mut dw.data).arg(&len);
                // SAFETY: H_to_f32(const us* src, float* dst, long long len): a
                // parameter's shadow and master both hold len = w_len elements.
                unsafe { l.launch(cfg(n)) }.map_err(cuda_err(op))?;
                Ok(())
            }
            _ => conv_fallback::backward_filter16(
                self,
                &mut *lock(op, &self.fallback)?,
                g,
                x,
                dy,
                dw,
            ),
        }
    }

    // -- element-wise, LRN, pooling, dropout (sizes checked by the callers) ----------------

    pub(crate) fn relu_forward16(&self, x: &mut CudaBuf<f32>, len: i64) -> Result<()> {
        const OP: &str = "relu_forward";
        let n = x.len;
        let x16 = half_out(OP, "x", x)?;
        let f = k16!(self, "relu_forward")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(x16).arg(&len);
        // SAFETY: relu_forward_H(us* x, long long len); x holds len 16-bit values.
        unsafe { l.launch(cfg(n)) }.map_err(cuda_err(OP))?;
        Ok(())
    }

    pub(crate) fn relu_backward16(
        &self,
        y: &CudaBuf<f32>,
        dy: &mut CudaBuf<f32>,
        len: i64,
    ) -> Result<()> {
        const OP: &str = "relu_backward";
        let n = y.len;
        let y16 = half_of(OP, "y", y)?;
        let dy16 = half_out(OP, "dy", dy)?;
        let f = k16!(self, "relu_backward")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(y16).arg(dy16).arg(&len);
        // SAFETY: relu_backward_H(const us* y, us* dy, long long len); both hold len.
        unsafe { l.launch(cfg(n)) }.map_err(cuda_err(OP))?;
        Ok(())
    }

    /// dst += src over 16-bit activations (f32 sum, rounded once).
    pub(crate) fn add16(&self, dst: &mut CudaBuf<f32>, src: &CudaBuf<f32>, len: i64) -> Result<()> {
        const OP: &str = "add_assign";
        let n = src.len;
        let s16 = half_of(OP, "src", src)?;
        let d16 = half_out(OP, "dst", dst)?;
        let f = k16!(self, "add")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(d16).arg(s16).arg(&len);
        // SAFETY: add_H(us* dst, const us* src, long long len); both hold len.
        unsafe { l.launch(cfg(n)) }.map_err(cuda_err(OP))?;
        Ok(())
    }

    /// `dims` = (n, c, hw, size) from lrn_dims; `threads` = n * hw.
    pub(crate) fn lrn_forward16(
        &self,
        p: &LrnParams,
        dims: (i32, i32, i32, i32),
        x: &CudaBuf<f32>,
        y: &mut CudaBuf<f32>,
        scale: &mut CudaBuf<f32>,
        threads: usize,
    ) -> Result<()> {
        const OP: &str = "lrn_forward";
        let (n, c, hw, size) = dims;
        let x16 = half_of(OP, "x", x)?;
        let y16 = half_out(OP, "y", y)?;
        let s16 = half_out(OP, "scale", scale)?;
        let f = k16!(self, "lrn_forward")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(x16)
            .arg(y16)
            .arg(s16)
            .arg(&n)
            .arg(&c)
            .arg(&hw)
            .arg(&size);
        l.arg(&p.alpha).arg(&p.beta).arg(&p.k);
        // SAFETY: lrn_forward_H(const us* x, us* y, us* scale, int n, int c, int hw,
        // int size, float alpha, float beta, float k); x, y, scale hold n*c*hw.
        unsafe { l.launch(cfg(threads)) }.map_err(cuda_err(OP))?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn lrn_backward16(
        &self,
        p: &LrnParams,
        dims: (i32, i32, i32, i32),
        x: &CudaBuf<f32>,
        y: &CudaBuf<f32>,
        scale: &CudaBuf<f32>,
        dy: &CudaBuf<f32>,
        dx: &mut CudaBuf<f32>,
        threads: usize,
    ) -> Result<()> {
        const OP: &str = "lrn_backward";
        let (n, c, hw, size) = dims;
        let (x16, y16) = (half_of(OP, "x", x)?, half_of(OP, "y", y)?);
        let (s16, dy16) = (half_of(OP, "scale", scale)?, half_of(OP, "dy", dy)?);
        let dx16 = half_out(OP, "dx", dx)?;
        let f = k16!(self, "lrn_backward")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(x16).arg(y16).arg(s16).arg(dy16).arg(dx16);
        l.arg(&n)
            .arg(&c)
            .arg(&hw)
            .arg(&size)
            .arg(&p.alpha)
            .arg(&p.beta);
        // SAFETY: lrn_backward_H(const us* x, const us* y, const us* scale,
        // const us* dy, us* dx, int n, int c, int hw, int size, float alpha,
        // float beta); all five hold n*c*hw.
        unsafe { l.launch(cfg(threads)) }.map_err(cuda_err(OP))?;
        Ok(())
    }

    /// `a` = pool_args (planes, h, w, ho, wo, size, stride); `threads` = y_len.
    pub(crate) fn max_pool_forward16(
        &self,
        a: &[i32; 7],
        x: &CudaBuf<f32>,
        y: &mut CudaBuf<f32>,
        argmax: &mut CudaBuf<u32>,
        threads: usize,
    ) -> Result<()> {
        const OP: &str = "max_pool_forward";
        let x16 = half_of(OP, "x", x)?;
        let y16 = half_out(OP, "y", y)?;
        let f = k16!(self, "max_pool_forward")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(x16).arg(y16).arg(&mut argmax.data);
        for v in a {
            l.arg(v);
        }
        // SAFETY: max_pool_forward_H(const us* x, us* y, unsigned int* argmax,
        // int planes, int h, int w, int ho, int wo, int size, int stride); x
        // holds planes*h*w, y and argmax planes*ho*wo (checked by the caller).
        unsafe { l.launch(cfg(threads)) }.map_err(cuda_err(OP))?;
        Ok(())
    }

    /// `threads` = x_len (one per input: a gather).
    pub(crate) fn max_pool_backward16(
        &self,
        a: &[i32; 7],
        dy: &CudaBuf<f32>,
        argmax: &CudaBuf<u32>,
        dx: &mut CudaBuf<f32>,
        threads: usize,
    ) -> Result<()> {
        const OP: &str = "max_pool_backward";
        let dy16 = half_of(OP, "dy", dy)?;
        let dx16 = half_out(OP, "dx", dx)?;
        let f = k16!(self, "max_pool_backward")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(dy16).arg(&argmax.data).arg(dx16);
        for v in a {
            l.arg(v);
        }
        // SAFETY: max_pool_backward_H(const us* dy, const unsigned int* argmax,
        // us* dx, int planes, int h, int w, int ho, int wo, int size, int stride);
        // sizes as in forward, checked by the caller.
        unsafe { l.launch(cfg(threads)) }.map_err(cuda_err(OP))?;
        Ok(())
    }

    /// mask holds 0 or 1/(1-p) rounded to 16 bits (exact for p = 0.5: 2.0).
    pub(crate) fn dropout_forward16(
        &self,
        p: f32,
        seed: u64,
        x: &mut CudaBuf<f32>,
        mask: &mut CudaBuf<f32>,
        len: i64,
    ) -> Result<()> {
        const OP: &str = "dropout_forward";
        let n = x.len;
        let x16 = half_out(OP, "x", x)?;
        let m16 = half_out(OP, "mask", mask)?;
        let f = k16!(self, "dropout_forward")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(x16).arg(m16).arg(&seed).arg(&p).arg(&len);
        // SAFETY: dropout_forward_H(us* x, us* mask, unsigned long long seed,
        // float p, long long len); x and mask hold len (checked by the caller).
        unsafe { l.launch(cfg(n)) }.map_err(cuda_err(OP))?;
        Ok(())
    }

    pub(crate) fn dropout_backward16(
        &self,
        mask: &CudaBuf<f32>,
        dy: &mut CudaBuf<f32>,
        len: i64,
    ) -> Result<()> {
        const OP: &str = "dropout_backward";
        let n = dy.len;
        let m16 = half_of(OP, "mask", mask)?;
        let dy16 = half_out(OP, "dy", dy)?;
        let f = k16!(self, "dropout_backward")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(m16).arg(dy16).arg(&len);
        // SAFETY: dropout_backward_H(const us* mask, us* dy, long long len).
        unsafe { l.launch(cfg(n)) }.map_err(cuda_err(OP))?;
        Ok(())
    }

    // -- loss ----------------------------------------------------------------------------

    /// dlogits = (probs - onehot) / n * scale in one pass: the loss scale is
    /// applied in f32 before the single rounding to 16 bits, so gradients
    /// below fp16's range are lifted into it instead of flushed first.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn softmax_xent_backward16(
        &self,
        probs: &CudaBuf<f32>,
        labels: &CudaBuf<u32>,
        dlogits: &mut CudaBuf<f32>,
        ni: i32,
        ci: i32,
        scale: f32,
        threads: usize,
    ) -> Result<()> {
        const OP: &str = "softmax_xent_backward";
        let p16 = half_of(OP, "probs", probs)?;
        let d16 = half_out(OP, "dlogits", dlogits)?;
        let f = k16!(self, "softmax_xent_backward")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(p16)
            .arg(&labels.data)
            .arg(d16)
            .arg(&ni)
            .arg(&ci)
            .arg(&scale);
        // SAFETY: softmax_xent_backward_H(const us* probs, const unsigned int* labels,
        // us* dlogits, int n, int classes, float scale); one thread per element
        // of n*classes, all sizes checked by the caller.
        unsafe { l.launch(cfg(threads)) }.map_err(cuda_err(OP))?;
        Ok(())
    }

    // -- optimiser -------------------------------------------------------------------------

    /// The paper's rule on the f32 masters (v = m v - wd lr w - lr g; w += v),
    /// then w's 16-bit shadow = round(w), in one pass.
    pub(crate) fn sgd_update16(
        &self,
        p: &SgdParams,
        w: &mut CudaBuf<f32>,
        g: &CudaBuf<f32>,
        v: &mut CudaBuf<f32>,
        len: i64,
    ) -> Result<()> {
        const OP: &str = "sgd_update";
        check_master(OP, "w", w)?;
        check_master(OP, "g", g)?;
        check_master(OP, "v", v)?;
        let n = w.len;
        let CudaBuf { data, half, .. } = w;
        let Some(w16) = half.as_mut() else {
            return Err(no_half(OP, "w"));
        };
        let f = k16!(self, "sgd_update_f32_store")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(data).arg(&g.data).arg(&mut v.data).arg(w16);
        l.arg(&p.lr).arg(&p.momentum).arg(&p.weight_decay).arg(&len);
        // SAFETY: sgd_update_f32_store_H(float* w, const float* g, float* v, us* w16,
        // float lr, float momentum, float weight_decay, long long len): w, g, v
        // are f32 masters of len floats (checked), w16 w's shadow of len.
        unsafe { l.launch(cfg(n)) }.map_err(cuda_err(OP))?;
        Ok(())
    }
}
