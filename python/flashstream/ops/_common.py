"""Argument normalisation shared by the op wrappers and their fake kernels."""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch


def int_list(op: str, arg: str, value: Sequence[int] | torch.Tensor) -> list[int]:
    """A sequence of ints (or a 1-D integer tensor) as ``list[int]``, else a TypeError naming ``op``."""
    if isinstance(value, torch.Tensor):
        if value.dim() != 1 or value.dtype.is_floating_point or value.dtype.is_complex:
            raise TypeError(f"flashstream.{op}: {arg} must be a 1-D integer tensor or a sequence of ints, "
                            f"got a {value.dim()}-D {value.dtype} tensor")
        return [int(v) for v in value.tolist()]
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"flashstream.{op}: {arg} must be a sequence of ints, got {type(value).__name__}")
    out = []
    for i, v in enumerate(value):
        if isinstance(v, bool):
            raise TypeError(f"flashstream.{op}: {arg}[{i}] must be an int, got bool")
        try:
            out.append(operator.index(v))
        except TypeError:
            raise TypeError(f"flashstream.{op}: {arg}[{i}] must be an int, got {type(v).__name__}") from None
    return out
