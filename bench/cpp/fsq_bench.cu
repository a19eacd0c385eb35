// Microbenchmark of the FSQ forward kernel through the torch-free headers only
// (flashstream::fsq::make_params + flashstream::fsq::cuda::launch_forward<T>).
//
// For n = 2^24 vectors, levels [8,5,5,5] and [3]*8, fp32 and bf16: cudaMalloc'd buffers, L2 flushed
// before every rep, cudaEvent timing, median of the reps. Prints the achieved bandwidth (z read +
// codes written + int64 indices written) next to a same-size device-to-device cudaMemcpy, and
// checks a sample of indices against the host-side evaluation of params.h's math.
//
//   fsq_bench [log2_n]      (default 24)
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <cuda_runtime.h>

#include "bench_common.cuh"

#include "flashstream/common/dtype.h"
#include "flashstream/fsq/cuda.cuh"
#include "flashstream/fsq/params.h"

namespace {

using namespace flashstream::bench;

// Host evaluation of the same fp32 math (params.h's bounded(), round half to even).
int64_t host_index(const flashstream::fsq::Params& p, const float* row) {
  int64_t index = 0;
  for (int j = 0; j < p.dims; ++j) {
    const float q = std::nearbyint(flashstream::fsq::bounded(p, j, row[j]));
    index += int64_t(q + p.half_width[j]) * p.basis[j];
  }
  return index;
}

template <typename T>
bool run_case(const char* dtype_name, const std::vector<int64_t>& levels, int64_t n, void* flush) {
  flashstream::fsq::Params p;
  int bad_dim = -1;
  const auto err = flashstream::fsq::make_params(levels.data(), int(levels.size()), 1e-3, &p, &bad_dim);
  if (err != flashstream::fsq::ParamsError::ok) {
    std::fprintf(stderr, "make_params: %s (dim %d)\n", flashstream::fsq::params_error_message(err), bad_dim);
    return false;
  }
  const int d = p.dims;
  const int64_t elems = n * d;
  T *z = nullptr, *codes = nullptr;
  int64_t* indices = nullptr;
  int* nan_flag = nullptr;
  CHECK_CUDA(cudaMalloc(&z, elems * sizeof(T)));
  CHECK_CUDA(cudaMalloc(&codes, elems * sizeof(T)));
  CHECK_CUDA(cudaMalloc(&indices, n * sizeof(int64_t)));
  CHECK_CUDA(cudaMalloc(&nan_flag, sizeof(int)));
  CHECK_CUDA(cudaMemset(nan_flag, 0, sizeof(int)));
  fill_kernel<T><<<1024, 256>>>(z, elems, 0);
  CHECK_CUDA(cudaGetLastError());
  CHECK_CUDA(cudaDeviceSynchronize());

  const float fsq_ms = time_ms([&] {
    CHECK_CUDA(flashstream::fsq::cuda::launch_forward<T>(p, z, codes, indices, n, nan_flag, 0));
  }, flush);
  // Reference: a plain device-to-device copy of as many bytes as the kernel reads (+ writes).
  const size_t moved = size_t(elems) * sizeof(T) * 2 + size_t(n) * sizeof(int64_t);
  const size_t half = moved / 2;
  void *src = nullptr, *dst = nullptr;
  CHECK_CUDA(cudaMalloc(&src, half));
  CHECK_CUDA(cudaMalloc(&dst, half));
  CHECK_CUDA(cudaMemset(src, 1, half));
  const float copy_ms = time_ms([&] {
    CHECK_CUDA(cudaMemcpyAsync(dst, src, half, cudaMemcpyDeviceToDevice, 0));
  }, flush);
  CHECK_CUDA(cudaFree(src));
  CHECK_CUDA(cudaFree(dst));

  // Sanity: the first rows' indices against the host evaluation; no NaN flagged.
  const int64_t sample = std::min<int64_t>(n, 4096);
  std::vector<T> hz(sample * d);
  std::vector<int64_t> hidx(sample);
  int hflag = 0;
  CHECK_CUDA(cudaMemcpy(hz.data(), z, hz.size() * sizeof(T), cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(hidx.data(), indices, hidx.size() * sizeof(int64_t), cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(&hflag, nan_flag, sizeof(int), cudaMemcpyDeviceToHost));
  int64_t mismatches = 0;
  std::vector<float> row(d);
  for (int64_t v = 0; v < sample; ++v) {
    for (int j = 0; j < d; ++j) row[j] = flashstream::to_float(hz[v * d + j]);
    mismatches += host_index(p, row.data()) != hidx[v];
  }
  // Device tanhf may differ from the host's by an ulp, which can flip a value lying on a rounding
  // boundary; anything beyond a handful in 4096 is a real bug.
  const bool ok = hflag == 0 && mismatches <= sample / 1000;

  const double gbs = double(moved) / (fsq_ms * 1e-3) / 1e9;
  const double copy_gbs = double(half) * 2 / (copy_ms * 1e-3) / 1e9;
  char lv[64];
  int off = 0;
  for (size_t j = 0; j < levels.size(); ++j)
    off += std::snprintf(lv + off, sizeof(lv) - off, "%s%lld", j ? "," : "", (long long)levels[j]);
  std::printf("%-18s %-5s n=%-9lld %9.1f us %8.1f GB/s   copy %8.1f GB/s   %5.1f%% of copy   check %s (%lld/%lld mismatches)\n",
              lv, dtype_name, (long long)n, fsq_ms * 1e3, gbs, copy_gbs, 100.0 * gbs / copy_gbs,
              ok ? "ok" : "FAILED", (long long)mismatches, (long long)sample);

  CHECK_CUDA(cudaFree(z));
  CHECK_CUDA(cudaFree(codes));
  CHECK_CUDA(cudaFree(indices));
  CHECK_CUDA(cudaFree(nan_flag));
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  const int log2_n = argc > 1 ? std::atoi(argv[1]) : 24;
  if (log2_n < 1 || log2_n > 30) {
    std::fprintf(stderr, "usage: fsq_bench [log2_n in 1..30]\n");
    return 2;
  }
  const int64_t n = int64_t(1) << log2_n;
  int dev = 0;
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDevice(&dev));
  CHECK_CUDA(cudaGetDeviceProperties(&prop, dev));
  std::printf("fsq_bench: %s (sm_%d%d, %d SMs, L2 %d MiB), median of %d reps, L2 flushed per rep\n",
              prop.name, prop.major, prop.minor, prop.multiProcessorCount, prop.l2CacheSize >> 20, kReps);
  void* flush = nullptr;
  CHECK_CUDA(cudaMalloc(&flush, kFlushBytes));

  const std::vector<int64_t> l8555 = {8, 5, 5, 5};
  const std::vector<int64_t> l3x8(8, 3);
  bool ok = true;
  ok &= run_case<float>("fp32", l8555, n, flush);
  ok &= run_case<flashstream::bf16_t>("bf16", l8555, n, flush);
  ok &= run_case<float>("fp32", l3x8, n, flush);
  ok &= run_case<flashstream::bf16_t>("bf16", l3x8, n, flush);
  CHECK_CUDA(cudaFree(flush));
  return ok ? 0 : 1;
}
