// sink_cache_compact's argument checks shared by the CPU and CUDA bindings (every check that needs
// no tensor data), and its kernel arguments.
#pragma once
#include <ATen/core/Tensor.h>

#include "check.h"
#include "flashstream/sink/compact.h"

namespace flashstream {

// k_pool, v_pool [P, page_size, D] (one float dtype); page_table int32 [B, Hkv, pages_per_head];
// lengths int64 [B]; keep int32 / int64 [B, Hkv, n] with n <= pages_per_head * page_size.
inline sink::CompactArgs sink_compact_args(const char* op, at::Tensor& k_pool, at::Tensor& v_pool,
                                           const at::Tensor& page_table, at::Tensor& lengths, const at::Tensor& keep) {
  check_float_dtype(op, "k_pool", k_pool);
  check_dtype(op, "v_pool", v_pool, k_pool.scalar_type());
  FS_CHECK_VALUE(k_pool.dim() == 3 && k_pool.size(1) >= 1 && k_pool.size(2) >= 1 && k_pool.size(2) <= 4096, op,
                 "k_pool must be [pages, page_size, D] with page_size >= 1 and 1 <= D <= 4096, got ",
                 shape_str(k_pool.sizes()));
  check_shape(op, "v_pool", v_pool, k_pool.sizes(), "k_pool.shape");
  check_dtype(op, "page_table", page_table, at::kInt);
  FS_CHECK_VALUE(page_table.dim() == 3, op, "page_table must be [B, Hkv, pages_per_head], got ",
                 shape_str(page_table.sizes()));
  const int64_t B = page_table.size(0), Hkv = page_table.size(1), pph = page_table.size(2);
  check_dtype(op, "lengths", lengths, at::kLong);
  check_shape(op, "lengths", lengths, {B}, "[page_table.shape[0]]");
  FS_CHECK_TYPE(keep.scalar_type() == at::kLong || keep.scalar_type() == at::kInt, op,
                "keep must be int64 or int32, got ", keep.scalar_type());
  FS_CHECK_VALUE(keep.dim() == 3 && keep.size(0) == B && keep.size(1) == Hkv, op,
                 "keep must be [B, Hkv, n] = [", B, ", ", Hkv, ", n], got ", shape_str(keep.sizes()));
  const int64_t n = keep.size(2), capacity = pph * k_pool.size(1);
  FS_CHECK_VALUE(n <= capacity, op, "keep holds ", n, " slots per head but the page table holds ", capacity,
                 " (pages_per_head * page_size)");
  for (const at::Tensor* t : {static_cast<const at::Tensor*>(&v_pool), &page_table, static_cast<const at::Tensor*>(&lengths), &keep})
    check_same_device(op, "cache tensors and keep", *t, k_pool, "k_pool");
  check_contiguous(op, "k_pool", k_pool);
  check_contiguous(op, "v_pool", v_pool);
  check_contiguous(op, "page_table", page_table);
  check_contiguous(op, "lengths", lengths);
  check_contiguous(op, "keep", keep);
  FS_CHECK_VALUE(!k_pool.is_same(v_pool) && (k_pool.numel() == 0 || k_pool.data_ptr() != v_pool.data_ptr()), op,
                 "k_pool and v_pool must be different tensors");
  sink::CompactArgs a;
  a.B = B; a.Hkv = Hkv; a.n = n; a.D = k_pool.size(2);
  a.elem_bytes = k_pool.element_size();
  a.page_size = k_pool.size(1);
  a.pages_per_head = pph;
  a.pool_pages = k_pool.size(0);
  a.k_pool = k_pool.mutable_data_ptr();
  a.v_pool = v_pool.mutable_data_ptr();
  a.page_table = page_table.const_data_ptr<int32_t>();
  a.lengths = lengths.mutable_data_ptr<int64_t>();
  a.keep = keep.const_data_ptr();
  a.keep_is_int64 = keep.scalar_type() == at::kLong;
  return a;
}

}  // namespace flashstream
