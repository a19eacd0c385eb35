"""StreamingLLM (Xiao et al., "Efficient Streaming Language Models with Attention Sinks"):
keep the first ``sink`` tokens and the ``window`` most recent ones in every layer, and place
rotary at positions *within the cache* (pos-shift), so a model trained on short contexts
streams an unbounded text with constant memory and no fine-tuning.

Here the policy is just a :class:`SinkCache` configuration (``positions="cache"``); eviction and
re-indexing happen inside the cache kernels, not by ``torch.cat`` and re-rotation in Python.
"""

from __future__ import annotations

import torch

from .llama import LlamaDecoder

__all__ = ["StreamingLLM"]


class StreamingLLM:
    """A decoder streaming under sinks + window. ``step(ids [B, T]) -> logits [B, T, V]``."""

    def __init__(self, model: LlamaDecoder, *, sink: int = 4, window: int = 1020, batch_size: int = 1,
                 page_size: int = 16, dtype: torch.dtype | None = None, device=None):
        self.model, self.sink, self.window = model, sink, window
        self.cache = model.new_cache(batch_size, sink=sink, window=window, positions="cache",
                                     page_size=page_size, dtype=dtype, device=device)

    @torch.no_grad()
    def step(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids, self.cache)

    def stream(self, ids: torch.Tensor, chunk: int = 64):
        """Chunked prefill of ``ids [B, S]``: yields ``(start, logits [B, t, V])`` per chunk."""
        return self.model.stream(ids, self.cache, chunk)

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, chunk: int = 64) -> torch.Tensor:
        """Greedy continuation ``[B, max_new_tokens]`` of ``prompt [B, S]`` (prefill in chunks,
        then one token per step); the stream may run far past the window."""
        logits = None
        for _, logits in self.stream(prompt, chunk):
            pass
        out = []
        for _ in range(max_new_tokens):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            out.append(nxt)
            logits = self.step(nxt)
        return torch.cat(out, 1)

    def reset(self, streams=None) -> None:
        self.cache.reset(streams)

    def memory_bytes(self) -> int:
        return self.cache.memory_bytes()
