"""Family A (LLM KV-cache streaming): a Llama-style backbone over SinkCache, one file per paper."""

from .llama import LlamaConfig, LlamaDecoder, RMSNorm

__all__ = ["LlamaConfig", "LlamaDecoder", "RMSNorm"]
