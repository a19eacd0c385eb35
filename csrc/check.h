// Argument checks shared by every op binding. Each failure names the op, the argument, what was
// expected and what came, and raises before anything is launched or written.
#pragma once
#include <sstream>
#include <string>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace flashstream {

inline std::string shape_str(c10::IntArrayRef s) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << ']';
  return os.str();
}

// ValueError / TypeError on the Python side (c10::ValueError / c10::TypeError).
#define FS_CHECK_VALUE(cond, op, ...) TORCH_CHECK_VALUE(cond, "flashstream.", op, ": ", __VA_ARGS__)
#define FS_CHECK_TYPE(cond, op, ...) TORCH_CHECK_TYPE(cond, "flashstream.", op, ": ", __VA_ARGS__)

inline void check_float_dtype(const char* op, const char* arg, const at::Tensor& t) {
  const auto st = t.scalar_type();
  FS_CHECK_TYPE(st == at::kFloat || st == at::kHalf || st == at::kBFloat16, op, arg,
                " must be float32, float16 or bfloat16, got ", st);
}

inline void check_dtype(const char* op, const char* arg, const at::Tensor& t, at::ScalarType expected) {
  FS_CHECK_TYPE(t.scalar_type() == expected, op, arg, " must be ", expected, ", got ", t.scalar_type());
}

inline void check_same_device(const char* op, const char* arg, const at::Tensor& t, const at::Tensor& ref,
                              const char* ref_arg) {
  FS_CHECK_VALUE(t.device() == ref.device(), op, arg, " must be on the same device as ", ref_arg, " (",
                 ref.device(), "), got ", t.device());
}

inline void check_cpu(const char* op, const char* arg, const at::Tensor& t) {
  FS_CHECK_VALUE(t.device().is_cpu(), op, arg, " must be a CPU tensor for the CPU kernel, got ", t.device());
}

inline void check_cuda(const char* op, const char* arg, const at::Tensor& t) {
  FS_CHECK_VALUE(t.device().is_cuda(), op, arg, " must be a CUDA tensor for the CUDA kernel, got ", t.device());
}

inline void check_contiguous(const char* op, const char* arg, const at::Tensor& t) {
  FS_CHECK_VALUE(t.is_contiguous(), op, arg, " must be contiguous, got shape ", shape_str(t.sizes()),
                 " with strides ", shape_str(t.strides()), "; call .contiguous() first");
}

inline void check_shape(const char* op, const char* arg, const at::Tensor& t, c10::IntArrayRef expected,
                        const char* expected_expr) {
  FS_CHECK_VALUE(t.sizes() == expected, op, arg, " must be ", expected_expr, " = ", shape_str(expected),
                 ", got ", shape_str(t.sizes()));
}

}  // namespace flashstream
