// FSQ argument handling shared by the CPU and CUDA bindings: `levels` -> kernel constants, and the
// checks on z / indices. Kept device-agnostic so both paths reject exactly the same inputs.
#pragma once
#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>

#include "check.h"
#include "flashstream/common/dtype.h"
#include "flashstream/fsq/params.h"

namespace flashstream {

inline fsq::Params fsq_params(const char* op, c10::IntArrayRef levels, double eps) {
  FS_CHECK_VALUE(eps >= 0.0 && eps < 1.0, op, "eps must be in [0, 1), got ", eps);
  fsq::Params p;
  int bad = -1;
  const auto err = fsq::make_params(levels.data(), int(levels.size()), eps, &p, &bad);
  if (err != fsq::ParamsError::ok) {
    if (bad >= 0) {
      FS_CHECK_VALUE(false, op, "levels ", shape_str(levels), ": ", fsq::params_error_message(err),
                     " (levels[", bad, "] = ", levels[bad], ")");
    }
    FS_CHECK_VALUE(false, op, "levels ", shape_str(levels), ": ", fsq::params_error_message(err));
  }
  return p;
}

inline DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf: return DType::f16;
    case at::kBFloat16: return DType::bf16;
    default: return DType::f32;
  }
}

// z: [..., d], floating, contiguous.
inline void check_fsq_input(const char* op, const char* arg, const at::Tensor& z, const fsq::Params& p) {
  check_float_dtype(op, arg, z);
  FS_CHECK_VALUE(z.dim() >= 1, op, arg, " must have a last dimension of size len(levels) = ", p.dims,
                 ", got a 0-dim tensor");
  FS_CHECK_VALUE(z.size(-1) == p.dims, op, arg, " must be [..., len(levels)] = [..., ", p.dims, "], got ",
                 shape_str(z.sizes()));
  check_contiguous(op, arg, z);
}

// Caller-provided outputs of fsq_out: codes like z, indices z.shape[:-1] int64, contiguous, on
// z's device, overlapping neither z nor each other.
inline void check_fsq_outputs(const char* op, const at::Tensor& z, const at::Tensor& codes, const at::Tensor& indices) {
  check_dtype(op, "codes", codes, z.scalar_type());
  check_dtype(op, "indices", indices, at::kLong);
  check_shape(op, "codes", codes, z.sizes(), "z.shape");
  check_shape(op, "indices", indices, z.sizes().slice(0, z.dim() - 1), "z.shape[:-1]");
  check_same_device(op, "codes", codes, z, "z");
  check_same_device(op, "indices", indices, z, "z");
  check_contiguous(op, "codes", codes);
  check_contiguous(op, "indices", indices);
  FS_CHECK_VALUE(at::get_overlap_status(codes, z) == at::MemOverlapStatus::No &&
                     at::get_overlap_status(indices, z) == at::MemOverlapStatus::No &&
                     at::get_overlap_status(codes, indices) == at::MemOverlapStatus::No,
                 op, "codes and indices must not overlap z or each other");
}

inline void check_fsq_indices(const char* op, const at::Tensor& indices) {
  check_dtype(op, "indices", indices, at::kLong);
  check_contiguous(op, "indices", indices);
}

inline void check_codes_dtype(const char* op, at::ScalarType dtype) {
  FS_CHECK_TYPE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, op,
                "dtype must be float32, float16 or bfloat16, got ", dtype);
}

}  // namespace flashstream
