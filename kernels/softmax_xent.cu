// Softmax cross-entropy over [n, classes] logits (the paper's multinomial
// logistic regression objective, section 5).
//   forward (one thread per row): z = logits - max(logits);
//     probs = exp(z) / sum(exp(z)) (sum in double);
//     row_loss[row] = -log probs[label] = ln(sum) - z[label] (in double, stored as f32);
//   mean (one thread): loss[0] = the sum of row_loss in row order, in double,
//     divided by n, rounded to f32 once: the batch's mean loss, left on the
//     device so the trainer need not wait for it every step.
//   backward (one thread per element): dlogits = (probs - onehot(label)) / n,
//     times the loss scale for the 16-bit entry points (f32: times 1, exact).
// Same order of operations as src/backend/cpu/elementwise.rs (the scaled
// backward multiplies the unscaled gradient by the scale, as the default
// Backend::softmax_xent_backward_scaled does).
// The bodies are templates over the storage of logits, probs and dlogits
// (prelude.cuh); arithmetic is f32 (the sum double), each prob is rounded once
// when stored, and row_loss stays f32, computed from the f32 softmax.

template <class S>
__device__ __forceinline__ void softmax_xent_forward_body(const typename S::T* __restrict__ logits,
                                                          const unsigned int* __restrict__ labels,
                                                          typename S::T* __restrict__ probs,
                                                          float* __restrict__ row_loss, int n,
                                                          int classes)
{
    for (long long row = (long long)blockIdx.x * blockDim.x + threadIdx.x; row < n;
         row += (long long)blockDim.x * gridDim.x) {
        const typename S::T* z = logits + row * classes;
        typename S::T* p = probs + row * classes;
        float max = __uint_as_float(0xff800000u); // -inf
        for (int j = 0; j < classes; ++j) {
            max = fmaxf(max, S::load(z[j]));
        }
        double sum = 0.0;
        for (int j = 0; j < classes; ++j) {
            sum += (double)expf(S::load(z[j]) - max);
        }
        const float inv = (float)(1.0 / sum);
        // exp recomputed rather than kept in probs, which may be 16-bit (the
        // same expf of the same argument: the same value)
        for (int j = 0; j < classes; ++j) {
            p[j] = S::store(expf(S::load(z[j]) - max) * inv);
        }
        row_loss[row] = (float)(log(sum) - (double)(S::load(z[labels[row]]) - max));
    }
}

template <class S>
__device__ __forceinline__ void softmax_xent_backward_body(const typename S::T* __restrict__ probs,
                                                           const unsigned int* __restrict__ labels,
                                                           typename S::T* __restrict__ dlogits,
                                                           int n, int classes, float scale)
{
    const long long len = (long long)n * classes;
    const float inv_n = 1.0f / (float)n;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (long long)blockDim.x * gridDim.x) {
        const long long row = i / classes;
        const long long col = i - row * classes;
        const float p = S::load(probs[i]);
        const float d = col == (long long)labels[row] ? (p - 1.0f) * inv_n : p * inv_n;
        dlogits[i] = S::store(d * scale);
    }
}

extern "C" __global__ void softmax_xent_forward_f32(const float* __restrict__ logits,
                                                    const unsigned int* __restrict__ labels,
                                                    float* __restrict__ probs,
                                                    float* __restrict__ row_loss, int n, int classes)
{
    softmax_xent_forward_body<StorageF32>(logits, labels, probs, row_loss, n, classes);
}

extern "C" __global__ void softmax_xent_forward_f16(const unsigned short* __restrict__ logits,
                                                    const unsigned int* __restrict__ labels,
                                                    unsigned short* __restrict__ probs,
                                                    float* __restrict__ row_loss, int n, int classes)
{
    softmax_xent_forward_body<StorageF16>(logits, labels, probs, row_loss, n, classes);
}

extern "C" __global__ void softmax_xent_forward_bf16(const unsigned short* __restrict__ logits,
                                                     const unsigned int* __restrict__ labels,
                                                     unsigned short* __restrict__ probs,
                                                     float* __restrict__ row_loss, int n,
                                                     int classes)
{
    softmax_xent_forward_body<StorageBF16>(logits, labels, probs, row_loss, n, classes);
}

// One thread sums the rows in order (a batch is a few hundred rows), so the
// mean is the same on every run and equals the host's f64 sum of the same
// row losses. The sum starts at -0.0, the identity of IEEE addition.
extern "C" __global__ void softmax_xent_mean_f32(const float* __restrict__ row_loss,
                                                 float* __restrict__ loss, int n)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < 1;
         i += (long long)blockDim.x * gridDim.x) {
        double total = -0.0;
        for (int r = 0; r < n; ++r) {
            total += (double)row_loss[r];
        }
        loss[0] = n > 0 ? (float)(total / (double)n) : 0.0f;
    }
}

extern "C" __global__ void softmax_xent_backward_f32(const float* __restrict__ probs,
                                                     const unsigned int* __restrict__ labels,
                                                     float* __restrict__ dlogits, int n, int classes)
{
    softmax_xent_backward_body<StorageF32>(probs, labels, dlogits, n, classes, 1.0f);
}

extern "C" __global__ void softmax_xent_backward_f16(const unsigned short* __restrict__ probs,
                                                     const unsigned int* __restrict__ labels,
                                                     unsigned short* __restrict__ dlogits, int n,
                                                     int classes, float scale)
{
    softmax_xent_backward_body<StorageF16>(probs, labels, dlogits, n, classes, scale);
}

extern "C" __global__ void softmax_xent_backward_bf16(const unsigned short* __restrict__ probs,
                                                      const unsigned int* __restrict__ labels,
                                                      unsigned short* __restrict__ dlogits, int n,
                                                      int classes, float scale)
{
    softmax_xent_backward_body<StorageBF16>(probs, labels, dlogits, n, classes, scale);
}
