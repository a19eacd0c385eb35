"""Typed wrappers over ``torch.ops.flashstream.*``, one module per primitive."""

from .causal_conv1d import causal_conv1d, causal_conv1d_update
from .fsq import fsq, fsq_indices_to_codes

__all__ = ["causal_conv1d", "causal_conv1d_update", "fsq", "fsq_indices_to_codes"]
