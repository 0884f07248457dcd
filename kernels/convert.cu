// Precision conversions for mixed-precision buffers, 16-bit values stored as
// unsigned short (the conversion functions themselves are in prelude.cuh):
//   f32_to_f16 / f32_to_bf16: round to nearest, ties to even;
//   f16_to_f32 / bf16_to_f32: exact;
//   unscale_check_f32: g *= inv_scale, and *overflow = 1 if any result is
//     infinite or NaN (loss scaling: the step is skipped);
//   f16_to_f32_unscale_check / bf16_to_f32_unscale_check: the same from a
//     16-bit gradient into an f32 one, dst = widen(src) * inv_scale.
// Every thread that sees a non-finite value writes the same value 1, so no
// atomics are needed; the caller zeroes *overflow before the launch.

extern "C" __global__ void f32_to_f16(const float* __restrict__ src, unsigned short* __restrict__ dst,
                                      long long len)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (long long)blockDim.x * gridDim.x) {
        dst[i] = convert_f32_to_f16_bits(src[i]);
    }
}

extern "C" __global__ void f16_to_f32(const unsigned short* __restrict__ src, float* __restrict__ dst,
                                      long long len)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (long long)blockDim.x * gridDim.x) {
        dst[i] = convert_f16_bits_to_f32(src[i]);
    }
}

extern "C" __global__ void f32_to_bf16(const float* __restrict__ src, unsigned short* __restrict__ dst,
                                       long long len)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (long long)blockDim.x * gridDim.x) {
        dst[i] = convert_f32_to_bf16_bits(src[i]);
    }
}

extern "C" __global__ void bf16_to_f32(const unsigned short* __restrict__ src, float* __restrict__ dst,
                                       long long len)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (long long)blockDim.x * gridDim.x) {
        dst[i] = convert_bf16_bits_to_f32(src[i]);
    }
}

// dst = load(src) * inv_scale; src and dst may be the same buffer (no __restrict__).
template <class S>
__device__ __forceinline__ void unscale_check_body(const typename S::T* src, float* dst,
                                                   float inv_scale, long long len, int* overflow)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (long long)blockDim.x * gridDim.x) {
        const float v = S::load(src[i]) * inv_scale;
        dst[i] = v;
        if ((__float_as_uint(v) & 0x7f800000u) == 0x7f800000u) {
            *overflow = 1;
        }
    }
}

extern "C" __global__ void unscale_check_f32(float* __restrict__ g, float inv_scale, long long len,
                                             int* __restrict__ overflow)
{
    unscale_check_body<StorageF32>(g, g, inv_scale, len, overflow);
}

extern "C" __global__ void f16_to_f32_unscale_check(const unsigned short* __restrict__ src,
                                                    float* __restrict__ dst, float inv_scale,
                                                    long long len, int* __restrict__ overflow)
{
    unscale_check_body<StorageF16>(src, dst, inv_scale, len, overflow);
}

extern "C" __global__ void bf16_to_f32_unscale_check(const unsigned short* __restrict__ src,
                                                     float* __restrict__ dst, float inv_scale,
                                                     long long len, int* __restrict__ overflow)
{
    unscale_check_body<StorageBF16>(src, dst, inv_scale, len, overflow);
}
