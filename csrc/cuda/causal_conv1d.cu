// causal_conv1d on CUDA: the checks shared with the CPU path (causal_conv1d_args.h), then the
// kernels of include/flashstream/conv/cuda.cuh on the current stream (no host sync, so decode
// steps can be captured in CUDA graphs).
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "causal_conv1d_args.h"
#include "cuda/dispatch.h"
#include "cuda/stream.h"
#include "flashstream/conv/cuda.cuh"

namespace flashstream::cuda {
namespace {

void run(const CausalConv1dArgs& a, const at::Tensor& y, const std::optional<at::Tensor>& state,
         const std::optional<at::Tensor>& state_indices) {
  const cudaStream_t stream = current_stream(a.x);
  const void* bias_ptr = a.bias.has_value() ? a.bias->const_data_ptr() : nullptr;
  void* state_ptr = state.has_value() ? state->mutable_data_ptr() : nullptr;
  const int32_t* idx_ptr = state_indices.has_value() ? state_indices->const_data_ptr<int32_t>() : nullptr;
  void* y_ptr = y.mutable_data_ptr();
  auto launch = [&](auto tag) {
    using T = decltype(tag);
    return conv::cuda::launch_causal_conv1d<T>(a.p, static_cast<const T*>(a.x.const_data_ptr()),
                                               static_cast<const T*>(a.weight.const_data_ptr()),
                                               static_cast<const T*>(bias_ptr), static_cast<T*>(state_ptr), idx_ptr,
                                               static_cast<T*>(y_ptr), a.channel_last, stream);
  };
  check_launch(by_dtype(conv_dtype_of(a.x), launch), "causal_conv1d");
}

CausalConv1dArgs checked_args(const char* op, const at::Tensor& x, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& state,
                              int64_t dilation, std::optional<c10::string_view> activation,
                              const std::optional<at::Tensor>& state_indices) {
  check_cuda(op, "x", x);
  std::optional<std::string_view> act;
  if (activation.has_value()) act = std::string_view(activation->data(), activation->size());
  return causal_conv1d_args(op, x, weight, bias, state, dilation, act, state_indices);
}

at::Tensor causal_conv1d_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                              const std::optional<at::Tensor>& state, int64_t dilation,
                              std::optional<c10::string_view> activation,
                              const std::optional<at::Tensor>& state_indices) {
  CausalConv1dArgs a = checked_args("causal_conv1d", x, weight, bias, state, dilation, activation, state_indices);
  DeviceGuard guard(x);
  at::Tensor y = causal_conv1d_output(a);
  run(a, y, state, state_indices);
  return y;
}

void causal_conv1d_out_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& state, int64_t dilation,
                            std::optional<c10::string_view> activation,
                            const std::optional<at::Tensor>& state_indices, const at::Tensor& out) {
  const char* op = "causal_conv1d";
  CausalConv1dArgs a = checked_args(op, x, weight, bias, state, dilation, activation, state_indices);
  causal_conv1d_check_out(op, a, out, state);
  DeviceGuard guard(x);
  run(a, out, state, state_indices);
}

}  // namespace

TORCH_LIBRARY_IMPL(flashstream, CUDA, m) {
  m.impl("causal_conv1d", &causal_conv1d_cuda);
  m.impl("causal_conv1d_out", &causal_conv1d_out_cuda);
}

}  // namespace flashstream::cuda
