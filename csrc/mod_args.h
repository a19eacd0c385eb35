// MoD argument checks shared by the CPU and CUDA bindings, so both reject exactly the same inputs,
// before anything is launched or written.
#pragma once
#include <optional>

#include <ATen/core/Tensor.h>

#include "check.h"
#include "flashstream/common/dtype.h"
#include "flashstream/mod/route.h"

namespace flashstream {

inline DType mod_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf: return DType::f16;
    case at::kBFloat16: return DType::bf16;
    default: return DType::f32;
  }
}

// x: [B, T, D] floating, contiguous.
inline void check_mod_x(const char* op, const at::Tensor& x) {
  check_float_dtype(op, "x", x);
  FS_CHECK_VALUE(x.dim() == 3, op, "x must be [B, T, D], got ", shape_str(x.sizes()));
  check_contiguous(op, "x", x);
}

// indices: [B, K] int64 with x's B, on x's device, contiguous.
inline void check_mod_indices(const char* op, const at::Tensor& indices, const at::Tensor& x) {
  FS_CHECK_TYPE(indices.scalar_type() == at::kLong, op, "indices must be int64, got ", indices.scalar_type());
  FS_CHECK_VALUE(indices.dim() == 2 && indices.size(0) == x.size(0), op, "indices must be [B, K] with B = ",
                 x.size(0), ", got ", shape_str(indices.sizes()));
  check_same_device(op, "indices", indices, x, "x");
  check_contiguous(op, "indices", indices);
}

// A [B, K, D] (or [B, K] / [D]) companion of x: same dtype and device, contiguous, given shape.
inline void check_mod_like(const char* op, const char* arg, const at::Tensor& t, const at::Tensor& x,
                           c10::IntArrayRef shape, const char* shape_expr) {
  check_dtype(op, arg, t, x.scalar_type());
  check_shape(op, arg, t, shape, shape_expr);
  check_same_device(op, arg, t, x, "x");
  check_contiguous(op, arg, t);
}

// `delta_arg` names the rows argument: "delta", or "y" for the ops taking the block's output.
inline void check_mod_scatter_args(const char* op, const at::Tensor& x, const at::Tensor& delta,
                                   const at::Tensor& indices, const std::optional<at::Tensor>& weights,
                                   const char* delta_arg = "delta") {
  check_mod_x(op, x);
  check_mod_indices(op, indices, x);
  const int64_t B = x.size(0), K = indices.size(1), D = x.size(2);
  check_mod_like(op, delta_arg, delta, x, {B, K, D}, "[B, K, D]");
  if (weights) check_mod_like(op, "weights", *weights, x, {B, K}, "[B, K]");
}

inline void check_mod_route_args(const char* op, const at::Tensor& scores, double capacity,
                                 const std::optional<at::Tensor>& groups, const std::optional<at::Tensor>& routable,
                                 std::optional<int64_t> max_kept) {
  check_float_dtype(op, "scores", scores);
  FS_CHECK_VALUE(scores.dim() == 2, op, "scores must be [B, T], got ", shape_str(scores.sizes()));
  check_contiguous(op, "scores", scores);
  FS_CHECK_VALUE(scores.size(1) <= mod::kMaxTokens, op, "scores must have T <= 2^31 - 1 tokens per row, got ",
                 scores.size(1));
  FS_CHECK_VALUE(capacity >= 0.0 && capacity <= 1.0, op, "capacity must be in [0, 1], got ", capacity);
  if (groups) {
    FS_CHECK_TYPE(groups->scalar_type() == at::kLong || groups->scalar_type() == at::kInt, op,
                  "groups must be int64 or int32, got ", groups->scalar_type());
    check_shape(op, "groups", *groups, scores.sizes(), "scores.shape");
    check_same_device(op, "groups", *groups, scores, "scores");
  }
  if (routable) {
    check_dtype(op, "routable", *routable, at::kBool);
    check_shape(op, "routable", *routable, scores.sizes(), "scores.shape");
    check_same_device(op, "routable", *routable, scores, "scores");
  }
  if (max_kept) FS_CHECK_VALUE(*max_kept >= 0, op, "max_kept must be >= 0, got ", *max_kept);
}

// K when it follows from the arguments alone (no data): max_kept, or one group of T routable
// tokens per row. -1 when it depends on groups / routable.
inline int64_t mod_route_static_k(const at::Tensor& scores, double capacity, const std::optional<at::Tensor>& groups,
                                  const std::optional<at::Tensor>& routable, std::optional<int64_t> max_kept) {
  if (max_kept) return *max_kept;
  if (!groups && !routable) return mod::keep_count(capacity, scores.size(1));
  return -1;
}

#define FS_MOD_ROUTE_DECREASE_MSG \
  "groups must be non-decreasing along each row over the routable tokens (e.g. frame ids in stream order)"

}  // namespace flashstream
