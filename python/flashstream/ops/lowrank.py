"""Fused low-rank matmul chains (K3), after FlashSVD (Shao et al. 2025, arXiv 2508.01506) and
LoRA-style adapters: products through a rank-``r`` bottleneck whose intermediates never reach
memory.

``lowrank_linear(x, A, B, bias, activation)``::

    y = act(x @ A @ B + bias)        x [..., K], A [K, r], B [r, N], r <= 512

The ``[M, r]`` intermediate stays on chip (CUDA: shared memory per block of rows) or in
L2-sized tiles (CPU). Differentiable in x, A, B and bias through its own backward op, which
recomputes the pre-activation instead of saving it.

``lowrank_ffn(x, A1, B1, b1, A2, B2, b2, activation="gelu")``::

    y = act(x @ A1 @ B1 + b1) @ A2 @ B2 + b2

streams ``d_ff`` in tiles and accumulates each tile's contribution in the rank space of the
down projection, so the ``[M, d_ff]`` hidden is never stored.

``lowrank_gated_ffn(x, A_gate, B_gate, A_up, B_up, A_down, B_down, activation="silu")``::

    y = (act(x @ A_gate @ B_gate) * (x @ A_up @ B_up)) @ A_down @ B_down

the Llama-style gated FFN (SwiGLU with "silu", GeGLU with "gelu"), bias-free as in Llama.

All three take float32, float16 or bfloat16 (every tensor the same dtype and device; factors
with any strides) and accumulate in fp32; intermediates stay fp32 (the unfused chain in
bf16/fp16 rounds them to bf16/fp16, so results agree to that dtype's precision), except
bfloat16 on CPUs with AVX512-BF16: there every product is a bf16 dot product (fp32 accumulation)
and each intermediate is rounded to bf16 first, as the unfused chain does; likewise
``lowrank_linear``'s bf16/fp16 forward on CUDA GPUs of compute capability 8.0+ when K, r and N
are multiples of 8, r <= 256 and x, A, B are row-major with row strides multiples of 8 and
16-byte aligned (tensor cores; ``x @ A`` rounded to the dtype; the other cases: fp32 kernels),
and under the same conditions its backward's ``grad_x = (G B^T) A^T`` (``G B^T`` rounded). "gelu" is the
exact erf GELU (``torch.nn.functional.gelu``; on CPU, bf16/fp16 ops evaluate its normal CDF to an
absolute 2e-6, far below their output rounding, fp32 to ~1e-7), "silu" is ``x * sigmoid(x)``. The two FFN ops are
inference only: they raise if a gradient is asked for.
"""

from __future__ import annotations

import torch

__all__ = ["lowrank_linear", "lowrank_ffn", "lowrank_gated_ffn", "MAX_RANK"]

MAX_RANK = 512
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_ACTIVATIONS = (None, "gelu", "silu")


def lowrank_linear(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, bias: torch.Tensor | None = None,
                   activation: str | None = None) -> torch.Tensor:
    """``act(x @ A @ B + bias)`` with the ``[..., r]`` intermediate kept on chip.

    Args:
        x: ``[..., K]``, float32 / float16 / bfloat16, any leading dims (including none or empty).
        A: ``[K, r]``, ``1 <= r <= 512``; B: ``[r, N]``; bias: ``[N]`` or None. x's dtype and device.
        activation: None, "gelu" (exact erf) or "silu".

    Returns:
        ``[..., N]`` of x's dtype. Differentiable in x, A, B, bias.
    """
    return torch.ops.flashstream.lowrank_linear.default(x, A, B, bias, activation)


def lowrank_ffn(x: torch.Tensor, A1: torch.Tensor, B1: torch.Tensor, b1: torch.Tensor | None, A2: torch.Tensor,
                B2: torch.Tensor, b2: torch.Tensor | None, *, activation: str = "gelu") -> torch.Tensor:
    """``act(x @ A1 @ B1 + b1) @ A2 @ B2 + b2`` without materialising the ``[..., d_ff]`` hidden.

    Shapes: x ``[..., K]``, A1 ``[K, r1]``, B1 ``[r1, d_ff]``, b1 ``[d_ff]`` or None, A2
    ``[d_ff, r2]``, B2 ``[r2, N]``, b2 ``[N]`` or None; ranks in [1, 512]; activation "gelu" or
    "silu". Inference only.
    """
    _check_no_grad("lowrank_ffn", x, A1, B1, b1, A2, B2, b2)
    return torch.ops.flashstream.lowrank_ffn.default(x, A1, B1, b1, A2, B2, b2, activation)


def lowrank_gated_ffn(x: torch.Tensor, A_gate: torch.Tensor, B_gate: torch.Tensor, A_up: torch.Tensor,
                      B_up: torch.Tensor, A_down: torch.Tensor, B_down: torch.Tensor, *,
                      activation: str = "silu") -> torch.Tensor:
    """``(act(x A_gate B_gate) * (x A_up B_up)) A_down B_down`` (SwiGLU / GeGLU), hidden never stored.

    Shapes: x ``[..., K]``, A_gate ``[K, r_gate]``, B_gate ``[r_gate, d_ff]``, A_up ``[K, r_up]``,
    B_up ``[r_up, d_ff]``, A_down ``[d_ff, r_down]``, B_down ``[r_down, N]``; ranks in [1, 512];
    no biases (Llama-style FFNs have none). Inference only.
    """
    _check_no_grad("lowrank_gated_ffn", x, A_gate, B_gate, A_up, B_up, A_down, B_down)
    return torch.ops.flashstream.lowrank_gated_ffn.default(x, A_gate, B_gate, A_up, B_up, A_down, B_down,
                                                           activation)


def _check_no_grad(op: str, *tensors: torch.Tensor | None) -> None:
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError(f"flashstream.{op}: inference only, it has no backward; call it under torch.no_grad() "
                           "or torch.inference_mode(), or pass tensors that do not require grad")


# ---- fake kernels: shapes and dtypes for torch.compile / meta tensors, with the checks knowable
# ---- without data (the same messages as csrc/lowrank_args.h).

def _check_factor(op, arg, f, x, rows, rows_expr, cols, cols_expr):
    torch._check(f.dtype == x.dtype, lambda: f"flashstream.{op}: {arg} must have x's dtype ({x.dtype}), got {f.dtype}")
    torch._check(f.dim() == 2, lambda: f"flashstream.{op}: {arg} must be 2-D [{rows_expr}, {cols_expr}], got {list(f.shape)}")
    if rows is not None:
        torch._check(f.shape[0] == rows, lambda: f"flashstream.{op}: {arg} must be [{rows_expr}, {cols_expr}] with {rows_expr} = {rows}, got {list(f.shape)}")
    if cols is not None:
        torch._check(f.shape[1] == cols, lambda: f"flashstream.{op}: {arg} must be [{rows_expr}, {cols_expr}] with {cols_expr} = {cols}, got {list(f.shape)}")


def _check_rank(op, arg, r):
    torch._check(1 <= r <= MAX_RANK, lambda: f"flashstream.{op}: the rank ({arg}) must be in [1, {MAX_RANK}], got {r}")


def _check_bias(op, arg, b, x, n, n_expr):
    if b is None:
        return
    torch._check(b.dtype == x.dtype, lambda: f"flashstream.{op}: {arg} must have x's dtype ({x.dtype}), got {b.dtype}")
    torch._check(b.dim() == 1 and b.shape[0] == n, lambda: f"flashstream.{op}: {arg} must be [{n_expr}] = [{n}], got {list(b.shape)}")


def _check_x(op, x):
    torch._check(x.dtype in _FLOAT_DTYPES, lambda: f"flashstream.{op}: x must be float32, float16 or bfloat16, got {x.dtype}")
    torch._check(x.dim() >= 1, lambda: f"flashstream.{op}: x must be [..., K], got a 0-dim tensor")


def _check_activation(op, activation, allow_none=True):
    allowed = _ACTIVATIONS if allow_none else ("gelu", "silu")
    torch._check(activation in allowed, lambda: f"flashstream.{op}: activation must be {'None, ' if allow_none else ''}'gelu' or 'silu', got {activation!r}")


def _check_linear(op, x, A, B, bias, activation):
    _check_x(op, x)
    _check_factor(op, "A", A, x, x.shape[-1], "K", None, "r")
    _check_rank(op, "A.shape[1]", A.shape[1])
    _check_factor(op, "B", B, x, A.shape[1], "r", None, "N")
    _check_bias(op, "bias", bias, x, B.shape[1], "N")
    _check_activation(op, activation)


@torch.library.register_fake("flashstream::lowrank_linear")
def _lowrank_linear_fake(x, A, B, bias=None, activation=None):
    _check_linear("lowrank_linear", x, A, B, bias, activation)
    return x.new_empty((*x.shape[:-1], B.shape[1]))


@torch.library.register_fake("flashstream::lowrank_linear_backward")
def _lowrank_linear_backward_fake(grad_y, x, A, B, bias, activation):
    _check_linear("lowrank_linear_backward", x, A, B, bias, activation)
    return x.new_empty(x.shape), A.new_empty(A.shape), B.new_empty(B.shape), x.new_empty((B.shape[1],))


@torch.library.register_fake("flashstream::lowrank_ffn")
def _lowrank_ffn_fake(x, A1, B1, b1, A2, B2, b2, activation="gelu"):
    op = "lowrank_ffn"
    _check_x(op, x)
    _check_factor(op, "A1", A1, x, x.shape[-1], "K", None, "r1")
    _check_rank(op, "A1.shape[1]", A1.shape[1])
    _check_factor(op, "B1", B1, x, A1.shape[1], "r1", None, "d_ff")
    _check_bias(op, "b1", b1, x, B1.shape[1], "d_ff")
    _check_factor(op, "A2", A2, x, B1.shape[1], "d_ff", None, "r2")
    _check_rank(op, "A2.shape[1]", A2.shape[1])
    _check_factor(op, "B2", B2, x, A2.shape[1], "r2", None, "N")
    _check_bias(op, "b2", b2, x, B2.shape[1], "N")
    _check_activation(op, activation, allow_none=False)
    return x.new_empty((*x.shape[:-1], B2.shape[1]))


@torch.library.register_fake("flashstream::lowrank_gated_ffn")
def _lowrank_gated_ffn_fake(x, A_gate, B_gate, A_up, B_up, A_down, B_down, activation="silu"):
    op = "lowrank_gated_ffn"
    _check_x(op, x)
    _check_factor(op, "A_gate", A_gate, x, x.shape[-1], "K", None, "r_gate")
    _check_rank(op, "A_gate.shape[1]", A_gate.shape[1])
    _check_factor(op, "B_gate", B_gate, x, A_gate.shape[1], "r_gate", None, "d_ff")
    _check_factor(op, "A_up", A_up, x, x.shape[-1], "K", None, "r_up")
    _check_rank(op, "A_up.shape[1]", A_up.shape[1])
    _check_factor(op, "B_up", B_up, x, A_up.shape[1], "r_up", B_gate.shape[1], "d_ff")
    _check_factor(op, "A_down", A_down, x, B_gate.shape[1], "d_ff", None, "r_down")
    _check_rank(op, "A_down.shape[1]", A_down.shape[1])
    _check_factor(op, "B_down", B_down, x, A_down.shape[1], "r_down", None, "N")
    _check_activation(op, activation, allow_none=False)
    return x.new_empty((*x.shape[:-1], B_down.shape[1]))


# ---- autograd: lowrank_linear through its own backward op; the FFN ops refuse -------------------

def _linear_setup_context(ctx, inputs, output):
    x, A, B, bias, activation = inputs
    ctx.activation = activation
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, A, B, bias)


def _linear_backward(ctx, grad_y):
    x, A, B, bias = ctx.saved_tensors
    grad_x, grad_A, grad_B, grad_bias = torch.ops.flashstream.lowrank_linear_backward.default(
        grad_y, x, A, B, bias, ctx.activation)
    return grad_x, grad_A, grad_B, (grad_bias if ctx.has_bias else None), None


torch.library.register_autograd("flashstream::lowrank_linear", _linear_backward, setup_context=_linear_setup_context)


def _no_backward(op):
    def backward(ctx, *grads):
        raise RuntimeError(f"flashstream.{op}: inference only, it has no backward")
    return backward


def _no_setup(ctx, inputs, output):
    pass


torch.library.register_autograd("flashstream::lowrank_ffn", _no_backward("lowrank_ffn"), setup_context=_no_setup)
torch.library.register_autograd("flashstream::lowrank_gated_ffn", _no_backward("lowrank_gated_ffn"),
                                setup_context=_no_setup)
