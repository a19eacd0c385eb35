// Runs the sink_cache_compact CUDA kernel's two tile phases (include/flashstream/sink/cuda_compact.cuh)
// on the host, every thread of every block, in the kernel's order (per tile: all loads, then all
// stores), against a dense gather reference: the tiling, the ordering across tiles, the word sizes
// and the skipping of bad indices get checked on machines without a GPU. Built and run by
// tests/test_cuda_emu.py with a host C++ compiler and the CUDA headers (uint4,
// cudaError_t). Exit status 0 iff every case matches.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "flashstream/sink/cuda_compact.cuh"

namespace {

namespace sk = flashstream::sink;
namespace scu = flashstream::sink::cuda;

template <typename Word>
void emulate(const sk::CompactArgs& a) {
  const int64_t row_bytes = a.D * a.elem_bytes, tile = scu::compact_tile_rows(row_bytes);
  const int64_t words = row_bytes / int64_t(sizeof(Word));
  std::vector<Word> ks(tile * words), vs(tile * words);
  for (int64_t block = 0; block < a.B * a.Hkv; ++block) {
    const int64_t b = block / a.Hkv, h = block % a.Hkv;
    for (int64_t j0 = 0; j0 < a.n; j0 += tile) {
      const int64_t rows = std::min(a.n - j0, tile);
      for (int64_t t = 0; t < scu::kCompactThreads; ++t)
        scu::compact_tile_load<Word>(a, b, h, j0, rows, ks.data(), vs.data(), t, scu::kCompactThreads);
      for (int64_t t = 0; t < scu::kCompactThreads; ++t)
        scu::compact_tile_store<Word>(a, b, h, j0, rows, ks.data(), vs.data(), t, scu::kCompactThreads);
    }
  }
  for (int64_t b = 0; b < a.B; ++b) a.lengths[b] = a.n;
}

void run(const sk::CompactArgs& a) {
  switch (scu::compact_word(a.D * a.elem_bytes)) {
    case scu::CompactWord::w16: return emulate<uint4>(a);
    case scu::CompactWord::w4: return emulate<uint32_t>(a);
    default: return emulate<uint16_t>(a);
  }
}

// One case; `bad`: also plant an out-of-range and a negative index, which must be skipped.
bool run_case(int B, int Hkv, int D, int elem_bytes, int page_size, int pph, int n, bool bad, uint32_t seed) {
  std::mt19937 gen(seed);
  const int64_t cap = int64_t(page_size) * pph, P = int64_t(B) * Hkv * pph + 2;
  const size_t row = size_t(D) * elem_bytes, pool_bytes = size_t(P) * page_size * row;
  // 16-byte aligned pools, as torch allocates them.
  std::vector<uint4> kmem((pool_bytes + 15) / 16), vmem((pool_bytes + 15) / 16);
  auto* kp = reinterpret_cast<unsigned char*>(kmem.data());
  auto* vp = reinterpret_cast<unsigned char*>(vmem.data());
  for (size_t i = 0; i < pool_bytes; ++i) { kp[i] = uint8_t(gen()); vp[i] = uint8_t(gen()); }
  std::vector<int32_t> pages(P);
  std::iota(pages.begin(), pages.end(), 0);
  std::shuffle(pages.begin(), pages.end(), gen);
  std::vector<int32_t> table(pages.begin(), pages.begin() + int64_t(B) * Hkv * pph);
  std::vector<int64_t> lengths(B), keep(size_t(B) * Hkv * n);
  for (int b = 0; b < B; ++b) {
    lengths[b] = n + int64_t(gen() % (cap - n + 1));
    for (int h = 0; h < Hkv; ++h) {
      std::vector<int64_t> slots(lengths[b]);
      std::iota(slots.begin(), slots.end(), 0);
      std::shuffle(slots.begin(), slots.end(), gen);
      std::sort(slots.begin(), slots.begin() + n);
      std::copy(slots.begin(), slots.begin() + n, keep.begin() + (size_t(b) * Hkv + h) * n);
    }
  }
  if (bad && n >= 2) {
    keep[n - 1] = cap + 5;  // (b 0, h 0): past the page table
    keep[0] = -3;
  }
  // Reference: dense gather of every (b, h), written back to slots 0..n (bad rows left alone).
  auto at = [&](unsigned char* pool, int b, int h, int64_t s) {
    return pool + (size_t(table[(size_t(b) * Hkv + h) * pph + s / page_size]) * page_size + s % page_size) * row;
  };
  std::vector<unsigned char> kwant(kp, kp + pool_bytes), vwant(vp, vp + pool_bytes);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < Hkv; ++h) {
      std::vector<unsigned char> kd(size_t(n) * row), vd(size_t(n) * row);
      std::vector<bool> ok(n);
      for (int j = 0; j < n; ++j) {
        const int64_t s = keep[(size_t(b) * Hkv + h) * n + j];
        ok[j] = s >= 0 && s < cap;
        if (!ok[j]) continue;
        std::memcpy(&kd[size_t(j) * row], at(kp, b, h, s), row);
        std::memcpy(&vd[size_t(j) * row], at(vp, b, h, s), row);
      }
      for (int j = 0; j < n; ++j) {
        if (!ok[j]) continue;
        std::memcpy(at(kwant.data(), b, h, j), &kd[size_t(j) * row], row);
        std::memcpy(at(vwant.data(), b, h, j), &vd[size_t(j) * row], row);
      }
    }
  sk::CompactArgs a;
  a.k_pool = kp; a.v_pool = vp; a.page_table = table.data(); a.lengths = lengths.data(); a.keep = keep.data();
  a.keep_is_int64 = true;
  a.B = B; a.Hkv = Hkv; a.n = n; a.D = D; a.elem_bytes = elem_bytes;
  a.page_size = page_size; a.pages_per_head = pph; a.pool_pages = P;
  run(a);
  bool good = std::memcmp(kp, kwant.data(), pool_bytes) == 0 && std::memcmp(vp, vwant.data(), pool_bytes) == 0;
  for (int b = 0; b < B; ++b) good = good && lengths[b] == n;
  if (!good)
    std::printf("FAIL B=%d Hkv=%d D=%d elem=%d page=%d pph=%d n=%d bad=%d\n", B, Hkv, D, elem_bytes, page_size, pph,
                n, int(bad));
  return good;
}

}  // namespace

int main() {
  int cases = 0, failed = 0;
  uint32_t seed = 1;
  for (int D : {1, 3, 8, 64, 130, 256})
    for (int elem : {2, 4})
      for (int page : {1, 3, 16})
        for (int n : {0, 1, 17, 150}) {
          const int pph = (n + 40) / page + 1;
          for (bool bad : {false, true}) {
            ++cases;
            failed += !run_case(2, 2, D, elem, page, pph, n, bad, seed++);
          }
        }
  std::printf("%d cases, %d failed\n", cases, failed);
  return failed == 0 ? 0 : 1;
}
