"""Streaming content monitor (Li et al., "From Judgment to Interference: Early Stopping LLM Harmful
Outputs via Streaming Content Monitoring"): a causal LM backbone with two heads, trained with
token-level and response-level labels, that follows an LLM's output stream token by token and
stops it at the first score above a threshold ``tau`` (partial detection, instead of judging the
finished response).

Heads. On the backbone's final-norm hidden state ``h_t`` of response token t:

* token head: ``p_tok[t] = sigmoid(w_tok . h_t + b_tok)``, is token t harmful;
* response head: ``p_resp[t] = sigmoid(w_resp . h_t + b_resp)``, is the response *so far*
  (the prefix ending at t, read at its last token as a causal classifier does) harmful.

Both depend only on tokens <= t (causal backbone), so a score never changes when later tokens
arrive, and the streamed scores of any chunking equal one forward over the whole response. The
monitor's score is one of the two (``score="response"`` by default, or ``"token"``); the stop index
is the first response token whose score exceeds ``tau``.

Mechanism. The backbone is :class:`LlamaDecoder` over a :class:`SinkCache` (full by default; any
sink/window policy works and stays chunking-exact), so each chunk costs one cached forward: the
prompt is prefilled once, then each chunk of the response is scored with no recomputation.
"""

from __future__ import annotations

import torch
from torch import nn

from ...cache import SinkCache
from .llama import LlamaDecoder

__all__ = ["StreamingContentMonitor", "MonitorStream"]


class StreamingContentMonitor(nn.Module):
    """Backbone + token head + response head. ``forward(ids [B, T], cache) -> (p_tok, p_resp)``,
    each fp32 ``[B, T]`` probabilities; advances the cache."""

    def __init__(self, backbone: LlamaDecoder):
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        self.token_head = nn.Linear(hidden, 1)
        self.response_head = nn.Linear(hidden, 1)

    def new_cache(self, batch_size: int = 1, *, max_tokens: int = 4096, sink: int = 4, window: int | None = None,
                  positions: str | None = None, page_size: int = 16, dtype: torch.dtype | None = None,
                  device=None) -> SinkCache:
        """The backbone's cache: every token (``window=None``, up to ``max_tokens``) by default;
        with a window, StreamingLLM's cache positions unless ``positions`` says otherwise."""
        positions = positions or ("absolute" if window is None else "cache")
        return self.backbone.new_cache(batch_size, sink=sink, window=window, positions=positions, max_tokens=max_tokens,
                                       page_size=page_size, dtype=dtype, device=device)

    def forward(self, ids: torch.Tensor, cache: SinkCache) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.backbone.hidden(ids, cache).float()
        w = torch.cat([self.token_head.weight, self.response_head.weight]).float()
        b = torch.cat([self.token_head.bias, self.response_head.bias]).float()
        p = torch.sigmoid(h @ w.T + b)  # [B, T, 2]
        return p[..., 0], p[..., 1]

    def stream(self, batch_size: int = 1, *, tau: float = 0.5, score: str = "response", **cache_kw) -> "MonitorStream":
        """A monitoring session over a fresh cache (see :class:`MonitorStream`)."""
        return MonitorStream(self, self.new_cache(batch_size, **cache_kw), tau=tau, score=score)


class MonitorStream:
    """One monitoring session for ``B`` streams: ``prompt(ids)`` once, then ``step(chunk)`` per
    chunk of the response. Records every score and, per stream, the first response index whose
    score exceeds ``tau`` (``stop_index``, -1 while none has)."""

    def __init__(self, monitor: StreamingContentMonitor, cache: SinkCache, *, tau: float, score: str = "response"):
        if score not in ("response", "token"):
            raise ValueError(f"flashstream.MonitorStream: score must be 'response' or 'token', got {score!r}")
        self.monitor, self.cache, self.tau, self.score = monitor, cache, float(tau), score
        B = cache.batch_size
        self.response_tokens = 0
        self.stop_index = torch.full((B,), -1, dtype=torch.int64, device=cache.device)
        self._tok: list[torch.Tensor] = []
        self._resp: list[torch.Tensor] = []

    @torch.no_grad()
    def prompt(self, ids: torch.Tensor) -> None:
        """Prefills the prompt (context for the scores; not itself monitored)."""
        if self.response_tokens:
            raise ValueError("flashstream.MonitorStream.prompt: the response has started; prompt first")
        self.monitor.backbone.hidden(ids, self.cache)

    @torch.no_grad()
    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """Scores the next chunk of the response ``[B, T]``; returns the monitor's scores ``[B, T]``
        and records the first crossing of ``tau`` of each stream that has not stopped yet."""
        p_tok, p_resp = self.monitor(ids, self.cache)
        self._tok.append(p_tok)
        self._resp.append(p_resp)
        s = p_resp if self.score == "response" else p_tok
        over = s > self.tau
        T = ids.shape[1]
        first = torch.where(over.any(1), over.to(torch.int8).argmax(1) + self.response_tokens, -1)
        self.stop_index = torch.where(self.stop_index >= 0, self.stop_index, first)
        self.response_tokens += T
        return s

    @property
    def stopped(self) -> torch.Tensor:
        return self.stop_index >= 0

    @property
    def token_scores(self) -> torch.Tensor:
        return torch.cat(self._tok, 1) if self._tok else torch.empty(self.cache.batch_size, 0)

    @property
    def response_scores(self) -> torch.Tensor:
        return torch.cat(self._resp, 1) if self._resp else torch.empty(self.cache.batch_size, 0)

    @torch.no_grad()
    def run(self, response: torch.Tensor, chunk: int = 1) -> torch.Tensor:
        """Follows ``response [B, S]`` in chunks until every stream has stopped (or the response
        ends), as a server would while the LLM generates; returns ``stop_index`` ``[B]``. Tokens
        after the chunk in which the last stream stopped are never read."""
        for start in range(0, response.shape[1], chunk):
            self.step(response[:, start:start + chunk])
            if bool(self.stopped.all()):
                break
        return self.stop_index
