"""SirLLM (Yao et al., "SirLLM: Streaming Infinite Retentive LLM"): besides StreamingLLM's sinks
and recent window, keep the ``key_tokens`` tokens with the highest *token entropy* under a
*memory decay*, so that key phrases survive far past the window, with no fine-tuning.

Token entropy of token ``x_t`` is the model's cross-entropy of it given its prefix,
``-log p(x_t | x_<t)``, read off the logits of the step that predicted it (token 0 has no
prediction: 0). Stored scores decay by ``decay`` per token that arrives after them, so a token of
age ``a`` (``a`` tokens came after it) scores ``entropy * decay**a``.

Retention. After each step every layer keeps, per stream: the ``sink`` first tokens, the ``window``
most recent ones, and the ``key_tokens`` others with the highest decayed score (the paper's
``start_size``, ``recent_size`` and ``token_entropy_size``). Because decay multiplies every stored
score alike, the ranking of two stored tokens never changes; so the kept key tokens are always the
top ``key_tokens`` of *all* tokens that have left the window, by ``entropy * decay**age`` (ranked
here by ``log(entropy) + age * log(decay)``, which cannot underflow on long streams). Ties go to the
more recent token.

Mechanism. The cache is a full-layout :class:`SinkCache` (``window=None``: slot = rank) with
``positions="cache"``; retention is one fused ``sink_cache_compact`` per layer that moves the kept
slots to the front in stream order. Keys are stored before rotary, so the kept tokens are rotated
at their new ranks 0..n by the attention kernel: StreamingLLM's pos-shift over SirLLM's kept set,
with no re-rotation and no change to the attention kernels. Memory is constant:
``sink + key_tokens + window + max_step`` slots per (stream, kv head, layer).

Retention happens between steps, as in the paper (it evicts before each new input): within a step
of T tokens the queries see the retained set of the step's start plus the step's own earlier
tokens, so results depend on the step sizes once eviction has begun. With ``key_tokens=0`` and one
token per step SirLLM is exactly StreamingLLM with window ``window + 1`` (the new token included).
"""

from __future__ import annotations

import math

import torch

from .llama import LlamaDecoder

__all__ = ["SirLLM", "token_entropy"]


def token_entropy(logits: torch.Tensor, ids: torch.Tensor, prev_logits: torch.Tensor | None = None) -> torch.Tensor:
    """``-log p(ids[:, t] | prefix)`` as fp32 ``[B, T]``: from ``logits[:, t-1]`` for t >= 1 and from
    ``prev_logits [B, V]`` (the previous step's last logits) for t = 0; 0 where no prediction exists."""
    B, T = ids.shape
    pred = logits[:, :-1]
    if prev_logits is not None:
        pred = torch.cat([prev_logits[:, None].to(logits.dtype), pred], 1)
    logp = torch.log_softmax(pred.float(), -1).gather(-1, ids[:, T - pred.shape[1]:, None])[..., 0]
    if pred.shape[1] < T:  # the stream's first token
        logp = torch.cat([torch.zeros(B, 1, dtype=logp.dtype, device=logp.device), logp], 1)
    return -logp


class SirLLM:
    """A decoder streaming under SirLLM's retention. ``step(ids [B, T]) -> logits [B, T, V]``.

    Args:
        sink, window, key_tokens: tokens kept between steps (first, most recent, highest score).
        decay: memory decay per token, in (0, 1]; 1 keeps entropies as they are.
        max_step: the longest step (tokens per call) the cache has room for.
    All streams of the batch advance together (one ``step`` feeds every stream T tokens).
    """

    def __init__(self, model: LlamaDecoder, *, sink: int = 4, window: int = 1020, key_tokens: int = 128,
                 decay: float = 1.0, max_step: int = 64, batch_size: int = 1, page_size: int = 16,
                 dtype: torch.dtype | None = None, device=None):
        name = "flashstream.SirLLM"
        if sink < 0 or window < 0 or key_tokens < 0 or max_step < 1:
            raise ValueError(f"{name}: sink, window, key_tokens must be >= 0 and max_step >= 1, got "
                             f"{sink}, {window}, {key_tokens}, {max_step}")
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"{name}: decay must be in (0, 1], got {decay}")
        self.model, self.sink, self.window, self.key_tokens = model, sink, window, key_tokens
        self.decay, self.max_step, self.batch_size = float(decay), max_step, batch_size
        self.retained = sink + key_tokens + window
        self.capacity = self.retained + max_step
        self.cache = model.new_cache(batch_size, sink=0, window=None, positions="cache", max_tokens=self.capacity,
                                     page_size=page_size, dtype=dtype, device=device)
        self.device = self.cache.device
        self.reset()

    def reset(self) -> None:
        """Restarts every stream."""
        self.cache.reset()
        self.n = 0       # slots in use (host-known: no sync)
        self.seen = 0    # tokens fed so far
        # Per slot: the token's stream position and its (undecayed) entropy.
        self.positions = torch.zeros(self.batch_size, self.capacity, dtype=torch.int64, device=self.device)
        self.entropy = torch.zeros(self.batch_size, self.capacity, dtype=torch.float64, device=self.device)
        self._last_logits = None

    @property
    def kept_positions(self) -> torch.Tensor:
        """Stream positions of the tokens the cache holds, ascending: int64 ``[B, n]``."""
        return self.positions[:, :self.n]

    @property
    def scores(self) -> torch.Tensor:
        """The held tokens' decayed scores ``entropy * decay**age``: fp64 ``[B, n]``."""
        age = (self.seen - 1 - self.kept_positions).to(torch.float64)
        return self.entropy[:, :self.n] * torch.pow(torch.tensor(self.decay, dtype=torch.float64), age)

    @torch.no_grad()
    def step(self, ids: torch.Tensor) -> torch.Tensor:
        B, T = ids.shape
        if B != self.batch_size or not 1 <= T <= self.max_step:
            raise ValueError(f"flashstream.SirLLM.step: ids must be [batch_size, 1..max_step] = [{self.batch_size}, "
                             f"1..{self.max_step}], got {list(ids.shape)}")
        logits = self.model(ids, self.cache)
        ent = token_entropy(logits, ids, self._last_logits)
        self._last_logits = logits[:, -1].clone()  # not a view: the step's logits may be large
        new = slice(self.n, self.n + T)
        self.positions[:, new] = torch.arange(self.seen, self.seen + T, device=self.device)
        self.entropy[:, new] = ent.to(torch.float64)
        self.n += T
        self.seen += T
        if self.n > self.retained:
            self._retain()
        return logits

    def _keep_slots(self) -> torch.Tensor:
        """Slots to keep, ascending, int64 ``[B, retained]``: sinks, the key tokens, the window.
        Slots hold tokens in stream order, so the sinks are the first slots and the window the last."""
        L, s = self.n, min(self.sink, self.n)
        w = min(self.window, L - s)
        k = min(self.key_tokens, L - s - w)
        cand = slice(s, L - w)
        # Rank by log(entropy) + age * log(decay) (age = seen - 1 - pos; the constant drops out).
        key = torch.log(self.entropy[:, cand]) - self.positions[:, cand].to(torch.float64) * math.log(self.decay)
        # Most recent first, then a stable sort: among equal scores the more recent token wins.
        order = torch.sort(key.flip(1), dim=1, descending=True, stable=True).indices[:, :k]
        chosen = torch.sort((L - w - 1) - order, dim=1).values  # back to slots, ascending
        dev = self.device
        return torch.cat([torch.arange(s, device=dev).expand(self.batch_size, s), chosen,
                          torch.arange(L - w, L, device=dev).expand(self.batch_size, w)], 1)

    def _retain(self) -> None:
        keep = self._keep_slots()
        n = keep.shape[1]
        heads = keep[:, None].expand(-1, self.cache.num_kv_heads, -1).contiguous()
        for layer in range(self.cache.num_layers):
            self.cache.compact(layer, heads)
        for state in (self.positions, self.entropy):
            state[:, :n] = state.gather(1, keep)
        self.n = n

    def stream(self, ids: torch.Tensor, chunk: int | None = None):
        """Feeds ``ids [B, S]`` in steps of ``chunk`` (default ``max_step``) tokens; yields
        ``(start, logits [B, t, V])`` per step."""
        chunk = chunk or self.max_step
        for start in range(0, ids.shape[1], chunk):
            yield start, self.step(ids[:, start:start + chunk])

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, chunk: int | None = None) -> torch.Tensor:
        """Greedy continuation ``[B, max_new_tokens]`` of ``prompt [B, S]``."""
        logits = None
        for _, logits in self.stream(prompt, chunk):
            pass
        out = []
        for _ in range(max_new_tokens):
            out.append(logits[:, -1].argmax(-1, keepdim=True))
            logits = self.step(out[-1])
        return torch.cat(out, 1)

    def memory_bytes(self) -> int:
        """Device bytes of the cache, the per-slot positions and entropies, and the last logits row
        per stream (constant once the first step has run)."""
        extra = [self.positions, self.entropy] + ([self._last_logits] if self._last_logits is not None else [])
        return self.cache.memory_bytes() + sum(t.numel() * t.element_size() for t in extra)
