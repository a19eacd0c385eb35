"""Python objects that own cache memory (see DESIGN.md): the paged sink KV cache."""

from .sink_cache import SinkCache

__all__ = ["SinkCache"]
