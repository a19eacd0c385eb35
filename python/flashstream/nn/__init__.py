"""Reusable streaming modules built on :mod:`flashstream.ops`."""

from .fsq import FSQ
from .mod import MoDBlock, mod_cache_step
from .rotary import apply_rotary, rotary_cos_sin
from .streaming_conv import StreamingConv1d
from .streaming_conv_transpose import StreamingConvTranspose1d
from .streaming_sequential import AlignBranches, Delay, StreamingSequential

__all__ = ["FSQ", "MoDBlock", "StreamingConv1d", "StreamingConvTranspose1d", "StreamingSequential", "AlignBranches",
           "Delay"]
__all__ += ["mod_cache_step", "apply_rotary", "rotary_cos_sin"]
