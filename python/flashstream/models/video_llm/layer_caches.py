"""One decoder's KV state split over several :class:`~flashstream.cache.SinkCache` objects by layer.

VideoLLM-MoD needs two kinds of layers in one model: dense layers, whose cache rotates keys at
their stream index (``positions="absolute"``), and MoD layers, which store only the kept tokens,
already rotated at their original positions (``positions="none"``, see
:func:`flashstream.nn.mod_cache_step`). A SinkCache has one position mode and one pool size, so
each kind gets its own cache, sized for what it stores: a MoD layer's pool holds the kept tokens
only, which is where VideoLLM-MoD's memory saving comes from.

``step(layer, q, k, v, ...)`` is what :class:`flashstream.models.llm.llama.Block` calls, so the
backbone's dense blocks run on this object unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...cache import SinkCache

__all__ = ["LayerCaches"]


class LayerCaches:
    """``caches``: name -> SinkCache; ``layer_map[i] = (name, local layer)`` for decoder layer i.

    All caches must share batch size, kv heads, head dim and dtype. ``position`` is the number of
    tokens fed to the model so far (one count for the batch: streams advance in lockstep); the
    model advances it with :meth:`advance` after each forward.
    """

    def __init__(self, caches: dict[str, SinkCache], layer_map: Sequence[tuple[str, int]]):
        if not caches:
            raise ValueError("flashstream.LayerCaches: caches must not be empty")
        first = next(iter(caches.values()))
        for name, c in caches.items():
            if (c.batch_size, c.num_kv_heads, c.head_dim, c.dtype) != (first.batch_size, first.num_kv_heads,
                                                                        first.head_dim, first.dtype):
                raise ValueError(f"flashstream.LayerCaches: cache {name!r} differs in batch size, kv heads, head dim "
                                 "or dtype from the others")
        for i, (name, local) in enumerate(layer_map):
            if name not in caches or not 0 <= local < caches[name].num_layers:
                raise ValueError(f"flashstream.LayerCaches: layer {i} maps to ({name!r}, {local}), not a cache layer")
        self.caches = dict(caches)
        self.layer_map = list(layer_map)
        self.batch_size, self.num_kv_heads, self.head_dim = first.batch_size, first.num_kv_heads, first.head_dim
        self.dtype, self.device = first.dtype, first.device
        self.num_layers = len(self.layer_map)
        self.position = 0
        self.fed = {name: 0 for name in self.caches}  # tokens appended per stream to each cache's layers

    def cache_for(self, layer: int) -> tuple[SinkCache, int]:
        """The SinkCache holding decoder layer ``layer``, and the layer's index inside it."""
        name, local = self.layer_map[layer]
        return self.caches[name], local

    def step(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        cache, local = self.cache_for(layer)
        return cache.step(local, q, k, v, *args, **kwargs)

    def check_room(self, tokens: dict[str, int]) -> None:
        """Raises, before anything is written, if appending ``tokens[name]`` tokens per stream to
        cache ``name`` would overflow a pool sized by ``max_tokens`` (a model calls this before
        its first layer, so an overflowing chunk leaves every layer as it was)."""
        for name, n in tokens.items():
            c = self.caches[name]
            if c.max_tokens is not None and self.fed[name] + n > c.max_tokens:
                raise ValueError(f"flashstream.LayerCaches: cache {name!r} would hold {self.fed[name] + n} tokens per "
                                 f"stream, but its pool holds {c.max_tokens}; nothing was written (size the state "
                                 "for more frames, prompt or reply tokens)")

    def advance(self, tokens: int, per_cache: dict[str, int] | None = None) -> None:
        """The model fed ``tokens`` tokens; cache ``name`` stored ``per_cache[name]`` of them per
        stream (default: all)."""
        self.position += int(tokens)
        for name in self.fed:
            self.fed[name] += int((per_cache or {}).get(name, tokens))

    def stored_tokens(self, layer: int) -> torch.Tensor:
        """int64 ``[B]``: tokens whose K/V this layer holds per stream (its length, capped by the
        sink + window of a windowed cache)."""
        cache, local = self.cache_for(layer)
        n = cache.layer_lengths[local]
        return n if cache.window is None else n.clamp(max=cache.sink + cache.window)

    def kv_bytes(self, layer: int) -> int:
        """Bytes of K and V this layer holds, summed over streams: stored tokens x kv heads x head
        dim x 2 x element size (the live part of its pool)."""
        per_token = 2 * self.num_kv_heads * self.head_dim * torch.empty((), dtype=self.dtype).element_size()
        return int(self.stored_tokens(layer).sum()) * per_token

    def memory_bytes(self) -> int:
        """Device bytes all caches own (pools preallocated for their capacity, tables, lengths)."""
        return sum(c.memory_bytes() for c in self.caches.values())

    def reset(self) -> None:
        for c in self.caches.values():
            c.reset()
        self.position = 0
        self.fed = {name: 0 for name in self.caches}
