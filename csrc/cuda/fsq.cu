// FSQ on CUDA: the same argument checks as the CPU path, then the kernels of
// include/flashstream/fsq/cuda.cuh on the current stream.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "cuda/dispatch.h"
#include "cuda/stream.h"
#include "flashstream/fsq/cuda.cuh"
#include "fsq_args.h"

namespace flashstream::cuda {
namespace {

// A device flag the kernel raises on bad values, read back (one sync) only when the caller asked
// for validation and the stream is not being captured into a CUDA graph.
struct ValueFlag {
  at::Tensor flag;
  int* ptr = nullptr;
  ValueFlag(bool validate, const at::Tensor& like) {
    if (!validate) return;
    flag = at::zeros({1}, like.options().dtype(at::kInt));
    ptr = flag.mutable_data_ptr<int>();
  }
  bool raised(cudaStream_t stream) const { return ptr != nullptr && !is_capturing(stream) && flag.item<int>() != 0; }
};

// Writes codes/indices (checked by the callers) for z; raises on NaN when asked to.
void fsq_into(const char* op, const at::Tensor& z, const fsq::Params& p, bool validate, at::Tensor& codes,
              at::Tensor& indices) {
  const int64_t n = indices.numel();
  if (n == 0) return;
  const cudaStream_t stream = current_stream(z);
  const ValueFlag nan(validate, z);
  check_launch(by_dtype(dtype_of(z), [&](auto t) {
    using T = decltype(t);
    return fsq::cuda::launch_forward<T>(p, static_cast<const T*>(z.const_data_ptr()),
                                        static_cast<T*>(codes.mutable_data_ptr()),
                                        indices.mutable_data_ptr<int64_t>(), n, nan.ptr, stream);
  }), op);
  FS_CHECK_VALUE(!nan.raised(stream), op, "z contains NaN (FSQ has no code for it); "
                 "pass validate=False to get index -1 and NaN codes for such vectors instead");
}

std::tuple<at::Tensor, at::Tensor> fsq_cuda(const at::Tensor& z, c10::IntArrayRef levels, double eps, bool validate) {
  const fsq::Params p = fsq_params("fsq", levels, eps);
  check_fsq_input("fsq", "z", z, p);
  check_cuda("fsq", "z", z);
  DeviceGuard guard(z);
  at::Tensor codes = at::empty_like(z);
  at::Tensor indices = at::empty(z.sizes().slice(0, z.dim() - 1), z.options().dtype(at::kLong));
  fsq_into("fsq", z, p, validate, codes, indices);
  return {codes, indices};
}

void fsq_out_cuda(const at::Tensor& z, c10::IntArrayRef levels, double eps, bool validate, at::Tensor& codes,
                  at::Tensor& indices) {
  const fsq::Params p = fsq_params("fsq_out", levels, eps);
  check_fsq_input("fsq_out", "z", z, p);
  check_cuda("fsq_out", "z", z);
  check_fsq_outputs("fsq_out", z, codes, indices);
  DeviceGuard guard(z);
  fsq_into("fsq_out", z, p, validate, codes, indices);
}

at::Tensor fsq_backward_cuda(const at::Tensor& grad_codes, const at::Tensor& z, c10::IntArrayRef levels, double eps) {
  const fsq::Params p = fsq_params("fsq_backward", levels, eps);
  check_fsq_input("fsq_backward", "z", z, p);
  check_cuda("fsq_backward", "z", z);
  check_dtype("fsq_backward", "grad_codes", grad_codes, z.scalar_type());
  check_shape("fsq_backward", "grad_codes", grad_codes, z.sizes(), "z.shape");
  check_same_device("fsq_backward", "grad_codes", grad_codes, z, "z");
  DeviceGuard guard(z);
  const at::Tensor g = grad_codes.contiguous();
  at::Tensor grad_z = at::empty_like(z);
  const int64_t n = z.numel() / p.dims;
  if (n == 0) return grad_z;
  const cudaStream_t stream = current_stream(z);
  check_launch(by_dtype(dtype_of(z), [&](auto t) {
    using T = decltype(t);
    return fsq::cuda::launch_backward<T>(p, static_cast<const T*>(g.const_data_ptr()),
                                         static_cast<const T*>(z.const_data_ptr()),
                                         static_cast<T*>(grad_z.mutable_data_ptr()), n, stream);
  }), "fsq_backward");
  return grad_z;
}

at::Tensor fsq_indices_to_codes_cuda(const at::Tensor& indices, c10::IntArrayRef levels, at::ScalarType dtype,
                                     bool validate) {
  const char* op = "fsq_indices_to_codes";
  const fsq::Params p = fsq_params(op, levels, 0.0);
  check_fsq_indices(op, indices);
  check_codes_dtype(op, dtype);
  check_cuda(op, "indices", indices);
  DeviceGuard guard(indices);
  std::vector<int64_t> shape(indices.sizes().begin(), indices.sizes().end());
  shape.push_back(p.dims);
  at::Tensor codes = at::empty(shape, indices.options().dtype(dtype));
  const int64_t n = indices.numel();
  if (n == 0) return codes;
  const cudaStream_t stream = current_stream(indices);
  const ValueFlag bad(validate, indices);
  check_launch(by_dtype(dtype_of(codes), [&](auto t) {
    using T = decltype(t);
    return fsq::cuda::launch_indices_to_codes<T>(p, indices.const_data_ptr<int64_t>(),
                                                 static_cast<T*>(codes.mutable_data_ptr()), n, bad.ptr, stream);
  }), op);
  FS_CHECK_VALUE(!bad.raised(stream), op, "indices must be in [0, prod(levels)) = [0, ", p.codebook_size, ")");
  return codes;
}

}  // namespace

TORCH_LIBRARY_IMPL(flashstream, CUDA, m) {
  m.impl("fsq", &fsq_cuda);
  m.impl("fsq_out", &fsq_out_cuda);
  m.impl("fsq_backward", &fsq_backward_cuda);
  m.impl("fsq_indices_to_codes", &fsq_indices_to_codes_cuda);
}

}  // namespace flashstream::cuda
