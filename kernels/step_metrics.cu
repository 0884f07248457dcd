// One training step's metrics, recorded on the device so that the training
// loop does not wait for the GPU every step: it reads a whole buffer of
// steps back about once a second (src/train.rs).
//   step_hits (one thread per row): row_hit[row] = 1 when no other class has
//     a probability >= the label's and the label's is a number, else 0:
//     eval::topk_hits' top-1 rule (a tie counts against the label; a NaN
//     label probability, from outputs that overflowed, is never a hit; a
//     NaN elsewhere compares false and beats nothing, as there);
//   step_record_f32 (one thread): metrics[2*slot] = loss[0] (the mean loss
//     softmax_xent_mean_f32 wrote), metrics[2*slot+1] = the sum of row_hit
//     over the n rows (the step's top-1 hits, exact in f32 below 2^24 rows).
// Comparisons are on probabilities widened to f32, exactly what a host sees
// after downloading them, so the 16-bit entry points count what topk_hits
// counts on the downloaded softmax.

template <class S>
__device__ __forceinline__ void step_hits_body(const typename S::T* __restrict__ probs,
                                               const unsigned int* __restrict__ labels,
                                               float* __restrict__ row_hit, int n, int classes)
{
    for (long long row = (long long)blockIdx.x * blockDim.x + threadIdx.x; row < n;
         row += (long long)blockDim.x * gridDim.x) {
        const typename S::T* p = probs + row * classes;
        const int label = (int)labels[row];
        const float mine = S::load(p[label]);
        float hit = mine == mine ? 1.0f : 0.0f; // false for NaN only
        for (int j = 0; j < classes && hit != 0.0f; ++j) {
            if (j != label && S::load(p[j]) >= mine) {
                hit = 0.0f;
                break;
            }
        }
        row_hit[row] = hit;
    }
}

extern "C" __global__ void step_hits_f32(const float* __restrict__ probs,
                                         const unsigned int* __restrict__ labels,
                                         float* __restrict__ row_hit, int n, int classes)
{
    step_hits_body<StorageF32>(probs, labels, row_hit, n, classes);
}

extern "C" __global__ void step_hits_f16(const unsigned short* __restrict__ probs,
                                         const unsigned int* __restrict__ labels,
                                         float* __restrict__ row_hit, int n, int classes)
{
    step_hits_body<StorageF16>(probs, labels, row_hit, n, classes);
}

extern "C" __global__ void step_hits_bf16(const unsigned short* __restrict__ probs,
                                          const unsigned int* __restrict__ labels,
                                          float* __restrict__ row_hit, int n, int classes)
{
    step_hits_body<StorageBF16>(probs, labels, row_hit, n, classes);
}

// One thread: a batch is a few hundred rows, and one launch per step.
extern "C" __global__ void step_record_f32(const float* __restrict__ loss,
                                           const float* __restrict__ row_hit,
                                           float* __restrict__ metrics, int n, int slot)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < 1;
         i += (long long)blockDim.x * gridDim.x) {
        float hits = 0.0f;
        for (int r = 0; r < n; ++r) {
            hits += row_hit[r];
        }
        metrics[2 * (long long)slot] = loss[0];
        metrics[2 * (long long)slot + 1] = hits;
    }
}
