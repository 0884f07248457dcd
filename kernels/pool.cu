// Max pooling over (n, c) planes, floor mode, no padding; overlapping when
// size > stride (Krizhevsky et al. 2012, section 3.4: size 3, stride 2).
//   forward (one thread per output): y = max over the size x size window at
//     (oy * stride, ox * stride); argmax = the winner's index in its plane
//     (row * w + col). The window is scanned row by row and a value replaces
//     the best only when strictly greater, so ties keep the first (the CPU
//     reference's rule, src/backend/cpu/pool.rs); a NaN replaces a number,
//     so that a NaN reaches the loss (as in PyTorch) and a diverged run is
//     seen at once.
//   backward (one thread per input, gather): dx[i] = sum of dy[o] over the
//     outputs o whose window covers i and whose argmax is i, added in output
//     order (the order in which the CPU reference scatters them), so the
//     result is deterministic and matches it exactly. argmax must come from
//     the forward pass (a winner inside its own window).
// The bodies are templates over the storage of x, y, dy and dx (prelude.cuh):
// values are compared after widening to f32 (exact), so argmax is the same
// as the f32 kernel's on the widened input and y is the winner's bits; the
// backward sums in f32 and rounds each input's sum once.
// Each body is also a template over its index type I (prelude.cuh,
// index_fits_int): the entry points run it with int indices when every index
// fits, else with long long ones; only the index math differs.

template <class S, class I>
__device__ __forceinline__ void max_pool_forward_body(const typename S::T* __restrict__ x,
                                                      typename S::T* __restrict__ y,
                                                      unsigned int* __restrict__ argmax, int planes,
                                                      int h, int w, int ho, int wo, int size,
                                                      int stride)
{
    const I len = (I)planes * ho * wo;
    for (I o = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; o < len;
         o += (I)blockDim.x * (I)gridDim.x) {
        const I plane = o / ((I)ho * wo);
        const int r = (int)(o - plane * ho * wo);
        const int oy = r / wo;
        const int ox = r - oy * wo;
        const typename S::T* xp = x + plane * h * w;
        const int y0 = oy * stride;
        const int x0 = ox * stride;
        int best_i = y0 * w + x0;
        float best = S::load(xp[best_i]);
        for (int iy = y0; iy < y0 + size; ++iy) {
            for (int ix = x0; ix < x0 + size; ++ix) {
                const float v = S::load(xp[iy * w + ix]);
                if (v > best || (v != v && best == best)) {
                    best = v;
                    best_i = iy * w + ix;
                }
            }
        }
        y[o] = xp[best_i]; // the winner as stored: exact in any storage
        argmax[o] = (unsigned int)best_i;
    }
}

template <class S, class I>
__device__ __forceinline__ void max_pool_backward_body(const typename S::T* __restrict__ dy,
                                                       const unsigned int* __restrict__ argmax,
                                                       typename S::T* __restrict__ dx, int planes,
                                                       int h, int w, int ho, int wo, int size,
                                                       int stride)
{
    const I len = (I)planes * h * w;
    for (I i = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; i < len;
         i += (I)blockDim.x * (I)gridDim.x) {
        const I plane = i / ((I)h * w);
        const int r = (int)(i - plane * h * w);
        const int iy = r / w;
        const int ix = r - iy * w;
        // outputs whose window [o * stride, o * stride + size) holds iy:
        // o in [ceil((iy - size + 1) / stride), floor(iy / stride)], within [0, ho)
        const int oy_lo = iy >= size ? (iy - size) / stride + 1 : 0;
        const int oy_hi = iy / stride < ho - 1 ? iy / stride : ho - 1;
        const int ox_lo = ix >= size ? (ix - size) / stride + 1 : 0;
        const int ox_hi = ix / stride < wo - 1 ? ix / stride : wo - 1;
        const I out = plane * ho * wo;
        float acc = 0.0f;
        for (int oy = oy_lo; oy <= oy_hi; ++oy) {
            for (int ox = ox_lo; ox <= ox_hi; ++ox) {
                const I o = out + (I)oy * wo + ox;
                if (argmax[o] == (unsigned int)r) {
                    acc += S::load(dy[o]);
                }
            }
        }
        dx[i] = S::store(acc);
    }
}

// The entry points' bodies: int index math when both buffers (x or dx, and
// y, dy, argmax) fit it, for the whole grid.
template <class S>
__device__ __forceinline__ void max_pool_forward_run(const typename S::T* __restrict__ x,
                                                     typename S::T* __restrict__ y,
                                                     unsigned int* __restrict__ argmax, int planes,
                                                     int h, int w, int ho, int wo, int size,
                                                     int stride)
{
    const long long in = (long long)planes * h * w;
    const long long out = (long long)planes * ho * wo;
    if (index_fits_int(in > out ? in : out, (long long)blockDim.x * gridDim.x)) {
        max_pool_forward_body<S, int>(x, y, argmax, planes, h, w, ho, wo, size, stride);
    } else {
        max_pool_forward_body<S, long long>(x, y, argmax, planes, h, w, ho, wo, size, stride);
    }
}

template <class S>
__device__ __forceinline__ void max_pool_backward_run(const typename S::T* __restrict__ dy,
                                                      const unsigned int* __restrict__ argmax,
                                                      typename S::T* __restrict__ dx, int planes,
                                                      int h, int w, int ho, int wo, int size,
                                                      int stride)
{
    const long long in = (long long)planes * h * w;
    const long long out = (long long)planes * ho * wo;
    if (index_fits_int(in > out ? in : out, (long long)blockDim.x * gridDim.x)) {
        max_pool_backward_body<S, int>(dy, argmax, dx, planes, h, w, ho, wo, size, stride);
    } else {
        max_pool_backward_body<S, long long>(dy, argmax, dx, planes, h, w, ho, wo, size, stride);
    }
}

extern "C" __global__ void max_pool_forward_f32(const float* __restrict__ x, float* __restrict__ y,
    unsigned int* __restrict__ argmax, int planes, int h, int w, int ho, int wo, int size, int stride)
{
    max_pool_forward_run<StorageF32>(x, y, argmax, planes, h, w, ho, wo, size, stride);
}

extern "C" __global__ void max_pool_backward_f32(const float* __restrict__ dy,
    const unsigned int* __restrict__ argmax, float* __restrict__ dx, int planes, int h, int w, int ho,
    int wo, int size, int stride)
{
    max_pool_backward_run<StorageF32>(dy, argmax, dx, planes, h, w, ho, wo, size, stride);
}

extern "C" __global__ void max_pool_forward_f16(const unsigned short* __restrict__ x, unsigned short* __restrict__ y,
    unsigned int* __restrict__ argmax, int planes, int h, int w, int ho, int wo, int size, int stride)
{
    max_pool_forward_run<StorageF16>(x, y, argmax, planes, h, w, ho, wo, size, stride);
}

extern "C" __global__ void max_pool_backward_f16(const unsigned short* __restrict__ dy,
    const unsigned int* __restrict__ argmax, unsigned short* __restrict__ dx, int planes, int h, int w, int ho,
    int wo, int size, int stride)
{
    max_pool_backward_run<StorageF16>(dy, argmax, dx, planes, h, w, ho, wo, size, stride);
}

extern "C" __global__ void max_pool_forward_bf16(const unsigned short* __restrict__ x, unsigned short* __restrict__ y,
    unsigned int* __restrict__ argmax, int planes, int h, int w, int ho, int wo, int size, int stride)
{
    max_pool_forward_run<StorageBF16>(x, y, argmax, planes, h, w, ho, wo, size, stride);
}

extern "C" __global__ void max_pool_backward_bf16(const unsigned short* __restrict__ dy,
    const unsigned int* __restrict__ argmax, unsigned short* __restrict__ dx, int planes, int h, int w, int ho,
    int wo, int size, int stride)
{
    max_pool_backward_run<StorageBF16>(dy, argmax, dx, planes, h, w, ho, wo, size, stride);
}
