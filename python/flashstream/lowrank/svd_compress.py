"""``svd_compress``: replace a model's ``nn.Linear`` layers by truncated-SVD ``LowRankLinear``s."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from .linear import LowRankLinear

__all__ = ["svd_compress", "rank_for_energy"]

RankSpec = int | Mapping[str, int] | Callable[[str, nn.Linear], "int | None"]


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest rank ``r`` whose leading singular values keep at least ``energy`` of the squared
    total: ``sum(s[:r]**2) >= energy * sum(s**2)``, ``0 < energy <= 1`` (a zero matrix: rank 1)."""
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"flashstream.lowrank: energy must be in (0, 1], got {energy}")
    sq = singular_values.double() ** 2
    total = sq.sum()
    if total == 0:
        return 1
    kept = torch.cumsum(sq, 0)
    # a little slack for the rounding of the cumulative sum, so energy=1.0 never asks for more than full rank
    r = int(torch.searchsorted(kept, energy * total * (1 - 1e-12)).item()) + 1
    return min(r, sq.numel())


def svd_compress(module: nn.Module, *, rank: RankSpec | None = None, energy: float | None = None,
                 fused: bool = True) -> nn.Module:
    """Replace ``nn.Linear`` submodules of ``module`` (in place) by their truncated SVD.

    Exactly one of:
        rank: an int (every Linear; capped at ``min(in, out)``), a dict ``{qualified name: rank}``
            (only the Linears it names; a name that is not a Linear raises), or a callable
            ``(name, linear) -> rank or None`` (None leaves that layer alone).
        energy: keep, per layer, the smallest rank whose singular values hold at least this
            fraction of the squared Frobenius norm (``0 < energy <= 1``).
    fused: the replacements' ``LowRankLinear.fused``.

    The rank-r factors are the best rank-r approximation (Eckart-Young): the squared Frobenius
    error of each layer's weight equals the sum of its dropped squared singular values. Other
    modules (and Linears left out) are untouched. Returns ``module``; ``module`` itself is never
    replaced (wrap a bare Linear in a container to compress it).
    """
    if (rank is None) == (energy is None):
        raise ValueError("flashstream.lowrank.svd_compress: give exactly one of rank= or energy=")
    linears = {name: m for name, m in module.named_modules() if type(m) is nn.Linear and name}
    if isinstance(rank, Mapping):
        unknown = sorted(set(rank) - set(linears))
        if unknown:
            raise ValueError(f"flashstream.lowrank.svd_compress: rank names {unknown} are not nn.Linear submodules "
                             f"(Linears: {sorted(linears)})")
    plan: dict[str, int] = {}
    for name, linear in linears.items():
        full = min(linear.in_features, linear.out_features)
        if energy is not None:
            S = torch.linalg.svdvals(linear.weight.detach().double())
            r = rank_for_energy(S, energy)
        elif isinstance(rank, Mapping):
            r = rank.get(name)
        elif callable(rank):
            r = rank(name, linear)
        else:
            if isinstance(rank, bool) or not isinstance(rank, int):
                raise TypeError(f"flashstream.lowrank.svd_compress: rank must be an int, a dict or a callable, "
                                f"got {type(rank).__name__}")
            r = min(rank, full)
        if r is None:
            continue
        if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= full:
            raise ValueError(f"flashstream.lowrank.svd_compress: rank for {name!r} must be an int in [1, {full}], got {r!r}")
        plan[name] = r
    for name, r in plan.items():
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, LowRankLinear.from_linear(linears[name], r, fused=fused))
    return module
