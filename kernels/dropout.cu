// Inverted dropout (Krizhevsky et al. 2012, section 4.2; scaled at training
// time so inference needs no rescale): mask[i] = 1 / (1 - p) when
// u(seed, i) >= p, else 0; x *= mask. u is the counter-based hash of
// src/rng.rs (SplitMix64's finaliser over (seed, i)), ported bit for bit so
// every backend draws the same mask for the same seed:
//   hash(seed, i) = mix64(seed ^ mix64((i + 1) * 0x9E3779B97F4A7C15))
//   u             = (hash >> 40) * 2^-24            (24 bits, exact in f32)

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

extern "C" __global__ void dropout_forward_f32(float* __restrict__ x, float* __restrict__ mask,
                                               unsigned long long seed, float p, long long len)
{
    const float keep = 1.0f / (1.0f - p);
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (long long)blockDim.x * gridDim.x) {
        // u < p drops; with p == 0 nothing does, so the mask is all ones (times 1)
        const float m = dropout_uniform(seed, (unsigned long long)i) >= p ? keep : 0.0f;
        mask[i] = m;
        x[i] *= m;
    }
}

extern "C" __global__ void dropout_backward_f32(const float* __restrict__ mask, float* __restrict__ dy,
                                                long long len)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (long long)blockDim.x * gridDim.x) {
        dy[i] *= mask[i];
    }
}
