// Marks helpers that compile for both the host (CPU kernels, host unit tests) and the device
// (nvcc). Keeping the macro in one place lets every shared header stay torch-free.
#pragma once

#if defined(__CUDACC__)
#define WVQ_HD __host__ __device__ __forceinline__
#else
#define WVQ_HD inline
#endif
