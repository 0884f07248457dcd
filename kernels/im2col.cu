// im2col / col2im for the grouped-convolution fallback (used when cuDNN is
// missing): a convolution becomes one GEMM per (image, group),
// y_g[M, P] = w_g[M, K] . col[K, P], K = c*k*k, P = ho*wo.
//   im2col (one thread per column element):
//     col[img][(ch*k + i)*k + j][oy*wo + ox] = x[img][ch][oy*stride - pad + i][ox*stride - pad + j]
//     (0 outside the image)
//   col2im (one thread per input element, gather; the adjoint of im2col):
//     x[img][ch][iy][ix] = sum over (i, j) with iy = oy*stride - pad + i and
//     ix = ox*stride - pad + j for some in-range (oy, ox) of col[img][(ch*k + i)*k + j][oy*wo + ox],
//     added in (i, j) order, as the CPU reference's scatter adds them.
// A grouped NCHW tensor [n][groups * cg][h][w] is the same memory as
// [n * groups][cg][h][w], so callers pass images = n * groups, c = cg.
// The bodies are templates over the storage of x and col (prelude.cuh): im2col
// copies values as they are (16-bit bits stay bits, exactly); col2im sums in
// f32 and rounds each pixel's sum once.

template <class S>
__device__ __forceinline__ void im2col_body(const typename S::T* __restrict__ x,
                                            typename S::T* __restrict__ col, int images, int c,
                                            int h, int w, int k, int stride, int pad, int ho, int wo)
{
    const long long p = (long long)ho * wo;
    const long long rows = (long long)c * k * k;
    const long long len = (long long)images * rows * p;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < len;
         t += (long long)blockDim.x * gridDim.x) {
        const long long img_row = t / p;
        const int q = (int)(t - img_row * p);
        const long long img = img_row / rows;
        const int row = (int)(img_row - img * rows);
        const int ch = row / (k * k);
        const int i = (row / k) % k;
        const int j = row % k;
        const int oy = q / wo;
        const int ox = q - oy * wo;
        const int iy = oy * stride - pad + i;
        const int ix = ox * stride - pad + j;
        typename S::T v = 0; // +0 in f32, f16 and bf16 alike
        if (iy >= 0 && iy < h && ix >= 0 && ix < w) {
            v = x[((img * c + ch) * h + iy) * (long long)w + ix];
        }
        col[t] = v;
    }
}

template <class S>
__device__ __forceinline__ void col2im_body(const typename S::T* __restrict__ col,
                                            typename S::T* __restrict__ x, int images, int c,
                                            int h, int w, int k, int stride, int pad, int ho, int wo)
{
    const long long p = (long long)ho * wo;
    const long long len = (long long)images * c * h * w;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < len;
         t += (long long)blockDim.x * gridDim.x) {
        const long long plane = t / ((long long)h * w); // img * c + ch
        const int r = (int)(t - plane * h * w);
        const int iy = r / w;
        const int ix = r - iy * w;
        const long long img = plane / c;
        const int ch = (int)(plane - img * c);
        const typename S::T* cimg = col + (img * c + ch) * (long long)k * k * p;
        float acc = 0.0f;
        for (int i = 0; i < k; ++i) {
            const int ny = iy + pad - i; // = oy * stride
            if (ny < 0 || ny % stride != 0 || ny / stride >= ho) {
                continue;
            }
            const int oy = ny / stride;
            for (int j = 0; j < k; ++j) {
                const int nx = ix + pad - j; // = ox * stride
                if (nx < 0 || nx % stride != 0 || nx / stride >= wo) {
                    continue;
                }
                const int ox = nx / stride;
                acc += S::load(cimg[(long long)(i * k + j) * p + (long long)oy * wo + ox]);
            }
        }
        x[t] = S::store(acc);
    }
}

extern "C" __global__ void im2col_f32(const float* __restrict__ x, float* __restrict__ col,
                                      int images, int c, int h, int w, int k, int stride, int pad,
                                      int ho, int wo)
{
    im2col_body<StorageF32>(x, col, images, c, h, w, k, stride, pad, ho, wo);
}

extern "C" __global__ void im2col_f16(const unsigned short* __restrict__ x, unsigned short* __restrict__ col,
                                      int images, int c, int h, int w, int k, int stride, int pad,
                                      int ho, int wo)
{
    im2col_body<StorageF16>(x, col, images, c, h, w, k, stride, pad, ho, wo);
}

extern "C" __global__ void im2col_bf16(const unsigned short* __restrict__ x, unsigned short* __restrict__ col,
                                       int images, int c, int h, int w, int k, int stride, int pad,
                                       int ho, int wo)
{
    im2col_body<StorageBF16>(x, col, images, c, h, w, k, stride, pad, ho, wo);
}

extern "C" __global__ void col2im_f32(const float* __restrict__ col, float* __restrict__ x,
                                      int images, int c, int h, int w, int k, int stride, int pad,
                                      int ho, int wo)
{
    col2im_body<StorageF32>(col, x, images, c, h, w, k, stride, pad, ho, wo);
}

extern "C" __global__ void col2im_f16(const unsigned short* __restrict__ col, unsigned short* __restrict__ x,
                                      int images, int c, int h, int w, int k, int stride, int pad,
                                      int ho, int wo)
{
    col2im_body<StorageF16>(col, x, images, c, h, w, k, stride, pad, ho, wo);
}

extern "C" __global__ void col2im_bf16(const unsigned short* __restrict__ col, unsigned short* __restrict__ x,
                                       int images, int c, int h, int w, int k, int stride, int pad,
                                       int ho, int wo)
{
    col2im_body<StorageBF16>(col, x, images, c, h, w, k, stride, pad, ho, wo);
}
