// Low-rank attention on CPU: argument checks (lowrank_attention_args.h), the fp32 workspace (A32,
// P), then the ISA-selected kernels over at::parallel_for: factors, projection, attention.
#include <cmath>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "cpu/isa.h"
#include "cpu/scratch.h"
#include "cpu/isa/lowrank_attention.h"
#include "flashstream/lowrank/attention_cpu_tiles.h"
#include "lowrank_attention_args.h"

namespace flashstream::cpu {
namespace {

const LowrankAttentionCpuKernels& kernels() { FS_SELECT_ISA(lowrank_attention_kernels) }

at::Tensor lowrank_attention_cpu(const at::Tensor& x, const at::Tensor& Aq, const at::Tensor& Bq,
                                 const std::optional<at::Tensor>& bq, const at::Tensor& Ak, const at::Tensor& Bk,
                                 const std::optional<at::Tensor>& bk, const at::Tensor& Av, const at::Tensor& Bv,
                                 const std::optional<at::Tensor>& bv, int64_t num_heads, bool causal,
                                 const std::optional<at::Tensor>& key_padding_mask) {
  const char* op = "lowrank_attention";
  lowrank::AttnArgs a =
      lowrank_attention_args(op, x, Aq, Bq, bq, Ak, Bk, bk, Av, Bv, bv, num_heads, causal, key_padding_mask);
  check_cpu(op, "x", x);
  at::Tensor out = at::empty({a.B, a.S, a.N}, x.options());
  if (out.numel() == 0) return out;
  const int64_t RP = a.RP();
  at::Tensor A32 = at::empty({a.Din, RP}, x.options().dtype(at::kFloat));
  at::Tensor P = at::empty({a.B * a.S, RP}, x.options().dtype(at::kFloat));
  a.A32 = A32.mutable_data_ptr<float>();
  a.P = P.mutable_data_ptr<float>();
  a.out = out.mutable_data_ptr();
  a.tile = lowrank::cpu_query_tile(a.B, a.H, a.S, at::get_num_threads());
  const auto& kern = kernels();
  const DType dt = lowrank_dtype_of(x);
  at::parallel_for(0, a.Din, 64, [&](int64_t begin, int64_t end) { kern.widen_factors(dt, a, begin, end); });
  const int64_t project_floats = lowrank::cpu::project_scratch_floats(a);
  at::parallel_for(0, a.B * a.S, lowrank::cpu::kProjectRows, [&](int64_t begin, int64_t end) {
    AlignedScratch scratch(project_floats);
    kern.project(dt, a, begin, end, scratch.get());
  });
  const int64_t items = a.B * a.H * ((a.S + a.tile - 1) / a.tile);
  const int64_t attend_floats = lowrank::cpu::attend_scratch_floats(a);
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    AlignedScratch scratch(attend_floats);
    kern.attend(dt, a, begin, end, scratch.get());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(flashstream, CPU, m) { m.impl("lowrank_attention", &lowrank_attention_cpu); }

}  // namespace flashstream::cpu
