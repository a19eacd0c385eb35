// Low-rank attention argument checks shared by the CPU and CUDA bindings, so both reject exactly
// the same inputs, and the kernel arguments they build (workspace pointers are set by the caller).
#pragma once
#include <cmath>
#include <optional>

#include <ATen/core/Tensor.h>

#include "check.h"
#include "flashstream/common/dtype.h"
#include "flashstream/lowrank/attention_params.h"

namespace flashstream {

inline DType lowrank_dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf: return DType::f16;
    case at::kBFloat16: return DType::bf16;
    default: return DType::f32;
  }
}

// x [B, S, Din]; A_z [Din, r_z]; B_z [r_z, N]; bias_z [N] or None; N = num_heads * head_dim, the
// same N for q, k and v; key_padding_mask bool [B, S] or None. One dtype, one device, contiguous.
inline lowrank::AttnArgs lowrank_attention_args(const char* op, const at::Tensor& x, const at::Tensor& Aq,
                                                const at::Tensor& Bq, const std::optional<at::Tensor>& bq,
                                                const at::Tensor& Ak, const at::Tensor& Bk,
                                                const std::optional<at::Tensor>& bk, const at::Tensor& Av,
                                                const at::Tensor& Bv, const std::optional<at::Tensor>& bv,
                                                int64_t num_heads, bool causal,
                                                const std::optional<at::Tensor>& key_padding_mask) {
  const at::Tensor* A[3] = {&Aq, &Ak, &Av};
  const at::Tensor* Bf[3] = {&Bq, &Bk, &Bv};
  const std::optional<at::Tensor>* bias[3] = {&bq, &bk, &bv};
  static const char* const kA[3] = {"Aq", "Ak", "Av"};
  static const char* const kB[3] = {"Bq", "Bk", "Bv"};
  static const char* const kBias[3] = {"bq", "bk", "bv"};
  check_float_dtype(op, "x", x);
  FS_CHECK_VALUE(x.dim() == 3, op, "x must be [B, S, D_in], got ", shape_str(x.sizes()));
  check_contiguous(op, "x", x);
  FS_CHECK_VALUE(num_heads >= 1, op, "num_heads must be >= 1, got ", num_heads);
  const int64_t B = x.size(0), S = x.size(1), Din = x.size(2);
  FS_CHECK_VALUE(Din >= 1, op, "x must have D_in >= 1, got ", shape_str(x.sizes()));
  int64_t N = -1;
  lowrank::AttnArgs a;
  for (int z = 0; z < 3; ++z) {
    const at::Tensor& Az = *A[z];
    const at::Tensor& Bz = *Bf[z];
    check_dtype(op, kA[z], Az, x.scalar_type());
    check_dtype(op, kB[z], Bz, x.scalar_type());
    FS_CHECK_VALUE(Az.dim() == 2 && Az.size(0) == Din && Az.size(1) >= 1, op, kA[z], " must be [D_in, rank] = [", Din,
                   ", r] with r >= 1, got ", shape_str(Az.sizes()));
    const int64_t r = Az.size(1);
    FS_CHECK_VALUE(Bz.dim() == 2 && Bz.size(0) == r, op, kB[z], " must be [rank, N] with the rank of ", kA[z], " = ",
                   r, ", got ", shape_str(Bz.sizes()));
    if (z == 0) {
      N = Bz.size(1);
      FS_CHECK_VALUE(N >= 1 && N % num_heads == 0, op, "Bq.shape[1] (N = ", N,
                     ") must be num_heads * head_dim, a multiple of num_heads = ", num_heads);
      FS_CHECK_VALUE(N / num_heads <= lowrank::kMaxHeadDim, op, "head_dim = N / num_heads must be <= ",
                     lowrank::kMaxHeadDim, ", got ", N / num_heads);
    } else {
      FS_CHECK_VALUE(Bz.size(1) == N, op, kB[z], " must be [rank, N] with N = Bq.shape[1] = ", N, ", got ",
                     shape_str(Bz.sizes()));
    }
    check_same_device(op, kA[z], Az, x, "x");
    check_same_device(op, kB[z], Bz, x, "x");
    check_contiguous(op, kA[z], Az);
    check_contiguous(op, kB[z], Bz);
    a.A[z] = Az.const_data_ptr();
    a.Bf[z] = Bz.const_data_ptr();
    a.r[z] = r;
  }
  for (int z = 0; z < 3; ++z) {
    const std::optional<at::Tensor>& bz = *bias[z];
    if (!bz.has_value()) continue;
    check_dtype(op, kBias[z], *bz, x.scalar_type());
    check_shape(op, kBias[z], *bz, {N}, "[N]");
    check_same_device(op, kBias[z], *bz, x, "x");
    check_contiguous(op, kBias[z], *bz);
    a.bias[z] = bz->const_data_ptr();
  }
  if (key_padding_mask.has_value()) {
    check_dtype(op, "key_padding_mask", *key_padding_mask, at::kBool);
    check_shape(op, "key_padding_mask", *key_padding_mask, {B, S}, "[B, S] (True = padding)");
    check_same_device(op, "key_padding_mask", *key_padding_mask, x, "x");
    check_contiguous(op, "key_padding_mask", *key_padding_mask);
    a.key_padding_mask = key_padding_mask->const_data_ptr<bool>();
  }
  a.x = x.const_data_ptr();
  a.B = B;
  a.S = S;
  a.Din = Din;
  a.H = num_heads;
  a.N = N;
  a.Dh = N / num_heads;
  a.causal = causal;
  a.scale = float(1.0 / std::sqrt(double(a.Dh)));
  return a;
}

}  // namespace flashstream
