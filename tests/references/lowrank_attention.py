"""Plain-PyTorch reference of flashstream.ops.lowrank_attention: dense q, k, v from the factors, then
masked softmax attention, in float64. Rows that see no key are zero (the op's convention)."""

import torch


def lowrank_attention_reference(x, Aq, Bq, bq, Ak, Bk, bk, Av, Bv, bv, *, num_heads, causal=False,
                                 key_padding_mask=None):
    x = x.double()
    B, S, _ = x.shape

    def proj(A, Bf, b):
        y = x @ A.double() @ Bf.double()
        if b is not None:
            y = y + b.double()
        return y.view(B, S, num_heads, -1).transpose(1, 2)  # [B, H, S, Dh]

    q, k, v = proj(Aq, Bq, bq), proj(Ak, Bk, bk), proj(Av, Bv, bv)
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # [B, H, S, S]
    allowed = torch.ones(B, 1, S, S, dtype=torch.bool)
    if causal:
        allowed = allowed & torch.ones(S, S, dtype=torch.bool).tril()
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask.cpu().view(B, 1, 1, S)
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # all-masked rows: 0
    return (probs @ v).transpose(1, 2).reshape(B, S, -1)
