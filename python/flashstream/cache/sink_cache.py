"""SinkCache: a paged sink + window KV cache for streaming attention (K1).

Design
------
**Pool and pages.** Each layer owns two pools, ``k_pool`` and ``v_pool`` of shape
``[pages, page_size, D]``. A page holds ``page_size`` consecutive *slots* of ONE kv head of ONE
stream. Keys are stored **before rotary** (the kernels rotate them), which is what makes
"cache" positions and EMA sinks exact: a stored key is never re-written to move it.

**Per-stream, per-head page tables.** ``page_table[layer]`` is int32 ``[B, Hkv, pages_per_head]``:
slot ``s`` of (stream b, kv head h) lives at row ``s % page_size`` of page
``page_table[b, h, s // page_size]``. Every kv head has its own table, so streaming heads and full
heads (DuoAttention's retrieval heads) differ only in how many slots they use and how a token maps
to a slot; one launch per layer serves both, with no gathers or concatenations.

**Sink region and window ring.** A streaming head keeps the first ``sink`` tokens in slots
``[0, sink)`` and the ``window`` most recent as a ring in slots ``[sink, sink + window)``: token
``p >= sink`` sits in slot ``sink + (p - sink) % window``. Both are token-granular and need not be
page-aligned (a page may hold sink and ring slots). A full head, or any head with ``window=None``,
keeps token ``p`` in slot ``p``. Which tokens are present follows from the stream length alone, so
the kernels need no per-slot position array.

**Where the bookkeeping lives.** ``lengths`` (int64 ``[num_layers, B]``, tokens each layer has
seen per stream) is a device tensor read and advanced by the kernels; the ring head is
``lengths`` itself (slot arithmetic above). A step therefore has fixed shapes and no host sync;
with ``step(..., out=buf)`` (``sink_attention_out``) it allocates no output either, and can be
captured in a CUDA graph and replayed. (A split-KV decode, below, takes its partial-state
workspace from torch's caching allocator, which a steady stream of equal steps serves from cache,
and a graph capture from its private pool.) A host mirror of the lengths (shapes are known on the host)
lets :meth:`step` reject a step that would overflow the pool *before* anything is written; it is
not updated by graph replays, so a replayed graph must not run past ``max_tokens`` (the kernels
still never write outside a page table).

**Step.** ``step(layer, q, k, v)`` runs two ops: ``sink_attention`` (or ``sink_attention_out``;
attention of the T queries over the cache as it was before the step plus the step's own k, v,
under the visibility of the issue, rotary applied in-kernel) and then ``sink_cache_append`` (one
fused kernel: raw sink tokens, the EMA-sink folds, the ring writes, ``lengths += T``). Attention
first: a step's queries must see the tokens that this step's append evicts.

**Split-KV.** When a step's (stream, kv head, query tile) work items are too few to fill the
machine (decode of a few streams: CPU threads, GPU SMs), each item's visible keys are cut into
splits run in parallel, whose partial softmax states (max, sum, unnormalised output) one merge
pass combines (``include/flashstream/sink/split.h``). The result equals the unsplit one up to
float rounding; the split count depends on the thread / SM count, never on the data.

**EMA-sink order.** Within ``sink_cache_append`` for each (stream, head): (1) tokens of the step
that are sinks are written raw; (2) every token p >= sink that leaves the window in this step, in
increasing p, updates sink slot ``p % sink`` to ``a * slot + (1 - a) * token`` (pre-rotary keys and
values alike, computed in fp32, stored in the cache dtype); (3) the surviving new tokens are written
into the ring. (2) reads evicted tokens before (3) overwrites their slots. ``ema_alpha=1`` leaves
the slots bit-identical to static sinks.

**Memory.** All pages are assigned when the cache is built: ``ceil((sink + window) / page_size)``
per streaming (stream, head), ``ceil(max_tokens / page_size)`` per full one. A stream of any
length therefore keeps :meth:`memory_bytes` constant: the pools, the page tables, the lengths,
the full-head masks and the per-shape LSE buffers of ``step(out=...)``: every byte of device
memory the cache owns.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..ops.sink import sink_cache_append, sink_cache_attend
from ..ops.sink_compact import sink_cache_compact

__all__ = ["SinkCache"]


class SinkCache:
    """Sink + window KV cache of ``num_layers`` layers for ``batch_size`` independent streams.

    Args:
        sink: sink tokens kept forever (>= 0). window: recent tokens kept (>= 1), or None for all.
        page_size: slots per page (>= 1).
        full_heads: optional bool ``[num_layers, num_kv_heads]``: heads that keep every token.
        ema_alpha: EMA-sink factor in [0, 1] (Reward Forcing); None for static sinks.
        positions: ``"cache"``, ``"absolute"`` or ``"none"``; rope_theta, rope_style: the rotary.
        max_tokens: tokens per stream that full heads (or ``window=None``) can hold; required then.
    """

    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, head_dim: int, *, sink: int = 4,
                 window: int | None = 1020, page_size: int = 16, full_heads: torch.Tensor | None = None,
                 ema_alpha: float | None = None, positions: str = "cache", rope_theta: float = 10000.0,
                 rope_style: str = "half", max_tokens: int | None = None, dtype: torch.dtype = torch.bfloat16,
                 device: torch.device | str = "cuda"):
        name = "flashstream.SinkCache"
        if num_layers < 1 or batch_size < 1 or num_kv_heads < 1:
            raise ValueError(f"{name}: num_layers, batch_size and num_kv_heads must be >= 1")
        if sink < 0:
            raise ValueError(f"{name}: sink must be >= 0, got {sink}")
        if window is not None and window < 1:
            raise ValueError(f"{name}: window must be >= 1 or None, got {window}")
        if page_size < 1:
            raise ValueError(f"{name}: page_size must be >= 1, got {page_size}")
        if positions not in ("cache", "absolute", "none"):
            raise ValueError(f"{name}: positions must be 'cache', 'absolute' or 'none', got {positions!r}")
        if rope_style not in ("half", "interleaved"):
            raise ValueError(f"{name}: rope_style must be 'half' or 'interleaved', got {rope_style!r}")
        if ema_alpha is not None and not (0.0 <= ema_alpha <= 1.0 and sink > 0):
            raise ValueError(f"{name}: ema_alpha must be in [0, 1] and needs sink > 0, got {ema_alpha} with sink={sink}")
        self.device = torch.device(device)
        if full_heads is None:
            full_heads = torch.zeros(num_layers, num_kv_heads, dtype=torch.bool)
        full_heads = torch.as_tensor(full_heads, dtype=torch.bool).cpu()
        if full_heads.shape != (num_layers, num_kv_heads):
            raise ValueError(f"{name}: full_heads must be [num_layers, num_kv_heads] = [{num_layers}, {num_kv_heads}], "
                             f"got {list(full_heads.shape)}")
        needs_all = window is None or bool(full_heads.any())
        if needs_all and (max_tokens is None or max_tokens < 1):
            raise ValueError(f"{name}: max_tokens (>= 1) is required when window is None or a head is full")
        self.num_layers, self.batch_size, self.num_kv_heads, self.head_dim = num_layers, batch_size, num_kv_heads, head_dim
        self.sink, self.window, self.page_size, self.ema_alpha = sink, window, page_size, ema_alpha
        self.positions, self.rope_theta, self.rope_style = positions, float(rope_theta), rope_style
        self.max_tokens, self.dtype = max_tokens, dtype

        def pages_for(slots: int) -> int:
            return max(1, -(-slots // page_size))

        stream_pages = pages_for(sink + window) if window is not None else pages_for(max_tokens)
        full_pages = pages_for(max_tokens) if needs_all else 0
        self.k_pool, self.v_pool, self.page_table, self.full_heads = [], [], [], []
        for layer in range(num_layers):
            per_head = [full_pages if full_heads[layer, h] else stream_pages for h in range(num_kv_heads)]
            width = max(per_head)
            table = torch.empty(batch_size, num_kv_heads, width, dtype=torch.int32)
            nxt = 0
            for b in range(batch_size):
                for h in range(num_kv_heads):
                    count = per_head[h]
                    table[b, h, :count] = torch.arange(nxt, nxt + count, dtype=torch.int32)
                    table[b, h, count:] = nxt  # never read: a valid page all the same
                    nxt += count
            self.k_pool.append(torch.zeros(nxt, page_size, head_dim, dtype=dtype, device=self.device))
            self.v_pool.append(torch.zeros(nxt, page_size, head_dim, dtype=dtype, device=self.device))
            self.page_table.append(table.to(self.device))
            self.full_heads.append(full_heads[layer].to(self.device))
        self._any_full = [bool(full_heads[layer].any()) for layer in range(num_layers)]
        self._lengths = torch.zeros(num_layers, batch_size, dtype=torch.int64, device=self.device)
        self._host_lengths = [[0] * batch_size for _ in range(num_layers)]
        self._lse_buffers: dict = {}  # step(out=...) writes the LSE here: one buffer per shape

    # ---- state ---------------------------------------------------------------------------------

    @property
    def lengths(self) -> torch.Tensor:
        """int64 ``[B]`` on the cache's device: tokens each stream has fed through layer 0 (each
        layer advances its own count in its step; after a full forward they agree)."""
        return self._lengths[0]

    @property
    def layer_lengths(self) -> torch.Tensor:
        """int64 ``[num_layers, B]``: tokens seen by each layer, per stream (the device state)."""
        return self._lengths

    def check_room(self, tokens: int) -> None:
        """Raises unless every layer can take a step of ``tokens`` more tokens per stream. A model
        calls it before its first layer, so a chunk that would overflow a later layer's pool is
        refused before any layer has written (each :meth:`step` checks its own layer as well)."""
        for layer in range(self.num_layers):
            self._check_room(layer, tokens, "check_room")

    def _check_room(self, layer: int, tokens: int, caller: str) -> None:
        if self.window is None or self._any_full[layer]:
            longest = max(self._host_lengths[layer]) + tokens
            if longest > self.max_tokens:
                raise ValueError(f"flashstream.SinkCache.{caller}: pool exhausted: layer {layer} would hold {longest} "
                                 f"tokens in a full head (max_tokens={self.max_tokens}); nothing was written")

    def memory_bytes(self) -> int:
        """Device bytes the cache owns: pools, page tables, lengths, full-head masks (and the small
        LSE buffer of each step shape used with ``step(out=...)``). Independent of stream length."""
        tensors = [*self.k_pool, *self.v_pool, *self.page_table, *self.full_heads, self._lengths,
                   *self._lse_buffers.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def reset(self, streams: Sequence[int] | torch.Tensor | None = None) -> None:
        """Restarts the given streams (all when None): their length goes to 0, so their slots are
        refilled from the next token on. Other streams are untouched."""
        if streams is None:
            idx = list(range(self.batch_size))
        else:
            idx = [int(s) for s in (streams.tolist() if isinstance(streams, torch.Tensor) else streams)]
        for s in idx:
            if not 0 <= s < self.batch_size:
                raise ValueError(f"flashstream.SinkCache.reset: stream {s} out of range [0, {self.batch_size})")
        if not idx:
            return
        self._lengths[:, torch.tensor(idx, device=self.device)] = 0
        for layer in range(self.num_layers):
            for s in idx:
                self._host_lengths[layer][s] = 0

    # ---- the step ------------------------------------------------------------------------------

    def step(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: str = "causal",
             scale: float | None = None, *, softcap: float | None = None,
             sink_logits: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """Attends q ``[B, T, Hq, D]`` over this layer's cache plus the new k, v ``[B, T, Hkv, D]``
        (pre-rotary), then appends k, v (evicting). Returns ``[B, T, Hq, D]``. With
        ``mask="chunk"`` the T tokens are one chunk. Raises, changing nothing, if the step would
        overflow the pool (full heads or ``window=None`` beyond ``max_tokens``). ``out``: an optional
        caller-owned ``[B, T, Hq, D]`` tensor to write into; with it a step allocates nothing (the
        LSE goes to a buffer the cache keeps per shape), as a replayed CUDA graph needs."""
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"flashstream.SinkCache.step: layer must be in [0, {self.num_layers}), got {layer}")
        T = k.shape[1] if k.dim() == 4 else 0
        self._check_room(layer, T, "step")
        host = self._host_lengths[layer]
        # The kernels take dense [B, T, H, D]; slices of a longer sequence are copied once here.
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        kw = dict(sink=self.sink, window=self.window, full_heads=self.full_heads[layer])
        lengths = self._lengths[layer]
        outs = None
        if out is not None:
            key = (tuple(q.shape[:3]), q.device)
            lse = self._lse_buffers.get(key)
            if lse is None:
                lse = self._lse_buffers[key] = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
            outs = (out, lse)
        out, _ = sink_cache_attend(q, k, v, self.k_pool[layer], self.v_pool[layer], self.page_table[layer], lengths,
                                   positions=self.positions, rope_theta=self.rope_theta, rope_style=self.rope_style,
                                   mask=mask, scale=scale, softcap=softcap, sink_logits=sink_logits, out=outs, **kw)
        sink_cache_append(k, v, self.k_pool[layer], self.v_pool[layer], self.page_table[layer], lengths,
                          ema_alpha=self.ema_alpha, **kw)
        for b in range(self.batch_size):
            host[b] += T
        return out

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Appends k, v ``[B, T, Hkv, D]`` (pre-rotary) to this layer without attending: tokens
        that later queries must see but that ask nothing themselves. Same retention and checks as
        :meth:`step`."""
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"flashstream.SinkCache.append: layer must be in [0, {self.num_layers}), got {layer}")
        T = k.shape[1] if k.dim() == 4 else 0
        self._check_room(layer, T, "append")
        sink_cache_append(k.contiguous(), v.contiguous(), self.k_pool[layer], self.v_pool[layer],
                          self.page_table[layer], self._lengths[layer], sink=self.sink, window=self.window,
                          full_heads=self.full_heads[layer], ema_alpha=self.ema_alpha)
        self._host_lengths[layer] = [n + T for n in self._host_lengths[layer]]

    def compact(self, layer: int, keep: torch.Tensor) -> None:
        """Keeps only slots ``keep [B, Hkv, n]`` (strictly ascending) of this layer, moved to the
        front in order (:func:`flashstream.ops.sink_cache_compact`); every stream then holds n
        tokens. Only for caches whose slot is the token's rank (``window=None``): with
        ``positions="cache"`` the kept keys then sit at cache positions ``0..n-1`` (SirLLM)."""
        if self.window is not None:
            raise ValueError("flashstream.SinkCache.compact: needs a cache built with window=None (slot = rank), "
                             f"got window={self.window}")
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"flashstream.SinkCache.compact: layer must be in [0, {self.num_layers}), got {layer}")
        sink_cache_compact(self.k_pool[layer], self.v_pool[layer], self.page_table[layer], self._lengths[layer], keep)
        self._host_lengths[layer] = [int(keep.shape[-1])] * self.batch_size
