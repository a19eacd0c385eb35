"""FSQ, finite scalar quantization (K4): Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE
Made Simple", appendix A.1.

Each of the ``d = len(levels)`` channels of ``z`` is bounded and rounded to one of ``L_j`` values::

    half_l = (L - 1) (1 - eps) / 2      offset = 0.5 if L is even else 0      shift = tan(offset / half_l)
    q      = round(tanh(z + shift) * half_l - offset)          # round half to even, as torch.round
    codes  = q / (L // 2)
    index  = sum_j (q_j + L_j // 2) * basis_j,   basis = cumprod([1] + levels[:-1])

computed in fp32 whatever the input dtype. Gradients are straight-through:
``d codes / d z = d(tanh(z + shift) * half_l)/dz / (L // 2)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ._common import int_list

__all__ = ["fsq", "fsq_indices_to_codes", "codebook_size"]

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def codebook_size(levels: Sequence[int]) -> int:
    """prod(levels): the number of distinct codes."""
    return math.prod(int_list("fsq", "levels", levels))


def fsq(z: torch.Tensor, levels: Sequence[int], *, eps: float = 1e-3, validate: bool = True,
        out: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``z`` to its FSQ codes and codebook indices.

    Args:
        z: ``[..., d]`` float32, float16 or bfloat16, contiguous, ``d == len(levels)``; any leading
            dims, including none and zero-size ones.
        levels: ``d`` ints, each in [2, 2^24]; their product (the codebook size) may exceed 2^31
            but must stay below 2^63.
        eps: in [0, 1); shrinks the bound so that ``round`` never sees the edge of a level.
        validate: raise ValueError if ``z`` holds a NaN (costs one device sync on CUDA; skipped
            while a CUDA graph is being captured). With ``validate=False`` such vectors get index
            -1 and NaN codes. Infinities are valid and saturate to the outermost level.
        out: optional caller-owned ``(codes, indices)`` to write into instead of allocating (a
            streaming loop then allocates nothing): contiguous, the shapes and dtypes below, on
            z's device, overlapping neither z nor each other. Not differentiable.

    Returns:
        ``codes``: ``[..., d]``, z's dtype, values ``q / (L // 2)`` in [-1, 1];
        ``indices``: ``[...]`` int64 in ``[0, prod(levels))``, exact for every input dtype.
        ``codes`` is differentiable (straight-through); ``indices`` is not.
    """
    if out is not None:
        codes, indices = out
        torch.ops.flashstream.fsq_out.default(z, int_list("fsq", "levels", levels), float(eps), bool(validate),
                                              codes, indices)
        return codes, indices
    return torch.ops.flashstream.fsq.default(z, int_list("fsq", "levels", levels), float(eps), bool(validate))


def fsq_indices_to_codes(indices: torch.Tensor, levels: Sequence[int], dtype: torch.dtype = torch.float32, *,
                         validate: bool = True) -> torch.Tensor:
    """The exact inverse of :func:`fsq`'s indices: ``[...]`` int64 -> codes ``[..., d]`` of ``dtype``.

    Indices outside ``[0, prod(levels))`` raise ValueError (``validate=True``; one device sync on
    CUDA, skipped while capturing a CUDA graph), else decode to NaN codes.
    """
    return torch.ops.flashstream.fsq_indices_to_codes.default(
        indices, int_list("fsq_indices_to_codes", "levels", levels), dtype, bool(validate))


# ---- fake kernels: shapes and dtypes for torch.compile / meta tensors, with the same checks on
# ---- what is knowable without data (values are checked by the real kernels).

def _check_levels(op: str, levels: Sequence[int], z_last: int | torch.SymInt | None) -> None:
    torch._check(len(levels) >= 1, lambda: f"flashstream.{op}: levels must not be empty")
    torch._check(all(2 <= L <= 1 << 24 for L in levels), lambda: f"flashstream.{op}: every level must be in [2, 2^24], got {list(levels)}")
    if z_last is not None:
        torch._check(z_last == len(levels), lambda: f"flashstream.{op}: z must be [..., len(levels)] = [..., {len(levels)}], got last dim {z_last}")


@torch.library.register_fake("flashstream::fsq")
def _fsq_fake(z, levels, eps=1e-3, validate=True):
    torch._check(z.dtype in _FLOAT_DTYPES, lambda: f"flashstream.fsq: z must be float32, float16 or bfloat16, got {z.dtype}")
    torch._check(z.dim() >= 1, lambda: "flashstream.fsq: z must have a last dimension")
    _check_levels("fsq", levels, z.shape[-1])
    return torch.empty_like(z), z.new_empty(z.shape[:-1], dtype=torch.int64)


@torch.library.register_fake("flashstream::fsq_out")
def _fsq_out_fake(z, levels, eps, validate, codes, indices):
    _check_levels("fsq_out", levels, z.shape[-1])
    torch._check(codes.shape == z.shape, lambda: f"flashstream.fsq_out: codes must be z.shape = {list(z.shape)}, got {list(codes.shape)}")
    torch._check(indices.shape == z.shape[:-1], lambda: f"flashstream.fsq_out: indices must be z.shape[:-1] = {list(z.shape[:-1])}, got {list(indices.shape)}")
    return None


@torch.library.register_fake("flashstream::fsq_backward")
def _fsq_backward_fake(grad_codes, z, levels, eps=1e-3):
    _check_levels("fsq_backward", levels, z.shape[-1])
    return torch.empty_like(z)


@torch.library.register_fake("flashstream::fsq_indices_to_codes")
def _fsq_indices_to_codes_fake(indices, levels, dtype, validate=True):
    torch._check(indices.dtype == torch.int64, lambda: f"flashstream.fsq_indices_to_codes: indices must be int64, got {indices.dtype}")
    _check_levels("fsq_indices_to_codes", levels, None)
    return indices.new_empty((*indices.shape, len(levels)), dtype=dtype)


# ---- autograd: straight-through, through its own op so the backward stays traceable ------------

def _fsq_setup_context(ctx, inputs, output):
    z, levels, eps, _validate = inputs
    ctx.levels, ctx.eps = levels, eps
    ctx.save_for_backward(z)


def _fsq_backward(ctx, grad_codes, grad_indices):
    (z,) = ctx.saved_tensors
    if grad_codes is None:
        return None, None, None, None
    return torch.ops.flashstream.fsq_backward.default(grad_codes, z, ctx.levels, ctx.eps), None, None, None


torch.library.register_autograd("flashstream::fsq", _fsq_backward, setup_context=_fsq_setup_context)
