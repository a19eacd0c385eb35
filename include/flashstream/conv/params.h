// Depthwise causal conv1d with carried state: the sizes, strides and index math shared by the CPU
// and CUDA kernels (host and device). Torch-free.
//
//   y[b, c, t] = act(bias[c] + sum_k w[c, k] * in(b, c, t + k*dilation - L)),   L = (W-1)*dilation
//   in(b, c, g) = x[b, c, g] for g >= 0, state[slot(b), c, L + g] for g < 0 (0 without a state)
//
// and afterwards state[slot(b), c, :] holds the last L inputs of state ++ x. Each kernel sums an
// output's taps in one fixed order that does not depend on where the output sits in its chunk, so
// on one device and CPU ISA any chunking of x gives bit for bit the numbers of one offline call.
#pragma once
#include <cstdint>

#include "flashstream/common/macros.h"

namespace flashstream::conv {

inline constexpr int kMaxWidth = 64;

struct CausalConv1dParams {
  int64_t batch = 0, channels = 0, seqlen = 0;  // B, C, T
  int width = 1, dilation = 1;
  int64_t state_len = 0;                        // (W-1)*dilation
  int64_t x_sb = 0, x_sc = 0, x_st = 0;         // element strides of x [B, C, T]
  int64_t y_sb = 0, y_sc = 0, y_st = 0;         // ... of y [B, C, T]
  int64_t s_sb = 0, s_sc = 0, s_sl = 0;         // ... of state [P, C, L] (P = pool rows)
  int64_t pool = 0;                             // P: rows of state (B unless state_indices)
  bool silu = false;
};

// The state row batch element b reads and writes, or -1 when it has none: no state given, or a
// padding / out-of-range slot in state_indices (that row then starts from zeros and is not saved).
FS_HOST_DEVICE FS_INLINE int64_t state_slot(const CausalConv1dParams& p, const void* state, const int32_t* indices,
                                            int64_t b) {
  if (state == nullptr || p.state_len == 0) return -1;
  const int64_t s = indices != nullptr ? int64_t(indices[b]) : b;
  return (s >= 0 && s < p.pool) ? s : -1;
}

FS_HOST_DEVICE FS_INLINE float silu(float v) {
#if defined(__CUDA_ARCH__)
  return v / (1.0f + __expf(-v));
#else
  return v / (1.0f + __builtin_expf(-v));
#endif
}

}  // namespace flashstream::conv
