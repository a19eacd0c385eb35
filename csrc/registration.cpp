// Every flashstream op schema, in one place. Implementations register per dispatch key in
// csrc/cpu/*.cpp and csrc/cuda/*.cu; fake (meta) kernels and autograd live in python/flashstream/ops.
#include <torch/library.h>

TORCH_LIBRARY(flashstream, m) {
  // ---- K4: FSQ (python/flashstream/ops/fsq.py) ----
  m.def("fsq(Tensor z, int[] levels, float eps=0.001, bool validate=True) -> (Tensor codes, Tensor indices)");
  // Into caller-owned outputs (no allocation in a streaming loop); returns nothing, as mutating
  // custom ops must for torch.compile.
  m.def("fsq_out(Tensor z, int[] levels, float eps, bool validate, Tensor(a!) codes, Tensor(b!) indices) -> ()");
  m.def("fsq_backward(Tensor grad_codes, Tensor z, int[] levels, float eps=0.001) -> Tensor");
  m.def("fsq_indices_to_codes(Tensor indices, int[] levels, ScalarType dtype, bool validate=True) -> Tensor");
}
