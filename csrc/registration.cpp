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

  // ---- K2: depthwise causal conv1d with carried state (python/flashstream/ops/causal_conv1d.py) ----
  // state [B, C, (W-1)*dilation] (or a pool [P, ...] addressed by state_indices) is updated in place.
  m.def("causal_conv1d(Tensor x, Tensor weight, Tensor? bias=None, Tensor(a!)? state=None, int dilation=1, "
        "str? activation=None, Tensor? state_indices=None) -> Tensor");
  // Into a caller-owned output: a streaming step with no allocation at all.
  m.def("causal_conv1d_out(Tensor x, Tensor weight, Tensor? bias, Tensor(a!)? state, int dilation, str? activation, "
        "Tensor? state_indices, Tensor(b!) out) -> ()");

  // ---- K5: mixture-of-depths (python/flashstream/ops/mod.py) ----
  m.def("mod_route(Tensor scores, float capacity, Tensor? groups=None, Tensor? routable=None, int? max_kept=None, "
        "bool validate=True) -> (Tensor indices, Tensor weights)");
  m.def("mod_gather(Tensor x, Tensor indices, bool validate=True) -> Tensor");
  m.def("mod_gather_rmsnorm(Tensor x, Tensor indices, Tensor norm_weight, float eps=1e-06, bool validate=True) "
        "-> (Tensor x_sel, Tensor normed)");
  m.def("mod_scatter(Tensor x, Tensor delta, Tensor indices, Tensor? weights=None, bool validate=True) -> Tensor");
  m.def("mod_scatter_(Tensor(a!) x, Tensor delta, Tensor indices, Tensor? weights=None, bool validate=True) -> ()");
  m.def("mod_scatter_output(Tensor x, Tensor y, Tensor indices, Tensor? weights=None, bool validate=True) -> Tensor");
  m.def("mod_scatter_output_(Tensor(a!) x, Tensor y, Tensor indices, Tensor? weights=None, bool validate=True) -> ()");

  // ---- K1: paged sink KV cache and streaming attention (python/flashstream/ops/sink.py) ----
  // Attention of q over (an optional paged cache of one layer + the new k, v) under the sink /
  // window / full-head visibility, with in-kernel rotary. No cache: offline attention over k, v.
  // window = -1: keep every token; softcap = 0: none. Returns out [B,T,Hq,D] and lse [B,T,Hq] fp32.
  m.def("sink_attention(Tensor q, Tensor k, Tensor v, Tensor? k_pool, Tensor? v_pool, Tensor? page_table, "
        "Tensor? lengths, Tensor? full_heads, int sink, int window, str positions, float rope_theta, "
        "str rope_style, str mask, int chunk_size, float scale, float softcap, Tensor? sink_logits) "
        "-> (Tensor out, Tensor lse)");
  // Into caller-owned out / lse (no allocation on a decode step's path); returns nothing.
  m.def("sink_attention_out(Tensor q, Tensor k, Tensor v, Tensor? k_pool, Tensor? v_pool, Tensor? page_table, "
        "Tensor? lengths, Tensor? full_heads, int sink, int window, str positions, float rope_theta, "
        "str rope_style, str mask, int chunk_size, float scale, float softcap, Tensor? sink_logits, "
        "Tensor(a!) out, Tensor(b!) lse) -> ()");
  // Appends k, v [B,T,Hkv,D] to the pools through the page table: sink slots, window ring (evicting,
  // with the EMA-sink fold when ema_alpha is given), every token of full heads; lengths += T.
  m.def("sink_cache_append(Tensor k, Tensor v, Tensor(a!) k_pool, Tensor(b!) v_pool, Tensor page_table, "
        "Tensor(c!) lengths, Tensor? full_heads, int sink, int window, float? ema_alpha) -> ()");

  // ---- K3: low-rank (FlashSVD) attention (python/flashstream/ops/lowrank_attention.py) ----
  // Multi-head attention whose q, k, v are x A_z B_z + b_z, rebuilt tile by tile from the rank
  // projections; key_padding_mask True = padding. Returns the per-head context [B, S, N].
  m.def("lowrank_attention(Tensor x, Tensor Aq, Tensor Bq, Tensor? bq, Tensor Ak, Tensor Bk, Tensor? bk, "
        "Tensor Av, Tensor Bv, Tensor? bv, int num_heads, bool causal=False, Tensor? key_padding_mask=None) -> Tensor");

  // ---- K3: fused low-rank matmul chains (python/flashstream/ops/lowrank.py) ----
  // y = act(x A B + bias); x [..., K], A [K, r], B [r, N], r <= 512; activation None, 'gelu', 'silu'.
  m.def("lowrank_linear(Tensor x, Tensor A, Tensor B, Tensor? bias=None, str? activation=None) -> Tensor");
  m.def("lowrank_linear_backward(Tensor grad_y, Tensor x, Tensor A, Tensor B, Tensor? bias, str? activation) "
        "-> (Tensor grad_x, Tensor grad_A, Tensor grad_B, Tensor grad_bias)");
  // y = act(x A1 B1 + b1) A2 B2 + b2, the [M, d_ff] hidden never stored. Inference only.
  m.def("lowrank_ffn(Tensor x, Tensor A1, Tensor B1, Tensor? b1, Tensor A2, Tensor B2, Tensor? b2, "
        "str activation='gelu') -> Tensor");
  // y = (act(x A_gate B_gate) * (x A_up B_up)) A_down B_down (SwiGLU: silu, GeGLU: gelu). Inference only.
  m.def("lowrank_gated_ffn(Tensor x, Tensor A_gate, Tensor B_gate, Tensor A_up, Tensor B_up, Tensor A_down, "
        "Tensor B_down, str activation='silu') -> Tensor");
}
