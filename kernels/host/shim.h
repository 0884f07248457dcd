// Host shim: lets a kernels/*.cu file compile as plain C++17 on the CPU, so
// the kernels' arithmetic is tested against the CPU reference on machines
// without a GPU (tests/kernels_host.rs). It defines the CUDA keywords the
// kernels use as nothing, the thread and block indices as thread-local
// variables, the few maths and bit-cast intrinsics the kernels call, and
// run_grid(), which runs a launch one thread at a time: every kernel is a
// grid-stride loop without shared memory or barriers, so this sequential
// order computes what any GPU schedule computes.
#pragma once

#include <math.h>
#include <string.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
// __restrict__ is understood by g++ and clang++ as is.

struct dim3 {
    unsigned int x, y, z;
};

inline thread_local dim3 blockIdx = {0, 0, 0};
inline thread_local dim3 threadIdx = {0, 0, 0};
inline thread_local dim3 blockDim = {1, 1, 1};
inline thread_local dim3 gridDim = {1, 1, 1};

// Bit casts (CUDA intrinsics), through memcpy so they are well defined C++.
inline unsigned int __float_as_uint(float f)
{
    unsigned int u;
    memcpy(&u, &f, sizeof u);
    return u;
}
inline float __uint_as_float(unsigned int u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
inline int __float_as_int(float f)
{
    int i;
    memcpy(&i, &f, sizeof i);
    return i;
}
inline float __int_as_float(int i)
{
    float f;
    memcpy(&f, &i, sizeof f);
    return f;
}
// expf, logf, powf, sqrtf, fmaxf, fminf, fabsf and log come from <math.h>.

// Run kernel<<<grid, block>>>(args...) on this thread: blocks in order, and
// within each block its threads in order.
template <typename Kernel, typename... Args>
void run_grid(unsigned int grid, unsigned int block, Kernel kernel, Args... args)
{
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    for (unsigned int b = 0; b < grid; ++b) {
        blockIdx = {b, 0, 0};
        for (unsigned int t = 0; t < block; ++t) {
            threadIdx = {t, 0, 0};
            kernel(args...);
        }
    }
}
