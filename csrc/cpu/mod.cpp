// Mixture-of-depths on CPU: argument checks, index validation before anything is written, then
// the ISA-selected kernels over at::parallel_for ranges.
#include <algorithm>
#include <atomic>
#include <cstring>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "cpu/isa.h"
#include "cpu/isa/mod.h"
#include "flashstream/mod/indices.h"
#include "mod_args.h"

namespace flashstream::cpu {
namespace {

const ModCpuKernels& kernels() { FS_SELECT_ISA(mod_kernels) }

// Grain sizes: enough bytes per task to amortise it.
int64_t row_grain(int64_t D, int64_t elem) { return std::max<int64_t>(1, (64 << 10) / std::max<int64_t>(1, D * elem)); }

// Raises on the first bad entry of indices [B, K] for a table of T tokens.
void validate_indices(const char* op, const at::Tensor& indices, int64_t T, bool sorted) {
  const int64_t B = indices.size(0), K = indices.size(1);
  const int64_t* p = indices.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t k = 0; k < K; ++k) {
      const int st = mod::index_status(p + b * K, k, T, sorted);
      FS_CHECK_VALUE(st != mod::kIndexOutOfRange, op, "indices must be in [0, T) = [0, ", T, ") or -1 (padding), got ",
                     p[b * K + k], " at [", b, ", ", k, "]");
      FS_CHECK_VALUE(st != mod::kIndexUnordered, op, "indices rows must be strictly increasing with -1 padding only "
                     "at the end (as mod_route returns them), got ", p[b * K + k], " after ", p[b * K + k - 1],
                     " at [", b, ", ", k, "]");
    }
  }
}

at::Tensor mod_gather_cpu(const at::Tensor& x, const at::Tensor& indices, bool validate) {
  const char* op = "mod_gather";
  check_mod_x(op, x);
  check_mod_indices(op, indices, x);
  check_cpu(op, "x", x);
  const int64_t B = x.size(0), T = x.size(1), D = x.size(2), K = indices.size(1);
  if (validate) validate_indices(op, indices, T, false);
  at::Tensor out = at::empty({B, K, D}, x.options());
  if (out.numel() == 0) return out;
  const auto& k = kernels();
  at::parallel_for(0, B * K, row_grain(D, x.element_size()), [&](int64_t begin, int64_t end) {
    k.gather(mod_dtype(x), x.const_data_ptr(), indices.const_data_ptr<int64_t>(), out.mutable_data_ptr(), K, T, D,
             begin, end);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> mod_gather_rmsnorm_cpu(const at::Tensor& x, const at::Tensor& indices,
                                                          const at::Tensor& norm_weight, double eps, bool validate) {
  const char* op = "mod_gather_rmsnorm";
  check_mod_x(op, x);
  check_mod_indices(op, indices, x);
  check_cpu(op, "x", x);
  const int64_t B = x.size(0), T = x.size(1), D = x.size(2), K = indices.size(1);
  check_mod_like(op, "norm_weight", norm_weight, x, {D}, "[D]");
  FS_CHECK_VALUE(eps >= 0.0, op, "eps must be >= 0, got ", eps);
  if (validate) validate_indices(op, indices, T, false);
  at::Tensor out = at::empty({B, K, D}, x.options());
  at::Tensor normed = at::empty({B, K, D}, x.options());
  if (out.numel() == 0) return {out, normed};
  const auto& k = kernels();
  at::parallel_for(0, B * K, row_grain(D, x.element_size()), [&](int64_t begin, int64_t end) {
    k.gather_rmsnorm(mod_dtype(x), x.const_data_ptr(), indices.const_data_ptr<int64_t>(), norm_weight.const_data_ptr(),
                     float(eps), out.mutable_data_ptr(), normed.mutable_data_ptr(), K, T, D, begin, end);
  });
  return {out, normed};
}

void scatter_into(bool output, const at::Tensor& x, const at::Tensor& delta, const at::Tensor& indices,
                  const std::optional<at::Tensor>& weights, at::Tensor& out) {
  const int64_t T = x.size(1), D = x.size(2), K = indices.size(1);
  const auto& k = kernels();
  const void* w = weights ? weights->const_data_ptr() : nullptr;
  at::parallel_for(0, x.size(0) * K, row_grain(D, x.element_size()), [&](int64_t begin, int64_t end) {
    k.scatter(mod_dtype(x), output, x.const_data_ptr(), delta.const_data_ptr(), indices.const_data_ptr<int64_t>(), w,
              out.mutable_data_ptr(), K, T, D, begin, end);
  });
}

at::Tensor scatter_cpu(const char* op, bool output, const at::Tensor& x, const at::Tensor& delta,
                       const at::Tensor& indices, const std::optional<at::Tensor>& weights, bool validate) {
  check_mod_scatter_args(op, x, delta, indices, weights, output ? "y" : "delta");
  check_cpu(op, "x", x);
  if (validate) validate_indices(op, indices, x.size(1), true);
  at::Tensor out = at::empty_like(x);
  const int64_t bytes = x.numel() * x.element_size();
  if (bytes == 0) return out;
  // Copy x (skipped tokens stay bit-identical), then overwrite the kept rows.
  const char* src = static_cast<const char*>(x.const_data_ptr());
  char* dst = static_cast<char*>(out.mutable_data_ptr());
  at::parallel_for(0, bytes, 1 << 20, [&](int64_t begin, int64_t end) { std::memcpy(dst + begin, src + begin, end - begin); });
  scatter_into(output, x, delta, indices, weights, out);
  return out;
}

void scatter_inplace_cpu(const char* op, bool output, at::Tensor& x, const at::Tensor& delta, const at::Tensor& indices,
                         const std::optional<at::Tensor>& weights, bool validate) {
  check_mod_scatter_args(op, x, delta, indices, weights, output ? "y" : "delta");
  check_cpu(op, "x", x);
  if (validate) validate_indices(op, indices, x.size(1), true);
  if (x.numel() == 0) return;
  scatter_into(output, x, delta, indices, weights, x);
}

at::Tensor mod_scatter_cpu(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& indices,
                           const std::optional<at::Tensor>& weights, bool validate) {
  return scatter_cpu("mod_scatter", false, x, delta, indices, weights, validate);
}

void mod_scatter_inplace_cpu(at::Tensor& x, const at::Tensor& delta, const at::Tensor& indices,
                             const std::optional<at::Tensor>& weights, bool validate) {
  scatter_inplace_cpu("mod_scatter_", false, x, delta, indices, weights, validate);
}

at::Tensor mod_scatter_output_cpu(const at::Tensor& x, const at::Tensor& y, const at::Tensor& indices,
                                  const std::optional<at::Tensor>& weights, bool validate) {
  return scatter_cpu("mod_scatter_output", true, x, y, indices, weights, validate);
}

void mod_scatter_output_inplace_cpu(at::Tensor& x, const at::Tensor& y, const at::Tensor& indices,
                                    const std::optional<at::Tensor>& weights, bool validate) {
  scatter_inplace_cpu("mod_scatter_output_", true, x, y, indices, weights, validate);
}

std::tuple<at::Tensor, at::Tensor> mod_route_cpu(const at::Tensor& scores, double capacity,
                                                 const std::optional<at::Tensor>& groups_in,
                                                 const std::optional<at::Tensor>& routable,
                                                 std::optional<int64_t> max_kept, bool validate) {
  const char* op = "mod_route";
  check_mod_route_args(op, scores, capacity, groups_in, routable, max_kept);
  check_cpu(op, "scores", scores);
  const int64_t B = scores.size(0), T = scores.size(1);
  const std::optional<at::Tensor> groups =
      groups_in ? std::optional<at::Tensor>(groups_in->to(at::kLong).contiguous()) : std::nullopt;
  const std::optional<at::Tensor> rout = routable ? std::optional<at::Tensor>(routable->contiguous()) : std::nullopt;
  const int64_t* gp = groups ? groups->const_data_ptr<int64_t>() : nullptr;
  const uint8_t* rp = rout ? static_cast<const uint8_t*>(rout->const_data_ptr()) : nullptr;

  at::Tensor keep = at::empty({B, T}, scores.options().dtype(at::kByte));
  at::Tensor kept = at::empty({B}, scores.options().dtype(at::kLong));
  const auto& k = kernels();
  const DType dt = mod_dtype(scores);
  std::atomic<bool> decreasing{false};
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    if (k.route_mark(dt, scores.const_data_ptr(), gp, rp, T, capacity, keep.mutable_data_ptr<uint8_t>(),
                     kept.mutable_data_ptr<int64_t>(), begin, end))
      decreasing.store(true, std::memory_order_relaxed);
  });
  FS_CHECK_VALUE(!validate || !decreasing.load(), op, FS_MOD_ROUTE_DECREASE_MSG);
  int64_t most = 0;
  const int64_t* kp = kept.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) most = std::max(most, kp[b]);
  int64_t K = mod_route_static_k(scores, capacity, groups_in, routable, max_kept);
  if (K < 0) K = most;
  FS_CHECK_VALUE(!validate || most <= K, op, "max_kept = ", K, " but a row keeps ", most,
                 " tokens; pass a larger max_kept, or None to size K from the data");
  at::Tensor indices = at::empty({B, K}, scores.options().dtype(at::kLong));
  at::Tensor weights = at::empty({B, K}, scores.options());
  if (B * K == 0) return {indices, weights};
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    k.route_write(dt, scores.const_data_ptr(), rp, keep.const_data_ptr<uint8_t>(), T, K,
                  indices.mutable_data_ptr<int64_t>(), weights.mutable_data_ptr(), begin, end);
  });
  return {indices, weights};
}

}  // namespace

TORCH_LIBRARY_IMPL(flashstream, CPU, m) {
  m.impl("mod_route", &mod_route_cpu);
  m.impl("mod_gather", &mod_gather_cpu);
  m.impl("mod_gather_rmsnorm", &mod_gather_rmsnorm_cpu);
  m.impl("mod_scatter", &mod_scatter_cpu);
  m.impl("mod_scatter_", &mod_scatter_inplace_cpu);
  m.impl("mod_scatter_output", &mod_scatter_output_cpu);
  m.impl("mod_scatter_output_", &mod_scatter_output_inplace_cpu);
}

}  // namespace flashstream::cpu
