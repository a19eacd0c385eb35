// causal_conv1d argument handling shared by the CPU and CUDA bindings: every check runs here,
// before any output is allocated or state written, so both devices reject the same inputs and a
// rejected call leaves the state untouched.
#pragma once
#include <optional>
#include <string>
#include <string_view>

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include "check.h"
#include "flashstream/common/dtype.h"
#include "flashstream/conv/params.h"

namespace flashstream {

struct CausalConv1dArgs {
  conv::CausalConv1dParams p;
  bool channel_last = false;  // x (and y) unit-stride along channels rather than time
  at::Tensor x, weight;       // x possibly made contiguous; weight contiguous [C, W]
  std::optional<at::Tensor> bias;  // contiguous [C]
};

inline DType conv_dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf: return DType::f16;
    case at::kBFloat16: return DType::bf16;
    default: return DType::f32;
  }
}

// Layout of x: channel-last when channels are unit-stride and time is not (or T == 1, where
// lanes over channels are the only useful vectors); time-major when time is unit-stride;
// anything else is copied to contiguous first.
inline bool use_channel_last(const at::Tensor& x) {
  const bool c_unit = x.size(1) <= 1 || x.stride(1) == 1;
  const bool t_unit = x.size(2) <= 1 || x.stride(2) == 1;
  return c_unit && (!t_unit || x.size(2) == 1);
}

inline CausalConv1dArgs causal_conv1d_args(const char* op, const at::Tensor& x_in, const at::Tensor& weight_in,
                                           const std::optional<at::Tensor>& bias,
                                           const std::optional<at::Tensor>& state, int64_t dilation,
                                           const std::optional<std::string_view>& activation,
                                           const std::optional<at::Tensor>& indices) {
  check_float_dtype(op, "x", x_in);
  FS_CHECK_VALUE(x_in.dim() == 3, op, "x must be [B, C, T], got ", shape_str(x_in.sizes()));
  const int64_t B = x_in.size(0), C = x_in.size(1), T = x_in.size(2);
  check_dtype(op, "weight", weight_in, x_in.scalar_type());
  check_same_device(op, "weight", weight_in, x_in, "x");
  FS_CHECK_VALUE(weight_in.dim() == 2 && weight_in.size(0) == C, op, "weight must be [C, W] = [", C,
                 ", W] (depthwise), got ", shape_str(weight_in.sizes()));
  const int64_t W = weight_in.size(1);
  FS_CHECK_VALUE(W >= 1 && W <= conv::kMaxWidth, op, "weight width W must be in [1, ", conv::kMaxWidth, "], got ", W);
  FS_CHECK_VALUE(dilation >= 1 && dilation <= (int64_t(1) << 24), op, "dilation must be in [1, 2^24], got ", dilation);
  const bool silu = activation.has_value() && (*activation == "silu" || *activation == "swish");
  FS_CHECK_VALUE(!activation.has_value() || silu, op, "activation must be None, 'silu' or 'swish', got '",
                 std::string(*activation), "'");
  if (bias.has_value()) {
    check_dtype(op, "bias", *bias, x_in.scalar_type());
    check_same_device(op, "bias", *bias, x_in, "x");
    check_shape(op, "bias", *bias, {C}, "[C]");
  }
  const int64_t L = (W - 1) * dilation;
  int64_t pool = B;
  if (indices.has_value()) {
    FS_CHECK_VALUE(state.has_value(), op, "state_indices needs a state pool, got state=None");
    check_dtype(op, "state_indices", *indices, at::kInt);
    check_same_device(op, "state_indices", *indices, x_in, "x");
    check_shape(op, "state_indices", *indices, {B}, "[B]");
    check_contiguous(op, "state_indices", *indices);
  }
  if (state.has_value()) {
    const at::Tensor& s = *state;
    check_dtype(op, "state", s, x_in.scalar_type());
    check_same_device(op, "state", s, x_in, "x");
    if (indices.has_value()) {
      FS_CHECK_VALUE(s.dim() == 3 && s.size(1) == C && s.size(2) == L, op,
                     "state must be a pool [P, C, (W-1)*dilation] = [P, ", C, ", ", L, "], got ", shape_str(s.sizes()));
      pool = s.size(0);
    } else {
      check_shape(op, "state", s, {B, C, L}, "[B, C, (W-1)*dilation]");
    }
    FS_CHECK_VALUE(at::has_internal_overlap(s) != at::MemOverlap::Yes, op,
                   "state must not overlap itself (e.g. an expanded tensor), got strides ", shape_str(s.strides()));
  }

  CausalConv1dArgs a;
  const bool c_unit = C <= 1 || x_in.stride(1) == 1, t_unit = T <= 1 || x_in.stride(2) == 1;
  a.x = (c_unit || t_unit) ? x_in : x_in.contiguous();
  a.channel_last = use_channel_last(a.x);
  a.weight = weight_in.contiguous();
  if (bias.has_value()) a.bias = bias->contiguous();
  auto& p = a.p;
  p.batch = B; p.channels = C; p.seqlen = T;
  p.width = int(W); p.dilation = int(dilation); p.state_len = L;
  p.x_sb = a.x.stride(0); p.x_sc = a.x.stride(1); p.x_st = a.x.stride(2);
  if (a.channel_last) p.x_sc = 1;
  else p.x_st = 1;
  p.pool = pool;
  if (state.has_value()) {
    p.s_sb = state->stride(0); p.s_sc = state->stride(1); p.s_sl = state->stride(2);
  }
  p.silu = silu;
  return a;
}

// A caller-owned output: [B, C, T], x's dtype and device, unit stride along the dim the kernels
// vectorise (time, or channels for channel-last x), and sharing no memory with x or the state.
inline void causal_conv1d_check_out(const char* op, CausalConv1dArgs& a, const at::Tensor& out,
                                    const std::optional<at::Tensor>& state) {
  auto& p = a.p;
  check_dtype(op, "out", out, a.x.scalar_type());
  check_same_device(op, "out", out, a.x, "x");
  check_shape(op, "out", out, {p.batch, p.channels, p.seqlen}, "x.shape");
  const bool unit = a.channel_last ? (p.channels <= 1 || out.stride(1) == 1) : (p.seqlen <= 1 || out.stride(2) == 1);
  FS_CHECK_VALUE(unit, op, "out must be unit-stride along ", a.channel_last ? "channels (x is channel-last)" : "time",
                 ", got strides ", shape_str(out.strides()));
  FS_CHECK_VALUE(at::has_internal_overlap(out) != at::MemOverlap::Yes, op, "out must not overlap itself");
  const auto overlaps = [&](const at::Tensor& t) {
    const auto st = at::get_overlap_status(out, t);  // TooHard (strided views): assumed apart
    return st == at::MemOverlapStatus::Full || st == at::MemOverlapStatus::Partial;
  };
  FS_CHECK_VALUE(!overlaps(a.x), op, "out must not share memory with x (the taps read inputs after outputs are written)");
  FS_CHECK_VALUE(!state.has_value() || !overlaps(*state), op, "out must not share memory with state");
  p.y_sb = out.stride(0); p.y_sc = out.stride(1); p.y_st = out.stride(2);
  if (a.channel_last) p.y_sc = 1;
  else p.y_st = 1;
}

// y [B, C, T] in x's layout (unit stride along channels or time), strides recorded in a.p.
inline at::Tensor causal_conv1d_output(CausalConv1dArgs& a) {
  auto& p = a.p;
  at::Tensor y;
  if (a.channel_last) {
    y = at::empty({p.batch, p.seqlen, p.channels}, a.x.options()).transpose(1, 2);
    p.y_sb = p.seqlen * p.channels; p.y_sc = 1; p.y_st = p.channels;
  } else {
    y = at::empty({p.batch, p.channels, p.seqlen}, a.x.options());
    p.y_sb = p.channels * p.seqlen; p.y_sc = p.seqlen; p.y_st = 1;
  }
  return y;
}

}  // namespace flashstream
