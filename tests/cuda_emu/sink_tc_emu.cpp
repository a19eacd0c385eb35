// Runs sink attention's tensor-core kernel (include/flashstream/sink/cuda_tc.cuh) on the host and
// checks its layout and dispatch rule (tc_params.h). Each block's 128 threads are host threads
// (__syncthreads is a barrier); ldmatrix and mma.sync.m16n8k16 are emulated per warp from the PTX
// ISA's tables (mma_emu.h, shared with lowrank_tc_emu.cpp). Compared with a float64 reference
// computed here: for each query, gather its visible keys (params.h's visible()), rotate query and
// keys at the positions mode's positions (cache: ranks among the visible keys; absolute: stream
// indices), softcap, softmax with the optional sink logit, lse. The cache is paged (per-head page
// tables, shuffled pages) and filled as appends leave it, partly filled streams before and after
// the window wrapped; every pool slot that holds no kept token is NaN, as are out and lse before
// the launch (plus a guard tail that must stay NaN). Also: bank conflicts of the ldmatrix reads and
// of the Q / K / V shared stores, disjoint shared regions, fragment coverage, the dispatch rule.
// Not covered: the PTX itself, device memory ordering, timing, occupancy. Built and run by
// tests/test_cuda_emu.py; exit status 0 iff every case passes.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "mma_emu.h"

alignas(16) static unsigned char g_smem[128 * 1024];
#define FS_SINK_TC_SMEM(name) unsigned char* name = g_smem

#include "flashstream/sink/cuda_tc.cuh"

namespace {

namespace sk = flashstream::sink;
namespace tc = flashstream::sink::tc;
using flashstream::bf16_t;
using flashstream::f16_t;

template <typename T> T cast(float v) { return flashstream::from_float<T>(v); }
template <typename T> double val(T v) { return flashstream::to_float(v); }

template <typename T>
void launch(const sk::AttnArgs& a) {
  const dim3 grid = tc::attend_tc_grid(a);
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx.x = x; blockIdx.y = y; blockIdx.z = z;
        std::memset(g_smem, 0xFF, sizeof(g_smem));  // NaN in both dtypes: shared memory is written before read
        if (a.D == 64) run_block(tc::kThreads, [&] { tc::attend_tc_kernel<T, 64>(a); });
        else run_block(tc::kThreads, [&] { tc::attend_tc_kernel<T, 128>(a); });
      }
}

struct Case {
  const char* name;
  int64_t D, B, T, Hkv, G;
  std::vector<int64_t> lengths;  // empty: no cache (offline)
  int64_t page_size = 16;
  int64_t sink = 4, window = 16;
  sk::Mask mask = sk::Mask::causal;
  int64_t chunk = 0;
  sk::Positions positions = sk::Positions::cache;
  sk::RopeStyle style = sk::RopeStyle::half;
  float softcap = 0.f;
  bool sink_logits = false;
  std::vector<int> full;  // per kv head; empty: none
  double theta = 10000.0;
};

// Rotates x (fp64, D wide) at position pos, as params.h pairs the features.
void rotate(std::vector<double>& x, int64_t pos, sk::RopeStyle style, double theta) {
  const int D = int(x.size()), half = D / 2;
  for (int f = 0; f < half; ++f) {
    const int i1 = sk::rope_first(style, f, half), i2 = sk::rope_second(style, f, half);
    const double ang = double(pos) * std::pow(theta, -2.0 * f / D), c = std::cos(ang), s = std::sin(ang);
    const double a = x[size_t(i1)], b = x[size_t(i2)];
    x[size_t(i1)] = a * c - b * s;
    x[size_t(i2)] = b * c + a * s;
  }
}

template <typename T>
bool run_case(const Case& c, uint32_t seed, double tol) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> nd;
  const int64_t B = c.B, T_ = c.T, Hkv = c.Hkv, G = c.G, Hq = Hkv * G, D = c.D;
  const bool cached = !c.lengths.empty();
  std::vector<int64_t> lengths = cached ? c.lengths : std::vector<int64_t>(size_t(B), 0);
  const int64_t max_n = *std::max_element(lengths.begin(), lengths.end());
  sk::Geometry g{c.sink, c.window, c.mask, c.chunk};
  auto full_head = [&](int64_t h) { return !c.full.empty() && c.full[size_t(h)] != 0; };

  // Every token of every stream: k_all / v_all [B][max_n + T][Hkv][D]; the step's are the last T.
  const int64_t S = max_n + T_;
  std::vector<T> k_all(size_t(B * S * Hkv * D)), v_all(k_all.size()), q(size_t(B * T_ * Hq * D));
  for (auto& x : k_all) x = cast<T>(nd(gen));
  for (auto& x : v_all) x = cast<T>(nd(gen));
  for (auto& x : q) x = cast<T>(nd(gen));
  auto at = [&](int64_t b, int64_t p, int64_t h) { return size_t(((b * S + p) * Hkv + h) * D); };
  std::vector<T> k_new(size_t(B * T_ * Hkv * D)), v_new(k_new.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T_; ++t)
      for (int64_t h = 0; h < Hkv; ++h)
        for (int64_t d = 0; d < D; ++d) {
          k_new[size_t(((b * T_ + t) * Hkv + h) * D + d)] = k_all[at(b, lengths[size_t(b)] + t, h) + size_t(d)];
          v_new[size_t(((b * T_ + t) * Hkv + h) * D + d)] = v_all[at(b, lengths[size_t(b)] + t, h) + size_t(d)];
        }

  // The paged cache as appends leave it: kept tokens in their slots, everything else NaN.
  const int64_t ps = c.page_size;
  const int64_t capacity = (c.window == sk::kNoWindow || !c.full.empty()) ? std::max<int64_t>(max_n, 1)
                                                                          : sk::streaming_slots(g);
  const int64_t pages_per_head = (std::max(capacity, sk::streaming_slots(g)) + ps - 1) / ps + 1;
  const int64_t pool_pages = B * Hkv * pages_per_head + 3;  // 3 pages no table names
  std::vector<T> k_pool(size_t(pool_pages * ps * D), cast<T>(NAN)), v_pool(k_pool.size(), cast<T>(NAN));
  std::vector<int32_t> page_table(size_t(B * Hkv * pages_per_head));
  std::iota(page_table.begin(), page_table.end(), 0);
  std::shuffle(page_table.begin(), page_table.end(), gen);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hkv; ++h) {
      const int64_t n = lengths[size_t(b)];
      for (int64_t p = 0; p < n; ++p) {
        const bool kept = full_head(h) || c.window == sk::kNoWindow || p < c.sink || p >= n - c.window;
        if (!kept) continue;
        const int64_t off = sk::slot_offset(page_table.data(), pages_per_head, ps, pool_pages, D, b, h, Hkv,
                                            sk::slot_of(g, p, full_head(h)));
        if (off < 0) { std::printf("%s: bad test setup (slot outside the table)\n", c.name); return false; }
        std::copy_n(&k_all[at(b, p, h)], D, &k_pool[size_t(off)]);
        std::copy_n(&v_all[at(b, p, h)], D, &v_pool[size_t(off)]);
      }
    }
  std::vector<float> sink_logits(static_cast<size_t>(Hq));
  for (auto& x : sink_logits) x = nd(gen);
  std::unique_ptr<bool[]> full(new bool[size_t(Hkv)]);
  for (int64_t h = 0; h < Hkv; ++h) full[size_t(h)] = full_head(h);

  constexpr int64_t kGuard = 64;
  const int64_t rows = B * T_ * Hq;
  std::vector<T> out(size_t(rows * D + kGuard));
  std::vector<float> lse(size_t(rows + kGuard));

  sk::AttnArgs a;
  a.q = q.data(); a.k = k_new.data(); a.v = v_new.data();
  if (cached) {
    a.k_pool = k_pool.data(); a.v_pool = v_pool.data(); a.page_table = page_table.data(); a.lengths = lengths.data();
  }
  a.full_heads = c.full.empty() ? nullptr : full.get();
  a.sink_logits = c.sink_logits ? sink_logits.data() : nullptr;
  a.out = out.data(); a.lse = lse.data();
  a.B = B; a.T = T_; a.Hq = Hq; a.Hkv = Hkv; a.D = D;
  a.page_size = ps; a.pages_per_head = pages_per_head; a.pool_pages = pool_pages;
  a.g = g; a.positions = c.positions; a.rope_style = c.style; a.rope_theta = c.theta;
  a.scale = float(1.0 / std::sqrt(double(D))); a.softcap = c.softcap;
  bool all_ok = true;
  // cp.async landing only at its wait_group (a read before wait + barrier shows), and for odd seeds
  // also at issue (a refill of a stage still being read shows).
  for (int late = seed % 2 == 1 ? 0 : 1; late < 2; ++late) {
  std::fill(out.begin(), out.end(), cast<T>(NAN));
  std::fill(lse.begin(), lse.end(), NAN);
  g_cp_late = late != 0;
  launch<T>(a);

  // float64 reference.
  double worst = 0.0, worst_lse = 0.0;
  bool guard_ok = true;
  for (int64_t i = 0; i < kGuard; ++i) guard_ok &= std::isnan(val(out[size_t(rows * D + i)])) && std::isnan(lse[size_t(rows + i)]);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T_; ++t)
      for (int64_t hq = 0; hq < Hq; ++hq) {
        const int64_t h = hq / G, n = lengths[size_t(b)], i = n + t;
        const sk::Visible vi = sk::visible(g, n, T_, i, full_head(h));
        std::vector<int64_t> keys;
        for (int64_t p = 0; p < vi.sv; ++p) keys.push_back(p);
        for (int64_t p = vi.lo; p < vi.hi; ++p) keys.push_back(p);
        std::vector<double> qv(static_cast<size_t>(D));
        for (int64_t d = 0; d < D; ++d) qv[size_t(d)] = val(q[size_t(((b * T_ + t) * Hq + hq) * D + d)]) * double(a.scale);
        std::vector<double> sc;
        for (size_t r = 0; r < keys.size(); ++r) {
          const int64_t p = keys[r];
          std::vector<double> qr = qv, kr(static_cast<size_t>(D));
          for (int64_t d = 0; d < D; ++d) kr[size_t(d)] = val(k_all[at(b, p, h) + size_t(d)]);
          if (c.positions != sk::Positions::none) {
            const bool abs = c.positions == sk::Positions::absolute;
            const int64_t own = std::find(keys.begin(), keys.end(), i) - keys.begin();  // the query's rank among its keys
            rotate(qr, abs ? i : own, c.style, c.theta);
            rotate(kr, abs ? p : int64_t(r), c.style, c.theta);
          }
          double s = 0.0;
          for (int64_t d = 0; d < D; ++d) s += qr[size_t(d)] * kr[size_t(d)];
          if (c.softcap > 0.f) s = c.softcap * std::tanh(s / c.softcap);
          sc.push_back(s);
        }
        double M = c.sink_logits ? double(sink_logits[size_t(hq)]) : -INFINITY;
        for (double s : sc) M = std::max(M, s);
        double den = c.sink_logits ? std::exp(double(sink_logits[size_t(hq)]) - M) : 0.0;
        for (double s : sc) den += std::exp(s - M);
        const size_t row = size_t((b * T_ + t) * Hq + hq);
        for (int64_t d = 0; d < D; ++d) {
          double o = 0.0;
          for (size_t r = 0; r < keys.size(); ++r) o += std::exp(sc[r] - M) * val(v_all[at(b, keys[r], h) + size_t(d)]);
          o /= den;
          const double got = val(out[row * size_t(D) + size_t(d)]);
          const double err = std::isnan(got) ? INFINITY : std::fabs(got - o) / (tol * (1.0 + std::fabs(o)));
          worst = std::max(worst, err);
        }
        const double want_lse = M + std::log(den), got_lse = lse[row];
        const double err = std::isnan(got_lse) ? INFINITY : std::fabs(got_lse - want_lse) / (tol * (1.0 + std::fabs(want_lse)));
        worst_lse = std::max(worst_lse, err);
      }
  const bool ok = worst <= 1.0 && worst_lse <= 1.0 && guard_ok;
  std::printf("%-44s %s D=%3lld cp.async %s: max err / tol: out %.3f lse %.3f, guard %s  %s\n", c.name,
              std::is_same_v<T, bf16_t> ? "bf16" : "f16 ", (long long)D, late ? "late " : "early", worst, worst_lse,
              guard_ok ? "ok" : "WRITTEN", ok ? "ok" : "FAILED");
  all_ok &= ok;
  }
  return all_ok;
}

template <int D>
bool check_layout() {
  using L = tc::Layout<D>;
  constexpr int ld = L::ld, half = D / 2;
  bool ok = L::bytes <= 99 * 1024;  // every sm_80+ GPU's opt-in shared memory per block (sm_86 / sm_89: 99 KB)
  // ldmatrix: each 8-lane phase reads 8 rows of 16 B (Q as A, K non-transposed, V transposed).
  auto ldsm = [&](auto row_of, auto col_of) {
    bool good = true;
    for (int ph = 0; ph < 4; ++ph) {
      std::vector<int64_t> addr;
      for (int lane = 8 * ph; lane < 8 * ph + 8; ++lane)
        for (int w = 0; w < 4; ++w) addr.push_back(2 * (row_of(lane) * ld + col_of(lane)) + 4 * w);
      good &= conflict_free(addr);
    }
    return good;
  };
  ok &= ldsm(flashstream::mma::ldsm_a_row, flashstream::mma::ldsm_a_col);
  ok &= ldsm(tc::ldsm_k_key, tc::ldsm_k_dim);
  ok &= ldsm(flashstream::mma::ldsm_b_k, flashstream::mma::ldsm_b_n);
  // 16-bit stores of rotated Q and K (in place): a warp's 32 consecutive idx, both rope styles.
  for (int style = 0; style < 2; ++style)
    for (int w0 = 0; w0 < tc::kKeys * half; w0 += 32)
      for (int second = 0; second < 2; ++second) {
        std::vector<int64_t> addr;
        for (int idx = w0; idx < w0 + 32; ++idx) {
          const int j = idx / half, f = idx % half;
          const auto st = sk::RopeStyle(style);
          addr.push_back(2 * (j * ld + (second ? sk::rope_second(st, f, half) : sk::rope_first(st, f, half))));
        }
        ok &= conflict_free(addr);
      }
  // cp.async of key rows: 16-byte pieces, served 8 lanes at a time; piece c of each lane's row.
  for (int w = 0; w < tc::kWarps; ++w)
    for (int c = 0; c < D / tc::kVec; ++c)
      for (int ph = 0; ph < 4; ++ph) {
        std::vector<int64_t> addr;
        for (int tid = 32 * w + 8 * ph; tid < 32 * w + 8 * ph + 8; ++tid) {
          const int64_t at = (tc::copy_is_v(tid) ? L::v_offset(0) : L::k_offset(0)) + 2 * (tc::copy_row(tid) * ld + c * tc::kVec);
          for (int wd = 0; wd < 4; ++wd) addr.push_back(at + 4 * wd);
        }
        ok &= conflict_free(addr);
      }
  // Each (stage, K / V, row) is copied by exactly one thread.
  std::vector<int> copies(size_t(2 * tc::kKeys), 0);
  for (int tid = 0; tid < tc::kThreads; ++tid) ++copies[size_t(tc::copy_is_v(tid) * tc::kKeys + tc::copy_row(tid))];
  for (int v : copies) ok &= v == 1;
  // Regions in order, disjoint, aligned.
  ok &= L::q_offset == 0 && L::k_offset(0) == L::q_bytes && L::k_offset(1) == L::k_offset(0) + L::kv_bytes &&
        L::v_offset(0) == L::k_offset(1) + L::kv_bytes && L::v_offset(1) == L::v_offset(0) + L::kv_bytes &&
        L::freq_offset == L::v_offset(1) + L::kv_bytes;
  ok &= L::freq_offset % 16 == 0 && L::vis_offset % 8 == 0 && L::range_offset % 8 == 0;
  ok &= int(sizeof(g_smem)) >= L::bytes;
  // The mma tiles of the 4 warps cover the 64 rows x 64 keys once, the O accumulators 64 rows x D once.
  std::vector<int> s_cover(size_t(tc::kRows * tc::kKeys), 0), o_cover(size_t(tc::kRows * D), 0);
  for (int warp = 0; warp < tc::kWarps; ++warp)
    for (int lane = 0; lane < 32; ++lane)
      for (int e = 0; e < 4; ++e) {
        const int row = tc::lane_row(warp, lane, e >> 1);
        for (int nt = 0; nt < tc::kKeys / 8; ++nt) ++s_cover[size_t(row * tc::kKeys + tc::lane_key(nt, lane, e))];
        for (int dt = 0; dt < D / 8; ++dt) ++o_cover[size_t(row * D + 8 * dt + flashstream::mma::frag_c_col(lane, e))];
      }
  for (int v : s_cover) ok &= v == 1;
  for (int v : o_cover) ok &= v == 1;
  std::printf("layout D=%d: %d bytes of shared memory, conflicts / overlaps / coverage %s\n", D, L::bytes, ok ? "ok" : "FAILED");
  return ok;
}

bool check_dispatch() {
  auto rule = [](bool half, int cc, int64_t D, int64_t splits, int64_t T, int64_t G, bool aligned = true) {
    return tc::use_tensor_cores(half, cc, D, splits, T, G, aligned);
  };
  bool ok = rule(true, 90, 128, 1, 512, 4);
  ok &= rule(true, 80, 64, 1, 64, 1);
  ok &= rule(true, 86, 64, 1, 16, 4);
  ok &= !rule(false, 90, 128, 1, 512, 4);  // fp32
  ok &= !rule(true, 75, 128, 1, 512, 4);   // pre-Ampere
  ok &= !rule(true, 90, 96, 1, 512, 4);    // D
  ok &= !rule(true, 90, 256, 1, 512, 4);
  ok &= !rule(true, 90, 128, 2, 512, 4);   // split-KV
  ok &= !rule(true, 90, 128, 1, 1, 8);     // decode: fewer rows than a tile
  ok &= !rule(true, 90, 64, 1, 63, 1);
  ok &= !rule(true, 90, 128, 1, 512, 4, false);  // key rows not 16-byte aligned
  alignas(16) static uint16_t buf[16];
  ok &= tc::key_rows_aligned(buf, buf + 8, nullptr, nullptr) && tc::key_rows_aligned(buf, buf, buf, buf + 8);
  ok &= !tc::key_rows_aligned(buf + 1, buf, nullptr, nullptr) && !tc::key_rows_aligned(buf, buf, buf, buf + 4);
  ok &= tc::heads_per_block(3) == 3 && tc::queries_per_block(3) == 21 && tc::heads_per_block(80) == 64 &&
        tc::queries_per_block(80) == 1 && tc::queries_per_block(1) == 64;
  std::printf("dispatch rule %s\n", ok ? "ok" : "FAILED");
  return ok;
}

}  // namespace

int main() {
  int cases = 0, failed = 0;
  auto check = [&](bool ok) { ++cases; failed += !ok; };
  check(check_layout<64>());
  check(check_layout<128>());
  check(check_dispatch());
  using M = sk::Mask;
  using P = sk::Positions;
  using R = sk::RopeStyle;
  constexpr double kBf16 = 3e-2, kF16 = 4e-3;  // tests/test_sink_attention.py's CUDA tolerances
  {  // offline, T past one tile (tail of 6 queries), window < T
    Case c{"offline causal, T=70, G=1", 64, 1, 70, 2, 1, {}};
    check(run_case<bf16_t>(c, 1, kBf16));
    check(run_case<f16_t>(c, 2, kF16));
  }
  {  // paged 16, one stream before and one after the window wrapped; full head; chunk mask,
     // absolute positions, interleaved, softcap, sink logits
    Case c{"paged16 n={5,40} chunk abs inter cap sinklog", 128, 2, 37, 2, 4, {5, 40}};
    c.sink = 4; c.window = 24; c.mask = M::chunk; c.chunk = 8; c.positions = P::absolute; c.style = R::interleaved;
    c.softcap = 5.f; c.sink_logits = true; c.full = {0, 1};
    check(run_case<f16_t>(c, 3, kF16));
    check(run_case<bf16_t>(c, 4, kBf16));
  }
  {  // page size 1, GQA 3 (21 queries a tile), sink 0, window larger than the step, no rotary
    Case c{"page1 n={0,100} G=3 sink0 win200 nope", 128, 2, 30, 1, 3, {0, 100}};
    c.page_size = 1; c.sink = 0; c.window = 200; c.positions = P::none;
    check(run_case<bf16_t>(c, 5, kBf16));
  }
  {  // window None (every token), GQA 4, cache positions, sink 4
    Case c{"paged16 n={10,70} G=4 window=None", 64, 2, 33, 2, 4, {10, 70}};
    c.window = sk::kNoWindow;
    check(run_case<f16_t>(c, 6, kF16));
  }
  {  // T=130 (two full tiles + 2), small window, chunk mask, mixed full heads, cache positions, interleaved
    Case c{"paged16 n={3} T=130 chunk16 win8 full mixed", 64, 1, 130, 2, 1, {3}};
    c.window = 8; c.mask = M::chunk; c.chunk = 16; c.style = R::interleaved; c.full = {1, 0};
    check(run_case<bf16_t>(c, 7, kBf16));
  }
  {  // wrapped streams only, causal, softcap, sink logits, lse; GQA 4, D 128
    Case c{"paged16 n={50,90} G=4 causal cap sinklog", 128, 2, 20, 1, 4, {50, 90}};
    c.sink = 4; c.window = 40; c.softcap = 30.f; c.sink_logits = true;
    check(run_case<f16_t>(c, 8, kF16));
  }
  {  // a long stream in absolute positions: angles of 2e5 rad, reduced in fp64 before the fp32 sin / cos
    Case c{"paged16 n={200000} absolute G=4", 64, 1, 20, 1, 4, {200000}};
    c.positions = P::absolute;
    check(run_case<f16_t>(c, 10, kF16));
  }
  {  // group wider than a tile: 72 heads in slices of 64 and 8, two queries
    Case c{"offline G=72 T=2 (group slices)", 64, 1, 2, 1, 72, {}};
    check(run_case<bf16_t>(c, 9, kBf16));
  }
  std::printf("%d cases, %d failed\n", cases, failed);
  return failed == 0 ? 0 : 1;
}
