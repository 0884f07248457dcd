// The paper's SGD update (Krizhevsky et al. 2012, section 5), element-wise:
//   v = momentum * v - weight_decay * lr * w - lr * g;   w = w + v
// (weight_decay * lr is formed first, as the CPU reference does). w, g and v
// are f32 (the master weights); the _store_f16 / _store_bf16 entry points also
// write the updated w rounded to 16 bits into w16, the copy the 16-bit
// forward pass reads.

template <class S>
__device__ __forceinline__ void sgd_update_body(float* __restrict__ w, const float* __restrict__ g,
                                                float* __restrict__ v,
                                                typename S::T* __restrict__ w16, float lr,
                                                float momentum, float weight_decay, long long len)
{
    const float wd_lr = weight_decay * lr;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (long long)blockDim.x * gridDim.x) {
        const float vi = momentum * v[i] - wd_lr * w[i] - lr * g[i];
        v[i] = vi;
        const float wi = w[i] + vi;
        w[i] = wi;
        if (w16 != 0) {
            w16[i] = S::store(wi);
        }
    }
}

extern "C" __global__ void sgd_update_f32(float* __restrict__ w, const float* __restrict__ g,
                                          float* __restrict__ v, float lr, float momentum,
                                          float weight_decay, long long len)
{
    sgd_update_body<StorageF32>(w, g, v, (float*)0, lr, momentum, weight_decay, len);
}

extern "C" __global__ void sgd_update_f32_store_f16(float* __restrict__ w, const float* __restrict__ g,
                                                    float* __restrict__ v,
                                                    unsigned short* __restrict__ w16, float lr,
                                                    float momentum, float weight_decay, long long len)
{
    sgd_update_body<StorageF16>(w, g, v, w16, lr, momentum, weight_decay, len);
}

extern "C" __global__ void sgd_update_f32_store_bf16(float* __restrict__ w,
                                                     const float* __restrict__ g,
                                                     float* __restrict__ v,
                                                     unsigned short* __restrict__ w16, float lr,
                                                     float momentum, float weight_decay,
                                                     long long len)
{
    sgd_update_body<StorageBF16>(w, g, v, w16, lr, momentum, weight_decay, len);
}
