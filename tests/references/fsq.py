"""FSQ reference (Mentzer et al. 2023, appendix A.1), in fp64."""

from __future__ import annotations

import torch


def _constants(levels, eps):
    L = torch.tensor(levels, dtype=torch.float64)
    half_l = (L - 1) * (1 - eps) / 2
    offset = torch.tensor([0.5 if l % 2 == 0 else 0.0 for l in levels], dtype=torch.float64)
    shift = torch.tan(offset / half_l)
    half_width = torch.tensor([l // 2 for l in levels], dtype=torch.float64)
    basis = [1]
    for l in levels[:-1]:
        basis.append(basis[-1] * l)
    return half_l, offset, shift, half_width, basis


def fsq_reference(z: torch.Tensor, levels: list[int], eps: float = 1e-3):
    """Returns (codes fp64, indices int64, bounded fp64 = the value that gets rounded)."""
    half_l, offset, shift, half_width, basis = _constants(levels, eps)
    z = z.double().cpu()
    bounded = torch.tanh(z + shift) * half_l - offset
    q = torch.round(bounded)
    codes = q / half_width
    digits = (q + half_width).long()
    indices = torch.zeros(z.shape[:-1], dtype=torch.int64)
    for j, b in enumerate(basis):  # python ints: exact beyond 2^53
        indices += digits[..., j] * b
    return codes, indices, bounded


def near_tie(bounded: torch.Tensor, levels: list[int]) -> torch.Tensor:
    """Rows whose rounding is within fp32 error of a .5 boundary: the kernels (fp32) and the fp64
    reference may legitimately round those differently. The kernels' error in tanh(.) * half_l is
    a few 1e-7 relative to half_l; the margin is several times that."""
    half_l = torch.tensor([(l - 1) / 2 for l in levels], dtype=torch.float64)
    frac = bounded - torch.floor(bounded)
    return ((frac - 0.5).abs() < 2e-6 * half_l + 2e-6).any(-1)


def fsq_grad_reference(grad_codes: torch.Tensor, z: torch.Tensor, levels: list[int], eps: float = 1e-3):
    half_l, _, shift, half_width, _ = _constants(levels, eps)
    t = torch.tanh(z.double().cpu() + shift)
    return grad_codes.double().cpu() * (1 - t * t) * half_l / half_width


def indices_to_codes_reference(indices: torch.Tensor, levels: list[int]) -> torch.Tensor:
    _, _, _, half_width, basis = _constants(levels, 0.0)
    idx = indices.cpu()
    digits = torch.stack([(idx // b) % l for b, l in zip(basis, levels)], dim=-1)
    return (digits.double() - half_width) / half_width
