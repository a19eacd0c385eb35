"""Typed wrappers over ``torch.ops.flashstream.*``, one module per primitive."""

from .fsq import fsq, fsq_indices_to_codes

__all__ = ["fsq", "fsq_indices_to_codes"]
