"""Composing streaming modules so that delays add up and parallel branches stay aligned
(cached_conv's ``Sequential`` / ``AlignBranches``).

Every streaming module here has ``delay``: how many of its output frames lag the offline output,
counting the lag of its input (``input_delay``, in input frames). A per-frame module (activation,
norm over channels, 1x1 work) keeps the lag of its input.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .streaming_conv import StreamingConv1d
from .streaming_conv_transpose import StreamingConvTranspose1d

__all__ = ["StreamingSequential", "AlignBranches", "Delay", "streaming_delay"]


def streaming_delay(module: nn.Module, input_delay: int) -> int:
    """Output delay of ``module`` fed an input ``input_delay`` frames late (per-frame modules: unchanged)."""
    return getattr(module, "delay", input_delay)


class Delay(nn.Module):
    """A delay line: ``[B, C, T]`` in, the same frames ``frames`` later out (zeros first)."""

    def __init__(self, frames: int, channels: int, *, batch_size: int = 1, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None, input_delay: int = 0) -> None:
        super().__init__()
        if frames < 0:
            raise ValueError(f"flashstream.Delay: frames must be >= 0, got {frames}")
        self.frames = frames
        self.delay = input_delay + frames
        self.register_buffer("state", torch.zeros(batch_size, channels, frames, dtype=dtype, device=device),
                             persistent=False)

    def reset(self) -> None:
        self.state.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[:2] != self.state.shape[:2]:
            raise ValueError(f"flashstream.Delay: x must be [{self.state.shape[0]}, {self.state.shape[1]}, T], "
                             f"got {list(x.shape)}")
        D, T = self.frames, x.shape[-1]
        if D == 0:
            return x
        y = x.new_empty(x.shape)
        if T >= D:
            y[:, :, :D] = self.state
            y[:, :, D:] = x[:, :, :T - D]
            self.state.copy_(x[:, :, T - D:])
        else:
            y.copy_(self.state[:, :, :T])
            self.state[:, :, :D - T] = self.state[:, :, T:].clone()  # overlapping shift
            self.state[:, :, D - T:] = x
        return y


class StreamingSequential(nn.Sequential):
    """Runs its modules in order; plain ``nn.Conv1d`` / ``nn.ConvTranspose1d`` entries are wrapped
    into their streaming forms with ``mode`` and the delay accumulated so far, so strided layers get
    the extra left padding that keeps their delay whole. ``delay`` is the stack's total."""

    def __init__(self, *modules: nn.Module, mode: str = "causal", batch_size: int = 1, input_delay: int = 0) -> None:
        wrapped = []
        delay = input_delay
        for m in modules:
            if isinstance(m, nn.Conv1d):
                m = StreamingConv1d(m, mode, batch_size=batch_size, input_delay=delay)
            elif isinstance(m, nn.ConvTranspose1d):
                m = StreamingConvTranspose1d(m, batch_size=batch_size, input_delay=delay)
            elif getattr(m, "input_delay", delay) != delay:
                raise ValueError(f"flashstream.StreamingSequential: {type(m).__name__} was built for input_delay="
                                 f"{m.input_delay}, but its input lags by {delay} frames here")
            delay = streaming_delay(m, delay)
            wrapped.append(m)
        super().__init__(*wrapped)
        self.input_delay = input_delay
        self.delay = delay

    def reset(self) -> None:
        for m in self.children():
            if hasattr(m, "reset"):
                m.reset()


class AlignBranches(nn.Module):
    """Feeds one input to parallel branches and delays the early ones so all outputs line up with
    the latest (``delay`` = the largest branch delay). Returns the list of branch outputs; a
    residual is ``AlignBranches(block, nn.Identity(), channels=[c, c])`` then a sum.

    ``channels``: each branch's output channels (one int for all), for the delay lines' state.
    Branches must keep the frame rate they are given (no stride), as cached_conv requires.
    """

    def __init__(self, *branches: nn.Module, channels: int | Sequence[int], batch_size: int = 1,
                 input_delay: int = 0, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        if isinstance(channels, int):
            channels = [channels] * len(branches)
        if len(channels) != len(branches):
            raise ValueError(f"flashstream.AlignBranches: {len(branches)} branches but {len(channels)} channel counts")
        self.branches = nn.ModuleList(branches)
        delays = [streaming_delay(b, input_delay) for b in branches]
        self.input_delay = input_delay
        self.delay = max(delays)
        self.branch_delays = delays
        self.lines = nn.ModuleList(Delay(self.delay - d, c, batch_size=batch_size, dtype=dtype, device=device)
                                   for d, c in zip(delays, channels))

    def reset(self) -> None:
        for m in list(self.branches) + list(self.lines):
            if hasattr(m, "reset"):
                m.reset()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [line(branch(x)) for branch, line in zip(self.branches, self.lines)]
