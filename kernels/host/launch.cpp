// Host entry points for every kernel in kernels/*.cu: the same source compiled
// as C++ through shim.h, each kernel wrapped as
//   extern "C" void host_<kernel>(unsigned grid, unsigned block, <kernel args>)
// which runs the whole grid on the calling thread. kernels/host/build.rs
// compiles this file into a static library, kernels/host/src/lib.rs declares
// the entry points, and tests/kernels_host/host_kernels.rs wraps them.
#include "shim.h"

// The device code every kernel file shares (kernels/build.rs puts it in front
// of each file for nvcc and NVRTC; here, once in front of all of them).
#include "../prelude.cuh"

#include "../bias_relu.cu"
#include "../convert.cu"
#include "../dropout.cu"
#include "../im2col.cu"
#include "../lrn.cu"
#include "../pool.cu"
#include "../sgd.cu"
#include "../softmax_xent.cu"
#include "../step_metrics.cu"

// HOST_KERNEL(name, (params), (args)) defines host_name, which runs `name` on the grid.
#define HOST_KERNEL(name, params, args)                                    \
    extern "C" void host_##name(unsigned int grid, unsigned int block, HOST_UNPAREN params) \
    {                                                                      \
        run_grid(grid, block, name, HOST_UNPAREN args);                    \
    }
#define HOST_UNPAREN(...) __VA_ARGS__

// lrn.cu
HOST_KERNEL(lrn_forward_f32,
            (const float* x, float* y, float* scale, int n, int c, int hw, int size, float alpha,
             float beta, float k),
            (x, y, scale, n, c, hw, size, alpha, beta, k))
HOST_KERNEL(lrn_backward_f32,
            (const float* x, const float* y, const float* scale, const float* dy, float* dx, int n,
             int c, int hw, int size, float alpha, float beta),
            (x, y, scale, dy, dx, n, c, hw, size, alpha, beta))

// dropout.cu
HOST_KERNEL(dropout_forward_f32, (float* x, float* mask, unsigned long long seed, float p, long long len),
            (x, mask, seed, p, len))
HOST_KERNEL(dropout_backward_f32, (const float* mask, float* dy, long long len), (mask, dy, len))

// softmax_xent.cu
HOST_KERNEL(softmax_xent_max_f32, (const float* logits, float* part_max, int n, int classes, int parts),
            (logits, part_max, n, classes, parts))
HOST_KERNEL(softmax_xent_exp_f32,
            (const float* logits, const float* part_max, float* e, int n, int classes, int parts),
            (logits, part_max, e, n, classes, parts))
HOST_KERNEL(softmax_xent_sum_f32,
            (const float* logits, const unsigned int* labels, const float* part_max, const float* e,
             float* inv, float* row_loss, int n, int classes, int parts),
            (logits, labels, part_max, e, inv, row_loss, n, classes, parts))
HOST_KERNEL(softmax_xent_probs_f32, (const float* e, const float* inv, float* probs, int n, int classes),
            (e, inv, probs, n, classes))
HOST_KERNEL(softmax_xent_backward_f32,
            (const float* probs, const unsigned int* labels, float* dlogits, int n, int classes),
            (probs, labels, dlogits, n, classes))
HOST_KERNEL(softmax_xent_mean_f32, (const float* row_loss, float* loss, int n), (row_loss, loss, n))

// step_metrics.cu
HOST_KERNEL(step_hits_f32,
            (const float* probs, const unsigned int* labels, float* row_hit, int n, int classes),
            (probs, labels, row_hit, n, classes))
HOST_KERNEL(step_record_f32,
            (const float* loss, const float* row_hit, float* metrics, int n, int slot),
            (loss, row_hit, metrics, n, slot))

// sgd.cu
HOST_KERNEL(sgd_update_f32,
            (float* w, const float* g, float* v, float lr, float momentum, float weight_decay,
             long long len),
            (w, g, v, lr, momentum, weight_decay, len))

// bias_relu.cu
HOST_KERNEL(bias_relu_forward_f32, (float* y, const float* b, int c, int hw, long long len, int relu),
            (y, b, c, hw, len, relu))
HOST_KERNEL(relu_forward_f32, (float* x, long long len), (x, len))
HOST_KERNEL(relu_backward_f32, (const float* y, float* dy, long long len), (y, dy, len))
HOST_KERNEL(add_f32, (float* dst, const float* src, long long len), (dst, src, len))
HOST_KERNEL(bias_backward_partial_f32, (const float* dy, float* partial, int n, int c, int hw),
            (dy, partial, n, c, hw))
HOST_KERNEL(bias_backward_reduce_f32, (const float* partial, float* db, int n, int c),
            (partial, db, n, c))

// pool.cu
HOST_KERNEL(max_pool_forward_f32,
            (const float* x, float* y, unsigned int* argmax, int planes, int h, int w, int ho, int wo,
             int size, int stride),
            (x, y, argmax, planes, h, w, ho, wo, size, stride))
HOST_KERNEL(max_pool_backward_f32,
            (const float* dy, const unsigned int* argmax, float* dx, int planes, int h, int w, int ho,
             int wo, int size, int stride),
            (dy, argmax, dx, planes, h, w, ho, wo, size, stride))

// Tests only: the pooling and LRN bodies with long long index math, which the
// entry points above pick only for buffers of about 2^31 elements (too big for
// a test); with these the tests run both instantiations on the same shapes.
static void max_pool_forward_f32_i64(const float* x, float* y, unsigned int* argmax, int planes,
                                     int h, int w, int ho, int wo, int size, int stride)
{
    max_pool_forward_body<StorageF32, long long>(x, y, argmax, planes, h, w, ho, wo, size, stride);
}
static void max_pool_backward_f32_i64(const float* dy, const unsigned int* argmax, float* dx,
                                      int planes, int h, int w, int ho, int wo, int size, int stride)
{
    max_pool_backward_body<StorageF32, long long>(dy, argmax, dx, planes, h, w, ho, wo, size, stride);
}
static void lrn_forward_f32_i64(const float* x, float* y, float* scale, int n, int c, int hw,
                                int size, float alpha, float beta, float k)
{
    lrn_forward_body<StorageF32, long long>(x, y, scale, n, c, hw, size, alpha, beta, k);
}
static void lrn_backward_f32_i64(const float* x, const float* y, const float* scale, const float* dy,
                                 float* dx, int n, int c, int hw, int size, float alpha, float beta)
{
    lrn_backward_body<StorageF32, long long>(x, y, scale, dy, dx, n, c, hw, size, alpha, beta);
}
HOST_KERNEL(max_pool_forward_f32_i64,
            (const float* x, float* y, unsigned int* argmax, int planes, int h, int w, int ho, int wo,
             int size, int stride),
            (x, y, argmax, planes, h, w, ho, wo, size, stride))
HOST_KERNEL(max_pool_backward_f32_i64,
            (const float* dy, const unsigned int* argmax, float* dx, int planes, int h, int w, int ho,
             int wo, int size, int stride),
            (dy, argmax, dx, planes, h, w, ho, wo, size, stride))
HOST_KERNEL(lrn_forward_f32_i64,
            (const float* x, float* y, float* scale, int n, int c, int hw, int size, float alpha,
             float beta, float k),
            (x, y, scale, n, c, hw, size, alpha, beta, k))
HOST_KERNEL(lrn_backward_f32_i64,
            (const float* x, const float* y, const float* scale, const float* dy, float* dx, int n,
             int c, int hw, int size, float alpha, float beta),
            (x, y, scale, dy, dx, n, c, hw, size, alpha, beta))
// The prelude's choice between the two (1 for int).
extern "C" int host_index_fits_int(long long len, long long threads)
{
    return index_fits_int(len, threads) ? 1 : 0;
}

// Tests only: the softmax forward the four kernels above replaced, one thread
// per row doing the max, the double sum and the stores (the sum and the
// stores each computing the exps), kept as the oracle those kernels must
// match bit for bit (tests/kernels_host.rs).
template <class S>
static void softmax_xent_rowwise_body(const typename S::T* logits, const unsigned int* labels,
                                      typename S::T* probs, float* row_loss, int n, int classes)
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
        for (int j = 0; j < classes; ++j) {
            p[j] = S::store(expf(S::load(z[j]) - max) * inv);
        }
        row_loss[row] = (float)(log(sum) - (double)(S::load(z[labels[row]]) - max));
    }
}
static void softmax_xent_rowwise_f32(const float* logits, const unsigned int* labels, float* probs,
                                     float* row_loss, int n, int classes)
{
    softmax_xent_rowwise_body<StorageF32>(logits, labels, probs, row_loss, n, classes);
}
static void softmax_xent_rowwise_f16(const unsigned short* logits, const unsigned int* labels,
                                     unsigned short* probs, float* row_loss, int n, int classes)
{
    softmax_xent_rowwise_body<StorageF16>(logits, labels, probs, row_loss, n, classes);
}
static void softmax_xent_rowwise_bf16(const unsigned short* logits, const unsigned int* labels,
                                      unsigned short* probs, float* row_loss, int n, int classes)
{
    softmax_xent_rowwise_body<StorageBF16>(logits, labels, probs, row_loss, n, classes);
}
HOST_KERNEL(softmax_xent_rowwise_f32,
            (const float* logits, const unsigned int* labels, float* probs, float* row_loss, int n,
             int classes),
            (logits, labels, probs, row_loss, n, classes))

// im2col.cu
HOST_KERNEL(im2col_f32,
            (const float* x, float* col, int images, int c, int h, int w, int k, int stride, int pad,
             int ho, int wo),
            (x, col, images, c, h, w, k, stride, pad, ho, wo))
HOST_KERNEL(col2im_f32,
            (const float* col, float* x, int images, int c, int h, int w, int k, int stride, int pad,
             int ho, int wo),
            (col, x, images, c, h, w, k, stride, pad, ho, wo))

// convert.cu
HOST_KERNEL(f32_to_f16, (const float* src, unsigned short* dst, long long len), (src, dst, len))
HOST_KERNEL(f16_to_f32, (const unsigned short* src, float* dst, long long len), (src, dst, len))
HOST_KERNEL(f32_to_bf16, (const float* src, unsigned short* dst, long long len), (src, dst, len))
HOST_KERNEL(bf16_to_f32, (const unsigned short* src, float* dst, long long len), (src, dst, len))
HOST_KERNEL(unscale_check_f32, (float* g, float inv_scale, long long len, int* overflow),
            (g, inv_scale, len, overflow))

// 16-bit storage: HOST_KERNELS_16(T) defines the launchers of every 16-bit
// kernel for T = f16 or bf16 (<kernel>_T, and T_to_f32_unscale_check).
#define HOST_KERNELS_16(T)                                                                                                    \
HOST_KERNEL(lrn_forward_##T,                                                                                                  \
            (const unsigned short* x, unsigned short* y, unsigned short* scale, int n, int c, int hw, int size, float alpha,  \
             float beta, float k),                                                                                            \
            (x, y, scale, n, c, hw, size, alpha, beta, k))                                                                    \
HOST_KERNEL(lrn_backward_##T,                                                                                                 \
            (const unsigned short* x, const unsigned short* y, const unsigned short* scale, const unsigned short* dy,         \
             unsigned short* dx, int n, int c, int hw, int size, float alpha, float beta),                                    \
            (x, y, scale, dy, dx, n, c, hw, size, alpha, beta))                                                               \
HOST_KERNEL(dropout_forward_##T,                                                                                              \
            (unsigned short* x, unsigned short* mask, unsigned long long seed, float p, long long len),                       \
            (x, mask, seed, p, len))                                                                                          \
HOST_KERNEL(dropout_backward_##T, (const unsigned short* mask, unsigned short* dy, long long len),                            \
            (mask, dy, len))                                                                                                  \
HOST_KERNEL(softmax_xent_max_##T, (const unsigned short* logits, float* part_max, int n, int classes, int parts),           \
            (logits, part_max, n, classes, parts))                                                                            \
HOST_KERNEL(softmax_xent_exp_##T,                                                                                             \
            (const unsigned short* logits, const float* part_max, float* e, int n, int classes, int parts),                   \
            (logits, part_max, e, n, classes, parts))                                                                         \
HOST_KERNEL(softmax_xent_sum_##T,                                                                                             \
            (const unsigned short* logits, const unsigned int* labels, const float* part_max, const float* e,                 \
             float* inv, float* row_loss, int n, int classes, int parts),                                                     \
            (logits, labels, part_max, e, inv, row_loss, n, classes, parts))                                                  \
HOST_KERNEL(softmax_xent_probs_##T, (const float* e, const float* inv, unsigned short* probs, int n, int classes),            \
            (e, inv, probs, n, classes))                                                                                      \
HOST_KERNEL(softmax_xent_rowwise_##T,                                                                                         \
            (const unsigned short* logits, const unsigned int* labels, unsigned short* probs, float* row_loss,                \
             int n, int classes),                                                                                             \
            (logits, labels, probs, row_loss, n, classes))                                                                    \
HOST_KERNEL(softmax_xent_backward_##T,                                                                                        \
            (const unsigned short* probs, const unsigned int* labels, unsigned short* dlogits, int n, int classes,            \
             float scale),                                                                                                    \
            (probs, labels, dlogits, n, classes, scale))                                                                      \
HOST_KERNEL(step_hits_##T,                                                                                                    \
            (const unsigned short* probs, const unsigned int* labels, float* row_hit, int n, int classes),                    \
            (probs, labels, row_hit, n, classes))                                                                             \
HOST_KERNEL(sgd_update_f32_store_##T,                                                                                         \
            (float* w, const float* g, float* v, unsigned short* w16, float lr, float momentum,                               \
             float weight_decay, long long len),                                                                              \
            (w, g, v, w16, lr, momentum, weight_decay, len))                                                                  \
HOST_KERNEL(bias_relu_forward_##T,                                                                                            \
            (unsigned short* y, const float* b, int c, int hw, long long len, int relu),                                      \
            (y, b, c, hw, len, relu))                                                                                         \
HOST_KERNEL(relu_forward_##T, (unsigned short* x, long long len), (x, len))                                                   \
HOST_KERNEL(relu_backward_##T, (const unsigned short* y, unsigned short* dy, long long len), (y, dy, len))                    \
HOST_KERNEL(add_##T, (unsigned short* dst, const unsigned short* src, long long len), (dst, src, len))                        \
HOST_KERNEL(bias_backward_partial_##T, (const unsigned short* dy, float* partial, int n, int c, int hw),                      \
            (dy, partial, n, c, hw))                                                                                          \
HOST_KERNEL(max_pool_forward_##T,                                                                                             \
            (const unsigned short* x, unsigned short* y, unsigned int* argmax, int planes, int h, int w, int ho,              \
             int wo, int size, int stride),                                                                                   \
            (x, y, argmax, planes, h, w, ho, wo, size, stride))                                                               \
HOST_KERNEL(max_pool_backward_##T,                                                                                            \
            (const unsigned short* dy, const unsigned int* argmax, unsigned short* dx, int planes, int h, int w,              \
             int ho, int wo, int size, int stride),                                                                           \
            (dy, argmax, dx, planes, h, w, ho, wo, size, stride))                                                             \
HOST_KERNEL(im2col_##T,                                                                                                       \
            (const unsigned short* x, unsigned short* col, int images, int c, int h, int w, int k, int stride,                \
             int pad, int ho, int wo),                                                                                        \
            (x, col, images, c, h, w, k, stride, pad, ho, wo))                                                                \
HOST_KERNEL(col2im_##T,                                                                                                       \
            (const unsigned short* col, unsigned short* x, int images, int c, int h, int w, int k, int stride,                \
             int pad, int ho, int wo),                                                                                        \
            (col, x, images, c, h, w, k, stride, pad, ho, wo))                                                                \
HOST_KERNEL(T##_to_f32_unscale_check,                                                                                         \
            (const unsigned short* src, float* dst, float inv_scale, long long len, int* overflow),                           \
            (src, dst, inv_scale, len, overflow))

HOST_KERNELS_16(f16)
HOST_KERNELS_16(bf16)
