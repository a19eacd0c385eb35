// What the CUDA microbenchmarks share: error checks, deterministic device-side inputs, and the
// timing method of bench/harness.py (L2 flushed before every rep, cudaEvent timing, median).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <cuda_runtime.h>

#include "flashstream/common/dtype.h"

#define CHECK_CUDA(expr)                                                                   \
  do {                                                                                     \
    const cudaError_t err_ = (expr);                                                       \
    if (err_ != cudaSuccess) {                                                             \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(err_)); \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)

namespace flashstream::bench {

inline constexpr int kWarmup = 5;
inline constexpr int kReps = 30;
inline constexpr size_t kFlushBytes = size_t(256) << 20;  // larger than any current L2

// Deterministic pseudo-random values in [-3, 3), written on the device.
template <typename T>
__global__ void fill_kernel(T* p, int64_t count, uint64_t seed) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) {
    uint64_t h = (uint64_t(i) + seed) * 0x9E3779B97F4A7C15ull;
    h ^= h >> 31;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 29;
    p[i] = flashstream::from_float<T>(float(h & 0xFFFFFF) * (6.0f / 16777216.0f) - 3.0f);
  }
}

// Median time in ms of `op`, with the L2 flushed (memset of a kFlushBytes buffer) before each rep.
template <typename Op>
float time_ms(Op&& op, void* flush) {
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  for (int i = 0; i < kWarmup; ++i) op();
  std::vector<float> ms(kReps);
  for (int i = 0; i < kReps; ++i) {
    CHECK_CUDA(cudaMemsetAsync(flush, i & 0xFF, kFlushBytes, 0));
    CHECK_CUDA(cudaEventRecord(start, 0));
    op();
    CHECK_CUDA(cudaEventRecord(stop, 0));
    CHECK_CUDA(cudaEventSynchronize(stop));
    CHECK_CUDA(cudaEventElapsedTime(&ms[i], start, stop));
  }
  CHECK_CUDA(cudaEventDestroy(start));
  CHECK_CUDA(cudaEventDestroy(stop));
  std::sort(ms.begin(), ms.end());
  return ms[kReps / 2];
}

}  // namespace flashstream::bench
