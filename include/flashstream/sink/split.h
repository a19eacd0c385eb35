// Split-KV for sink attention: how the keys of one work item are cut into `splits` independent
// parts, and how the parts' partial softmax states are merged. Shared by the CPU and CUDA kernels
// (host and device), so the CPU tests exercise the index math the GPU runs. Torch-free.
//
// A work item (stream, kv head, query tile) visits its keys in two frames (params.h): the sink keys
// [0, sink_end), then the window keys [base, win_end). Read as one sequence of
// total = sink_end + (win_end - base) keys, split s of S takes keys [s * per, (s + 1) * per) of it,
// per = ceil(total / S). Each split runs the ordinary online softmax over its keys and leaves the
// unnormalised state of every row (running max m, sum l, accumulator acc); the merge rescales them
// to the common max. Every row sees at least one key (its own token), so the merged max is finite;
// a split that holds none of a row's keys leaves m = -inf, l = 0, acc = 0, and weighs nothing.
//
// Partial buffers, indexed like lse ([B, T, Hq] rows) with the split outermost:
//   part_m, part_l [S, B*T*Hq] fp32;  part_acc [S, B*T*Hq, D] fp32.
#pragma once
#include <cstdint>

#include "flashstream/common/macros.h"

namespace flashstream::sink {

struct KeyRange {
  int64_t begin, end;  // stream indices [begin, end) of one frame's keys in one split
};

// Keys of `frame` (0: sink, 1: window) that split `split` of `splits` visits.
FS_HOST_DEVICE FS_INLINE KeyRange split_frame_keys(int frame, int64_t sink_end, int64_t base, int64_t win_end,
                                                   int64_t split, int64_t splits) {
  const int64_t n_sink = sink_end, n_win = win_end > base ? win_end - base : 0;
  const int64_t total = n_sink + n_win;
  const int64_t per = splits > 1 ? (total + splits - 1) / splits : total;
  const int64_t v0 = split * per, v1 = v0 + per < total ? v0 + per : total;  // [v0, v1) of the sequence
  auto clamp = [](int64_t x, int64_t lo, int64_t hi) { return x < lo ? lo : (x > hi ? hi : x); };
  if (frame == 0) return KeyRange{clamp(v0, 0, n_sink), clamp(v1, 0, n_sink)};
  return KeyRange{base + clamp(v0 - n_sink, 0, n_win), base + clamp(v1 - n_sink, 0, n_win)};
}

// How many splits to cut each work item's keys into: enough items that `workers` parallel workers
// each get two (so items of unequal length even out), but no split under `min_keys` of the at
// most `max_keys` keys an item visits. 1 (no split) whenever the items alone fill the workers.
inline int64_t choose_splits(int64_t items, int64_t workers, int64_t max_keys, int64_t min_keys) {
  const int64_t target = 2 * workers;
  if (items <= 0 || items >= target) return 1;
  const int64_t want = (target + items - 1) / items, cap = max_keys / (min_keys > 0 ? min_keys : 1);
  const int64_t s = want < cap ? want : cap;
  return s > 1 ? s : 1;
}

// The merged running max and sum of one row over its splits (stride: the distance between two
// splits' entries of the row in part_m / part_l), with the optional sink logit in the denominator.
struct MergedRow {
  float m, l;
};

FS_HOST_DEVICE FS_INLINE float fs_expf(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  return __builtin_expf(x);
#endif
}

FS_HOST_DEVICE FS_INLINE MergedRow merge_row_stats(const float* m, const float* l, int64_t splits, int64_t stride,
                                                   const float* sink_logit) {
  float M = sink_logit != nullptr ? *sink_logit : -__builtin_inff();
  for (int64_t s = 0; s < splits; ++s) M = m[s * stride] > M ? m[s * stride] : M;
  float L = sink_logit != nullptr ? fs_expf(*sink_logit - M) : 0.f;
  for (int64_t s = 0; s < splits; ++s) L += l[s * stride] * fs_expf(m[s * stride] - M);  // exp(-inf) = 0
  return MergedRow{M, L};
}

// The weight of split s's accumulator in the merged, normalised output.
FS_HOST_DEVICE FS_INLINE float split_weight(const MergedRow& r, float m_s) { return fs_expf(m_s - r.m) / r.l; }

// The end of an unsplit row (one state, the optional sink logit in the denominator): the factor
// its accumulator is scaled by, and its log-sum-exp. The kernels' epilogues, CPU and CUDA.
struct RowEnd {
  float scale, lse;
};
FS_HOST_DEVICE FS_INLINE RowEnd row_end(float m, float l, const float* sink_logit) {
  const MergedRow r = merge_row_stats(&m, &l, 1, 0, sink_logit);
#if defined(__CUDA_ARCH__)
  return RowEnd{split_weight(r, m), r.m + logf(r.l)};
#else
  return RowEnd{split_weight(r, m), r.m + __builtin_logf(r.l)};
#endif
}

}  // namespace flashstream::sink
