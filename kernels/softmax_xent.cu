// Softmax cross-entropy over [n, classes] logits (the paper's multinomial
// logistic regression objective, section 5).
//   forward, four kernels: z = logits - max(logits) per row; probs =
//   exp(z) / sum(exp(z)), the sum in double in class order; row_loss[row] =
//   -log probs[label] = ln(sum) - z[label] (in double, stored as f32).
//     softmax_xent_max_T (one thread per (row, part); parts: softmax_parts in
//       kernels/src/lib.rs, at most 32): the max of the row's classes k,
//       k + parts, k + 2 parts, ... into part_max[k * n + row];
//     softmax_xent_exp_T (one thread per element): the row's max = fmaxf over
//       its parts, then e[j * n + row] = expf(z[row, j] - max), f32 scratch;
//     softmax_xent_sum_T (one thread per row): sum = e[row, j] in double for
//       j = 0..classes-1 in that order; inv[row] = (float)(1 / sum) and
//       row_loss[row] as above (the max again from the parts);
//     softmax_xent_probs_T (one thread per element): probs = e * inv[row],
//       rounded once when stored.
//   Why: one thread per row doing all three passes ran 128 threads at batch
//   128 x 1000 classes, each reading its own row (a warp's load touching 32
//   cache lines), 3 x 1000 times, and took 0.25 ms of an 8.8 ms step on an
//   H200. Now only the row sum is a per-row loop, over finished values, and
//   e and part_max are stored class-major ([classes][n], [parts][n]) so a
//   warp of rows reads one line per load there. The bits do not change:
//   fmaxf is exact and order-free (NaNs are skipped wherever they are; a
//   +-0 max gives the same z and exp); each e is the same expf of the same
//   f32 argument as before (kept in f32, so exact for 16-bit logits too);
//   and the double sum keeps its class order (addition does not
//   reassociate: that order fixes the bits, so it stays one thread's loop).
//   mean (one thread): loss[0] = the sum of row_loss in row order, in double,
//     divided by n, rounded to f32 once: the batch's mean loss, left on the
//     device so the trainer need not wait for it every step.
//   backward (one thread per element): dlogits = (probs - onehot(label)) / n,
//     times the loss scale for the 16-bit entry points (f32: times 1, exact).
//     In 16 bits the label's 1 - p is the sum of the row's other
//     probabilities (its thread loops over the row), not 1 minus a rounded p.
// Same order of operations as src/backend/cpu/elementwise.rs (the scaled
// backward multiplies the unscaled gradient by the scale, as the default
// Backend::softmax_xent_backward_scaled does).
// The bodies are templates over the storage of logits, probs and dlogits
// (prelude.cuh); arithmetic is f32 (the sum double), each prob is rounded once
// when stored, and row_loss stays f32, computed from the f32 softmax.

// The row's max from its parts (-inf for a row of NaNs, as a fold gives).
__device__ __forceinline__ float softmax_xent_row_max(const float* __restrict__ part_max,
                                                      long long row, int n, int parts)
{
    float max = __uint_as_float(0xff800000u); // -inf
    for (int k = 0; k < parts; ++k) {
        max = fmaxf(max, part_max[(long long)k * n + row]);
    }
    return max;
}

template <class S>
__device__ __forceinline__ void softmax_xent_max_body(const typename S::T* __restrict__ logits,
                                                      float* __restrict__ part_max, int n,
                                                      int classes, int parts)
{
    const long long len = (long long)n * parts;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < len;
         t += (long long)blockDim.x * gridDim.x) {
        const long long row = t / parts;
        const int k = (int)(t - row * parts);
        const typename S::T* z = logits + row * classes;
        float max = __uint_as_float(0xff800000u); // -inf
        for (int j = k; j < classes; j += parts) {
            max = fmaxf(max, S::load(z[j]));
        }
        part_max[(long long)k * n + row] = max;
    }
}

// e[j * n + row] = expf(z[row, j] - max): the thread index runs over e.
template <class S>
__device__ __forceinline__ void softmax_xent_exp_body(const typename S::T* __restrict__ logits,
                                                      const float* __restrict__ part_max,
                                                      float* __restrict__ e, int n, int classes,
                                                      int parts)
{
    const long long len = (long long)n * classes;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < len;
         t += (long long)blockDim.x * gridDim.x) {
        const long long j = t / n;
        const long long row = t - j * n;
        const float max = softmax_xent_row_max(part_max, row, n, parts);
        e[t] = expf(S::load(logits[row * classes + j]) - max);
    }
}

template <class S>
__device__ __forceinline__ void softmax_xent_sum_body(const typename S::T* __restrict__ logits,
                                                      const unsigned int* __restrict__ labels,
                                                      const float* __restrict__ part_max,
                                                      const float* __restrict__ e,
                                                      float* __restrict__ inv,
                                                      float* __restrict__ row_loss, int n,
                                                      int classes, int parts)
{
    for (long long row = (long long)blockIdx.x * blockDim.x + threadIdx.x; row < n;
         row += (long long)blockDim.x * gridDim.x) {
        double sum = 0.0;
        for (int j = 0; j < classes; ++j) {
            sum += (double)e[(long long)j * n + row];
        }
        inv[row] = (float)(1.0 / sum);
        const float max = softmax_xent_row_max(part_max, row, n, parts);
        const float zl = S::load(logits[row * classes + labels[row]]);
        row_loss[row] = (float)(log(sum) - (double)(zl - max));
    }
}

template <class S>
__device__ __forceinline__ void softmax_xent_probs_body(const float* __restrict__ e,
                                                        const float* __restrict__ inv,
                                                        typename S::T* __restrict__ probs, int n,
                                                        int classes)
{
    const long long len = (long long)n * classes;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (long long)blockDim.x * gridDim.x) {
        const long long row = i / classes;
        const long long j = i - row * classes;
        probs[i] = S::store(e[j * n + row] * inv[row]);
    }
}

// The sum of a row's probabilities but the label's, in class order, in f32.
template <class S>
__device__ __forceinline__ float softmax_xent_others_sum(const typename S::T* __restrict__ row,
                                                         int label, int classes)
{
    float sum = 0.0f;
    for (int j = 0; j < classes; ++j) {
        sum += j == label ? 0.0f : S::load(row[j]);
    }
    return sum;
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
        float d = p * inv_n;
        if (col == (long long)labels[row]) {
            // 1 - p from a 16-bit p cancels: bf16 holds 0.99 as 0.98828
            // (17% off in 1 - p) and anything from 0.99805 up as 1 (no
            // gradient). The other classes' probabilities sum to 1 - p
            // with each one's own small rounding, so the label's term is
            // taken from them. f32 keeps p - 1, as the CPU op computes it.
            d = sizeof(typename S::T) < sizeof(float)
                    ? -softmax_xent_others_sum<S>(probs + row * classes, (int)col, classes) * inv_n
                    : (p - 1.0f) * inv_n;
        }
        dlogits[i] = S::store(d * scale);
    }
}

extern "C" __global__ void softmax_xent_max_f32(const float* __restrict__ logits,
    float* __restrict__ part_max, int n, int classes, int parts)
{
    softmax_xent_max_body<StorageF32>(logits, part_max, n, classes, parts);
}

extern "C" __global__ void softmax_xent_exp_f32(const float* __restrict__ logits,
    const float* __restrict__ part_max, float* __restrict__ e, int n, int classes, int parts)
{
    softmax_xent_exp_body<StorageF32>(logits, part_max, e, n, classes, parts);
}

extern "C" __global__ void softmax_xent_sum_f32(const float* __restrict__ logits,
    const unsigned int* __restrict__ labels, const float* __restrict__ part_max,
    const float* __restrict__ e, float* __restrict__ inv, float* __restrict__ row_loss, int n,
    int classes, int parts)
{
    softmax_xent_sum_body<StorageF32>(logits, labels, part_max, e, inv, row_loss, n, classes, parts);
}

extern "C" __global__ void softmax_xent_probs_f32(const float* __restrict__ e,
    const float* __restrict__ inv, float* __restrict__ probs, int n, int classes)
{
    softmax_xent_probs_body<StorageF32>(e, inv, probs, n, classes);
}

extern "C" __global__ void softmax_xent_max_f16(const unsigned short* __restrict__ logits,
    float* __restrict__ part_max, int n, int classes, int parts)
{
    softmax_xent_max_body<StorageF16>(logits, part_max, n, classes, parts);
}

extern "C" __global__ void softmax_xent_exp_f16(const unsigned short* __restrict__ logits,
    const float* __restrict__ part_max, float* __restrict__ e, int n, int classes, int parts)
{
    softmax_xent_exp_body<StorageF16>(logits, part_max, e, n, classes, parts);
}

extern "C" __global__ void softmax_xent_sum_f16(const unsigned short* __restrict__ logits,
    const unsigned int* __restrict__ labels, const float* __restrict__ part_max,
    const float* __restrict__ e, float* __restrict__ inv, float* __restrict__ row_loss, int n,
    int classes, int parts)
{
    softmax_xent_sum_body<StorageF16>(logits, labels, part_max, e, inv, row_loss, n, classes, parts);
}

extern "C" __global__ void softmax_xent_probs_f16(const float* __restrict__ e,
    const float* __restrict__ inv, unsigned short* __restrict__ probs, int n, int classes)
{
    softmax_xent_probs_body<StorageF16>(e, inv, probs, n, classes);
}

extern "C" __global__ void softmax_xent_max_bf16(const unsigned short* __restrict__ logits,
    float* __restrict__ part_max, int n, int classes, int parts)
{
    softmax_xent_max_body<StorageBF16>(logits, part_max, n, classes, parts);
}

extern "C" __global__ void softmax_xent_exp_bf16(const unsigned short* __restrict__ logits,
    const float* __restrict__ part_max, float* __restrict__ e, int n, int classes, int parts)
{
    softmax_xent_exp_body<StorageBF16>(logits, part_max, e, n, classes, parts);
}

extern "C" __global__ void softmax_xent_sum_bf16(const unsigned short* __restrict__ logits,
    const unsigned int* __restrict__ labels, const float* __restrict__ part_max,
    const float* __restrict__ e, float* __restrict__ inv, float* __restrict__ row_loss, int n,
    int classes, int parts)
{
    softmax_xent_sum_body<StorageBF16>(logits, labels, part_max, e, inv, row_loss, n, classes, parts);
}

extern "C" __global__ void softmax_xent_probs_bf16(const float* __restrict__ e,
    const float* __restrict__ inv, unsigned short* __restrict__ probs, int n, int classes)
{
    softmax_xent_probs_body<StorageBF16>(e, inv, probs, n, classes);
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
