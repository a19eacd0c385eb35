"""``FSQ`` as a module: optional projections around :func:`flashstream.ops.fsq`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..ops.fsq import fsq, fsq_indices_to_codes
from ..ops._common import int_list


class FSQ(nn.Module):
    """Finite scalar quantization of ``dim``-channel features.

    With ``dim`` given and different from ``len(levels) * num_codebooks``, a ``Linear`` projects in
    to ``num_codebooks`` groups of ``len(levels)`` channels and another projects the codes back out.
    ``channel_first=True`` takes and returns ``[B, dim, ...]`` instead of ``[..., dim]``.

    ``forward(x)`` returns ``(out, indices)``: ``out`` like ``x`` (the projected codes), ``indices``
    int64 ``[...]`` (``[..., num_codebooks]`` when ``num_codebooks > 1``; for channel-first input
    the leading ``B`` and trailing spatial dims, channel dim removed).
    """

    def __init__(self, levels: Sequence[int], dim: int | None = None, num_codebooks: int = 1,
                 channel_first: bool = False, eps: float = 1e-3) -> None:
        super().__init__()
        self.levels = int_list("FSQ", "levels", levels)
        if num_codebooks < 1:
            raise ValueError(f"flashstream.FSQ: num_codebooks must be >= 1, got {num_codebooks}")
        self.codebook_dim = len(self.levels)
        self.num_codebooks = num_codebooks
        self.channel_first = channel_first
        self.eps = eps
        effective = self.codebook_dim * num_codebooks
        self.dim = effective if dim is None else dim
        self.has_projections = self.dim != effective
        self.project_in = nn.Linear(self.dim, effective) if self.has_projections else nn.Identity()
        self.project_out = nn.Linear(effective, self.dim) if self.has_projections else nn.Identity()

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)

    def _to_last(self, x: torch.Tensor) -> torch.Tensor:
        return x.movedim(1, -1) if self.channel_first else x

    def _from_last(self, x: torch.Tensor) -> torch.Tensor:
        return x.movedim(-1, 1) if self.channel_first else x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._to_last(x)
        if x.shape[-1] != self.dim:
            raise ValueError(f"flashstream.FSQ: expected {self.dim} channels, got input of shape {tuple(x.shape)}"
                             f"{' (channel_first)' if self.channel_first else ''}")
        z = self.project_in(x)
        z = z.reshape(*z.shape[:-1], self.num_codebooks, self.codebook_dim).contiguous()
        codes, indices = fsq(z, self.levels, eps=self.eps)
        out = self.project_out(codes.flatten(-2))
        if self.num_codebooks == 1:
            indices = indices.squeeze(-1)
        return self._from_last(out), indices

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices from :meth:`forward` back to its ``out`` (through ``project_out``)."""
        if self.num_codebooks == 1:
            indices = indices.unsqueeze(-1)
        dtype = self.project_out.weight.dtype if self.has_projections else torch.float32
        codes = fsq_indices_to_codes(indices.contiguous(), self.levels, dtype)
        return self._from_last(self.project_out(codes.flatten(-2)))

    def extra_repr(self) -> str:
        return (f"levels={self.levels}, dim={self.dim}, num_codebooks={self.num_codebooks}, "
                f"channel_first={self.channel_first}, eps={self.eps}")
