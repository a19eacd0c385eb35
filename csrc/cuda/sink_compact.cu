// sink_cache_compact on CUDA: the same argument checks as the CPU path (sink_compact_args.h), then
// the ordered-tile kernel of include/flashstream/sink/cuda_compact.cuh on the current stream. The
// kept indices are not validated here (that would cost a host sync and break graph capture); the
// kernel skips any index outside the page table, so nothing is read or written out of bounds.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "cuda/stream.h"
#include "flashstream/sink/cuda_compact.cuh"
#include "sink_compact_args.h"

namespace flashstream::cuda {
namespace {

void sink_cache_compact_cuda(at::Tensor& k_pool, at::Tensor& v_pool, const at::Tensor& page_table,
                             at::Tensor& lengths, const at::Tensor& keep) {
  const char* op = "sink_cache_compact";
  check_cuda(op, "k_pool", k_pool);
  const sink::CompactArgs a = sink_compact_args(op, k_pool, v_pool, page_table, lengths, keep);
  DeviceGuard guard(k_pool);
  check_launch(sink::cuda::launch_compact(a, current_stream(k_pool)), op);
}

}  // namespace

TORCH_LIBRARY_IMPL(flashstream, CUDA, m) { m.impl("sink_cache_compact", &sink_cache_compact_cuda); }

}  // namespace flashstream::cuda
