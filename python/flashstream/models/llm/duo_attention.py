"""DuoAttention (Xiao et al., "DuoAttention: Efficient Long-Context LLM Inference with Retrieval and
Streaming Heads"): a few KV heads ("retrieval heads") keep every token, the others ("streaming
heads") keep only sinks + a recent window; which is which is learned once, offline.

Inference is a :class:`SinkCache` with ``full_heads`` (one launch per layer serves both kinds).
Identification follows the paper: with the model frozen, every (layer, kv head) gets a gate
``a`` in [0, 1] mixing its full attention with its streaming attention,
``out = a * full + (1 - a) * streaming``; the gates minimise the L2 distance of the final hidden
states to the full model's on passkey-retrieval text, plus ``l1 * mean(a)``, and heads whose gate
stays above a threshold are retrieval heads. This training path is plain differentiable PyTorch
(the cache ops have no backward); it is small-scale, not the paper's multi-GPU run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .llama import LlamaDecoder

__all__ = ["DuoAttention", "gated_hidden", "identify_retrieval_heads"]


class DuoAttention:
    """A decoder streaming with per-head retention. ``full_heads``: bool ``[num_layers, num_kv_heads]``
    (True = retrieval head, keeps all tokens, up to ``max_tokens``)."""

    def __init__(self, model: LlamaDecoder, full_heads: torch.Tensor, *, sink: int = 64, window: int = 256,
                 max_tokens: int = 8192, positions: str = "absolute", batch_size: int = 1, page_size: int = 16,
                 dtype: torch.dtype | None = None, device=None):
        self.model, self.full_heads = model, torch.as_tensor(full_heads, dtype=torch.bool)
        self.cache = model.new_cache(batch_size, sink=sink, window=window, positions=positions, max_tokens=max_tokens,
                                     page_size=page_size, full_heads=self.full_heads, dtype=dtype, device=device)

    @torch.no_grad()
    def step(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids, self.cache)

    def stream(self, ids: torch.Tensor, chunk: int = 64):
        return self.model.stream(ids, self.cache, chunk)

    def reset(self, streams=None) -> None:
        self.cache.reset(streams)

    def memory_bytes(self) -> int:
        return self.cache.memory_bytes()


def _rotate_half(x: torch.Tensor, theta: float) -> torch.Tensor:
    # x [B, H, S, D] at absolute positions 0..S-1 (GPT-NeoX rotate-half, as the cache applies it).
    S, D = x.shape[-2], x.shape[-1]
    inv = theta ** (-torch.arange(0, D, 2, dtype=torch.float32, device=x.device) / D)
    ang = torch.arange(S, dtype=torch.float32, device=x.device)[:, None] * inv
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1).to(x.dtype), torch.cat([ang.sin(), ang.sin()], -1).to(x.dtype)
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def _streaming_mask(S: int, sink: int, window: int, device) -> torch.Tensor:
    i = torch.arange(S, device=device)[:, None]
    j = torch.arange(S, device=device)[None, :]
    return (j <= i) & ((j < sink) | (j > i - window))


def gated_hidden(model: LlamaDecoder, ids: torch.Tensor, gates: torch.Tensor | None, *, sink: int,
                 window: int) -> torch.Tensor:
    """Final hidden states ``[B, S, hidden]`` with every kv head's attention mixed as
    ``gate * full + (1 - gate) * streaming`` (absolute positions); ``gates`` ``[L, Hkv]``, or None
    for the full model. Differentiable in the gates."""
    cfg = model.config
    B, S = ids.shape
    Hq, Hkv, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    group = Hq // Hkv
    stream_mask = _streaming_mask(S, sink, window, ids.device)
    x = model.embed(ids)
    for layer, block in enumerate(model.layers):
        h = block.input_norm(x)
        att = block.attn
        q = _rotate_half(att.q_proj(h).view(B, S, Hq, D).transpose(1, 2), cfg.rope_theta)
        k = _rotate_half(att.k_proj(h).view(B, S, Hkv, D).transpose(1, 2), cfg.rope_theta)
        v = att.v_proj(h).view(B, S, Hkv, D).transpose(1, 2)
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        full = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if gates is not None:
            streaming = F.scaled_dot_product_attention(q, k, v, attn_mask=stream_mask)
            g = gates[layer].repeat_interleave(group)[None, :, None, None].to(full.dtype)
            full = g * full + (1 - g) * streaming
        x = x + att.o_proj(full.transpose(1, 2).reshape(B, S, Hq * D))
        x = x + block.mlp(block.post_attn_norm(x))
    return model.norm(x)


def identify_retrieval_heads(model: LlamaDecoder, batches, *, sink: int, window: int, steps: int = 100,
                             lr: float = 0.02, l1: float = 0.05, positions: slice | None = None) -> torch.Tensor:
    """Gate values ``[L, Hkv]`` in [0, 1] learned on ``batches`` (an iterable of ids ``[B, S]``,
    cycled for ``steps``) with the model frozen; ``positions`` restricts the distillation loss to
    some sequence positions (e.g. the passkey answer). Threshold them for ``full_heads``."""
    cfg = model.config
    for p in model.parameters():
        p.requires_grad_(False)
    gates = torch.ones(cfg.num_layers, cfg.num_kv_heads, requires_grad=True, device=model.embed.weight.device)
    opt = torch.optim.Adam([gates], lr=lr)
    batches = list(batches)
    targets = []
    with torch.no_grad():
        for ids in batches:
            targets.append(gated_hidden(model, ids, None, sink=sink, window=window))
    sel = positions or slice(None)
    for step in range(steps):
        ids, target = batches[step % len(batches)], targets[step % len(batches)]
        hidden = gated_hidden(model, ids, gates, sink=sink, window=window)
        distill = (hidden[:, sel] - target[:, sel]).pow(2).sum(-1).mean()
        loss = distill + l1 * gates.abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            gates.clamp_(0.0, 1.0)
    return gates.detach()
