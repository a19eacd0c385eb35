// Runs the low-rank attention CUDA kernels (include/flashstream/lowrank/attention_cuda.cuh) on the
// host against a float64 dense reference. Each block's 256 threads are real host threads, so
// __syncthreads / __syncwarp are barriers and the warp shuffles exchange through memory: the
// kernels' index math, shared-memory layout, barriers, masking and head-dim buckets get checked on
// machines without a GPU (timing, occupancy and device intrinsics are not). The grids are the
// launchers' (launch_lowrank_attention, nvcc-only). Built and run by
// tests/test_cuda_emu.py; exit status 0 iff every case matches.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "warp_emu.h"

dim3 gridDim, blockDim;
#undef __shared__
#define __shared__ static  // one block runs at a time: a static is the block's shared memory
static std::vector<float> g_dynamic_smem;
#define FS_LOWRANK_DYNAMIC_SMEM(name) float* name = g_dynamic_smem.data()

#include "flashstream/lowrank/attention_cuda.cuh"

namespace {

namespace lr = flashstream::lowrank;
namespace lcu = flashstream::lowrank::cuda;

template <typename F>
void run_grid(dim3 grid, F&& kernel) {
  gridDim = grid;
  blockDim = dim3(lcu::kThreads, 1, 1);
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx.x = x; blockIdx.y = y; blockIdx.z = z;
        run_block(lcu::kThreads, kernel);
      }
}

// launch_lowrank_attention's two launches, on the host.
template <typename T, int kDh>
void launch(const lr::AttnArgs& a) {
  int64_t widest = 0;
  for (int z = 0; z < 3; ++z) widest = a.rp(z) > widest ? a.rp(z) : widest;
  run_grid(dim3(unsigned((a.B * a.S + lcu::kProjTile - 1) / lcu::kProjTile),
                unsigned((widest + lcu::kProjTile - 1) / lcu::kProjTile), 3),
           [&] { lcu::project_kernel<T>(a); });
  g_dynamic_smem.assign(lcu::Smem<kDh>::floats, NAN);  // garbage-like start: the kernel must write before reading
  constexpr int BM = lcu::kBlock<kDh>;
  run_grid(dim3(unsigned(a.B * a.H), unsigned((a.S + BM - 1) / BM)), [&] { lcu::attend_kernel<T, kDh>(a); });
}

template <typename T> T cast(float v) { return flashstream::from_float<T>(v); }
template <typename T> double val(T v) { return flashstream::to_float(v); }

template <typename T>
bool run_case(int B, int S, int Din, int H, int Dh, const int (&r)[3], bool causal, bool padding, bool bias,
              uint32_t seed, double tol) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> nd;
  const int N = H * Dh;
  std::vector<T> x(size_t(B) * S * Din), A[3], Bf[3], bz[3], out(size_t(B) * S * N);
  for (auto& v : x) v = cast<T>(nd(gen));
  for (int z = 0; z < 3; ++z) {
    A[z].resize(size_t(Din) * r[z]);
    Bf[z].resize(size_t(r[z]) * N);
    bz[z].resize(N);
    for (auto& v : A[z]) v = cast<T>(nd(gen) / std::sqrt(float(Din)));
    for (auto& v : Bf[z]) v = cast<T>(nd(gen) / std::sqrt(float(r[z])));
    for (auto& v : bz[z]) v = cast<T>(0.1f * nd(gen));
  }
  std::vector<uint8_t> mask(size_t(B) * S, 0);
  if (padding) {
    std::uniform_real_distribution<float> u;
    for (auto& m : mask) m = u(gen) < 0.3f;
    if (B > 1)
      for (int s = 0; s < S; ++s) mask[size_t(B - 1) * S + s] = 1;  // the last sequence: all padding -> zeros
  }
  lr::AttnArgs a;
  a.x = x.data();
  for (int z = 0; z < 3; ++z) {
    a.A[z] = A[z].data();
    a.Bf[z] = Bf[z].data();
    a.bias[z] = bias || z == 2 ? bz[z].data() : nullptr;
    a.r[z] = r[z];
  }
  a.key_padding_mask = padding ? reinterpret_cast<const bool*>(mask.data()) : nullptr;
  a.out = out.data();
  a.B = B; a.S = S; a.Din = Din; a.H = H; a.Dh = Dh; a.N = N;
  a.causal = causal;
  a.scale = float(1.0 / std::sqrt(double(Dh)));
  std::vector<float> P(size_t(B) * S * a.RP(), NAN);
  a.P = P.data();
  if (Dh <= 64) launch<T, 64>(a);
  else if (Dh <= 128) launch<T, 128>(a);
  else launch<T, 256>(a);

  // float64 reference: dense q, k, v, masked softmax; rows with no visible key are 0.
  std::vector<double> proj[3];
  for (int z = 0; z < 3; ++z) {
    proj[z].assign(size_t(B) * S * N, 0.0);
    for (int m = 0; m < B * S; ++m) {
      std::vector<double> p(r[z], 0.0);
      for (int c = 0; c < r[z]; ++c)
        for (int k = 0; k < Din; ++k) p[c] += val(x[size_t(m) * Din + k]) * val(A[z][size_t(k) * r[z] + c]);
      for (int n = 0; n < N; ++n) {
        double acc = a.bias[z] != nullptr ? val(bz[z][n]) : 0.0;
        for (int c = 0; c < r[z]; ++c) acc += p[c] * val(Bf[z][size_t(c) * N + n]);
        proj[z][size_t(m) * N + n] = acc;
      }
    }
  }
  double worst = 0.0;
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int t = 0; t < S; ++t) {
        std::vector<double> w(S, 0.0);
        double mx = -INFINITY;
        for (int j = 0; j < S; ++j) {
          if ((padding && mask[size_t(b) * S + j]) || (causal && j > t)) { w[j] = -INFINITY; continue; }
          double s = 0.0;
          for (int d = 0; d < Dh; ++d)
            s += proj[0][(size_t(b) * S + t) * N + h * Dh + d] * proj[1][(size_t(b) * S + j) * N + h * Dh + d];
          w[j] = s / std::sqrt(double(Dh));
          mx = w[j] > mx ? w[j] : mx;
        }
        double sum = 0.0;
        for (int j = 0; j < S; ++j) { w[j] = mx == -INFINITY ? 0.0 : std::exp(w[j] - mx); sum += w[j]; }
        for (int d = 0; d < Dh; ++d) {
          double o = 0.0;
          for (int j = 0; j < S; ++j) o += w[j] * proj[2][(size_t(b) * S + j) * N + h * Dh + d];
          o = sum > 0.0 ? o / sum : 0.0;
          const double got = val(out[(size_t(b) * S + t) * N + h * Dh + d]);
          const double err = std::fabs(got - o) / (1.0 + std::fabs(o));
          worst = err > worst || std::isnan(got) ? (std::isnan(got) ? INFINITY : err) : worst;
        }
      }
  const bool ok = worst <= tol;
  std::printf("%s B=%d S=%d Din=%d H=%d Dh=%d r=(%d,%d,%d) causal=%d padding=%d bias=%d: max rel err %.3g %s\n",
              sizeof(T) == 4 ? "f32 " : "bf16", B, S, Din, H, Dh, r[0], r[1], r[2], causal, padding, bias, worst,
              ok ? "ok" : "FAILED");
  return ok;
}

}  // namespace

int main() {
  int cases = 0, failed = 0;
  auto check = [&](bool ok) { ++cases; failed += !ok; };
  check(run_case<float>(2, 70, 24, 2, 16, {5, 17, 33}, false, false, true, 1, 1e-4));   // kDh 64, tiles 64 + 6
  check(run_case<float>(2, 70, 24, 2, 16, {5, 17, 33}, true, true, false, 2, 1e-4));
  check(run_case<float>(1, 67, 9, 2, 100, {16, 3, 20}, true, false, true, 3, 1e-4));   // kDh 128
  check(run_case<float>(2, 40, 8, 1, 130, {7, 7, 40}, false, true, true, 4, 1e-4));    // kDh 256, BM 32
  check(run_case<float>(1, 1, 5, 3, 4, {1, 1, 1}, true, false, true, 5, 1e-4));        // one token
  check(run_case<flashstream::bf16_t>(2, 50, 16, 2, 32, {8, 8, 8}, true, true, true, 6, 2e-2));
  std::printf("%d cases, %d failed\n", cases, failed);
  return failed == 0 ? 0 : 1;
}
