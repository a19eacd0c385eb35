// causal_conv1d on CPU: the shared checks (causal_conv1d_args.h), the state_indices value checks
// (cheap here, so done before anything is written), then the ISA-selected kernels over
// at::parallel_for ranges, each thread with its own fp32 scratch.
#include <vector>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "causal_conv1d_args.h"
#include "cpu/isa.h"
#include "cpu/isa/causal_conv1d.h"

namespace flashstream::cpu {
namespace {

const CausalConv1dCpuKernels& kernels() { FS_SELECT_ISA(causal_conv1d_kernels) }

// Negative slots are padding (no history, nothing saved); others must be < P and distinct, since
// two rows writing one slot would race.
void check_indices(const char* op, const at::Tensor& indices, int64_t pool) {
  const int32_t* idx = indices.const_data_ptr<int32_t>();
  const int64_t n = indices.numel();
  std::vector<int64_t> seen(size_t(pool > 0 ? pool : 0), -1);
  for (int64_t b = 0; b < n; ++b) {
    const int64_t s = idx[b];
    if (s < 0) continue;
    FS_CHECK_VALUE(s < pool, op, "state_indices must be < the pool size P = ", pool, " (or negative for padding), got ",
                   s, " at [", b, "]");
    FS_CHECK_VALUE(seen[size_t(s)] < 0, op, "state_indices must be distinct, got ", s, " at [", seen[size_t(s)],
                   "] and [", b, "]");
    seen[size_t(s)] = b;
  }
}

// y = the output to fill (already checked and its strides recorded in a.p).
void run(const CausalConv1dArgs& a, const at::Tensor& y, const std::optional<at::Tensor>& state,
         const std::optional<at::Tensor>& state_indices) {
  const auto& k = kernels();
  const int64_t tasks = k.tasks(a.p, a.channel_last);
  if (tasks == 0 || a.p.seqlen == 0) return;
  const int64_t scratch = k.scratch_floats(a.p);
  // Enough taps per task to amortise it: rows of W * T multiply-adds.
  const int64_t work = (a.p.seqlen + 1) * a.p.width * (a.channel_last ? 32 : 1);
  const int64_t grain = work >= 32768 ? 1 : 32768 / work;
  const DType dt = conv_dtype_of(a.x);
  const void* bias_ptr = a.bias.has_value() ? a.bias->const_data_ptr() : nullptr;
  void* state_ptr = state.has_value() ? state->mutable_data_ptr() : nullptr;
  const int32_t* idx_ptr = state_indices.has_value() ? state_indices->const_data_ptr<int32_t>() : nullptr;
  void* y_ptr = y.mutable_data_ptr();
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(static_cast<size_t>(scratch));
    k.run(dt, a.channel_last, a.p, a.x.const_data_ptr(), a.weight.const_data_ptr(), bias_ptr, state_ptr, idx_ptr,
          y_ptr, buf.data(), begin, end);
  });
}

CausalConv1dArgs checked_args(const char* op, const at::Tensor& x, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& state,
                              int64_t dilation, std::optional<c10::string_view> activation,
                              const std::optional<at::Tensor>& state_indices) {
  check_cpu(op, "x", x);
  std::optional<std::string_view> act;
  if (activation.has_value()) act = std::string_view(activation->data(), activation->size());
  CausalConv1dArgs a = causal_conv1d_args(op, x, weight, bias, state, dilation, act, state_indices);
  if (state_indices.has_value()) check_indices(op, *state_indices, a.p.pool);
  return a;
}

at::Tensor causal_conv1d_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             const std::optional<at::Tensor>& state, int64_t dilation,
                             std::optional<c10::string_view> activation,
                             const std::optional<at::Tensor>& state_indices) {
  CausalConv1dArgs a = checked_args("causal_conv1d", x, weight, bias, state, dilation, activation, state_indices);
  at::Tensor y = causal_conv1d_output(a);
  run(a, y, state, state_indices);
  return y;
}

void causal_conv1d_out_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           const std::optional<at::Tensor>& state, int64_t dilation,
                           std::optional<c10::string_view> activation,
                           const std::optional<at::Tensor>& state_indices, const at::Tensor& out) {
  const char* op = "causal_conv1d";
  CausalConv1dArgs a = checked_args(op, x, weight, bias, state, dilation, activation, state_indices);
  causal_conv1d_check_out(op, a, out, state);
  run(a, out, state, state_indices);
}

}  // namespace

TORCH_LIBRARY_IMPL(flashstream, CPU, m) {
  m.impl("causal_conv1d", &causal_conv1d_cpu);
  m.impl("causal_conv1d_out", &causal_conv1d_out_cpu);
}

}  // namespace flashstream::cpu
