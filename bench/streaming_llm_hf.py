"""The StreamingLLM peer for bench_llm.py: transformers' LlamaForCausalLM with its attention
replaced, as mit-han-lab/streaming-llm does (``StartRecentKVCache`` + ``pos_shift`` attention):
pre-rotary keys are kept per layer, each step ``torch.cat``s the new k, v on, re-rotates every
cached key at ``arange(kv_len)`` and the queries at the last positions, and runs eager attention
(repeat_kv, matmul, causal mask, fp32 softmax, matmul). Eviction happens before a step of T tokens
(``evict_for_space``): ``torch.cat`` of the first ``sink`` and the last ``window - T`` cached
tokens, so at T = 1 a query sees exactly what flashstream's cache shows it; in a chunk of T > 1
the peer's first queries see fewer recent tokens (flashstream keeps per-token semantics). Written for this benchmark from that description.
"""

from __future__ import annotations

import types

import torch


def _rotate(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


class StreamingLLMState:
    def __init__(self, num_layers: int, sink: int, window: int):
        self.k = [None] * num_layers
        self.v = [None] * num_layers
        self.sink, self.window = sink, window

    def reset(self):
        self.k = [None] * len(self.k)
        self.v = [None] * len(self.v)


def _pos_shift_forward(self, hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
    state, rotary = self._streaming_state, self._rotary
    B, T, _ = hidden_states.shape
    q = self.q_proj(hidden_states).view(B, T, -1, self.head_dim).transpose(1, 2)
    k = self.k_proj(hidden_states).view(B, T, -1, self.head_dim).transpose(1, 2)
    v = self.v_proj(hidden_states).view(B, T, -1, self.head_dim).transpose(1, 2)
    i = self.layer_idx
    if state.k[i] is not None:
        old_k, old_v = state.k[i], state.v[i]
        keep = state.window - T  # StartRecentKVCache.evict_for_space: make room for the T new tokens
        if old_k.shape[2] + T > state.sink + state.window:
            old_k = torch.cat([old_k[:, :, :state.sink], old_k[:, :, old_k.shape[2] - keep:]], dim=2)
            old_v = torch.cat([old_v[:, :, :state.sink], old_v[:, :, old_v.shape[2] - keep:]], dim=2)
        k = torch.cat([old_k, k], dim=2)
        v = torch.cat([old_v, v], dim=2)
    n = k.shape[2]
    pos = torch.arange(n, device=k.device)[None]
    cos, sin = rotary(v, pos)  # [1, n, D]
    cos, sin = cos[:, None], sin[:, None]
    qr = _rotate(q, cos[:, :, n - T:], sin[:, :, n - T:])
    kr = _rotate(k, cos, sin)
    group = q.shape[1] // k.shape[1]
    kr, vv = kr.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scores = torch.matmul(qr, kr.transpose(2, 3)) * self.scaling
    causal = torch.ones(T, n, dtype=torch.bool, device=q.device).tril(n - T)
    scores = scores.masked_fill(~causal, float("-inf"))
    probs = torch.softmax(scores.float(), -1).to(q.dtype)
    out = torch.matmul(probs, vv).transpose(1, 2).reshape(B, T, -1)
    state.k[i], state.v[i] = k, v
    return self.o_proj(out), None


def enable_streaming_llm(model, sink: int, window: int) -> StreamingLLMState:
    """Patches every attention layer of a transformers Llama model; call the model with
    ``use_cache=False`` (the state lives in the returned object)."""
    state = StreamingLLMState(model.config.num_hidden_layers, sink, window)
    for layer in model.model.layers:
        attn = layer.self_attn
        attn._streaming_state, attn._rotary = state, model.model.rotary_emb
        attn.forward = types.MethodType(_pos_shift_forward, attn)
    return state
