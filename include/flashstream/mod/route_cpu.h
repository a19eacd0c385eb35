// MoD route on the CPU, one row at a time: split the row's routable tokens into groups (runs of
// equal group id in stream order; non-routable tokens are always kept and do not break a run), keep
// the top keep_count(capacity, n) of each group by the unique keys of route.h, then write the kept
// tokens in stream order. Top-k is a threshold found by radix selection on the keys (8-bit digits,
// candidates filtered in place each pass), so a group costs O(n). Torch-free; host only.
#pragma once
#include <cstdint>
#include <cstring>

#include "flashstream/mod/route.h"

namespace flashstream::mod::cpu {
inline namespace FLASHSTREAM_ISA {  // see simd.h: per-ISA symbols

// Groups this small are ranked by comparing all pairs: cheaper than 256-bin histograms.
inline constexpr int64_t kSmallGroup = 32;

// The k-th largest of n unique keys (1 <= k <= n); `keys` is clobbered. Returns a threshold thr
// with exactly k keys >= thr.
inline uint64_t kth_largest(uint64_t* keys, int64_t n, int64_t k) {
  uint64_t prefix = 0;
  for (int shift = 56; shift >= 0; shift -= 8) {
    int64_t hist[256];
    std::memset(hist, 0, sizeof hist);
    for (int64_t i = 0; i < n; ++i) ++hist[(keys[i] >> shift) & 255];
    int d = 255;
    while (hist[d] < k) { k -= hist[d]; --d; }
    prefix |= uint64_t(d) << shift;
    // Every key with a larger digit is kept; if all of this digit's keys are kept as well, the
    // threshold is the digit's smallest possible key (the bits below are zero).
    if (hist[d] == k) return prefix;
    int64_t m = 0;
    for (int64_t i = 0; i < n; ++i)
      if (int((keys[i] >> shift) & 255) == d) keys[m++] = keys[i];
    n = m;
  }
  return prefix;  // unreachable for unique keys: the last digit leaves one candidate
}

struct RouteScratch {
  uint64_t* keys;  // [T]
  uint64_t* work;  // [T]
  int32_t* tok;    // [T]: the routable tokens of the current group
  uint8_t* keep;   // [T]
};

enum RouteRowStatus : int { kRouteOk = 0, kRouteGroupsDecrease = 1 };

// Marks scratch.keep for row `scores` / `groups` / `routable` (either may be null) of T tokens;
// returns the number kept through *kept and a RouteRowStatus.
template <typename S>
int route_row(const S* scores, const int64_t* groups, const uint8_t* routable, int64_t T, double capacity,
              RouteScratch s, int64_t* kept) {
  int status = kRouteOk;
  int64_t total = 0;
  int64_t t = 0;
  bool have_prev = false;
  int64_t prev_group = 0;
  while (t < T) {
    // Collect one group: routable tokens with equal id, non-routable ones in between are kept.
    int64_t n = 0;
    int64_t gid = 0;
    for (; t < T; ++t) {
      if (routable && !routable[t]) { s.keep[t] = 1; ++total; continue; }
      const int64_t g = groups ? groups[t] : 0;
      if (n == 0) {
        gid = g;
        if (have_prev && g < prev_group) status = kRouteGroupsDecrease;
      } else if (g != gid) {
        break;
      }
      s.keep[t] = 0;
      s.tok[n] = int32_t(t);
      s.keys[n] = token_key(to_float(scores[t]), t);
      ++n;
    }
    if (n == 0) break;
    have_prev = true;
    prev_group = gid;
    const int64_t k = keep_count(capacity, n);
    total += k;
    if (k == 0) continue;
    if (k == n) {
      for (int64_t i = 0; i < n; ++i) s.keep[s.tok[i]] = 1;
    } else if (n <= kSmallGroup) {
      for (int64_t i = 0; i < n; ++i) {
        int64_t above = 0;
        for (int64_t j = 0; j < n; ++j) above += s.keys[j] > s.keys[i];
        s.keep[s.tok[i]] = above < k;
      }
    } else {
      std::memcpy(s.work, s.keys, n * sizeof(uint64_t));
      const uint64_t thr = kth_largest(s.work, n, k);
      for (int64_t i = 0; i < n; ++i) s.keep[s.tok[i]] = s.keys[i] >= thr;
    }
  }
  *kept = total;
  return status;
}

// Writes the first K kept tokens of a marked row in stream order, padding with -1 / weight 0.
template <typename S>
void write_row(const S* scores, const uint8_t* routable, const uint8_t* keep, int64_t T, int64_t K,
               int64_t* indices, S* weights) {
  int64_t k = 0;
  for (int64_t t = 0; t < T && k < K; ++t) {
    if (!keep[t]) continue;
    indices[k] = t;
    weights[k] = from_float<S>((routable && !routable[t]) ? 1.0f : sigmoid(to_float(scores[t])));
    ++k;
  }
  for (; k < K; ++k) {
    indices[k] = -1;
    weights[k] = from_float<S>(0.0f);
  }
}

}  // inline namespace FLASHSTREAM_ISA
}  // namespace flashstream::mod::cpu
