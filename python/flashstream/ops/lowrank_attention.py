"""Low-rank (FlashSVD) attention (K3): multi-head attention whose projections are truncated-SVD
factors, ``W_z ~= A_z B_z`` (Shao et al. 2025, "FlashSVD", arXiv 2508.01506).

For ``z`` in q, k, v: ``z = x A_z B_z + b_z`` with ``A_z [D_in, r_z]``, ``B_z [r_z, N]``,
``N = num_heads * head_dim``; head ``h`` owns columns ``[h * head_dim, (h + 1) * head_dim)``. The
result is the per-head context (before the output projection)::

    out[b, t, h] = sum_j softmax_j(q[b, t, h] . k[b, j, h] / sqrt(head_dim)) v[b, j, h]

over the keys ``j`` the query may see: not padding (``key_padding_mask[b, j]`` False) and, with
``causal=True``, ``j <= t``. **Mask convention: ``key_padding_mask`` is bool ``[B, S]`` and True
marks padding** (the inverse of Hugging Face's ``attention_mask``, where 1 = real token:
pass ``attention_mask == 0``). A query that sees no key at all (every key padding) gets zeros.

How it runs: x is projected once into the three rank spaces, ``P = x [Aq | Ak | Av]`` (fp32,
``[B, S, r_q + r_k + r_v]``: the only activation written to memory, far smaller than q, k, v when
the ranks are below ``N``); a flash-attention kernel then rebuilds each query tile and, key block by
key block, each key / value tile as ``P_tile B_z[:, head columns] + b_z`` on chip, with an online
softmax. Full q, k, v and the ``[S, S]`` scores are never materialised. All math is fp32 for every
input dtype; the output is rounded once to x's dtype.

Inference only: no autograd formula. The wrapper raises if a gradient is asked of it.
"""

from __future__ import annotations

import torch

__all__ = ["lowrank_attention"]

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_HEAD_DIM = 256


def lowrank_attention(x: torch.Tensor, Aq: torch.Tensor, Bq: torch.Tensor, bq: torch.Tensor | None,
                      Ak: torch.Tensor, Bk: torch.Tensor, bk: torch.Tensor | None,
                      Av: torch.Tensor, Bv: torch.Tensor, bv: torch.Tensor | None, *, num_heads: int,
                      causal: bool = False, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention with q / k / v rebuilt on chip from rank factors; returns ``[B, S, N]``.

    Args:
        x: ``[B, S, D_in]`` float32, float16 or bfloat16, contiguous.
        Aq, Ak, Av: ``[D_in, r]`` (each its own rank r >= 1); Bq, Bk, Bv: ``[r, N]`` with the rank of
            the matching A and one ``N = num_heads * head_dim`` for all three, ``head_dim <= 256``.
        bq, bk, bv: ``[N]`` biases, or None.
        num_heads: heads; must divide ``N``.
        causal: query ``t`` sees keys ``j <= t`` only.
        key_padding_mask: optional bool ``[B, S]``, **True = padding** (masked key).

    Every tensor has x's dtype (the mask: bool) and device and is contiguous; errors name the
    argument. The scale is ``head_dim ** -0.5``.
    """
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (x, Aq, Bq, bq, Ak, Bk, bk, Av, Bv, bv)):
        raise RuntimeError("flashstream.lowrank_attention is inference-only (no backward): call it under "
                           "torch.no_grad() or torch.inference_mode(), or pass tensors that do not require grad")
    if isinstance(num_heads, bool) or not isinstance(num_heads, int):
        raise TypeError(f"flashstream.lowrank_attention: num_heads must be an int, got {type(num_heads).__name__}")
    return torch.ops.flashstream.lowrank_attention.default(x, Aq, Bq, bq, Ak, Bk, bk, Av, Bv, bv, num_heads,
                                                           bool(causal), key_padding_mask)


# ---- fake kernel: shape and dtype for torch.compile / meta tensors, with the checks knowable
# ---- without data (the same ones the C++ bindings make).

@torch.library.register_fake("flashstream::lowrank_attention")
def _lowrank_attention_fake(x, Aq, Bq, bq, Ak, Bk, bk, Av, Bv, bv, num_heads, causal=False, key_padding_mask=None):
    op = "flashstream.lowrank_attention"
    torch._check(x.dtype in _FLOAT_DTYPES, lambda: f"{op}: x must be float32, float16 or bfloat16, got {x.dtype}")
    torch._check(x.dim() == 3, lambda: f"{op}: x must be [B, S, D_in], got {list(x.shape)}")
    torch._check(num_heads >= 1, lambda: f"{op}: num_heads must be >= 1, got {num_heads}")
    B, S, Din = x.shape
    N = Bq.shape[1] if Bq.dim() == 2 else -1
    for name_a, A, name_b, Bf, name_bias, bias in (("Aq", Aq, "Bq", Bq, "bq", bq), ("Ak", Ak, "Bk", Bk, "bk", bk),
                                                   ("Av", Av, "Bv", Bv, "bv", bv)):
        for name, t in ((name_a, A), (name_b, Bf), (name_bias, bias)):
            if t is not None:
                torch._check(t.dtype == x.dtype, lambda: f"{op}: {name} must be {x.dtype}, got {t.dtype}")
                torch._check(t.device == x.device,
                             lambda: f"{op}: {name} must be on the same device as x ({x.device}), got {t.device}")
        torch._check(A.dim() == 2 and A.shape[0] == Din and A.shape[1] >= 1,
                     lambda: f"{op}: {name_a} must be [D_in, rank] = [{Din}, r] with r >= 1, got {list(A.shape)}")
        torch._check(Bf.dim() == 2 and Bf.shape[0] == A.shape[1],
                     lambda: f"{op}: {name_b} must be [rank, N] with the rank of {name_a} = {A.shape[1]}, got {list(Bf.shape)}")
        torch._check(Bf.shape[1] == N, lambda: f"{op}: {name_b} must be [rank, N] with N = Bq.shape[1] = {N}")
        if bias is not None:
            torch._check(bias.shape == (N,), lambda: f"{op}: {name_bias} must be [N] = [{N}], got {list(bias.shape)}")
    torch._check(N >= 1 and N % num_heads == 0,
                 lambda: f"{op}: Bq.shape[1] (N = {N}) must be num_heads * head_dim, a multiple of num_heads = {num_heads}")
    torch._check(N // num_heads <= _MAX_HEAD_DIM, lambda: f"{op}: head_dim = N / num_heads must be <= {_MAX_HEAD_DIM}")
    if key_padding_mask is not None:
        torch._check(key_padding_mask.dtype == torch.bool,
                     lambda: f"{op}: key_padding_mask must be bool, got {key_padding_mask.dtype}")
        torch._check(key_padding_mask.device == x.device,
                     lambda: f"{op}: key_padding_mask must be on the same device as x ({x.device})")
        torch._check(key_padding_mask.shape == (B, S),
                     lambda: f"{op}: key_padding_mask must be [B, S] = [{B}, {S}], got {list(key_padding_mask.shape)}")
    return x.new_empty((B, S, N))
