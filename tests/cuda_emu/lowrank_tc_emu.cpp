// Runs lowrank_linear's tensor-core kernel (include/flashstream/lowrank/cuda_tc.cuh) on the host
// and checks its layout and dispatch rule (tc_params.h). Each block's 256 threads are host
// threads (__syncthreads is a barrier); cp.async lands at issue (the first cases) or only at its
// wait_group (the last four: a read before wait + barrier shows); ldmatrix and
// mma.sync.m16n8k16 are emulated per warp from the PTX ISA's tables (mma_emu.h, shared with
// sink_tc_emu.cpp), written out independently of the kernel's maps. Compared with a float64 reference of the
// unfused chain (x A rounded to the dtype, then B, bias, activation). Also: bank conflicts of
// every ldmatrix / T store / cp.async write, disjoint buffers, output coverage (y is
// pre-filled with NaN and has a guard tail), and the dispatch rule. Not covered: real cp.async
// asynchrony beyond those two extremes, the PTX itself, timing, occupancy. Built and run by tests/test_cuda_emu.py; exit
// status 0 iff every case passes.
#include <cmath>
#include <cstdio>
#include <random>
#include <set>
#include <vector>

#include "mma_emu.h"

static std::vector<uint16_t> g_smem;
#define FS_LOWRANK_TC_SMEM(name) uint16_t* name = g_smem.data()

#include "flashstream/lowrank/cuda_tc.cuh"

namespace {

namespace lr = flashstream::lowrank;
namespace tc = flashstream::lowrank::tc;
using flashstream::bf16_t;
using flashstream::f16_t;

template <typename F>
void run_grid(unsigned blocks, F&& kernel) {
  for (unsigned x = 0; x < blocks; ++x) {
    blockIdx.x = x; blockIdx.y = 0; blockIdx.z = 0;
    run_block(tc::kThreads, kernel);
  }
}

// launch_linear_tc on the host, for a GPU with `sms` multiprocessors.
template <typename T>
void launch(const lr::LinearProblem& p, const lr::EpilogueArgs& e, int sms) {
  tc::with_tile(p.r, p.M, sms, [&](auto bm, auto rb) {
    using L = tc::Layout<decltype(bm)::value, decltype(rb)::value>;
    g_smem.assign(size_t(L::halves), 0x7FC1);  // NaN-like garbage in both dtypes: must be written before read
    run_grid(unsigned((p.M + L::BM - 1) / L::BM), [&] { tc::linear_tc_kernel<T, L::BM, decltype(rb)::value>(p, e); });
  });
}

template <typename T> T cast(float v) { return flashstream::from_float<T>(v); }
template <typename T> double val(T v) { return flashstream::to_float(v); }

double act_ref(lr::Activation act, double z) {
  switch (act) {
    case lr::Activation::gelu: return 0.5 * z * (1.0 + std::erf(z / std::sqrt(2.0)));
    case lr::Activation::silu: return z / (1.0 + std::exp(-z));
    default: return z;
  }
}

// x [M, K] with row stride ldx (>= K), A [K, r], B [r, N]; y [M, N] plus a guard tail.
template <typename T>
bool run_case(int64_t M, int64_t K, int64_t r, int64_t N, int64_t ldx, bool bias, lr::Activation act, uint32_t seed,
              double tol, int sms = 1) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> nd;
  std::vector<T> x(size_t(M * ldx)), A(size_t(K * r)), B(size_t(r * N)), bz(static_cast<size_t>(N));
  for (auto& v : x) v = cast<T>(nd(gen));
  for (auto& v : A) v = cast<T>(nd(gen) / std::sqrt(float(K)));
  for (auto& v : B) v = cast<T>(nd(gen) / std::sqrt(float(r)));
  for (auto& v : bz) v = cast<T>(0.5f * nd(gen));
  constexpr int64_t kGuard = 64;
  std::vector<T> y(size_t(M * N + kGuard), cast<T>(NAN));
  lr::LinearProblem p;
  p.x = {x.data(), ldx, 1};
  p.M = M; p.K = K; p.r = r; p.N = N;
  p.a = {A.data(), r, 1};
  p.b = {B.data(), N, 1};
  lr::EpilogueArgs e;
  e.out = y.data();
  e.ldo = N;
  e.bias = bias ? bz.data() : nullptr;
  e.act = act;
  launch<T>(p, e, sms);

  double worst = 0.0;
  bool guard_ok = true;
  for (int64_t g = 0; g < kGuard; ++g) guard_ok &= std::isnan(val(y[size_t(M * N + g)]));
  std::vector<double> t(static_cast<size_t>(r));
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t c = 0; c < r; ++c) {
      double s = 0.0;
      for (int64_t k = 0; k < K; ++k) s += val(x[size_t(m * ldx + k)]) * val(A[size_t(k * r + c)]);
      t[size_t(c)] = val(cast<T>(float(s)));  // the unfused chain's rounding of x A
    }
    for (int64_t n = 0; n < N; ++n) {
      double z = bias ? val(bz[size_t(n)]) : 0.0;
      for (int64_t c = 0; c < r; ++c) z += t[size_t(c)] * val(B[size_t(c * N + n)]);
      const double want = act_ref(act, z), got = val(y[size_t(m * N + n)]);
      const double err = std::isnan(got) ? INFINITY : std::fabs(got - want) / (1.0 + std::fabs(want));
      worst = err > worst ? err : worst;
    }
  }
  const bool ok = worst <= tol && guard_ok;
  std::printf("%s M=%lld K=%lld r=%lld N=%lld ldx=%lld bias=%d act=%d BM=%d: max rel err %.3g guard %s %s\n",
              std::is_same_v<T, bf16_t> ? "bf16" : "f16 ", (long long)M, (long long)K, (long long)r, (long long)N,
              (long long)ldx, bias, int(act), tc::block_rows(tc::rank_bucket(r), M, sms), worst, guard_ok ? "ok" : "WRITTEN", ok ? "ok" : "FAILED");
  return ok;
}

// Fragment loads, T stores and cp.async writes of one Layout are bank-conflict free; buffers are
// disjoint and inside the allocation; the kernel fits every sm_80+ GPU's opt-in shared memory
// per block (99 KB on sm_86 / sm_89; 163 KB on A100, 227 KB on H100).
template <int BM, int RB>
bool check_layout() {
  using L = tc::Layout<BM, RB>;
  bool ok = L::bytes <= 99 * 1024;
  auto ldsm = [](int ld, bool b_operand) {  // ldmatrix: each 8-lane phase reads 8 rows of 16 B
    bool good = true;
    for (int q = 0; q < 4; ++q) {
      std::vector<int64_t> addr;
      for (int lane = 8 * q; lane < 8 * q + 8; ++lane) {
        const int row = b_operand ? tc::ldsm_b_k(lane) : tc::ldsm_a_row(lane);
        const int col = b_operand ? tc::ldsm_b_n(lane) : tc::ldsm_a_col(lane);
        for (int wd = 0; wd < 4; ++wd) addr.push_back(2 * (row * ld + col) + 4 * wd);
      }
      good &= conflict_free(addr);
    }
    return good;
  };
  auto store_c = [](int ld) {  // 32-bit stores of c pairs into T
    bool good = true;
    for (int h = 0; h < 2; ++h) {
      std::vector<int64_t> addr;
      for (int lane = 0; lane < 32; ++lane) addr.push_back(2 * (tc::frag_c_row(lane, 2 * h) * ld + tc::frag_c_col(lane, 2 * h)));
      good &= conflict_free(addr);
    }
    return good;
  };
  auto pieces = [](int cols, int ld, bool x_order) {  // 16-byte cp.async writes, served 8 lanes (128 B) at a time
    bool good = true;
    for (int q = 0; q < 4; ++q) {
      std::vector<int64_t> addr;
      for (int lane = 8 * q; lane < 8 * q + 8; ++lane) {
        const int row = x_order ? tc::x_piece_row(lane) : lane / (cols / tc::kVec);
        const int col = x_order ? tc::x_piece_col(lane) : (lane % (cols / tc::kVec)) * tc::kVec;
        for (int wd = 0; wd < 4; ++wd) addr.push_back(2 * (row * ld + col) + 4 * wd);
      }
      good &= conflict_free(addr);
    }
    return good;
  };
  const bool checks[] = {ldsm(L::ldx, false), ldsm(L::ldt, false), ldsm(L::lda, true), ldsm(L::ldb, true), store_c(L::ldt),
                         pieces(tc::kBK, L::ldx, true), pieces(RB, L::lda, false), pieces(tc::kBN, L::ldb, false)};
  for (bool c : checks) ok &= c;
  // Disjoint regions: [x0 | x1 | a0 | a1] and [b0 | b1] inside staging, T after it.
  std::vector<std::pair<int, int>> stage1 = {{L::x_offset(0), L::x_stage}, {L::x_offset(1), L::x_stage},
                                             {L::a_offset(0), L::a_stage}, {L::a_offset(1), L::a_stage}};
  std::vector<std::pair<int, int>> stage2 = {{L::b_offset(0), L::b_stage}, {L::b_offset(1), L::b_stage}};
  auto disjoint = [&](const std::vector<std::pair<int, int>>& rs) {
    bool good = true;
    for (size_t i = 0; i < rs.size(); ++i) {
      good &= rs[i].first % tc::kVec == 0 && rs[i].first + rs[i].second <= L::staging;
      for (size_t j = i + 1; j < rs.size(); ++j)
        good &= rs[i].first + rs[i].second <= rs[j].first || rs[j].first + rs[j].second <= rs[i].first;
    }
    return good;
  };
  ok &= disjoint(stage1) && disjoint(stage2) && L::t_offset == L::staging && L::halves == L::staging + L::BM * L::ldt;
  // x pieces cover the chunk exactly once; warp tiles cover the block tiles exactly once.
  std::vector<int> x_cover(size_t(L::BM * tc::kBK), 0);
  for (int v = 0; v < L::BM * (tc::kBK / tc::kVec); ++v)
    for (int h = 0; h < tc::kVec; ++h) ++x_cover[size_t(tc::x_piece_row(v) * tc::kBK + tc::x_piece_col(v) + h)];
  for (int c : x_cover) ok &= c == 1;
  std::vector<int> t_cover(size_t(L::BM * RB), 0), y_cover(size_t(L::BM * tc::kBN), 0);
  for (int warp = 0; warp < tc::kThreads / 32; ++warp)
    for (int lane = 0; lane < 32; ++lane)
      for (int i = 0; i < L::mi; ++i)
        for (int q = 0; q < 4; ++q) {
          const int row = (warp / tc::kWarpsN) * L::wm + i * 16 + tc::frag_c_row(lane, q);
          for (int j = 0; j < L::nj1; ++j) ++t_cover[size_t(row * RB + (warp % tc::kWarpsN) * L::wn1 + j * 8 + tc::frag_c_col(lane, q))];
          for (int j = 0; j < L::nj2; ++j) ++y_cover[size_t(row * tc::kBN + (warp % tc::kWarpsN) * L::wn2 + j * 8 + tc::frag_c_col(lane, q))];
        }
  for (int c : t_cover) ok &= c == 1;
  for (int c : y_cover) ok &= c == 1;
  std::printf("layout RB=%d BM=%d: %d bytes of shared memory, conflicts / overlaps / coverage %s\n", RB, L::BM, L::bytes,
              ok ? "ok" : "FAILED");
  return ok;
}

bool check_dispatch() {
  alignas(16) static uint16_t buf[64];
  const tc::Operand ok_op{buf, 64, 1};
  auto rule = [&](bool half, int cc, int64_t M, int64_t K, int64_t r, int64_t N, tc::Operand x, const void* out) {
    return tc::use_tensor_cores(half, cc, M, K, r, N, x, ok_op, ok_op, out);
  };
  bool ok = rule(true, 90, 8192, 4096, 128, 4096, ok_op, buf);
  ok &= rule(true, 80, 1, 8, 8, 8, ok_op, buf);
  ok &= rule(true, 90, 5, 64, 256, 64, ok_op, buf);
  ok &= !rule(false, 90, 8192, 4096, 128, 4096, ok_op, buf);           // fp32
  ok &= !rule(true, 75, 8192, 4096, 128, 4096, ok_op, buf);            // pre-Ampere
  ok &= !rule(true, 90, 8192, 4096, 264, 4096, ok_op, buf);            // r > 256
  ok &= !rule(true, 90, 8192, 4100, 128, 4096, ok_op, buf);            // K % 8
  ok &= !rule(true, 90, 8192, 4096, 100, 4096, ok_op, buf);            // r % 8
  ok &= !rule(true, 90, 8192, 4096, 128, 4095, ok_op, buf);            // N % 8
  ok &= !rule(true, 90, 8192, 4096, 128, 4096, {buf, 1, 64}, buf);     // transposed x
  ok &= !rule(true, 90, 8192, 4096, 128, 4096, {buf, 68, 1}, buf);     // row stride % 8
  ok &= !rule(true, 90, 8192, 4096, 128, 4096, {buf + 1, 64, 1}, buf); // misaligned x
  ok &= !rule(true, 90, 8192, 4096, 128, 4096, ok_op, buf + 4);        // misaligned y
  ok &= tc::rank_bucket(1) == 64 && tc::rank_bucket(64) == 64 && tc::rank_bucket(72) == 128 &&
        tc::rank_bucket(128) == 128 && tc::rank_bucket(136) == 256 && tc::rank_bucket(256) == 256;
  ok &= tc::block_rows(64, 8192, 132) == 64 && tc::block_rows(128, 16896, 132) == 128 &&
        tc::block_rows(128, 16768, 132) == 64 && tc::block_rows(256, 1 << 20, 1) == 64 && tc::block_rows(64, 5, 1) == 128;
  std::printf("dispatch rule %s\n", ok ? "ok" : "FAILED");
  return ok;
}

}  // namespace

int main() {
  int cases = 0, failed = 0;
  auto check = [&](bool ok) { ++cases; failed += !ok; };
  check(check_layout<128, 64>());
  check(check_layout<128, 128>());
  check(check_layout<64, 64>());
  check(check_layout<64, 128>());
  check(check_layout<64, 256>());
  check(check_dispatch());
  using A = lr::Activation;
  // bucket 64, two blocks (M tail), K tail in a chunk, N tail in a tile, strided x, bias + gelu
  check(run_case<bf16_t>(130, 40, 24, 136, 48, true, A::gelu, 1, 2e-2));
  check(run_case<f16_t>(130, 40, 24, 136, 48, true, A::gelu, 2, 4e-3));
  // bucket 128 (r = 72: chunks of r past r are zero), silu, no bias
  check(run_case<bf16_t>(70, 136, 72, 40, 136, false, A::silu, 3, 2e-2));  // 5 k chunks
  // bucket 256 (BM 64), r = 256, several N tiles
  check(run_case<f16_t>(65, 32, 256, 264, 32, true, A::none, 4, 4e-3));
  g_cp_late = true;  // from here on cp.async lands only at its wait_group (mma_emu.h)
  check(run_case<bf16_t>(3, 8, 8, 8, 8, true, A::none, 5, 2e-2));  // tiny
  check(run_case<bf16_t>(129, 96, 128, 136, 104, true, A::gelu, 6, 2e-2));  // bucket 128 full, x row stride 104
  // BM 64 for buckets 64 / 128 (fewer row blocks than multiprocessors)
  check(run_case<bf16_t>(130, 40, 24, 136, 48, true, A::gelu, 7, 2e-2, 132));
  check(run_case<f16_t>(129, 96, 128, 136, 104, true, A::silu, 8, 4e-3, 132));
  std::printf("%d cases, %d failed\n", cases, failed);
  return failed == 0 ? 0 : 1;
}
