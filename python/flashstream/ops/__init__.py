"""Typed wrappers over ``torch.ops.flashstream.*``, one module per primitive."""

from .causal_conv1d import causal_conv1d, causal_conv1d_update
from .fsq import fsq, fsq_indices_to_codes
from .lowrank import lowrank_ffn, lowrank_gated_ffn, lowrank_linear
from .lowrank_attention import lowrank_attention
from .mod import (keep_count, mod_gather, mod_gather_rmsnorm, mod_route, mod_scatter, mod_scatter_, mod_scatter_output,
                  mod_scatter_output_)
from .sink import sink_attention_offline, sink_cache_append, sink_cache_attend
from .sink_compact import sink_cache_compact

__all__ = ["causal_conv1d", "causal_conv1d_update", "fsq", "fsq_indices_to_codes",
           "lowrank_linear", "lowrank_ffn", "lowrank_gated_ffn", "lowrank_attention",
           "keep_count", "mod_route", "mod_gather", "mod_gather_rmsnorm", "mod_scatter", "mod_scatter_",
           "mod_scatter_output", "mod_scatter_output_",
           "sink_attention_offline", "sink_cache_attend", "sink_cache_append",
           "sink_cache_compact"]
