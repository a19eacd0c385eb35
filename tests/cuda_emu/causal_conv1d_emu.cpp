// Runs the causal conv1d CUDA kernels (include/flashstream/conv/cuda.cuh) on the host, every
// (block, thread) of the grid in turn, against a float64 reference: their index math, state pools,
// padding slots, both layouts and both launch paths get checked on machines without a GPU.
// Built and run by tests/test_cuda_emu.py with a host C++ compiler and the CUDA
// headers (for dim3 / cudaError_t). Exit status 0 iff every case matches.
#include <cuda_runtime.h>

uint3 blockIdx, threadIdx;  // what the kernels read as built-ins
dim3 gridDim, blockDim;
#undef __launch_bounds__
#define __launch_bounds__(...)

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "flashstream/conv/cuda.cuh"

namespace {

using flashstream::conv::CausalConv1dParams;
namespace ccu = flashstream::conv::cuda;

template <typename F>
void launch(int64_t n, F&& kernel) {  // grid_for's grid, every thread in turn
  const unsigned grid = flashstream::cuda::grid_for(n, ccu::kThreads);
  gridDim = dim3(grid, 1, 1);
  blockDim = dim3(ccu::kThreads, 1, 1);
  for (unsigned b = 0; b < grid; ++b) {
    for (unsigned t = 0; t < unsigned(ccu::kThreads); ++t) {
      blockIdx.x = b;
      threadIdx.x = t;
      kernel();
    }
  }
}

template <typename T> T cast(float v) { return flashstream::from_float<T>(v); }
template <typename T> double val(T v) { return flashstream::to_float(v); }

// One case; returns true if y and the new state match the reference.
template <typename T>
bool run_case(int B, int C, int Tn, int W, int dil, bool channel_last, bool pool, bool silu, uint32_t seed,
              double tol) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> nd;
  const int L = (W - 1) * dil, P = pool ? B + 2 : B;
  std::vector<T> x(size_t(B) * C * Tn), w(size_t(C) * W), bias(C), state(size_t(P) * C * L), y(x.size());
  for (auto& v : x) v = cast<T>(nd(gen));
  for (auto& v : w) v = cast<T>(nd(gen));
  for (auto& v : bias) v = cast<T>(nd(gen));
  for (auto& v : state) v = cast<T>(nd(gen));
  std::vector<int32_t> idx(B);
  for (int b = 0; b < B; ++b) idx[b] = pool ? (b == 0 ? -1 : P - 1 - b) : b;  // row 0: a padding slot
  CausalConv1dParams p;
  p.batch = B; p.channels = C; p.seqlen = Tn; p.width = W; p.dilation = dil; p.state_len = L; p.pool = P;
  p.silu = silu;
  if (channel_last) { p.x_sb = int64_t(Tn) * C; p.x_sc = 1; p.x_st = C; }
  else { p.x_sb = int64_t(C) * Tn; p.x_sc = Tn; p.x_st = 1; }
  p.y_sb = p.x_sb; p.y_sc = p.x_sc; p.y_st = p.x_st;
  p.s_sb = int64_t(C) * L; p.s_sc = L; p.s_sl = 1;

  std::vector<double> y_ref(x.size());
  std::vector<T> s_ref = state;
  for (int b = 0; b < B; ++b) {
    for (int c = 0; c < C; ++c) {
      const int s = idx[b];
      const bool has = L > 0 && s >= 0 && s < P;
      std::vector<double> ext(size_t(L) + Tn);
      for (int l = 0; l < L; ++l) ext[l] = has ? val(state[size_t(s) * C * L + size_t(c) * L + l]) : 0.0;
      for (int t = 0; t < Tn; ++t) ext[L + t] = val(x[b * p.x_sb + c * p.x_sc + t * p.x_st]);
      for (int t = 0; t < Tn; ++t) {
        double acc = val(bias[c]);
        for (int k = 0; k < W; ++k) acc += val(w[size_t(c) * W + k]) * ext[t + size_t(k) * dil];
        if (silu) acc = acc / (1.0 + std::exp(-acc));
        y_ref[b * p.x_sb + c * p.x_sc + t * p.x_st] = acc;
      }
      if (has) {
        for (int l = 0; l < L; ++l) s_ref[size_t(s) * C * L + size_t(c) * L + l] = cast<T>(float(ext[Tn + l]));
      }
    }
  }

  const int32_t* ip = pool ? idx.data() : nullptr;
  ccu::dispatch_width(W, [&](auto width) {
    constexpr int kW = decltype(width)::value;
    if (ccu::use_decode_kernel(p)) {
      launch(int64_t(B) * C, [&] {
        ccu::decode_kernel<T, kW>(p, x.data(), w.data(), bias.data(), state.data(), ip, y.data());
      });
    } else {
      launch(int64_t(B) * C * ((Tn + ccu::kRun - 1) / ccu::kRun), [&] {
        ccu::forward_kernel<T, kW>(p, x.data(), w.data(), bias.data(), state.data(), ip, y.data(), channel_last);
      });
      if (L > 0) launch(int64_t(B) * C * L, [&] { ccu::save_state_kernel<T>(p, x.data(), state.data(), ip); });
    }
    return cudaSuccess;
  });

  double err = 0.0, scale = 1e-30;
  for (size_t i = 0; i < y.size(); ++i) {
    err = std::fmax(err, std::fabs(val(y[i]) - y_ref[i]));
    scale = std::fmax(scale, std::fabs(y_ref[i]));
  }
  bool state_ok = true;
  for (size_t i = 0; i < state.size(); ++i) state_ok &= val(state[i]) == val(s_ref[i]);
  const bool ok = err <= tol * scale && state_ok;
  if (!ok) {
    std::printf("FAIL %s B%d C%d T%d W%d dilation %d %s pool %d silu %d: rel err %.3g, state %s\n",
                sizeof(T) == 4 ? "fp32" : "16-bit", B, C, Tn, W, dil, channel_last ? "channel-last" : "time-major",
                pool, silu, err / scale, state_ok ? "ok" : "WRONG");
  }
  return ok;
}

}  // namespace

int main() {
  int cases = 0, failed = 0;
  for (int W : {1, 2, 3, 4, 5, 9, 31, 64}) {
    for (int dil : {1, 3, 8}) {
      for (int Tn : {0, 1, 5, 16, 32, 33, 100, 700}) {
        for (int layout = 0; layout < 2; ++layout) {
          for (int pool = 0; pool < 2; ++pool) {
            const uint32_t seed = uint32_t(W * 100000 + dil * 10000 + Tn * 10 + layout * 2 + pool);
            const bool silu = (W + Tn) % 2 == 1;
            failed += !run_case<float>(3, 7, Tn, W, dil, layout, pool, silu, seed, 1e-5);
            failed += !run_case<flashstream::bf16_t>(2, 5, Tn, W, dil, layout, pool, silu, seed + 1, 1.6e-2);
            cases += 2;
          }
        }
      }
    }
  }
  std::printf("%d cases, %d failed\n", cases, failed);
  return failed != 0;
}
