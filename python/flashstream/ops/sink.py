"""Paged sink KV cache and streaming attention (K1): the op wrappers.

Semantics (the contract; see :mod:`flashstream.cache.sink_cache` for the cache design). A query at
stream index ``i`` sees, with ``mask="causal"``, the sink tokens ``[0, min(sink, i+1))`` and the
window ``[max(sink, i-window+1), i]``; with ``mask="chunk"``, its whole chunk, the sinks and the
``window`` tokens before its chunk. Full heads (``full_heads[h]``) and ``window=None`` see every
earlier token. Queries and keys come **before** rotary; the kernels rotate them at

* ``positions="cache"``: a key's rank among the keys its query sees, the query at its own rank
  (StreamingLLM's pos-shift; angles stay small however long the stream);
* ``positions="absolute"``: the stream index;
* ``positions="none"``: no rotary.

Attention is GQA/MQA softmax with ``scale`` (default ``D**-0.5``), optional ``softcap``
(``cap * tanh(s / cap)``), optional per-q-head ``sink_logits`` added to the denominator (gpt-oss),
and the log-sum-exp of the logits (natural log, fp32, including the sink logit).

Ops (``torch.ops.flashstream.*``):

* ``sink_attention``: attention over an optional paged cache of one layer plus the new k, v. No
  cache: :func:`sink_attention_offline`. With a cache: :func:`sink_cache_attend`.
* ``sink_attention_out``: the same into caller-owned ``out`` / ``lse`` (no allocation).
* ``sink_cache_append``: fused append / evict / EMA-sink into the pools; advances ``lengths``.
"""

from __future__ import annotations

import torch

__all__ = ["sink_attention_offline", "sink_cache_attend", "sink_cache_append"]

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _window(window: int | None) -> int:
    return -1 if window is None else int(window)


def _scale(scale: float | None, D: int) -> float:
    return float(D) ** -0.5 if scale is None else float(scale)


def sink_attention_offline(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, sink: int, window: int | None,
                           positions: str = "cache", rope_theta: float = 10000.0, rope_style: str = "half",
                           mask: str = "causal", chunk_size: int | None = None,
                           full_heads: torch.Tensor | None = None, scale: float | None = None,
                           softcap: float | None = None, sink_logits: torch.Tensor | None = None,
                           return_lse: bool = False):
    """Sink / window attention over a whole sequence: what streaming it through
    :class:`flashstream.cache.SinkCache` computes.

    Args:
        q: ``[B, S, Hq, D]``; k, v: ``[B, S, Hkv, D]``; float32/float16/bfloat16, contiguous, one
            device; ``Hq`` a multiple of ``Hkv``; ``D`` even, <= 256. Pre-rotary.
        sink: sink tokens (>= 0). window: recent tokens (>= 1), or None for all.
        mask: ``"causal"`` or ``"chunk"`` (block-causal over chunks of ``chunk_size`` from token 0).
        full_heads: optional bool ``[Hkv]``: heads that see every earlier token.
        softcap: optional logit soft-cap (> 0). sink_logits: optional fp32 ``[Hq]``.
        return_lse: also return the fp32 ``[B, S, Hq]`` log-sum-exp.
    """
    if mask == "chunk" and chunk_size is None:
        raise ValueError("flashstream.sink_attention_offline: mask='chunk' needs chunk_size")
    out, lse = torch.ops.flashstream.sink_attention.default(
        q, k, v, None, None, None, None, full_heads, int(sink), _window(window), positions, float(rope_theta),
        rope_style, mask, int(chunk_size or 0), _scale(scale, q.shape[-1]), float(softcap or 0.0), sink_logits)
    return (out, lse) if return_lse else out


def sink_cache_attend(q, k, v, k_pool, v_pool, page_table, lengths, *, sink: int, window: int | None,
                      full_heads: torch.Tensor | None = None, positions: str = "cache", rope_theta: float = 10000.0,
                      rope_style: str = "half", mask: str = "causal", scale: float | None = None,
                      softcap: float | None = None, sink_logits: torch.Tensor | None = None,
                      out: tuple[torch.Tensor, torch.Tensor] | None = None):
    """Attention of a step's queries over one layer's cache as it was before the step plus the step's
    own k, v (not yet appended). Returns ``(out [B,T,Hq,D], lse [B,T,Hq] fp32)``.

    Cache of one layer: ``k_pool, v_pool [pages, page_size, D]`` (pages of one kv head's tokens),
    ``page_table`` int32 ``[B, Hkv, pages_per_head]``, ``lengths`` int64 ``[B]`` (tokens before
    the step). With ``mask="chunk"`` the step is one chunk. ``out``: optional caller-owned
    ``(out, lse)`` to write into (contiguous, the shapes and dtypes above, overlapping no input), so
    that a decode step allocates nothing.
    """
    args = (q, k, v, k_pool, v_pool, page_table, lengths, full_heads, int(sink), _window(window), positions,
            float(rope_theta), rope_style, mask, int(q.shape[1]), _scale(scale, q.shape[-1]), float(softcap or 0.0),
            sink_logits)
    if out is not None:
        torch.ops.flashstream.sink_attention_out.default(*args, out[0], out[1])
        return out
    return torch.ops.flashstream.sink_attention.default(*args)


def sink_cache_append(k, v, k_pool, v_pool, page_table, lengths, *, sink: int, window: int | None,
                      full_heads: torch.Tensor | None = None, ema_alpha: float | None = None) -> None:
    """Appends a step's k, v ``[B, T, Hkv, D]`` in place: sink tokens into slots ``[0, sink)``, the
    last ``window`` into the ring (evicting; with ``ema_alpha``, each evicted token p is folded into
    sink slot ``p % sink`` in token order), every token of full heads; then ``lengths += T``.
    On CPU a step that would overflow a page table raises before anything is written."""
    torch.ops.flashstream.sink_cache_append.default(
        k, v, k_pool, v_pool, page_table, lengths, full_heads, int(sink), _window(window),
        None if ema_alpha is None else float(ema_alpha))


# ---- fake kernels: shapes for torch.compile / meta tensors --------------------------------------

@torch.library.register_fake("flashstream::sink_attention")
def _sink_attention_fake(q, k, v, k_pool, v_pool, page_table, lengths, full_heads, sink, window, positions,
                         rope_theta, rope_style, mask, chunk_size, scale, softcap, sink_logits):
    torch._check(q.dtype in _FLOAT_DTYPES, lambda: f"flashstream.sink_attention: q must be float32, float16 or bfloat16, got {q.dtype}")
    torch._check(q.dim() == 4 and k.dim() == 4, lambda: "flashstream.sink_attention: q, k must be 4-D")
    torch._check(k.shape[2] >= 1 and q.shape[2] % k.shape[2] == 0,
                 lambda: f"flashstream.sink_attention: q heads ({q.shape[2]}) must be a multiple of k heads ({k.shape[2]})")
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.register_fake("flashstream::sink_attention_out")
def _sink_attention_out_fake(q, k, v, k_pool, v_pool, page_table, lengths, full_heads, sink, window, positions,
                             rope_theta, rope_style, mask, chunk_size, scale, softcap, sink_logits, out, lse):
    torch._check(out.shape == q.shape, lambda: f"flashstream.sink_attention_out: out must be q.shape = {list(q.shape)}, got {list(out.shape)}")
    torch._check(lse.shape == q.shape[:3], lambda: f"flashstream.sink_attention_out: lse must be q.shape[:3] = {list(q.shape[:3])}, got {list(lse.shape)}")
    return None


@torch.library.register_fake("flashstream::sink_cache_append")
def _sink_cache_append_fake(k, v, k_pool, v_pool, page_table, lengths, full_heads, sink, window, ema_alpha):
    torch._check(k_pool.shape == v_pool.shape, lambda: "flashstream.sink_cache_append: v_pool must be k_pool.shape")
    return None
