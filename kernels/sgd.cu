// The paper's SGD update (Krizhevsky et al. 2012, section 5), element-wise:
//   v = momentum * v - weight_decay * lr * w - lr * g;   w = w + v
// (weight_decay * lr is formed first, as the CPU reference does).

extern "C" __global__ void sgd_update_f32(float* __restrict__ w, const float* __restrict__ g,
                                          float* __restrict__ v, float lr, float momentum,
                                          float weight_decay, long long len)
{
    const float wd_lr = weight_decay * lr;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (long long)blockDim.x * gridDim.x) {
        const float vi = momentum * v[i] - wd_lr * w[i] - lr * g[i];
        v[i] = vi;
        w[i] += vi;
    }
}
