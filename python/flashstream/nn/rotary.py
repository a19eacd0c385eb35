"""Rotary position embedding at explicit per-token positions.

The sink-cache kernels rotate queries and keys themselves, at positions they derive from cache
slots. A token subset compacted into consecutive slots (mixture-of-depths: only the kept tokens
of a layer are stored) would lose its stream positions that way, so such layers rotate q and k
here, at the positions they are given, and run the cache with ``positions="none"``.

The angles follow the kernels (``include/flashstream/sink/cpu.h``): ``pos * theta^(-2f/D)`` in
double precision, cos / sin rounded once to fp32, products in fp32.
"""

from __future__ import annotations

import torch

__all__ = ["apply_rotary", "rotary_cos_sin"]


def rotary_cos_sin(positions: torch.Tensor, dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``(cos, sin)`` of shape ``[B, T, 1, dim/2]`` for ``positions [B, T]``: compute once,
    rotate q and k with them (:func:`apply_rotary`'s ``cos_sin``)."""
    inv_freq = float(theta) ** (-2.0 * torch.arange(dim // 2, dtype=torch.float64, device=positions.device) / dim)
    angle = positions.to(torch.float64)[..., None, None] * inv_freq
    return angle.cos().float(), angle.sin().float()


def apply_rotary(x: torch.Tensor, positions: torch.Tensor, theta: float, style: str = "half", *,
                 cos_sin: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Rotates ``x [B, T, H, D]`` (D even) at ``positions [B, T]`` (integer, >= 0).

    ``style="half"`` pairs feature f with f + D/2 (GPT-NeoX / Llama, as ``LlamaDecoder`` and
    ``SinkCache(rope_style="half")``); ``"interleaved"`` pairs 2f with 2f + 1. ``cos_sin``: the
    tables of :func:`rotary_cos_sin` for these positions, if already computed. Returns x's dtype.
    """
    if x.dim() != 4 or x.shape[-1] % 2:
        raise ValueError(f"flashstream.apply_rotary: x must be [B, T, H, D] with D even, got {list(x.shape)}")
    if positions.shape != x.shape[:2]:
        raise ValueError(f"flashstream.apply_rotary: positions must be [B, T] = {list(x.shape[:2])}, "
                         f"got {list(positions.shape)}")
    if positions.dtype.is_floating_point or positions.dtype == torch.bool:
        raise ValueError(f"flashstream.apply_rotary: positions must be an integer tensor, got {positions.dtype}")
    if style not in ("half", "interleaved"):
        raise ValueError(f"flashstream.apply_rotary: style must be 'half' or 'interleaved', got {style!r}")
    D = x.shape[-1]
    cos, sin = rotary_cos_sin(positions, D, theta) if cos_sin is None else cos_sin
    xf = x.float()
    if style == "half":
        a, b = xf[..., : D // 2], xf[..., D // 2:]
        out = torch.cat([a * cos - b * sin, b * cos + a * sin], -1)
    else:
        a, b = xf[..., 0::2], xf[..., 1::2]
        out = torch.stack([a * cos - b * sin, b * cos + a * sin], -1).flatten(-2)
    return out.to(x.dtype)
