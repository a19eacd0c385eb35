"""``StreamingConvTranspose1d``: an ``nn.ConvTranspose1d`` run chunk by chunk by overlap-add.

Input frame ``i`` adds its ``K_eff``-long contribution at outputs ``[i*S, i*S + K_eff)`` of the
uncropped output ``U``. A chunk of ``T`` frames completes outputs ``[0, T*S)`` of its span (no
later frame reaches them); the remaining ``K_eff - S`` partial sums wait in the state ``[B, C_out,
K_eff - S]`` (without the bias, which is added once, on emission). The offline output is ``U``
cropped by ``padding`` on the left, so the stream lags it by ``delay = padding + input_delay*S``
output frames (``input_delay`` in input frames, as cached_conv). Those first ``delay`` outputs
(cropped away offline) come out as zeros, as the next layer's offline padding would be.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["StreamingConvTranspose1d"]


class StreamingConvTranspose1d(nn.Module):
    """Streams ``conv`` over chunks ``[B, C_in, T]``; every chunk returns ``[B, C_out, T*S]``."""

    def __init__(self, conv: nn.ConvTranspose1d, *, batch_size: int = 1, input_delay: int = 0) -> None:
        super().__init__()
        if not isinstance(conv, nn.ConvTranspose1d):
            raise TypeError(f"flashstream.StreamingConvTranspose1d: conv must be an nn.ConvTranspose1d, "
                            f"got {type(conv).__name__}")
        if batch_size < 1 or input_delay < 0:
            raise ValueError(f"flashstream.StreamingConvTranspose1d: batch_size must be >= 1 and input_delay >= 0, "
                             f"got {batch_size} and {input_delay}")
        if conv.padding_mode != "zeros":
            raise ValueError(f"flashstream.StreamingConvTranspose1d: padding_mode must be 'zeros', got {conv.padding_mode!r}")
        self.conv = conv
        self.batch_size = batch_size
        self.input_delay = input_delay
        self.stride = conv.stride[0]
        self.k_eff = conv.dilation[0] * (conv.kernel_size[0] - 1) + 1
        self.delay = conv.padding[0] + input_delay * self.stride
        self.out_channels = conv.out_channels
        self.state_len = max(self.k_eff - self.stride, 0)
        self.register_buffer("state", conv.weight.new_zeros(batch_size, conv.out_channels, self.state_len),
                             persistent=False)

        self.reset()

    def reset(self) -> None:
        self.state.zero_()
        self.emitted = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C = self.batch_size, self.conv.in_channels
        if x.dim() != 3 or x.shape[0] != B or x.shape[1] != C:
            raise ValueError(f"flashstream.StreamingConvTranspose1d: x must be [batch_size, C_in, T] = [{B}, {C}, T], "
                             f"got {list(x.shape)}")
        T, S, R = x.shape[-1], self.stride, self.state_len
        if T == 0:
            return x.new_empty(B, self.out_channels, 0)
        conv = self.conv
        z = F.conv_transpose1d(x, conv.weight, None, stride=S, dilation=conv.dilation, groups=conv.groups)
        if z.shape[-1] < T * S:  # K_eff < S: gaps between the frames' contributions
            z = F.pad(z, (0, T * S - z.shape[-1]))
        z[:, :, :R].add_(self.state)
        self.state.copy_(z[:, :, T * S:])
        y = z[:, :, :T * S]
        if conv.bias is not None:
            y.add_(conv.bias[:, None])
        if self.emitted < self.delay:
            y[:, :, :self.delay - self.emitted] = 0
        self.emitted += y.shape[-1]
        return y

    def extra_repr(self) -> str:
        return f"batch_size={self.batch_size}, delay={self.delay}, state_len={self.state_len}"
