"""Typed wrappers over ``torch.ops.flashstream.*``, one module per primitive."""

from .causal_conv1d import causal_conv1d, causal_conv1d_update
from .fsq import fsq, fsq_indices_to_codes
from .mod import (keep_count, mod_gather, mod_gather_rmsnorm, mod_route, mod_scatter, mod_scatter_, mod_scatter_output,
                  mod_scatter_output_)
from .lowrank_attention import lowrank_attention
from .sink import sink_attention_offline, sink_cache_append, sink_cache_attend

__all__ = ["causal_conv1d", "causal_conv1d_update", "fsq", "fsq_indices_to_codes",
           "keep_count", "mod_route", "mod_gather", "mod_gather_rmsnorm", "mod_scatter", "mod_scatter_",
           "mod_scatter_output", "mod_scatter_output_",
           "sink_attention_offline", "sink_cache_attend", "sink_cache_append",
           "lowrank_attention"]

from .lowrank import lowrank_ffn, lowrank_gated_ffn, lowrank_linear  # noqa: E402

__all__ += ["lowrank_linear", "lowrank_ffn", "lowrank_gated_ffn"]
