// Host emulation of the tensor-core instructions of include/flashstream/common/mma.cuh, over one
// CTA's host threads (warp_emu.h): cp.async with its commit groups (copies landing at issue or as
// late as their wait_group allows), and ldmatrix.m8n8.x4 / mma.sync.m16n8k16 computed per warp
// from the PTX ISA's fragment tables, written out here independently of the kernels' maps
// (element-wise: a0..a7, b0..b3, c0..c3); and the bank-conflict check of the layouts' tests.
// Include before the kernel header. Used by lowrank_tc_emu.cpp and sink_tc_emu.cpp.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <set>
#include <vector>

#include "flashstream/common/dtype.h"
#include "warp_emu.h"

#define FS_MMA_HOST_EMU 1

// cp.async: each thread's copies are queued per commit group and land either at once (g_cp_late
// false: a copy into a buffer still being read shows up as a wrong result) or only when a
// cp.async.wait_group lets their group complete (true: a read before its wait + barrier does).
// Uncommitted copies complete with the next wait, like the last group.
struct PendingCopy {
  uint16_t* dst;
  const uint16_t* src;  // null: zero-fill
};
static bool g_cp_late = false;
static thread_local std::vector<std::vector<PendingCopy>> t_cp_groups;
static thread_local std::vector<PendingCopy> t_cp_open;
inline void emu_cp_land(const PendingCopy& c) {
  if (c.src != nullptr) std::memcpy(c.dst, c.src, 16);
  else std::memset(c.dst, 0, 16);
}
inline void emu_cp_async(uint16_t* dst, const uint16_t* src, bool valid) {
  const PendingCopy c{dst, valid ? src : nullptr};
  if (g_cp_late) t_cp_open.push_back(c);
  else emu_cp_land(c);
}
inline void emu_cp_commit() {
  t_cp_groups.push_back(std::move(t_cp_open));
  t_cp_open.clear();
}
inline void emu_cp_wait(int pending) {
  if (!t_cp_open.empty()) emu_cp_commit();
  while (int(t_cp_groups.size()) > pending) {
    for (const auto& c : t_cp_groups.front()) emu_cp_land(c);
    t_cp_groups.erase(t_cp_groups.begin());
  }
}
#define FS_MMA_HOST_CP_ASYNC(dst, src, valid) emu_cp_async(dst, src, valid)
#define FS_MMA_HOST_CP_COMMIT() emu_cp_commit()
#define FS_MMA_HOST_CP_WAIT(pending) emu_cp_wait(pending)

// One warp's mma.sync: every lane posts its registers, then each lane computes its own c from
// the whole 16 x 16 A and 16 x 8 B.
static uint32_t g_a[kEmuMaxWarps][32][4], g_b[kEmuMaxWarps][32][2];
inline float half_value(uint16_t bits, bool bf16) {
  return bf16 ? flashstream::to_float(flashstream::bf16_t{bits}) : flashstream::to_float(flashstream::f16_t{bits});
}
inline uint16_t half_of(const uint32_t* regs, int i) { return uint16_t(regs[i / 2] >> (16 * (i % 2))); }
inline void emu_mma(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], bool bf16) {
  const int w = int(threadIdx.x / 32), lane = int(threadIdx.x % 32);
  for (int i = 0; i < 4; ++i) g_a[w][lane][i] = a[i];
  for (int i = 0; i < 2; ++i) g_b[w][lane][i] = b[i];
  g_warp_barrier[w]->arrive_and_wait();
  float A[16][16], B[16][8];
  for (int l = 0; l < 32; ++l) {
    const int group = l / 4, tig = l % 4;
    for (int i = 0; i < 8; ++i) {  // PTX: a0,a1,a4,a5 in row groupID, a2,a3,a6,a7 in groupID + 8
      const int row = (i == 2 || i == 3 || i == 6 || i == 7) ? group + 8 : group;
      const int col = tig * 2 + (i & 1) + (i >= 4 ? 8 : 0);
      A[row][col] = half_value(half_of(g_a[w][l], i), bf16);
    }
    for (int i = 0; i < 4; ++i) {  // PTX: b0,b1 at k = 2 tig + (0, 1), b2,b3 8 further; column groupID
      const int k = tig * 2 + (i & 1) + (i >= 2 ? 8 : 0);
      B[k][group] = half_value(half_of(g_b[w][l], i), bf16);
    }
  }
  g_warp_barrier[w]->arrive_and_wait();  // the posted registers may be overwritten
  const int group = lane / 4, tig = lane % 4;
  for (int i = 0; i < 4; ++i) {  // PTX: c0,c1 in row groupID, c2,c3 in groupID + 8; column 2 tig + (0, 1)
    const int row = group + (i >= 2 ? 8 : 0), col = tig * 2 + (i & 1);
    float s = c[i];
    for (int k = 0; k < 16; ++k) s += A[row][k] * B[k][col];
    c[i] = s;
  }
}
#define FS_MMA_HOST_MMA(c, a, b, bf16) emu_mma(c, a, b, bf16)

// One warp's ldmatrix.m8n8.x4 (PTX: lanes 8j..8j+7 give the row addresses of matrix j; lane l
// receives in register j the elements (row l / 4, columns 2 (l % 4), +1) of matrix j, of its
// transpose with .trans).
static const uint16_t* g_rows[kEmuMaxWarps][32];
inline void emu_ldmatrix_x4(uint32_t (&d)[4], const uint16_t* row, bool trans) {
  const int w = int(threadIdx.x / 32), lane = int(threadIdx.x % 32);
  g_rows[w][lane] = row;
  g_warp_barrier[w]->arrive_and_wait();
  const int r = lane / 4, c = 2 * (lane % 4);
  for (int j = 0; j < 4; ++j) {
    const uint16_t* const* m = g_rows[w] + 8 * j;  // the 8 rows of matrix j
    const uint16_t lo = trans ? m[c][r] : m[r][c], hi = trans ? m[c + 1][r] : m[r][c + 1];
    d[j] = uint32_t(lo) | (uint32_t(hi) << 16);
  }
  g_warp_barrier[w]->arrive_and_wait();
}
#define FS_MMA_HOST_LDSM(d, row, trans) emu_ldmatrix_x4(d, row, trans)

// One warp-wide shared access is conflict free when no bank holds two distinct 4-byte words.
inline bool conflict_free(const std::vector<int64_t>& byte_addrs) {
  std::set<int64_t> words[32];
  for (int64_t b : byte_addrs) words[(b / 4) % 32].insert(b / 4);
  for (auto& w : words)
    if (w.size() > 1) return false;
  return true;
}
