// Softmax cross-entropy over [n, classes] logits (the paper's multinomial
// logistic regression objective, section 5).
//   forward (one thread per row): z = logits - max(logits);
//     probs = exp(z) / sum(exp(z)) (sum in double);
//     row_loss[row] = -log probs[label] = ln(sum) - z[label] (in double, stored as f32);
//     the host averages row_loss over the rows.
//   backward (one thread per element): dlogits = (probs - onehot(label)) / n.
// Same order of operations as src/backend/cpu/elementwise.rs.

extern "C" __global__ void softmax_xent_forward_f32(const float* __restrict__ logits,
                                                    const unsigned int* __restrict__ labels,
                                                    float* __restrict__ probs,
                                                    float* __restrict__ row_loss, int n, int classes)
{
    for (long long row = (long long)blockIdx.x * blockDim.x + threadIdx.x; row < n;
         row += (long long)blockDim.x * gridDim.x) {
        const float* z = logits + row * classes;
        float* p = probs + row * classes;
        float max = __uint_as_float(0xff800000u); // -inf
        for (int j = 0; j < classes; ++j) {
            max = fmaxf(max, z[j]);
        }
        double sum = 0.0;
        for (int j = 0; j < classes; ++j) {
            const float e = expf(z[j] - max);
            p[j] = e;
            sum += (double)e;
        }
        const float inv = (float)(1.0 / sum);
        for (int j = 0; j < classes; ++j) {
            p[j] *= inv;
        }
        row_loss[row] = (float)(log(sum) - (double)(z[labels[row]] - max));
    }
}

extern "C" __global__ void softmax_xent_backward_f32(const float* __restrict__ probs,
                                                     const unsigned int* __restrict__ labels,
                                                     float* __restrict__ dlogits, int n, int classes)
{
    const long long len = (long long)n * classes;
    const float inv_n = 1.0f / (float)n;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (long long)blockDim.x * gridDim.x) {
        const long long row = i / classes;
        const long long col = i - row * classes;
        const float p = probs[i];
        dlogits[i] = col == (long long)labels[row] ? (p - 1.0f) * inv_n : p * inv_n;
    }
}
