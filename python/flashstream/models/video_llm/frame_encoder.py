"""The vision side of VideoLLM-online / VideoLLM-MoD: a small ViT per frame, its CLS token plus an
adaptive-average-pooled patch grid ("live1+": CLS + 3x3 = 10 tokens per frame), and the MLP
connector into the LLM's hidden size.

The paper uses SigLIP-L/16-384. No small pretrained vision encoder ships in a package we can
install here (see the research notes), so this ViT is **randomly initialised**: it fixes the
shapes, the token layout and the per-frame independence that streaming relies on, not the
visual features. Each frame is encoded on its own (no attention across frames), so encoding a
stream frame by frame equals encoding it all at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FrameEncoderConfig", "FrameEncoder", "Connector"]


@dataclass
class FrameEncoderConfig:
    image_size: int = 64      # frames are resized (by the caller / loader) to image_size x image_size
    patch_size: int = 16
    dim: int = 96
    num_layers: int = 2
    num_heads: int = 4
    pool: int = 3             # pooled grid side: tokens per frame = 1 + pool * pool

    @property
    def tokens_per_frame(self) -> int:
        return 1 + self.pool * self.pool


class _ViTLayer(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, L, C = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(N, L, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)  # bidirectional within one frame
        x = x + self.proj(a.transpose(1, 2).reshape(N, L, C))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class FrameEncoder(nn.Module):
    """``forward(frames) -> [N, 1 + pool^2, dim]``: frames uint8 ``[N, H, W, 3]`` (as
    :func:`flashstream.data.video.read_frames` returns) or float ``[N, 3, H, W]`` in [0, 1]."""

    def __init__(self, cfg: FrameEncoderConfig):
        super().__init__()
        if cfg.image_size % cfg.patch_size or cfg.dim % cfg.num_heads:
            raise ValueError("flashstream.FrameEncoder: image_size must be a multiple of patch_size and dim of num_heads, "
                             f"got {cfg.image_size}, {cfg.patch_size}, {cfg.dim}, {cfg.num_heads}")
        self.config = cfg
        grid = cfg.image_size // cfg.patch_size
        if cfg.pool < 1 or cfg.pool > grid:
            raise ValueError(f"flashstream.FrameEncoder: pool must be in [1, {grid}] (the patch grid), got {cfg.pool}")
        self.grid = grid
        self.patch = nn.Conv2d(3, cfg.dim, cfg.patch_size, stride=cfg.patch_size)
        self.cls = nn.Parameter(torch.randn(1, 1, cfg.dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, 1 + grid * grid, cfg.dim) * 0.02)
        self.layers = nn.ModuleList(_ViTLayer(cfg.dim, cfg.num_heads) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(cfg.dim)

    def pixels(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, H, W, 3]`` -> float ``[N, 3, S, S]`` in [-1, 1] (SigLIP's normalisation)."""
        if frames.dtype == torch.uint8:
            if frames.dim() != 4 or frames.shape[-1] != 3:
                raise ValueError(f"flashstream.FrameEncoder: uint8 frames must be [N, H, W, 3], got {list(frames.shape)}")
            frames = frames.permute(0, 3, 1, 2).float() / 255.0
        if frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"flashstream.FrameEncoder: frames must be [N, H, W, 3] uint8 or [N, 3, H, W] float, "
                             f"got {list(frames.shape)} {frames.dtype}")
        S = self.config.image_size
        if frames.shape[-2:] != (S, S):
            frames = F.interpolate(frames, size=(S, S), mode="bilinear", align_corners=False, antialias=True)
        return (frames * 2.0 - 1.0).to(self.cls.dtype)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.patch(self.pixels(frames)).flatten(2).transpose(1, 2)       # [N, grid^2, dim]
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)
        N, C, g, p = x.shape[0], x.shape[-1], self.grid, self.config.pool
        grid = x[:, 1:].transpose(1, 2).reshape(N, C, g, g)
        pooled = F.adaptive_avg_pool2d(grid, p).flatten(2).transpose(1, 2)  # [N, p^2, dim], row-major
        return torch.cat([x[:, :1], pooled], 1)


class Connector(nn.Module):
    """VideoLLM-online's MLP projector: Linear -> GELU -> Linear, vision dim -> LLM hidden."""

    def __init__(self, vision_dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(vision_dim, hidden), nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))
