"""``LowRankLinear``: ``y = x A B + bias``, the truncated-SVD replacement of an ``nn.Linear``."""

from __future__ import annotations

import torch
from torch import nn

from flashstream.ops.lowrank import MAX_RANK, lowrank_linear

__all__ = ["LowRankLinear", "truncated_svd"]


def truncated_svd(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best rank-``rank`` factors of an ``nn.Linear`` weight ``[N, K]`` (Eckart-Young).

    Returns ``A [K, rank]``, ``B [rank, N]`` with ``A @ B ~= weight.T`` (the singular values split
    as sqrt into both factors, so neither overflows in 16-bit), and all singular values, descending.
    The SVD runs in float64; the factors come back in the weight's dtype and device.
    """
    if weight.dim() != 2:
        raise ValueError(f"flashstream.lowrank.truncated_svd: weight must be [N, K], got {list(weight.shape)}")
    full = min(weight.shape)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= full:
        raise ValueError(f"flashstream.lowrank.truncated_svd: rank must be an int in [1, min(N, K) = {full}], "
                         f"got {rank!r}")
    U, S, Vh = torch.linalg.svd(weight.detach().double().T, full_matrices=False)  # W^T = U diag(S) Vh
    root = S[:rank].sqrt()
    A = U[:, :rank] * root
    B = root[:, None] * Vh[:rank]
    return A.to(weight.dtype), B.to(weight.dtype), S


class LowRankLinear(nn.Module):
    """``y = x @ A @ B + bias`` with ``A [in_features, rank]``, ``B [rank, out_features]``.

    ``fused=True`` runs :func:`flashstream.ops.lowrank_linear` (one kernel; the ``[..., rank]``
    intermediate stays on chip; rank <= ``flashstream.ops.lowrank.MAX_RANK``); ``fused=False`` runs
    the two plain matmuls, the "unfused SVD" baseline (the intermediate goes through memory). Both
    compute the same function.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, *, fused: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__()
        if not 1 <= rank <= min(in_features, out_features):
            raise ValueError(f"flashstream.lowrank.LowRankLinear: rank must be in [1, min(in_features, out_features) = "
                             f"{min(in_features, out_features)}], got {rank}")
        if fused and rank > MAX_RANK:
            raise ValueError(f"flashstream.lowrank.LowRankLinear: the fused kernel (flashstream.ops.lowrank_linear) "
                             f"takes rank <= {MAX_RANK}, got {rank}; use fused=False for larger ranks")
        kw = {"device": device, "dtype": dtype}
        self.in_features, self.out_features, self.rank, self.fused = in_features, out_features, rank, fused
        self.A = nn.Parameter(torch.empty(in_features, rank, **kw))
        self.B = nn.Parameter(torch.empty(rank, out_features, **kw))
        self.bias = nn.Parameter(torch.zeros(out_features, **kw)) if bias else None
        nn.init.normal_(self.A, std=in_features ** -0.5)
        nn.init.normal_(self.B, std=rank ** -0.5)

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, *, fused: bool = True) -> "LowRankLinear":
        """The rank-``rank`` truncated SVD of ``linear`` (same dtype, device and bias)."""
        A, B, _ = truncated_svd(linear.weight, rank)
        module = cls(linear.in_features, linear.out_features, rank, linear.bias is not None, fused=fused,
                     device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            module.A.copy_(A)
            module.B.copy_(B)
            if linear.bias is not None:
                module.bias.copy_(linear.bias)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return lowrank_linear(x, self.A, self.B, self.bias)
        y = (x @ self.A) @ self.B
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"bias={self.bias is not None}, fused={self.fused}")
