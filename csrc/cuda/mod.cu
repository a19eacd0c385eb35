// Mixture-of-depths on CUDA: the same argument checks as the CPU path, then the kernels of
// include/flashstream/mod/cuda.cuh on the current stream. Data-dependent checks (index values,
// group order, rows over max_kept) run on the device and are read back once, and never while a
// CUDA graph is being captured; index checks for the scatters run before anything is written.
#include <limits>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "cuda/dispatch.h"
#include "cuda/stream.h"
#include "flashstream/mod/cuda.cuh"
#include "mod_args.h"

namespace flashstream::cuda {
namespace {

namespace mk = flashstream::mod::cuda;

// Checks every entry of indices [B, K] on the device; one readback. Raises with the first bad one.
void validate_indices(const char* op, const at::Tensor& indices, int64_t T, bool sorted, cudaStream_t stream) {
  const int64_t B = indices.size(0), K = indices.size(1);
  if (B * K == 0 || is_capturing(stream)) return;
  at::Tensor bad = at::full({1}, std::numeric_limits<int64_t>::max(), indices.options());
  check_launch(mk::launch_check_indices(indices.const_data_ptr<int64_t>(), B, K, T, sorted,
                                        reinterpret_cast<unsigned long long*>(bad.mutable_data_ptr<int64_t>()), stream),
               op);
  const int64_t first = bad.item<int64_t>();
  if (first == std::numeric_limits<int64_t>::max()) return;
  const int64_t pos = first / 4, b = pos / K, k = pos % K;
  const int64_t value = indices[b][k].item<int64_t>();
  FS_CHECK_VALUE(first % 4 != mod::kIndexOutOfRange, op, "indices must be in [0, T) = [0, ", T,
                 ") or -1 (padding), got ", value, " at [", b, ", ", k, "]");
  FS_CHECK_VALUE(false, op, "indices rows must be strictly increasing with -1 padding only at the end (as mod_route "
                 "returns them), got ", value, " after ", indices[b][k - 1].item<int64_t>(), " at [", b, ", ", k, "]");
}

at::Tensor mod_gather_cuda(const at::Tensor& x, const at::Tensor& indices, bool validate) {
  const char* op = "mod_gather";
  check_mod_x(op, x);
  check_mod_indices(op, indices, x);
  check_cuda(op, "x", x);
  DeviceGuard guard(x);
  const int64_t B = x.size(0), T = x.size(1), D = x.size(2), K = indices.size(1);
  const cudaStream_t stream = current_stream(x);
  if (validate) validate_indices(op, indices, T, false, stream);
  at::Tensor out = at::empty({B, K, D}, x.options());
  if (out.numel() == 0) return out;
  check_launch(by_dtype(mod_dtype(x), [&](auto v) {
    using V = decltype(v);
    return mk::launch_gather<V>(static_cast<const V*>(x.const_data_ptr()), indices.const_data_ptr<int64_t>(),
                                static_cast<V*>(out.mutable_data_ptr()), B, K, T, D, stream);
  }), op);
  return out;
}

std::tuple<at::Tensor, at::Tensor> mod_gather_rmsnorm_cuda(const at::Tensor& x, const at::Tensor& indices,
                                                           const at::Tensor& norm_weight, double eps, bool validate) {
  const char* op = "mod_gather_rmsnorm";
  check_mod_x(op, x);
  check_mod_indices(op, indices, x);
  check_cuda(op, "x", x);
  const int64_t B = x.size(0), T = x.size(1), D = x.size(2), K = indices.size(1);
  check_mod_like(op, "norm_weight", norm_weight, x, {D}, "[D]");
  FS_CHECK_VALUE(eps >= 0.0, op, "eps must be >= 0, got ", eps);
  DeviceGuard guard(x);
  const cudaStream_t stream = current_stream(x);
  if (validate) validate_indices(op, indices, T, false, stream);
  at::Tensor out = at::empty({B, K, D}, x.options());
  at::Tensor normed = at::empty({B, K, D}, x.options());
  if (out.numel() == 0) return {out, normed};
  check_launch(by_dtype(mod_dtype(x), [&](auto v) {
    using V = decltype(v);
    return mk::launch_gather_rmsnorm<V>(static_cast<const V*>(x.const_data_ptr()), indices.const_data_ptr<int64_t>(),
                                        static_cast<const V*>(norm_weight.const_data_ptr()), float(eps),
                                        static_cast<V*>(out.mutable_data_ptr()), static_cast<V*>(normed.mutable_data_ptr()),
                                        B, K, T, D, stream);
  }), op);
  return {out, normed};
}

void scatter_into(const char* op, bool output, const at::Tensor& x, const at::Tensor& delta, const at::Tensor& indices,
                  const std::optional<at::Tensor>& weights, at::Tensor& out, cudaStream_t stream) {
  const int64_t B = x.size(0), T = x.size(1), D = x.size(2), K = indices.size(1);
  if (B * K * D == 0) return;
  check_launch(by_dtype(mod_dtype(x), [&](auto v) {
    using V = decltype(v);
    const auto launch = output ? &mk::launch_scatter<true, V> : &mk::launch_scatter<false, V>;
    return launch(static_cast<const V*>(x.const_data_ptr()), static_cast<const V*>(delta.const_data_ptr()),
                  indices.const_data_ptr<int64_t>(), weights ? static_cast<const V*>(weights->const_data_ptr()) : nullptr,
                  static_cast<V*>(out.mutable_data_ptr()), B, K, T, D, stream);
  }), op);
}

at::Tensor scatter_cuda(const char* op, bool output, const at::Tensor& x, const at::Tensor& delta,
                        const at::Tensor& indices, const std::optional<at::Tensor>& weights, bool validate) {
  check_mod_scatter_args(op, x, delta, indices, weights, output ? "y" : "delta");
  check_cuda(op, "x", x);
  DeviceGuard guard(x);
  const cudaStream_t stream = current_stream(x);
  if (validate) validate_indices(op, indices, x.size(1), true, stream);
  at::Tensor out = at::empty_like(x);
  const int64_t bytes = x.numel() * x.element_size();
  if (bytes == 0) return out;
  // Skipped tokens are a plain copy of x (bit-identical); the kept rows are then overwritten.
  check_launch(cudaMemcpyAsync(out.mutable_data_ptr(), x.const_data_ptr(), bytes, cudaMemcpyDeviceToDevice, stream), op);
  scatter_into(op, output, x, delta, indices, weights, out, stream);
  return out;
}

void scatter_inplace_cuda(const char* op, bool output, at::Tensor& x, const at::Tensor& delta,
                          const at::Tensor& indices, const std::optional<at::Tensor>& weights, bool validate) {
  check_mod_scatter_args(op, x, delta, indices, weights, output ? "y" : "delta");
  check_cuda(op, "x", x);
  DeviceGuard guard(x);
  const cudaStream_t stream = current_stream(x);
  if (validate) validate_indices(op, indices, x.size(1), true, stream);
  scatter_into(op, output, x, delta, indices, weights, x, stream);
}

at::Tensor mod_scatter_cuda(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& indices,
                            const std::optional<at::Tensor>& weights, bool validate) {
  return scatter_cuda("mod_scatter", false, x, delta, indices, weights, validate);
}

void mod_scatter_inplace_cuda(at::Tensor& x, const at::Tensor& delta, const at::Tensor& indices,
                              const std::optional<at::Tensor>& weights, bool validate) {
  scatter_inplace_cuda("mod_scatter_", false, x, delta, indices, weights, validate);
}

at::Tensor mod_scatter_output_cuda(const at::Tensor& x, const at::Tensor& y, const at::Tensor& indices,
                                   const std::optional<at::Tensor>& weights, bool validate) {
  return scatter_cuda("mod_scatter_output", true, x, y, indices, weights, validate);
}

void mod_scatter_output_inplace_cuda(at::Tensor& x, const at::Tensor& y, const at::Tensor& indices,
                                     const std::optional<at::Tensor>& weights, bool validate) {
  scatter_inplace_cuda("mod_scatter_output_", true, x, y, indices, weights, validate);
}

std::tuple<at::Tensor, at::Tensor> mod_route_cuda(const at::Tensor& scores, double capacity,
                                                  const std::optional<at::Tensor>& groups_in,
                                                  const std::optional<at::Tensor>& routable_in,
                                                  std::optional<int64_t> max_kept, bool validate) {
  const char* op = "mod_route";
  check_mod_route_args(op, scores, capacity, groups_in, routable_in, max_kept);
  check_cuda(op, "scores", scores);
  const int64_t B = scores.size(0), T = scores.size(1);
  FS_CHECK_VALUE(B <= 65535, op, "scores must have at most 65535 rows on CUDA, got ", B);
  DeviceGuard guard(scores);
  const cudaStream_t stream = current_stream(scores);
  const int64_t static_k = mod_route_static_k(scores, capacity, groups_in, routable_in, max_kept);
  const bool capturing = is_capturing(stream);
  FS_CHECK_VALUE(static_k >= 0 || !capturing, op, "with groups or routable, the output width depends on the data "
                 "and needs a device sync: pass max_kept to capture mod_route in a CUDA graph");
  const std::optional<at::Tensor> groups =
      groups_in ? std::optional<at::Tensor>(groups_in->to(at::kLong).contiguous()) : std::nullopt;
  const std::optional<at::Tensor> routable =
      routable_in ? std::optional<at::Tensor>(routable_in->contiguous()) : std::nullopt;
  const uint8_t* rp = routable ? static_cast<const uint8_t*>(routable->const_data_ptr()) : nullptr;

  const auto opts = scores.options();
  at::Tensor key = at::empty({B, T}, opts.dtype(at::kLong));
  at::Tensor tok = at::empty({B, T}, opts.dtype(at::kInt));
  at::Tensor gid = at::empty({B, T}, opts.dtype(at::kLong));
  at::Tensor start = at::empty({B, T}, opts.dtype(at::kInt));
  at::Tensor n_r = at::empty({B}, opts.dtype(at::kInt));
  at::Tensor keep = at::empty({B, T}, opts.dtype(at::kByte));
  at::Tensor count = at::empty({B}, opts.dtype(at::kLong));
  at::Tensor flags = at::zeros({2}, opts.dtype(at::kInt));
  mk::RouteScratch s{reinterpret_cast<uint64_t*>(key.mutable_data_ptr<int64_t>()), tok.mutable_data_ptr<int32_t>(),
                     gid.mutable_data_ptr<int64_t>(), start.mutable_data_ptr<int32_t>(), n_r.mutable_data_ptr<int32_t>(),
                     keep.mutable_data_ptr<uint8_t>(), count.mutable_data_ptr<int64_t>(), flags.mutable_data_ptr<int>()};
  const DType dt = mod_dtype(scores);
  const bool empty = B * T == 0;
  if (!empty) {
    check_launch(by_dtype(dt, [&](auto v) {
      using V = decltype(v);
      return mk::launch_route_mark<V>(static_cast<const V*>(scores.const_data_ptr()),
                                      groups ? groups->const_data_ptr<int64_t>() : nullptr, rp, B, T, capacity, s, stream);
    }), op);
  }
  auto write = [&](int64_t K, int64_t* indices, void* weights) {
    check_launch(by_dtype(dt, [&](auto v) {
      using V = decltype(v);
      return mk::launch_route_write<V>(static_cast<const V*>(scores.const_data_ptr()), rp, B, T, K, indices,
                                       static_cast<V*>(weights), s, stream);
    }), op);
  };
  int64_t K = static_k;
  bool checked = false;
  if (K < 0) {  // size K from the data: count first, one readback (with the flags)
    if (!empty) write(0, nullptr, nullptr);
    const at::Tensor host = flags.cpu();
    FS_CHECK_VALUE(!validate || !(host.const_data_ptr<int>()[0] & mk::kGroupsDecrease), op, FS_MOD_ROUTE_DECREASE_MSG);
    K = host.const_data_ptr<int>()[1];
    checked = true;
  }
  at::Tensor indices = at::empty({B, K}, opts.dtype(at::kLong));
  at::Tensor weights = at::empty({B, K}, opts);
  if (B * K == 0) return {indices, weights};
  if (!empty) {
    write(K, indices.mutable_data_ptr<int64_t>(), weights.mutable_data_ptr());
  } else {  // T == 0: every row is padding
    indices.fill_(-1);
    weights.zero_();
  }
  // Static K: the group order and max_kept checks cost a readback of their own.
  const bool may_fail = groups_in.has_value() || max_kept.has_value();
  if (validate && !checked && may_fail && !capturing && !empty) {
    const at::Tensor host = flags.cpu();
    const int f = host.const_data_ptr<int>()[0];
    FS_CHECK_VALUE(!(f & mk::kGroupsDecrease), op, FS_MOD_ROUTE_DECREASE_MSG);
    FS_CHECK_VALUE(!(f & mk::kRowOverflow), op, "max_kept = ", K, " but a row keeps ", host.const_data_ptr<int>()[1],
                   " tokens; pass a larger max_kept, or None to size K from the data");
  }
  return {indices, weights};
}

}  // namespace

TORCH_LIBRARY_IMPL(flashstream, CUDA, m) {
  m.impl("mod_route", &mod_route_cuda);
  m.impl("mod_gather", &mod_gather_cuda);
  m.impl("mod_gather_rmsnorm", &mod_gather_rmsnorm_cuda);
  m.impl("mod_scatter", &mod_scatter_cuda);
  m.impl("mod_scatter_", &mod_scatter_inplace_cuda);
  m.impl("mod_scatter_output", &mod_scatter_output_cuda);
  m.impl("mod_scatter_output_", &mod_scatter_output_inplace_cuda);
}

}  // namespace flashstream::cuda
