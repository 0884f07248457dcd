// Bias and ReLU (Krizhevsky et al. 2012, section 3.1: f(x) = max(0, x)) for
// NCHW activations, and the conv bias gradient.
//   bias_relu_forward:  y += b[channel]; then y = max(y, 0) if relu
//   relu_forward:       x = max(x, 0)
//   (a NaN stays NaN, as in PyTorch and the CPU reference: fmaxf would make
//   it 0 and hide a diverged network's NaN weights from the loss)
//   relu_backward:      dy = 0 where y <= 0 (y is the ReLU's output)
//   add:                dst += src (the two towers' partial input gradients)
//   bias_backward:      db[c] = sum over n, h, w of dy[n, c, h, w], in two
//                       deterministic passes: partial[n * C + c] = the (n, c)
//                       plane's sum, then db[c] = sum over n of partial[n * C + c];
//                       both accumulate in double, but the plane sums are kept
//                       as f32 between them where the CPU reference keeps f64,
//                       so db can differ by that rounding.
// Each body is a template over the activations' storage (prelude.cuh): _f32
// entry points keep f32 activations, _f16 / _bf16 ones 16-bit activations,
// computed in f32. Biases and bias gradients are f32 throughout.

template <class S>
__device__ __forceinline__ void bias_relu_forward_body(typename S::T* __restrict__ y,
                                                       const float* __restrict__ b, int c, int hw,
                                                       long long len, int relu)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (long long)blockDim.x * gridDim.x) {
        const float v = S::load(y[i]) + b[(i / hw) % c];
        y[i] = S::store(relu && v < 0.0f ? 0.0f : v);
    }
}

template <class S>
__device__ __forceinline__ void relu_forward_body(typename S::T* __restrict__ x, long long len)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (long long)blockDim.x * gridDim.x) {
        const float v = S::load(x[i]);
        x[i] = S::store(v < 0.0f ? 0.0f : v);
    }
}

template <class S>
__device__ __forceinline__ void relu_backward_body(const typename S::T* __restrict__ y,
                                                   typename S::T* __restrict__ dy, long long len)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (long long)blockDim.x * gridDim.x) {
        if (S::load(y[i]) <= 0.0f) {
            dy[i] = S::store(0.0f);
        }
    }
}

template <class S>
__device__ __forceinline__ void add_body(typename S::T* __restrict__ dst,
                                         const typename S::T* __restrict__ src, long long len)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (long long)blockDim.x * gridDim.x) {
        dst[i] = S::store(S::load(dst[i]) + S::load(src[i]));
    }
}

template <class S>
__device__ __forceinline__ void bias_backward_partial_body(const typename S::T* __restrict__ dy,
                                                           float* __restrict__ partial, int n, int c,
                                                           int hw)
{
    const long long planes = (long long)n * c;
    for (long long pl = (long long)blockIdx.x * blockDim.x + threadIdx.x; pl < planes;
         pl += (long long)blockDim.x * gridDim.x) {
        const typename S::T* d = dy + pl * hw;
        double acc = 0.0;
        for (int i = 0; i < hw; ++i) {
            acc += (double)S::load(d[i]);
        }
        partial[pl] = (float)acc;
    }
}

extern "C" __global__ void bias_relu_forward_f32(float* __restrict__ y, const float* __restrict__ b,
                                                 int c, int hw, long long len, int relu)
{
    bias_relu_forward_body<StorageF32>(y, b, c, hw, len, relu);
}

extern "C" __global__ void bias_relu_forward_f16(unsigned short* __restrict__ y,
                                                 const float* __restrict__ b, int c, int hw,
                                                 long long len, int relu)
{
    bias_relu_forward_body<StorageF16>(y, b, c, hw, len, relu);
}

extern "C" __global__ void bias_relu_forward_bf16(unsigned short* __restrict__ y,
                                                  const float* __restrict__ b, int c, int hw,
                                                  long long len, int relu)
{
    bias_relu_forward_body<StorageBF16>(y, b, c, hw, len, relu);
}

extern "C" __global__ void relu_forward_f32(float* __restrict__ x, long long len)
{
    relu_forward_body<StorageF32>(x, len);
}

extern "C" __global__ void relu_forward_f16(unsigned short* __restrict__ x, long long len)
{
    relu_forward_body<StorageF16>(x, len);
}

extern "C" __global__ void relu_forward_bf16(unsigned short* __restrict__ x, long long len)
{
    relu_forward_body<StorageBF16>(x, len);
}

extern "C" __global__ void relu_backward_f32(const float* __restrict__ y, float* __restrict__ dy,
                                             long long len)
{
    relu_backward_body<StorageF32>(y, dy, len);
}

extern "C" __global__ void relu_backward_f16(const unsigned short* __restrict__ y,
                                             unsigned short* __restrict__ dy, long long len)
{
    relu_backward_body<StorageF16>(y, dy, len);
}

extern "C" __global__ void relu_backward_bf16(const unsigned short* __restrict__ y,
                                              unsigned short* __restrict__ dy, long long len)
{
    relu_backward_body<StorageBF16>(y, dy, len);
}

extern "C" __global__ void add_f32(float* __restrict__ dst, const float* __restrict__ src,
                                   long long len)
{
    add_body<StorageF32>(dst, src, len);
}

extern "C" __global__ void add_f16(unsigned short* __restrict__ dst,
                                   const unsigned short* __restrict__ src, long long len)
{
    add_body<StorageF16>(dst, src, len);
}

extern "C" __global__ void add_bf16(unsigned short* __restrict__ dst,
                                    const unsigned short* __restrict__ src, long long len)
{
    add_body<StorageBF16>(dst, src, len);
}

extern "C" __global__ void bias_backward_partial_f32(const float* __restrict__ dy,
                                                     float* __restrict__ partial, int n, int c, int hw)
{
    bias_backward_partial_body<StorageF32>(dy, partial, n, c, hw);
}

extern "C" __global__ void bias_backward_partial_f16(const unsigned short* __restrict__ dy,
                                                     float* __restrict__ partial, int n, int c, int hw)
{
    bias_backward_partial_body<StorageF16>(dy, partial, n, c, hw);
}

extern "C" __global__ void bias_backward_partial_bf16(const unsigned short* __restrict__ dy,
                                                      float* __restrict__ partial, int n, int c,
                                                      int hw)
{
    bias_backward_partial_body<StorageBF16>(dy, partial, n, c, hw);
}

extern "C" __global__ void bias_backward_reduce_f32(const float* __restrict__ partial,
                                                    float* __restrict__ db, int n, int c)
{
    for (long long ch = (long long)blockIdx.x * blockDim.x + threadIdx.x; ch < c;
         ch += (long long)blockDim.x * gridDim.x) {
        double acc = 0.0;
        for (int img = 0; img < n; ++img) {
            acc += (double)partial[(long long)img * c + ch];
        }
        db[ch] = (float)acc;
    }
}
