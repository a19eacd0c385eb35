"""Group position encoding (Tong et al., "LLM as Effective Streaming Processor: Bridging
Streaming-Batch Mismatches with Group Position Encoding"): a decoder-only LLM reads a source
stream and writes a target stream interleaved (read a chunk, write a chunk, ...), and still computes
what it computes in batch mode, where the whole source precedes the target.

Two mismatches between interleaved streaming and batch processing, and how GPE removes them:

* positions: interleaving gives a token a position that depends on the read/write schedule. GPE
  gives each group its own counter: source token i sits at position ``i``, target token j at
  ``target_offset + j``, whatever the interleaving;
* attention (the streaming mask): a source token attends only to earlier *source* tokens (as in
  batch mode, where no target exists yet), a target token to every source token read so far and
  every earlier target token.

Mechanism (exact, no kernel change). Rotary is applied here, outside the kernel, at the group
position IDs, and the caches run with ``positions="none"`` (keys are stored already rotated, which
is exact because a token's group position never changes). Two full-layout :class:`SinkCache`
objects per stream: ``source`` holds the source tokens only; ``joint`` holds source and target
tokens in arrival order. A source chunk attends over ``source`` (causal: earlier sources and
itself) and is appended to both; a target chunk attends over ``joint`` (every source read so far,
every earlier target, causal within the chunk) and is appended to ``joint``. The source K/V are
stored twice; in exchange each attention is one ordinary kernel call, with no mask tensor and no
log-sum-exp merge.
"""

from __future__ import annotations

import torch

from ...cache import SinkCache
from .llama import LlamaDecoder

__all__ = ["GroupPositionStream", "group_position_ids", "rotate_half"]


def group_position_ids(is_target: torch.Tensor, target_offset: int = 0) -> torch.Tensor:
    """int64 position IDs of an interleaved sequence (``is_target`` bool ``[S]``): each group counts
    its own tokens, targets starting at ``target_offset``."""
    t = is_target.to(torch.int64)
    src = torch.cumsum(1 - t, 0) - 1
    tgt = torch.cumsum(t, 0) - 1 + target_offset
    return torch.where(is_target, tgt, src)


def rotate_half(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate-half (GPT-NeoX / Llama) rotary of ``x [B, T, H, D]`` at positions ``pos [T]``;
    angles in fp64 (exact at any position), the product in fp32."""
    D = x.shape[-1]
    inv = theta ** (-torch.arange(0, D, 2, dtype=torch.float64, device=x.device) / D)
    ang = pos.to(torch.float64)[:, None] * inv                      # [T, D/2]
    cos, sin = ang.cos().float()[None, :, None], ang.sin().float()[None, :, None]
    xf = x.float()
    x1, x2 = xf[..., : D // 2], xf[..., D // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).to(x.dtype)


class GroupPositionStream:
    """Interleaved source / target streaming of ``batch_size`` streams (advancing together).
    ``read(src_ids [B, T])`` and ``write(tgt_ids [B, T])`` return the logits ``[B, T, V]``.

    Args:
        max_tokens: the most source + target tokens a stream may hold.
        target_offset: position of the first target token (the paper's group start; 0 by default).
    """

    def __init__(self, model: LlamaDecoder, *, batch_size: int = 1, max_tokens: int = 4096, target_offset: int = 0,
                 page_size: int = 16, dtype: torch.dtype | None = None, device=None):
        if target_offset < 0:
            raise ValueError(f"flashstream.GroupPositionStream: target_offset must be >= 0, got {target_offset}")
        self.model, self.target_offset = model, int(target_offset)
        kw = dict(sink=0, window=None, positions="none", max_tokens=max_tokens, page_size=page_size, dtype=dtype,
                  device=device)
        self.source: SinkCache = model.new_cache(batch_size, **kw)
        self.joint: SinkCache = model.new_cache(batch_size, **kw)
        self.sources_read = 0
        self.targets_written = 0

    def reset(self) -> None:
        self.source.reset()
        self.joint.reset()
        self.sources_read = self.targets_written = 0

    @torch.no_grad()
    def read(self, ids: torch.Tensor) -> torch.Tensor:
        """Feeds a chunk of the source."""
        T = ids.shape[1]
        pos = torch.arange(self.sources_read, self.sources_read + T, device=ids.device)
        out = self._forward(ids, pos, target=False)
        self.sources_read += T
        return out

    @torch.no_grad()
    def write(self, ids: torch.Tensor) -> torch.Tensor:
        """Feeds a chunk of the target (e.g. the tokens just generated)."""
        T = ids.shape[1]
        start = self.target_offset + self.targets_written
        out = self._forward(ids, torch.arange(start, start + T, device=ids.device), target=True)
        self.targets_written += T
        return out

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor, *, target: bool) -> torch.Tensor:
        model, cfg = self.model, self.model.config
        B, T = ids.shape
        dtype = self.joint.dtype
        self._check_room(T, target)
        x = model.embed(ids)
        for layer, block in enumerate(model.layers):
            attn = block.attn
            h = block.input_norm(x)
            q = rotate_half(attn.q_proj(h).view(B, T, attn.hq, attn.d), pos, cfg.rope_theta).to(dtype)
            k = rotate_half(attn.k_proj(h).view(B, T, attn.hkv, attn.d), pos, cfg.rope_theta).to(dtype)
            v = attn.v_proj(h).view(B, T, attn.hkv, attn.d).to(dtype)
            if target:
                out = self.joint.step(layer, q, k, v)
            else:
                out = self.source.step(layer, q, k, v)
                # The joint cache learns the source tokens without attending for them.
                self.joint.append(layer, k, v)
            x = x + attn.o_proj(out.to(x.dtype).reshape(B, T, attn.hq * attn.d))
            x = x + block.mlp(block.post_attn_norm(x))
        return model.logits(model.norm(x))

    def _check_room(self, T: int, target: bool) -> None:
        need = self.sources_read + self.targets_written + T
        if need > self.joint.max_tokens:
            raise ValueError(f"flashstream.GroupPositionStream: {need} tokens would exceed max_tokens="
                             f"{self.joint.max_tokens}; nothing was written")

    @torch.no_grad()
    def wait_k(self, source: torch.Tensor, bos: torch.Tensor, k: int, max_new_tokens: int) -> torch.Tensor:
        """Greedy simultaneous decoding under the wait-k policy: read ``k`` source tokens, write the
        target start token ``bos [B, 1]``, then per step emit the argmax, read one more source token
        (while any is left) and write the emitted token. Returns the emitted tokens
        ``[B, max_new_tokens]``; target token i is predicted having read ``min(k + i, S)`` source tokens."""
        if k < 1:
            raise ValueError(f"flashstream.GroupPositionStream.wait_k: k must be >= 1, got {k}")
        S = source.shape[1]
        read = min(k, S)
        self.read(source[:, :read])
        nxt, out = bos, []
        for i in range(max_new_tokens):
            nxt = self.write(nxt)[:, -1:].argmax(-1)
            out.append(nxt)
            if i + 1 == max_new_tokens:
                break
            if read < S:
                self.read(source[:, read:read + 1])
                read += 1
        return torch.cat(out, 1)
