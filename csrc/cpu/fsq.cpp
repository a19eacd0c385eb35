// FSQ on CPU: argument checks, then the ISA-selected kernels over at::parallel_for ranges.
#include <atomic>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "cpu/isa.h"
#include "cpu/isa/fsq.h"
#include "fsq_args.h"

namespace flashstream::cpu {
namespace {

// Vectors per parallel task: enough work to amortise a task and its lane tables.
constexpr int64_t kGrainVectors = 4096;

const FsqCpuKernels& kernels() { FS_SELECT_ISA(fsq_kernels) }

// Writes codes/indices (checked by the callers) for z; raises on NaN when asked to.
void fsq_into(const char* op, const at::Tensor& z, const fsq::Params& p, bool validate, at::Tensor& codes,
              at::Tensor& indices) {
  const int64_t n = indices.numel();
  if (n == 0) return;
  const auto& k = kernels();
  const DType dt = dtype_of(z);
  std::atomic<bool> any_nan{false};
  at::parallel_for(0, n, kGrainVectors, [&](int64_t begin, int64_t end) {
    if (k.forward(dt, p, z.const_data_ptr(), codes.mutable_data_ptr(), indices.mutable_data_ptr<int64_t>(), begin, end))
      any_nan.store(true, std::memory_order_relaxed);
  });
  FS_CHECK_VALUE(!validate || !any_nan.load(), op, "z contains NaN (FSQ has no code for it); "
                 "pass validate=False to get index -1 and NaN codes for such vectors instead");
}

std::tuple<at::Tensor, at::Tensor> fsq_cpu(const at::Tensor& z, c10::IntArrayRef levels, double eps, bool validate) {
  const fsq::Params p = fsq_params("fsq", levels, eps);
  check_fsq_input("fsq", "z", z, p);
  check_cpu("fsq", "z", z);
  at::Tensor codes = at::empty_like(z);
  at::Tensor indices = at::empty(z.sizes().slice(0, z.dim() - 1), z.options().dtype(at::kLong));
  fsq_into("fsq", z, p, validate, codes, indices);
  return {codes, indices};
}

void fsq_out_cpu(const at::Tensor& z, c10::IntArrayRef levels, double eps, bool validate, at::Tensor& codes,
                 at::Tensor& indices) {
  const fsq::Params p = fsq_params("fsq_out", levels, eps);
  check_fsq_input("fsq_out", "z", z, p);
  check_cpu("fsq_out", "z", z);
  check_fsq_outputs("fsq_out", z, codes, indices);
  fsq_into("fsq_out", z, p, validate, codes, indices);
}

at::Tensor fsq_backward_cpu(const at::Tensor& grad_codes, const at::Tensor& z, c10::IntArrayRef levels, double eps) {
  const fsq::Params p = fsq_params("fsq_backward", levels, eps);
  check_fsq_input("fsq_backward", "z", z, p);
  check_cpu("fsq_backward", "z", z);
  check_dtype("fsq_backward", "grad_codes", grad_codes, z.scalar_type());
  check_shape("fsq_backward", "grad_codes", grad_codes, z.sizes(), "z.shape");
  check_same_device("fsq_backward", "grad_codes", grad_codes, z, "z");
  const at::Tensor g = grad_codes.contiguous();
  at::Tensor grad_z = at::empty_like(z);
  const int64_t n = z.numel() / p.dims;
  if (n == 0) return grad_z;
  const auto& k = kernels();
  const DType dt = dtype_of(z);
  at::parallel_for(0, n, kGrainVectors, [&](int64_t begin, int64_t end) {
    k.backward(dt, p, g.const_data_ptr(), z.const_data_ptr(), grad_z.mutable_data_ptr(), begin, end);
  });
  return grad_z;
}

at::Tensor fsq_indices_to_codes_cpu(const at::Tensor& indices, c10::IntArrayRef levels, at::ScalarType dtype,
                                    bool validate) {
  const char* op = "fsq_indices_to_codes";
  const fsq::Params p = fsq_params(op, levels, 0.0);
  check_fsq_indices(op, indices);
  check_codes_dtype(op, dtype);
  check_cpu(op, "indices", indices);
  std::vector<int64_t> shape(indices.sizes().begin(), indices.sizes().end());
  shape.push_back(p.dims);
  at::Tensor codes = at::empty(shape, indices.options().dtype(dtype));
  const int64_t n = indices.numel();
  if (n == 0) return codes;
  const auto& k = kernels();
  const DType dt = dtype_of(codes);
  std::atomic<int64_t> bad{0};
  at::parallel_for(0, n, kGrainVectors, [&](int64_t begin, int64_t end) {
    bad.fetch_add(k.indices_to_codes(dt, p, indices.const_data_ptr<int64_t>(), codes.mutable_data_ptr(), begin, end),
                  std::memory_order_relaxed);
  });
  FS_CHECK_VALUE(!validate || bad.load() == 0, op, "indices must be in [0, prod(levels)) = [0, ", p.codebook_size,
                 "), got ", bad.load(), " out of range");
  return codes;
}

}  // namespace

TORCH_LIBRARY_IMPL(flashstream, CPU, m) {
  m.impl("fsq", &fsq_cpu);
  m.impl("fsq_out", &fsq_out_cpu);
  m.impl("fsq_backward", &fsq_backward_cpu);
  m.impl("fsq_indices_to_codes", &fsq_indices_to_codes_cpu);
}

}  // namespace flashstream::cpu
