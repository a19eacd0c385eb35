// sink_cache_compact on CPU: the shared argument checks (sink_compact_args.h), then every data
// check (page-table entries, lengths, kept indices in range and strictly ascending) before any row
// moves, so a bad call leaves the cache exactly as it was.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "cpu/isa.h"
#include "cpu/isa/sink_compact.h"
#include "sink_compact_args.h"

namespace flashstream::cpu {
namespace {

const SinkCompactCpuKernels& kernels() { FS_SELECT_ISA(sink_compact_kernels) }

void check_compact_values(const char* op, const sink::CompactArgs& a) {
  for (int64_t i = 0; i < a.B * a.Hkv * a.pages_per_head; ++i)
    FS_CHECK_VALUE(a.page_table[i] >= 0 && a.page_table[i] < a.pool_pages, op, "page_table entries must be in [0, ",
                   a.pool_pages, "), got ", a.page_table[i]);
  const int64_t capacity = a.pages_per_head * a.page_size;
  for (int64_t b = 0; b < a.B; ++b) {
    const int64_t len = a.lengths[b];
    FS_CHECK_VALUE(len >= 0 && len <= capacity, op, "lengths must be in [0, ", capacity,
                   "] (pages_per_head * page_size), got ", len, " for stream ", b);
    for (int64_t h = 0; h < a.Hkv; ++h) {
      int64_t prev = -1;
      for (int64_t j = 0; j < a.n; ++j) {
        const int64_t s = sink::keep_at(a, b, h, j);
        FS_CHECK_VALUE(s >= 0 && s < len, op, "keep[", b, ", ", h, ", ", j, "] = ", s, " is outside [0, lengths[",
                       b, "]) = [0, ", len, ")");
        FS_CHECK_VALUE(s > prev, op, "keep[", b, ", ", h, "] must be strictly ascending (no duplicates), got ",
                       prev, " then ", s, " at ", j);
        prev = s;
      }
    }
  }
}

void sink_cache_compact_cpu(at::Tensor& k_pool, at::Tensor& v_pool, const at::Tensor& page_table,
                            at::Tensor& lengths, const at::Tensor& keep) {
  const char* op = "sink_cache_compact";
  check_cpu(op, "k_pool", k_pool);
  const sink::CompactArgs a = sink_compact_args(op, k_pool, v_pool, page_table, lengths, keep);
  check_compact_values(op, a);
  const auto& kern = kernels();
  at::parallel_for(0, a.B * a.Hkv, 1, [&](int64_t begin, int64_t end) { kern.compact(a, begin, end); });
  for (int64_t b = 0; b < a.B; ++b) a.lengths[b] = a.n;
}

}  // namespace

TORCH_LIBRARY_IMPL(flashstream, CPU, m) { m.impl("sink_cache_compact", &sink_cache_compact_cpu); }

}  // namespace flashstream::cpu
