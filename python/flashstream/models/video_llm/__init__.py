"""Family C (streaming video-LLMs): VideoLLM-online and VideoLLM-MoD on the Llama backbone, the
sink cache and the MoD ops; one file per paper, shared frame encoder and layer-split cache."""

from .frame_encoder import Connector, FrameEncoder, FrameEncoderConfig
from .layer_caches import LayerCaches
from .videollm_mod import KeptTokensBlock, VideoLLMMoD
from .videollm_online import FrameDecision, LiveConfig, VideoLLMOnline, VideoStreamState

__all__ = ["Connector", "FrameEncoder", "FrameEncoderConfig", "LayerCaches", "KeptTokensBlock", "VideoLLMMoD",
           "FrameDecision", "LiveConfig", "VideoLLMOnline", "VideoStreamState"]
