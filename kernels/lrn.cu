// Local response normalisation across channels (Krizhevsky et al. 2012,
// section 3.3), fused: one thread per pixel (image, h*w position) slides the
// `size`-channel window down c, keeping a running sum of squares (add the
// channel entering the window, subtract the one leaving it), so each pixel
// costs O(C) whatever the window.
//
//   scale[c] = k + alpha * sum_{c' = c - size/2 ..= c + size/2, clipped to [0, C)} x[c']^2
//   y[c]     = x[c] * scale[c]^-beta
//   dx[c]    = dy[c] * scale[c]^-beta
//              - 2 * alpha * beta * x[c] * sum_{c' in the same window} dy[c'] * y[c'] / scale[c']
//
// alpha is not divided by size (the paper's convention). The expression order
// follows the CPU reference (src/backend/cpu/lrn.rs) term for term, including
// its s^-0.75 = r * sqrt(r), r = 1 / sqrt(s), for the paper's beta.
// The bodies are templates over the storage of x, y, scale, dy and dx
// (prelude.cuh): every value is loaded to f32, the running sums are f32, and
// y, scale and dx are rounded once when stored. (y is computed from the f32
// scale, before scale is rounded for storage.)
// Each body is also a template over its index type I (prelude.cuh,
// index_fits_int): the entry points run it with int indices when the tensor
// fits, else with long long ones; only the index math differs.

__device__ __forceinline__ float lrn_pow_neg(float s, float beta)
{
    if (beta == 0.75f) {
        float r = 1.0f / sqrtf(s);
        return r * sqrtf(r);
    }
    return powf(s, -beta);
}

template <class S, class I>
__device__ __forceinline__ void lrn_forward_body(const typename S::T* __restrict__ x,
                                                 typename S::T* __restrict__ y,
                                                 typename S::T* __restrict__ scale, int n, int c,
                                                 int hw, int size, float alpha, float beta, float k)
{
    const I pixels = (I)n * hw;
    const int half = size / 2;
    for (I t = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; t < pixels;
         t += (I)blockDim.x * (I)gridDim.x) {
        const I img = t / hw;
        const I base = img * c * (I)hw + (t - img * hw);
        // window sum for channel 0: channels [0, half] (those below 0 are clipped)
        float sum = 0.0f;
        for (int ch = 0; ch <= half && ch < c; ++ch) {
            const float v = S::load(x[base + (I)ch * hw]);
            sum += v * v;
        }
        for (int ch = 0; ch < c; ++ch) {
            const I i = base + (I)ch * hw;
            const float s = k + alpha * sum;
            scale[i] = S::store(s);
            y[i] = S::store(S::load(x[i]) * lrn_pow_neg(s, beta));
            // slide: the window of ch + 1 gains ch + 1 + half and loses ch - half
            if (ch + 1 + half < c) {
                const float v = S::load(x[base + (I)(ch + 1 + half) * hw]);
                sum += v * v;
            }
            if (ch >= half) {
                const float v = S::load(x[base + (I)(ch - half) * hw]);
                sum += -v * v;
            }
        }
    }
}

template <class S, class I>
__device__ __forceinline__ void lrn_backward_body(const typename S::T* __restrict__ x,
                                                  const typename S::T* __restrict__ y,
                                                  const typename S::T* __restrict__ scale,
                                                  const typename S::T* __restrict__ dy,
                                                  typename S::T* __restrict__ dx, int n, int c,
                                                  int hw, int size, float alpha, float beta)
{
    const I pixels = (I)n * hw;
    const int half = size / 2;
    const float coef = 2.0f * alpha * beta;
    for (I t = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; t < pixels;
         t += (I)blockDim.x * (I)gridDim.x) {
        const I img = t / hw;
        const I base = img * c * (I)hw + (t - img * hw);
        // running sum of dy * y / scale over the window
        float sum = 0.0f;
        for (int ch = 0; ch <= half && ch < c; ++ch) {
            const I i = base + (I)ch * hw;
            sum += S::load(dy[i]) * S::load(y[i]) / S::load(scale[i]);
        }
        for (int ch = 0; ch < c; ++ch) {
            const I i = base + (I)ch * hw;
            dx[i] = S::store(S::load(dy[i]) * lrn_pow_neg(S::load(scale[i]), beta) -
                             coef * S::load(x[i]) * sum);
            if (ch + 1 + half < c) {
                const I j = base + (I)(ch + 1 + half) * hw;
                sum += S::load(dy[j]) * S::load(y[j]) / S::load(scale[j]);
            }
            if (ch >= half) {
                const I j = base + (I)(ch - half) * hw;
                sum += -S::load(dy[j]) * S::load(y[j]) / S::load(scale[j]);
            }
        }
    }
}

// The entry points' bodies: int index math when the whole tensor (n * c * hw
// elements, n * hw pixels) fits it, for the whole grid.
template <class S>
__device__ __forceinline__ void lrn_forward_run(const typename S::T* __restrict__ x,
                                                typename S::T* __restrict__ y,
                                                typename S::T* __restrict__ scale, int n, int c,
                                                int hw, int size, float alpha, float beta, float k)
{
    const long long pixels = (long long)n * hw;
    const long long len = pixels * c;
    if (index_fits_int(len > pixels ? len : pixels, (long long)blockDim.x * gridDim.x)) {
        lrn_forward_body<S, int>(x, y, scale, n, c, hw, size, alpha, beta, k);
    } else {
        lrn_forward_body<S, long long>(x, y, scale, n, c, hw, size, alpha, beta, k);
    }
}

template <class S>
__device__ __forceinline__ void lrn_backward_run(const typename S::T* __restrict__ x,
                                                 const typename S::T* __restrict__ y,
                                                 const typename S::T* __restrict__ scale,
                                                 const typename S::T* __restrict__ dy,
                                                 typename S::T* __restrict__ dx, int n, int c,
                                                 int hw, int size, float alpha, float beta)
{
    const long long pixels = (long long)n * hw;
    const long long len = pixels * c;
    if (index_fits_int(len > pixels ? len : pixels, (long long)blockDim.x * gridDim.x)) {
        lrn_backward_body<S, int>(x, y, scale, dy, dx, n, c, hw, size, alpha, beta);
    } else {
        lrn_backward_body<S, long long>(x, y, scale, dy, dx, n, c, hw, size, alpha, beta);
    }
}

extern "C" __global__ void lrn_forward_f32(const float* __restrict__ x, float* __restrict__ y,
    float* __restrict__ scale, int n, int c, int hw, int size, float alpha, float beta, float k)
{
    lrn_forward_run<StorageF32>(x, y, scale, n, c, hw, size, alpha, beta, k);
}

extern "C" __global__ void lrn_backward_f32(const float* __restrict__ x, const float* __restrict__ y,
    const float* __restrict__ scale, const float* __restrict__ dy, float* __restrict__ dx, int n, int c,
    int hw, int size, float alpha, float beta)
{
    lrn_backward_run<StorageF32>(x, y, scale, dy, dx, n, c, hw, size, alpha, beta);
}

extern "C" __global__ void lrn_forward_f16(const unsigned short* __restrict__ x, unsigned short* __restrict__ y,
    unsigned short* __restrict__ scale, int n, int c, int hw, int size, float alpha, float beta, float k)
{
    lrn_forward_run<StorageF16>(x, y, scale, n, c, hw, size, alpha, beta, k);
}

extern "C" __global__ void lrn_backward_f16(const unsigned short* __restrict__ x, const unsigned short* __restrict__ y,
    const unsigned short* __restrict__ scale, const unsigned short* __restrict__ dy, unsigned short* __restrict__ dx, int n, int c,
    int hw, int size, float alpha, float beta)
{
    lrn_backward_run<StorageF16>(x, y, scale, dy, dx, n, c, hw, size, alpha, beta);
}

extern "C" __global__ void lrn_forward_bf16(const unsigned short* __restrict__ x, unsigned short* __restrict__ y,
    unsigned short* __restrict__ scale, int n, int c, int hw, int size, float alpha, float beta, float k)
{
    lrn_forward_run<StorageBF16>(x, y, scale, n, c, hw, size, alpha, beta, k);
}

extern "C" __global__ void lrn_backward_bf16(const unsigned short* __restrict__ x, const unsigned short* __restrict__ y,
    const unsigned short* __restrict__ scale, const unsigned short* __restrict__ dy, unsigned short* __restrict__ dx, int n, int c,
    int hw, int size, float alpha, float beta)
{
    lrn_backward_run<StorageBF16>(x, y, scale, dy, dx, n, c, hw, size, alpha, beta);
}
