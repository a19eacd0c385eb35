"""Mixture-of-depths references: routing in NumPy (sorting, not selection), gather / scatter /
RMSNorm in plain PyTorch."""

from __future__ import annotations

import math

import numpy as np
import torch


def keep_count(capacity: float, n: int) -> int:
    return min(max(math.ceil(capacity * n - 1e-9 * n), 0), n)


def route_reference(scores, capacity, groups=None, routable=None, max_kept=None):
    """(indices [B, K], weights fp64 [B, K], kept per row). Groups are runs of routable tokens with
    equal id in stream order (non-routable tokens skipped over); within each, the top k by score,
    ties to the lower index, NaN lowest."""
    s = scores.detach().double().cpu().numpy()
    B, T = s.shape
    g = np.zeros((B, T), np.int64) if groups is None else groups.cpu().numpy().astype(np.int64)
    r = np.ones((B, T), bool) if routable is None else routable.cpu().numpy()
    rows = []
    for b in range(B):
        keep = ~r[b]
        runs, cur, cur_id = [], [], None
        for t in range(T):
            if not r[b, t]:
                continue
            if cur and g[b, t] != cur_id:
                runs.append(cur)
                cur = []
            cur_id = g[b, t]
            cur.append(t)
        if cur:
            runs.append(cur)
        for run in runs:
            run = np.array(run)
            vals = s[b, run]
            vals = np.where(np.isnan(vals), -np.inf, vals)
            nan_last = np.isnan(s[b, run]).astype(int)  # NaN ranks below -inf
            order = np.lexsort((run, -vals, nan_last))  # last key is primary
            keep[run[order[:keep_count(capacity, len(run))]]] = True
        rows.append(np.nonzero(keep)[0])
    K = max_kept if max_kept is not None else (
        keep_count(capacity, T) if groups is None and routable is None else max([len(x) for x in rows] + [0]))
    indices = np.full((B, K), -1, np.int64)
    weights = np.zeros((B, K))
    for b, kept in enumerate(rows):
        kept = kept[:K]
        indices[b, :len(kept)] = kept
        weights[b, :len(kept)] = np.where(r[b, kept], 1.0 / (1.0 + np.exp(-s[b, kept])), 1.0)
    return torch.from_numpy(indices), torch.from_numpy(weights), [len(x) for x in rows]


def gather_reference(x, indices):
    safe = indices.clamp(min=0)
    out = torch.gather(x, 1, safe.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    return torch.where((indices >= 0).unsqueeze(-1), out, torch.zeros((), dtype=x.dtype, device=x.device))


def rmsnorm_reference(x_sel, weight, eps):
    """fp64 RMSNorm of each row (zero rows stay zero)."""
    x = x_sel.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.double()


def scatter_reference(x, delta, indices, weights=None):
    """x + w * delta at the kept rows: fp32 math (a product, then a sum: two roundings, as the
    kernels), one rounding to x's dtype."""
    out = x.clone()
    for b in range(x.shape[0]):
        for k, t in enumerate(indices[b].tolist()):
            if t < 0:
                continue
            w = 1.0 if weights is None else weights[b, k].float()
            out[b, t] = (x[b, t].float() + w * delta[b, k].float()).to(x.dtype)
    return out
