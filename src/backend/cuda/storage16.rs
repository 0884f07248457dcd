//! How values are stored in 16 bits on the CUDA backend, shared by every
//! file that runs a 16-bit op (mixed.rs, conv_fallback.rs, linear.rs, ...):
//! `Precision`; the host-side conversions (the `half` crate, round to nearest
//! even, as the conversion kernels); the accessors for a buffer's 16-bit
//! values and its f32 master; and `GemmEx`, the shape of one cublasGemmEx
//! call. A leaf of the backend: the ops import it, it imports no op.
use std::fmt;
use std::str::FromStr;

use cudarc::cublas::sys as blas;
use cudarc::driver::CudaSlice;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use half::{bf16, f16};

use super::CudaBuf;
use crate::error::{Error, Result};

/// How activations and the weights the libraries read are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// Everything f32: the default and the reference.
    #[default]
    F32,
    /// IEEE half (5 exponent, 10 mantissa bits), with dynamic loss scaling.
    F16,
    /// bfloat16 (8 exponent, 7 mantissa bits): f32's range, no loss scaling.
    Bf16,
}

impl Precision {
    /// Whether training needs dynamic loss scaling: only fp16, whose range
    /// (6.1e-5 .. 65504 normal) flushes small gradients to zero.
    pub fn needs_loss_scaling(self) -> bool {
        self == Precision::F16
    }

    /// Whether activations are stored in 16 bits.
    pub fn is_half(self) -> bool {
        self != Precision::F32
    }

    /// The flag value: "fp32", "fp16" or "bf16".
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "fp32",
            Precision::F16 => "fp16",
            Precision::Bf16 => "bf16",
        }
    }

    /// cuBLAS's type for values stored in this precision.
    pub(crate) fn blas_type(self) -> blas::cudaDataType {
        match self {
            Precision::F32 => blas::cudaDataType::CUDA_R_32F,
            Precision::F16 => blas::cudaDataType::CUDA_R_16F,
            Precision::Bf16 => blas::cudaDataType::CUDA_R_16BF,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" | "f32" | "float32" => Ok(Precision::F32),
            "fp16" | "f16" | "float16" | "half" => Ok(Precision::F16),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            _ => Err(Error::Config(format!(
                "precision {s:?}: expected fp32, fp16 or bf16"
            ))),
        }
    }
}

// -- host conversions ----------------------------------------------------------------

/// dst = src rounded to `p`'s 16 bits (nearest even, as f32_to_f16 / f32_to_bf16).
pub fn narrow_host(p: Precision, src: &[f32], dst: &mut [u16]) {
    match p {
        Precision::Bf16 => dst
            .reinterpret_cast_mut::<bf16>()
            .convert_from_f32_slice(src),
        // F32 never stores 16-bit buffers; fp16 is the only other format.
        Precision::F16 | Precision::F32 => dst
            .reinterpret_cast_mut::<f16>()
            .convert_from_f32_slice(src),
    }
}

/// dst = src's 16-bit values widened to f32 (exact).
pub fn widen_host(p: Precision, src: &[u16], dst: &mut [f32]) {
    match p {
        Precision::Bf16 => src.reinterpret_cast::<bf16>().convert_to_f32_slice(dst),
        Precision::F16 | Precision::F32 => src.reinterpret_cast::<f16>().convert_to_f32_slice(dst),
    }
}

// -- storage accessors ------------------------------------------------------------------

/// A buffer that should hold 16-bit values has none (it came from a backend
/// in another precision, or is an index buffer).
pub(crate) fn no_half(op: &'static str, what: &str) -> Error {
    Error::Shape {
        op,
        detail: format!("{what} has no 16-bit storage (a buffer made in another precision?)"),
    }
}

/// The 16-bit values of a buffer read by a 16-bit op: an activation's, or a
/// parameter's shadow (kept equal to its rounded master).
pub(crate) fn half_of<'a>(
    op: &'static str,
    what: &str,
    b: &'a CudaBuf<f32>,
) -> Result<&'a CudaSlice<u16>> {
    b.half.as_ref().ok_or_else(|| no_half(op, what))
}

/// The 16-bit values of an activation a 16-bit op writes. A parameter is
/// refused: writing its shadow alone would leave its f32 master stale.
pub(crate) fn half_out<'a>(
    op: &'static str,
    what: &str,
    b: &'a mut CudaBuf<f32>,
) -> Result<&'a mut CudaSlice<u16>> {
    if b.master {
        return Err(Error::Shape {
            op,
            detail: format!(
                "{what} is a parameter buffer (alloc_param); this op writes 16-bit activations"
            ),
        });
    }
    b.half.as_mut().ok_or_else(|| no_half(op, what))
}

/// A buffer whose f32 `data` an op reads or writes must hold its values
/// there (f32 buffers and parameters do; a 16-bit activation's `data` is a
/// one-element placeholder a kernel must never index).
pub(crate) fn check_master(op: &'static str, what: &str, b: &CudaBuf<f32>) -> Result<()> {
    if b.master {
        Ok(())
    } else {
        Err(Error::Shape {
            op,
            detail: format!(
                "{what} must be an f32 parameter buffer (alloc_param) in 16-bit mode, \
                 not a 16-bit activation"
            ),
        })
    }
}

// -- the cublasGemmEx call ---------------------------------------------------------------

/// One (strided-batched) column-major GEMM with 16-bit A and B, f32
/// accumulation (CUBLAS_COMPUTE_32F, tensor cores) and C in `c_type` (16-bit,
/// or f32 for weight gradients, a combination cublasGemmEx allows):
/// C_i = alpha op(A_i) op(B_i) + beta C_i, i < batch, with X_i = X + i * stride_x.
pub(crate) struct GemmEx {
    pub transa: blas::cublasOperation_t,
    pub transb: blas::cublasOperation_t,
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub lda: i32,
    pub ldb: i32,
    pub ldc: i32,
    pub stride_a: i64,
    pub stride_b: i64,
    pub stride_c: i64,
    pub batch: i32,
    pub beta: f32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_parses_its_flag_values_and_only_fp16_scales() {
        for p in [Precision::F32, Precision::F16, Precision::Bf16] {
            assert_eq!(p.as_str().parse::<Precision>().ok(), Some(p));
            assert_eq!(p.needs_loss_scaling(), p == Precision::F16);
        }
        assert_eq!(Precision::default(), Precision::F32);
        assert!(!Precision::F32.is_half());
        assert!("fp8".parse::<Precision>().is_err());
    }

    #[test]
    fn host_conversion_rounds_to_nearest_even_and_widens_exactly() {
        // 1 + 2^-11 lies halfway between fp16's 1 and 1 + 2^-10: even is 1.
        // 1 + 3 * 2^-11 is halfway between 1 + 2^-10 and 1 + 2^-9: even is 1 + 2^-9.
        let src = [
            1.0f32,
            1.0 + 2f32.powi(-11),
            1.0 + 3.0 * 2f32.powi(-11),
            -2.5,
            70000.0,
        ];
        let mut bits = [0u16; 5];
        let mut back = [0f32; 5];
        narrow_host(Precision::F16, &src, &mut bits);
        widen_host(Precision::F16, &bits, &mut back);
        assert_eq!(back[..4], [1.0, 1.0, 1.0 + 2f32.powi(-9), -2.5]);
        assert!(back[4].is_infinite(), "beyond fp16's 65504 is inf");
        // bf16 keeps f32's range: 70000 rounds to 8 mantissa bits (69632 or 70144).
        narrow_host(Precision::Bf16, &src, &mut bits);
        widen_host(Precision::Bf16, &bits, &mut back);
        assert_eq!(back[0], 1.0);
        assert_eq!(back[3], -2.5);
        assert_eq!(back[4], 70144.0);
    }
}
