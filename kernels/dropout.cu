// Inverted dropout (Krizhevsky et al. 2012, section 4.2; scaled at training
// time so inference needs no rescale): mask[i] = 1 / (1 - p) when
// u(seed, i) >= p, else 0; x *= mask. u is the counter-based hash of
// src/rng.rs (SplitMix64's finaliser over (seed, i)), ported bit for bit so
// every backend draws the same mask for the same seed:
//   hash(seed, i) = mix64(seed ^ mix64((i + 1) * 0x9E3779B97F4A7C15))
//   u             = (hash >> 40) * 2^-24            (24 bits, exact in f32)
// The bodies are templates over the storage of x, mask and dy (prelude.cuh).
// With 16-bit storage the mask holds 1 / (1 - p) rounded to 16 bits, and the
// forward multiplies by that rounded value too, so forward and backward scale
// by the same number; the f32 mask is unchanged, and which elements drop
// depends only on (seed, i), whatever the storage.

__device__ __forceinline__ unsigned long long dropout_mix64(unsigned long long z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

__device__ __forceinline__ float dropout_uniform(unsigned long long seed, unsigned long long i)
{
    const unsigned long long h = dropout_mix64(seed ^ dropout_mix64((i + 1ull) * 0x9E3779B97F4A7C15ull));
    return (float)(h >> 40) * (1.0f / 16777216.0f);
}

template <class S>
__device__ __forceinline__ void dropout_forward_body(typename S::T* __restrict__ x,
                                                     typename S::T* __restrict__ mask,
                                                     unsigned long long seed, float p, long long len)
{
    const typename S::T keep = S::store(1.0f / (1.0f - p));
    const typename S::T zero = S::store(0.0f);
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (long long)blockDim.x * gridDim.x) {
        // u < p drops; with p == 0 nothing does, so the mask is all ones (times 1)
        const typename S::T m = dropout_uniform(seed, (unsigned long long)i) >= p ? keep : zero;
        mask[i] = m;
        x[i] = S::store(S::load(x[i]) * S::load(m));
    }
}

template <class S>
__device__ __forceinline__ void dropout_backward_body(const typename S::T* __restrict__ mask,
                                                      typename S::T* __restrict__ dy, long long len)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (long long)blockDim.x * gridDim.x) {
        dy[i] = S::store(S::load(dy[i]) * S::load(mask[i]));
    }
}

extern "C" __global__ void dropout_forward_f32(float* __restrict__ x, float* __restrict__ mask,
                                               unsigned long long seed, float p, long long len)
{
    dropout_forward_body<StorageF32>(x, mask, seed, p, len);
}

extern "C" __global__ void dropout_forward_f16(unsigned short* __restrict__ x,
                                               unsigned short* __restrict__ mask,
                                               unsigned long long seed, float p, long long len)
{
    dropout_forward_body<StorageF16>(x, mask, seed, p, len);
}

extern "C" __global__ void dropout_forward_bf16(unsigned short* __restrict__ x,
                                                unsigned short* __restrict__ mask,
                                                unsigned long long seed, float p, long long len)
{
    dropout_forward_body<StorageBF16>(x, mask, seed, p, len);
}

extern "C" __global__ void dropout_backward_f32(const float* __restrict__ mask, float* __restrict__ dy,
                                                long long len)
{
    dropout_backward_body<StorageF32>(mask, dy, len);
}

extern "C" __global__ void dropout_backward_f16(const unsigned short* __restrict__ mask,
                                                unsigned short* __restrict__ dy, long long len)
{
    dropout_backward_body<StorageF16>(mask, dy, len);
}

extern "C" __global__ void dropout_backward_bf16(const unsigned short* __restrict__ mask,
                                                 unsigned short* __restrict__ dy, long long len)
{
    dropout_backward_body<StorageBF16>(mask, dy, len);
}
