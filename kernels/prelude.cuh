// Shared device code that every kernel file uses: the f32 <-> f16 / bf16
// conversions (integer bit arithmetic, so the same code runs on any GPU and on
// the host; round to nearest, ties to even) and the storage types the kernels
// are templated over. A kernel file may not include anything (NVRTC has no
// headers), so build.rs puts this text in front of every kernels/*.cu it
// hands to nvcc and embeds for NVRTC, and kernels/host/launch.cpp puts it once
// in front of all of them for the host build. Kernel files therefore use
// these names without declaring them, and must not define them again.
//
// Conversions, 16-bit values stored as unsigned short:
//   f32 -> f16 (IEEE binary16) and f32 -> bf16: round to nearest, ties to even;
//     overflow becomes infinity, tiny values become f16 subnormals or signed
//     zero, NaN stays NaN (quiet, top mantissa bits kept);
//   f16 -> f32 and bf16 -> f32: exact (NaN made quiet).
//
// Storage types: a kernel body written as a template over S loads each
// element with S::load (to f32), computes in f32 and stores with S::store
// (rounding once, to nearest even). StorageF32's load and store are the
// identity, so the f32 entry points compute exactly what a plain f32 kernel
// does; StorageF16 and StorageBF16 keep activations as 16-bit bits.
//
// Index math: index_fits_int says whether a kernel may do its flat-index
// arithmetic in int rather than long long. GPUs have no 64-bit integer
// divider: nvcc turns a long long division into a run-time check of both
// operands' high words, then a 32-bit divide or a long 64-bit routine (see
// its PTX), and 64-bit multiplies and compares are emulated with 32-bit ones.

__device__ __forceinline__ unsigned short convert_f32_to_f16_bits(float f)
{
    const unsigned int x = __float_as_uint(f);
    const unsigned int sign = (x >> 16) & 0x8000u;
    const unsigned int exp = (x >> 23) & 0xffu;
    const unsigned int man = x & 0x7fffffu;
    if (exp == 0xffu) { // infinity or NaN
        return (unsigned short)(sign | 0x7c00u | (man != 0u ? 0x0200u | (man >> 13) : 0u));
    }
    const int e = (int)exp - 127 + 15; // biased f16 exponent
    if (e >= 0x1f) {                    // too large even before rounding
        return (unsigned short)(sign | 0x7c00u);
    }
    if (e <= 0) { // f16 subnormal or zero: shift the full significand right
        if (e < -10) {
            return (unsigned short)sign; // below half the smallest subnormal
        }
        const unsigned int m = man | 0x800000u;
        const unsigned int shift = (unsigned int)(14 - e); // 14..24
        unsigned int h = m >> shift;
        const unsigned int rest = m & ((1u << shift) - 1u);
        const unsigned int halfway = 1u << (shift - 1u);
        if (rest > halfway || (rest == halfway && (h & 1u) != 0u)) {
            h += 1u; // may carry into the smallest normal: still correct
        }
        return (unsigned short)(sign | h);
    }
    unsigned int h = ((unsigned int)e << 10) | (man >> 13);
    const unsigned int rest = man & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u) != 0u)) {
        h += 1u; // a carry out of the mantissa bumps the exponent (to infinity at the top)
    }
    return (unsigned short)(sign | h);
}

__device__ __forceinline__ float convert_f16_bits_to_f32(unsigned short v)
{
    const unsigned int sign = ((unsigned int)v & 0x8000u) << 16;
    const unsigned int exp = ((unsigned int)v >> 10) & 0x1fu;
    const unsigned int man = (unsigned int)v & 0x3ffu;
    if (exp == 0x1fu) { // infinity or NaN
        return __uint_as_float(sign | 0x7f800000u | (man != 0u ? 0x400000u | (man << 13) : 0u));
    }
    if (exp == 0u) {
        // Zero or subnormal: man * 2^-24, exact in f32 (man < 2^10, and a
        // power-of-two scale of it is a normal f32). A loop that normalised
        // the mantissa bit by bit made warps wait on their most subnormal
        // lane: loss-scaled fp16 gradients are full of them.
        return __uint_as_float(sign | __float_as_uint((float)man * 5.9604644775390625e-8f));
    }
    return __uint_as_float(sign | ((exp - 15u + 127u) << 23) | (man << 13));
}

__device__ __forceinline__ unsigned short convert_f32_to_bf16_bits(float f)
{
    const unsigned int x = __float_as_uint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) { // NaN: keep it quiet
        return (unsigned short)((x >> 16) | 0x0040u);
    }
    const unsigned int rest = x & 0xffffu;
    unsigned int h = x >> 16;
    if (rest > 0x8000u || (rest == 0x8000u && (h & 1u) != 0u)) {
        h += 1u; // carries into the exponent, up to infinity
    }
    return (unsigned short)h;
}

__device__ __forceinline__ float convert_bf16_bits_to_f32(unsigned short v)
{
    unsigned int x = (unsigned int)v << 16;
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        x |= 0x400000u;
    }
    return __uint_as_float(x);
}

struct StorageF32 {
    typedef float T;
    static __device__ __forceinline__ float load(float v) { return v; }
    static __device__ __forceinline__ float store(float v) { return v; }
};

struct StorageF16 {
    typedef unsigned short T;
    static __device__ __forceinline__ float load(unsigned short v) { return convert_f16_bits_to_f32(v); }
    static __device__ __forceinline__ unsigned short store(float v) { return convert_f32_to_f16_bits(v); }
};

struct StorageBF16 {
    typedef unsigned short T;
    static __device__ __forceinline__ float load(unsigned short v) { return convert_bf16_bits_to_f32(v); }
    static __device__ __forceinline__ unsigned short store(float v) { return convert_f32_to_bf16_bits(v); }
};

// True when a grid-stride loop over [0, len) on `threads` threads (the grid's
// blockDim.x * gridDim.x) forms only indices that fit an int, the last one
// (i + threads, past the end) included; len is the largest buffer the kernel
// indexes. Conservative by one.
__device__ __forceinline__ bool index_fits_int(long long len, long long threads)
{
    return len + threads <= 2147483647LL;
}
