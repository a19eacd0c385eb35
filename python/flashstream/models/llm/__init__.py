"""Family A (LLM KV-cache streaming): a Llama-style backbone over SinkCache, one file per paper."""

from .duo_attention import DuoAttention
from .llama import LlamaConfig, LlamaDecoder, RMSNorm
from .streaming_llm import StreamingLLM
from .sirllm import SirLLM
from .scm import MonitorStream, StreamingContentMonitor
from .gpe import GroupPositionStream

__all__ = ["DuoAttention", "LlamaConfig", "LlamaDecoder", "RMSNorm", "StreamingLLM",
           "SirLLM", "StreamingContentMonitor", "MonitorStream",
           "GroupPositionStream"]
