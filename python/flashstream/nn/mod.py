"""``MoDBlock``: a mixture-of-depths wrapper around a residual block (Raposo et al. 2024)."""

from __future__ import annotations

import torch
from torch import nn

from ..ops.mod import (mod_gather, mod_gather_rmsnorm, mod_route, mod_scatter, mod_scatter_, mod_scatter_output,
                       mod_scatter_output_)
from .rotary import apply_rotary, rotary_cos_sin


class MoDBlock(nn.Module):
    """Routes only the top ``capacity`` of each group's tokens through ``block``; the others skip it.

    ``forward(x [B, T, D])``:

    1. ``scores = router(x)`` (``[B, T, 1]`` or ``[B, T]``), ``indices, weights = mod_route(scores,
       capacity, groups=..., routable=...)``;
    2. ``x_sel = mod_gather(x, indices)`` (``[B, K, D]``), or, with ``norm`` (an ``nn.RMSNorm`` or
       anything with ``weight`` and ``eps``), ``x_sel, normed = mod_gather_rmsnorm(...)``, the
       block's pre-norm fused into the gather;
    3. ``delta = block(x_sel, **kwargs)`` (``block(x_sel, normed=normed, **kwargs)`` with ``norm``):
       the block returns its **residual delta** f(x), or, with ``returns_output=True``, its output
       x + f(x) (as Hugging Face decoder layers do);
    4. ``out = mod_scatter(x, delta, indices, weights)`` (``mod_scatter_output`` for an output):
       ``x + sigmoid(score) * f(x)`` on kept tokens (``x + f(x)`` with ``weighted=False``), skipped
       tokens bit-identical to ``x``; the residual itself is never scaled by the weight.

    Positions: kept tokens keep their original positions. Unless ``positions_kwarg`` is None, the
    block gets ``positions_kwarg=pos`` with ``pos [B, K]`` int64: ``positions`` (``[B, T]``, e.g.
    absolute stream positions of a chunk) gathered at the kept tokens, or their indices when
    ``positions`` is None; padding slots (rows that keep fewer than K tokens) hold -1 and zero
    rows, and their outputs are discarded. A block that mixes tokens (attention) must mask them,
    e.g. keys with ``pos < 0``. The block only ever sees the kept tokens, so a block that keeps a
    KV cache stores keys and values for them alone.

    With a :class:`~flashstream.cache.SinkCache`: the block's attention calls
    :func:`mod_cache_step` (below) with the positions it is given. Skipped tokens then write no
    KV at that layer, and kept tokens are rotated at their original stream positions (the cache's
    own rotary modes would number them by slot, i.e. renumber them).

    Args:
        block: the residual branch, called as above.
        capacity: fraction of each group's routable tokens kept, in [0, 1].
        router: module scoring tokens, e.g. ``nn.Linear(D, 1)``.
        norm: optional pre-norm to fuse into the gather (its parameters are used, not its forward).
        weighted: scale the delta by ``sigmoid(score)`` (the MoD paper's; the router then learns
            through it). With ``False`` a capacity of 1 is exactly the dense block.
        positions_kwarg: name of the block's positions argument, or None to pass none.
        returns_output: the block returns x + f(x) instead of f(x).
        inplace: when no gradient is needed (inference), update ``x`` in place and return it:
            only the kept rows are written, instead of copying the whole residual stream (on a
            CPU that copy into fresh memory costs far more than the scatter itself). The
            caller's ``x`` must then be contiguous and is modified.

    ``forward(x, *, groups=None, routable=None, positions=None, max_kept=None, return_route=False,
    **block_kwargs)``: ``groups`` / ``routable`` / ``max_kept`` go to :func:`mod_route` (e.g. frame
    ids and a vision-token mask, as in VideoLLM-MoD); with ``return_route`` it returns
    ``(out, indices, weights)``.
    """

    def __init__(self, block: nn.Module, capacity: float, router: nn.Module, *, norm: nn.Module | None = None,
                 weighted: bool = True, positions_kwarg: str | None = "positions", returns_output: bool = False,
                 inplace: bool = False) -> None:
        super().__init__()
        if not 0.0 <= float(capacity) <= 1.0:
            raise ValueError(f"flashstream.MoDBlock: capacity must be in [0, 1], got {capacity}")
        self.block = block
        self.router = router
        self.norm = norm
        self.capacity = float(capacity)
        self.weighted = weighted
        self.positions_kwarg = positions_kwarg
        self.returns_output = returns_output
        self.inplace = inplace

    def _norm_params(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        weight = getattr(self.norm, "weight", None)
        if weight is None:
            weight = torch.ones(x.shape[-1], dtype=x.dtype, device=x.device)
        eps = getattr(self.norm, "eps", None)
        return weight.to(x.dtype), float(torch.finfo(x.dtype).eps if eps is None else eps)

    def forward(self, x: torch.Tensor, *, groups: torch.Tensor | None = None, routable: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, max_kept: int | None = None, return_route: bool = False,
                **block_kwargs):
        if x.dim() != 3:
            raise ValueError(f"flashstream.MoDBlock: x must be [B, T, D], got {list(x.shape)}")
        if self.inplace and not x.is_contiguous():
            raise ValueError("flashstream.MoDBlock: inplace=True needs a contiguous x")
        x = x.contiguous()
        scores = self.router(x)
        if scores.dim() == 3:
            scores = scores.squeeze(-1)
        indices, weights = mod_route(scores.to(x.dtype).contiguous(), self.capacity, groups=groups,
                                     routable=routable, max_kept=max_kept)
        if self.positions_kwarg is not None:
            if positions is None:
                pos = indices
            else:
                pos = torch.where(indices >= 0, positions.gather(1, indices.clamp(min=0)), -1)
            block_kwargs[self.positions_kwarg] = pos
        # The indices come from mod_route: valid by construction, so no device-side re-check.
        if self.norm is not None:
            weight, eps = self._norm_params(x)
            x_sel, normed = mod_gather_rmsnorm(x, indices, weight, eps, validate=False)
            delta = self.block(x_sel, normed=normed, **block_kwargs)
        else:
            x_sel = mod_gather(x, indices, validate=False)
            delta = self.block(x_sel, **block_kwargs)
        w = weights if self.weighted else None
        needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, delta, w))
        if self.inplace and not needs_grad:
            scatter = mod_scatter_output_ if self.returns_output else mod_scatter_
        else:
            scatter = mod_scatter_output if self.returns_output else mod_scatter
        out = scatter(x, delta.to(x.dtype).contiguous(), indices, w, validate=False)
        return (out, indices, weights) if return_route else out

    def extra_repr(self) -> str:
        return (f"capacity={self.capacity}, weighted={self.weighted}, fused_norm={self.norm is not None}, "
                f"positions_kwarg={self.positions_kwarg!r}, returns_output={self.returns_output}, inplace={self.inplace}")


def mod_cache_step(cache, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                   **step_kwargs) -> torch.Tensor:
    """Attention of a MoD layer's kept tokens over a :class:`~flashstream.cache.SinkCache`.

    ``q [B, K, Hq, D]``, ``k, v [B, K, Hkv, D]`` are the kept tokens' projections *before*
    rotary, ``positions [B, K]`` their original stream positions (what :class:`MoDBlock` passes).
    q and k are rotated here at those positions (with the cache's ``rope_theta`` and
    ``rope_style``), then ``cache.step`` attends and appends the **rotated** keys; the cache must
    therefore be built with ``positions="none"``. So only kept tokens are stored (skipped ones
    write nothing at this layer) and every stored key carries its own stream position, however
    many tokens were skipped before it; causality among kept tokens follows from their stream
    order (MoD indices are ascending).

    Layouts: ``window=None`` keeps every kept token (VideoLLM-online's append-only cache). With
    ``sink``/``window`` the cache keeps the first ``sink`` and the last ``window`` *kept* tokens of
    this layer (the window counts stored tokens, not stream tokens); since keys hold their
    absolute rotation, this is "absolute"-position attention, not StreamingLLM's cache ranks.

    Every row must keep exactly K tokens: a padding slot (position -1, from rows that keep fewer
    tokens) would be stored as a token, so it raises instead (the check reads ``positions`` on the
    host: one device sync per call on a GPU).
    """
    if getattr(cache, "positions", None) != "none":
        raise ValueError("flashstream.mod_cache_step: the cache must be built with positions='none' (keys are "
                         f"stored after rotary at the tokens' stream positions), got {getattr(cache, 'positions', None)!r}")
    if positions.shape != q.shape[:2] or positions.shape != k.shape[:2]:
        raise ValueError(f"flashstream.mod_cache_step: positions must be [B, K] = {list(k.shape[:2])}, "
                         f"got {list(positions.shape)}")
    if positions.numel() and int(positions.min()) < 0:
        raise ValueError("flashstream.mod_cache_step: positions hold padding (-1): every row must keep the same "
                         "number of tokens to be stored in the cache (route rows with equal group layouts)")
    tables = rotary_cos_sin(positions, q.shape[-1], cache.rope_theta)  # once for q and k
    q = apply_rotary(q, positions, cache.rope_theta, cache.rope_style, cos_sin=tables)
    k = apply_rotary(k, positions, cache.rope_theta, cache.rope_style, cos_sin=tables)
    return cache.step(layer, q, k, v, **step_kwargs)
