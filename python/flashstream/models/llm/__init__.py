"""Family A (LLM KV-cache streaming): a Llama-style backbone over SinkCache, one file per paper."""

from .llama import LlamaConfig, LlamaDecoder, RMSNorm
from .streaming_llm import StreamingLLM

__all__ = ["LlamaConfig", "LlamaDecoder", "RMSNorm", "StreamingLLM"]
