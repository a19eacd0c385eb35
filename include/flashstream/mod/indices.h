// The contract on MoD index rows ([B, K] int64, as mod_route writes them), checked the same way by
// the CPU and CUDA paths: each entry is a token in [0, T) or -1 padding; for scatter the tokens are
// also strictly increasing and the padding trails, so no token is written twice. Torch-free.
#pragma once
#include <cstdint>

#include "flashstream/common/macros.h"

namespace flashstream::mod {

enum IndexStatus : int { kIndexOk = 0, kIndexOutOfRange = 1, kIndexUnordered = 2 };

// Status of entry k of `row` (its K entries), judged against entry k - 1 where order matters.
FS_HOST_DEVICE FS_INLINE int index_status(const int64_t* row, int64_t k, int64_t T, bool sorted) {
  const int64_t i = row[k];
  if (i < -1 || i >= T) return kIndexOutOfRange;
  if (!sorted || k == 0) return kIndexOk;
  const int64_t prev = row[k - 1];
  if (prev == -1) return i == -1 ? kIndexOk : kIndexUnordered;  // padding must trail
  return (i == -1 || i > prev) ? kIndexOk : kIndexUnordered;
}

}  // namespace flashstream::mod
