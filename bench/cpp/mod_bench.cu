// Microbenchmark of the MoD CUDA kernels through the torch-free headers only
// (include/flashstream/mod/cuda.cuh), at the issue's size: T = 8192 tokens, D = 4096, bf16.
//
// Times route (one group per row, and frames of 256 tokens), gather, gather + RMSNorm and the
// in-place scatter, each with the L2 flushed before every rep (cudaEvent timing, median), and
// prints the achieved bandwidth of the row movers next to a device-to-device cudaMemcpy. Checks
// the routes against the CPU route kernel (route_cpu.h) and a sample of gathered rows bitwise.
//
//   mod_bench [T] [D] [capacity]      (defaults 8192 4096 0.2; B = 1)
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <cuda_runtime.h>

#include "bench_common.cuh"

#include "flashstream/common/dtype.h"
#include "flashstream/mod/cuda.cuh"
#include "flashstream/mod/route.h"
#define FLASHSTREAM_ISA bench_host  // route_cpu.h's per-ISA namespace; host code only here
#include "flashstream/mod/route_cpu.h"

namespace {

using namespace flashstream::bench;

using flashstream::bf16_t;
namespace mk = flashstream::mod::cuda;

template <typename E>
E* device_alloc(int64_t n) {
  E* p = nullptr;
  CHECK_CUDA(cudaMalloc(&p, std::max<int64_t>(n, 1) * sizeof(E)));
  return p;
}

struct Route {
  mk::RouteScratch s{};
  explicit Route(int64_t T) {
    s.key = device_alloc<uint64_t>(T);
    s.tok = device_alloc<int32_t>(T);
    s.gid = device_alloc<int64_t>(T);
    s.start = device_alloc<int32_t>(T);
    s.n_r = device_alloc<int32_t>(1);
    s.keep = device_alloc<uint8_t>(T);
    s.count = device_alloc<int64_t>(1);
    s.flags = device_alloc<int>(2);
  }
  ~Route() {
    cudaFree(s.key); cudaFree(s.tok); cudaFree(s.gid); cudaFree(s.start);
    cudaFree(s.n_r); cudaFree(s.keep); cudaFree(s.count); cudaFree(s.flags);
  }
};

// Route one row on the GPU (timed) and on the CPU kernel (check). Returns false on a mismatch.
bool bench_route(const char* label, const bf16_t* scores, const std::vector<bf16_t>& h_scores, const int64_t* groups,
                 const std::vector<int64_t>& h_groups, int64_t T, int64_t K, double capacity, int64_t* indices,
                 bf16_t* weights, void* flush) {
  Route r(T);
  auto run = [&] {
    CHECK_CUDA(cudaMemsetAsync(r.s.flags, 0, 2 * sizeof(int), 0));
    CHECK_CUDA(mk::launch_route_mark<bf16_t>(scores, groups, nullptr, 1, T, capacity, r.s, 0));
    CHECK_CUDA(mk::launch_route_write<bf16_t>(scores, nullptr, 1, T, K, indices, weights, r.s, 0));
  };
  const float ms = time_ms(run, flush);

  std::vector<int64_t> got(K), want(K);
  std::vector<bf16_t> got_w(K), want_w(K);
  CHECK_CUDA(cudaMemcpy(got.data(), indices, K * sizeof(int64_t), cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(got_w.data(), weights, K * sizeof(bf16_t), cudaMemcpyDeviceToHost));
  std::vector<uint64_t> keys(2 * T);
  std::vector<int32_t> tok(T);
  std::vector<uint8_t> keep(T);
  namespace mc = flashstream::mod::cpu;
  int64_t kept = 0;
  mc::route_row(h_scores.data(), groups ? h_groups.data() : nullptr, nullptr, T, capacity,
                mc::RouteScratch{keys.data(), keys.data() + T, tok.data(), keep.data()}, &kept);
  mc::write_row(h_scores.data(), nullptr, keep.data(), T, K, want.data(), want_w.data());
  int64_t bad = 0;
  for (int64_t k = 0; k < K; ++k) {
    // sigmoid: device expf may differ from the host's in the last bit before the bf16 rounding
    const float dw = flashstream::to_float(got_w[k]) - flashstream::to_float(want_w[k]);
    bad += got[k] != want[k] || dw > 1e-2f || dw < -1e-2f;
  }
  std::printf("route  %-14s T=%-6lld K=%-6lld %9.1f us   check %s (%lld/%lld differ from the CPU kernel)\n", label,
              (long long)T, (long long)K, ms * 1e3, bad ? "FAILED" : "ok", (long long)bad, (long long)K);
  return bad == 0;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t T = argc > 1 ? std::atoll(argv[1]) : 8192;
  const int64_t D = argc > 2 ? std::atoll(argv[2]) : 4096;
  const double capacity = argc > 3 ? std::atof(argv[3]) : 0.2;
  if (T < 256 || T % 256 || D < 1 || !(capacity > 0 && capacity <= 1)) {
    std::fprintf(stderr, "usage: mod_bench [T: multiple of 256] [D >= 1] [capacity in (0, 1]]\n");
    return 2;
  }
  int dev = 0;
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDevice(&dev));
  CHECK_CUDA(cudaGetDeviceProperties(&prop, dev));
  std::printf("mod_bench: %s (sm_%d%d, %d SMs), B=1 T=%lld D=%lld bf16 capacity %.2f, median of %d reps, L2 flushed\n",
              prop.name, prop.major, prop.minor, prop.multiProcessorCount, (long long)T, (long long)D, capacity, kReps);
  void* flush = device_alloc<char>(kFlushBytes);

  bf16_t* scores = device_alloc<bf16_t>(T);
  fill_kernel<<<64, 256>>>(scores, T, 7);
  CHECK_CUDA(cudaGetLastError());
  std::vector<bf16_t> h_scores(T);
  CHECK_CUDA(cudaMemcpy(h_scores.data(), scores, T * sizeof(bf16_t), cudaMemcpyDeviceToHost));  // bf16: many ties
  std::vector<int64_t> h_groups(T);
  for (int64_t t = 0; t < T; ++t) h_groups[t] = t / 256;
  int64_t* groups = device_alloc<int64_t>(T);
  CHECK_CUDA(cudaMemcpy(groups, h_groups.data(), T * sizeof(int64_t), cudaMemcpyHostToDevice));

  const int64_t K_seq = flashstream::mod::keep_count(capacity, T);
  const int64_t K_frames = (T / 256) * flashstream::mod::keep_count(capacity, 256);
  const int64_t K_max = std::max(K_seq, K_frames);
  int64_t* indices = device_alloc<int64_t>(K_max);
  bf16_t* weights = device_alloc<bf16_t>(K_max);
  bool ok = bench_route("frames of 256", scores, h_scores, groups, h_groups, T, K_frames, capacity, indices, weights,
                        flush);
  // Last, so that the row movers below use the per-sequence route's indices.
  ok &= bench_route("one group", scores, h_scores, nullptr, h_groups, T, K_seq, capacity, indices, weights, flush);
  const int64_t K = K_seq;

  bf16_t* x = device_alloc<bf16_t>(T * D);
  bf16_t* x_sel = device_alloc<bf16_t>(K * D);
  bf16_t* normed = device_alloc<bf16_t>(K * D);
  bf16_t* norm_w = device_alloc<bf16_t>(D);
  fill_kernel<<<1024, 256>>>(x, T * D, 1);
  fill_kernel<<<64, 256>>>(norm_w, D, 3);
  CHECK_CUDA(cudaGetLastError());

  const double row_bytes = double(D) * sizeof(bf16_t);
  const float gather_ms = time_ms([&] {
    CHECK_CUDA(mk::launch_gather<bf16_t>(x, indices, x_sel, 1, K, T, D, 0));
  }, flush);
  const float norm_ms = time_ms([&] {
    CHECK_CUDA(mk::launch_gather_rmsnorm<bf16_t>(x, indices, norm_w, 1e-6f, x_sel, normed, 1, K, T, D, 0));
  }, flush);

  // Bitwise check of a sample of gathered rows, before the scatter below changes x.
  std::vector<int64_t> h_idx(K);
  CHECK_CUDA(cudaMemcpy(h_idx.data(), indices, K * sizeof(int64_t), cudaMemcpyDeviceToHost));
  std::vector<bf16_t> got(D), want(D);
  int64_t bad_rows = 0;
  for (int64_t k = 0; k < K; k += std::max<int64_t>(1, K / 64)) {
    CHECK_CUDA(cudaMemcpy(got.data(), x_sel + k * D, D * sizeof(bf16_t), cudaMemcpyDeviceToHost));
    CHECK_CUDA(cudaMemcpy(want.data(), x + h_idx[k] * D, D * sizeof(bf16_t), cudaMemcpyDeviceToHost));
    bad_rows += std::memcmp(got.data(), want.data(), D * sizeof(bf16_t)) != 0;
  }

  const float scatter_ms = time_ms([&] {
    CHECK_CUDA((mk::launch_scatter<false, bf16_t>(x, x_sel, indices, weights, x, 1, K, T, D, 0)));
  }, flush);
  const float copy_ms = time_ms([&] {
    CHECK_CUDA(cudaMemcpyAsync(normed, x_sel, K * D * sizeof(bf16_t), cudaMemcpyDeviceToDevice, 0));
  }, flush);

  auto gbs = [](double bytes, float ms) { return bytes / (ms * 1e-3) / 1e9; };
  const double copy_gbs = gbs(2 * K * row_bytes, copy_ms);
  std::printf("gather           K=%-6lld %9.1f us %8.1f GB/s   (copy of K rows: %8.1f GB/s)\n", (long long)K,
              gather_ms * 1e3, gbs(2 * K * row_bytes, gather_ms), copy_gbs);
  std::printf("gather+rmsnorm   K=%-6lld %9.1f us %8.1f GB/s\n", (long long)K, norm_ms * 1e3,
              gbs(3 * K * row_bytes, norm_ms));
  std::printf("scatter (inpl.)  K=%-6lld %9.1f us %8.1f GB/s\n", (long long)K, scatter_ms * 1e3,
              gbs(3 * K * row_bytes, scatter_ms));

  std::printf("gather check %s (%lld sampled rows differ)\n", bad_rows ? "FAILED" : "ok", (long long)bad_rows);
  ok &= bad_rows == 0;

  for (void* p : {(void*)scores, (void*)groups, (void*)indices, (void*)weights, (void*)x, (void*)x_sel,
                  (void*)normed, (void*)norm_w, flush})
    CHECK_CUDA(cudaFree(p));
  return ok ? 0 : 1;
}
