// Low-rank (FlashSVD-style) attention: the raw-pointer arguments shared by the CPU and CUDA kernels,
// and the index / visibility math both use (FS_HOST_DEVICE, so the CPU tests exercise it). Torch-free.
//
// Layouts (contiguous, row-major):
//   x [B, S, Din]; Aq [Din, rq], Bq [rq, N], bq [N] (likewise k and v, each with its own rank);
//   N = H * Dh; key_padding_mask [B, S] bool, true = padding (that key is never attended to);
//   out [B, S, N]: the per-head context, head h in columns [h * Dh, (h + 1) * Dh).
// Workspace (fp32, owned by the binding):
//   A32 [Din, RP]: [Aq | Ak | Av], each block zero-padded to a multiple of kRankPad columns;
//   P   [B * S, RP]: x A32, the low-rank intermediate (the only activation that reaches memory).
#pragma once
#include <cstdint>

#include "flashstream/common/macros.h"

namespace flashstream::lowrank {

inline constexpr int kRankPad = 16;   // rank blocks padded to whole SIMD vectors on every ISA
inline constexpr int kMaxHeadDim = 256;

FS_HOST_DEVICE FS_INLINE int64_t pad_to(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

struct AttnArgs {
  const void* x = nullptr;
  const void* A[3] = {nullptr, nullptr, nullptr};     // q, k, v: [Din, r_z]
  const void* Bf[3] = {nullptr, nullptr, nullptr};    // [r_z, N]
  const void* bias[3] = {nullptr, nullptr, nullptr};  // [N] or null
  const bool* key_padding_mask = nullptr;             // [B, S] or null
  void* out = nullptr;
  float* A32 = nullptr;  // workspace, see above
  float* P = nullptr;
  int64_t B = 0, S = 0, Din = 0, H = 0, Dh = 0, N = 0;
  int64_t r[3] = {0, 0, 0};
  bool causal = false;
  float scale = 1.0f;  // applied to the rebuilt queries (Dh^-0.5)
  int64_t tile = 1;    // queries per CPU work item

  // Padded rank of projection z, its first column in A32 / P, and the total width RP.
  FS_HOST_DEVICE int64_t rp(int z) const { return pad_to(r[z], kRankPad); }
  FS_HOST_DEVICE int64_t roff(int z) const { return z == 0 ? 0 : (z == 1 ? rp(0) : rp(0) + rp(1)); }
  FS_HOST_DEVICE int64_t RP() const { return rp(0) + rp(1) + rp(2); }
};

// Whether query t of sequence b may attend to key j: not padding, and j <= t when causal.
FS_HOST_DEVICE FS_INLINE bool key_visible(const AttnArgs& a, int64_t b, int64_t t, int64_t j) {
  if (a.key_padding_mask != nullptr && a.key_padding_mask[b * a.S + j]) return false;
  return !a.causal || j <= t;
}

// Keys [0, key_end) can matter to queries [t0, t1): causal attention stops at the last query.
FS_HOST_DEVICE FS_INLINE int64_t key_end(const AttnArgs& a, int64_t t1) { return a.causal ? t1 : a.S; }

// Queries per CPU work item (b, h, query tile): as long as possible, since every item rebuilds the
// keys and values it reads (a cost of r / tile relative to the attention itself), but with enough
// items to keep every thread busy; capped so the item's rows stay cache-resident.
inline int64_t cpu_query_tile(int64_t B, int64_t H, int64_t S, int64_t threads) {
  const int64_t heads = B * H > 0 ? B * H : 1;
  const int64_t want = 4 * (threads > 0 ? threads : 1);
  const int64_t splits = (want + heads - 1) / heads;
  int64_t tile = (S + splits - 1) / splits;
  tile = tile < 1 ? 1 : tile;
  return tile > 512 ? 512 : tile;
}

}  // namespace flashstream::lowrank
