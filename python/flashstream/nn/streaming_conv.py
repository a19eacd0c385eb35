"""``StreamingConv1d``: any ``nn.Conv1d`` run chunk by chunk with exactly the offline result.

The stream is the conv's input after a virtual left padding of ``Pl`` zeros; output ``m`` is the
conv over virtual inputs ``[m*S, m*S + K_eff)`` (``K_eff = (K-1)*dilation + 1``) and is emitted
as soon as its last input has arrived. The state holds the last ``R = max(K_eff - 1, Pl)`` virtual
inputs and ``offset``, where the next output's window starts in ``state ++ x``; inputs that do not
complete an output yet (stride > 1) simply wait there, so any chunk length works.

* ``mode="causal"``: ``Pl = K_eff - 1`` (the conv's own padding is ignored): the causal conv, no delay.
* ``mode="centered"``: a conv trained with padding ``(P0, Pr)`` keeps its weights; all padding moves
  to the left (``Pl = P0 + Pr + extra``), so the output is delayed by ``delay = (Pr + extra +
  input_delay) / S`` output frames (cached_conv's scheme; ``extra < S`` keeps that whole when the
  input itself arrives ``input_delay`` frames late). ``stream[delay:]`` equals the offline output.
  The first ``delay`` outputs have no offline counterpart and come out as zeros: that is what the
  offline conv's zero padding feeds the next layer, so stacks stay exact (see StreamingSequential).

Depthwise stride-1 convs whose window starts at the state's start run on the fused
:func:`flashstream.ops.causal_conv1d` kernel (state ``[B, C, (K-1)*dilation]`` updated in place).
Every other conv (dense, grouped, strided, channel multipliers) runs ``F.conv1d`` over one work
buffer (state ++ chunk) that grows to the longest chunk seen, so a steady stream of chunks
allocates only its outputs and never concatenates. The fused kernel is inference-only: call the
module under ``torch.no_grad()`` / ``torch.inference_mode()``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.causal_conv1d import MAX_WIDTH, causal_conv1d

__all__ = ["StreamingConv1d", "conv_paddings"]


def conv_paddings(conv: nn.Conv1d) -> tuple[int, int]:
    """(left, right) zero padding of the offline conv, whatever form ``conv.padding`` takes."""
    k_eff = conv.dilation[0] * (conv.kernel_size[0] - 1) + 1
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return 0, 0
        total = k_eff - 1  # "same" (stride 1): PyTorch puts the odd one on the right
        return total // 2, total - total // 2
    return conv.padding[0], conv.padding[0]


class StreamingConv1d(nn.Module):
    """Streams ``conv`` over chunks ``[B, C_in, T]`` (any ``T >= 0``) of a batch of ``batch_size``
    independent streams; returns ``[B, C_out, n]`` with ``n`` the outputs that chunk completes.

    Args:
        conv: the ``nn.Conv1d`` (any groups, stride, dilation; its parameters are shared, not copied).
        mode: ``"causal"`` or ``"centered"`` (see the module docstring).
        batch_size: streams per call; the state shapes are fixed here.
        input_delay: frames by which the input already lags its offline timing (set by
            :class:`StreamingSequential`); it only matters with stride > 1.
    """

    def __init__(self, conv: nn.Conv1d, mode: str = "causal", *, batch_size: int = 1, input_delay: int = 0) -> None:
        super().__init__()
        if not isinstance(conv, nn.Conv1d):
            raise TypeError(f"flashstream.StreamingConv1d: conv must be an nn.Conv1d, got {type(conv).__name__}")
        if mode not in ("causal", "centered"):
            raise ValueError(f"flashstream.StreamingConv1d: mode must be 'causal' or 'centered', got {mode!r}")
        if mode == "centered" and conv.padding_mode != "zeros":
            raise ValueError("flashstream.StreamingConv1d: centered mode needs padding_mode='zeros' (other padding "
                             f"reads inputs that have not arrived yet), got {conv.padding_mode!r}")
        if batch_size < 1 or input_delay < 0:
            raise ValueError(f"flashstream.StreamingConv1d: batch_size must be >= 1 and input_delay >= 0, "
                             f"got {batch_size} and {input_delay}")
        self.conv = conv
        self.mode = mode
        self.batch_size = batch_size
        self.input_delay = input_delay
        self.stride = conv.stride[0]
        self.k_eff = conv.dilation[0] * (conv.kernel_size[0] - 1) + 1
        if mode == "causal":
            p0, pr = self.k_eff - 1, 0
        else:
            p0, pr = conv_paddings(conv)
        extra = (-(pr + input_delay)) % self.stride
        self.left_pad = p0 + pr + extra
        self.delay = (pr + extra + input_delay) // self.stride
        self.out_channels = conv.out_channels
        self.state_len = max(self.k_eff - 1, self.left_pad)
        self.fused = (conv.groups == conv.in_channels == conv.out_channels and self.stride == 1
                      and conv.kernel_size[0] <= MAX_WIDTH and self.left_pad == self.k_eff - 1)
        w = conv.weight
        self.register_buffer("state", w.new_zeros(batch_size, conv.in_channels, self.state_len), persistent=False)
        self._work: torch.Tensor | None = None
        self.reset()

    def reset(self) -> None:
        """Back to the start of every stream: zero history, first output window at the left padding."""
        self.state.zero_()
        self.offset = self.state_len - self.left_pad
        self.emitted = 0

    def outputs_for(self, t: int) -> int:
        """How many outputs the next chunk of ``t`` frames completes (the state's phase included)."""
        avail = self.state_len + t - self.offset - self.k_eff
        return avail // self.stride + 1 if avail >= 0 else 0

    def _work_buffer(self, t: int, like: torch.Tensor) -> torch.Tensor:
        """A [B, C_in, R + t] view of the work buffer, grown (doubled) when a longer chunk comes."""
        buf, need = self._work, self.state_len + t
        if buf is None or buf.shape[-1] < need or buf.device != like.device or buf.dtype != like.dtype:
            size = max(need, 2 * buf.shape[-1]) if buf is not None and buf.shape[-1] < need else need
            buf = self._work = like.new_empty(self.batch_size, self.conv.in_channels, size)
        return buf[:, :, :need]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, T = self.batch_size, self.conv.in_channels, x.shape[-1] if x.dim() == 3 else -1
        if x.dim() != 3 or x.shape[0] != B or x.shape[1] != C:
            raise ValueError(f"flashstream.StreamingConv1d: x must be [batch_size, C_in, T] = [{B}, {C}, T], "
                             f"got {list(x.shape)}")
        if x.dtype != self.state.dtype or x.device != self.state.device:
            raise TypeError(f"flashstream.StreamingConv1d: x must be {self.state.dtype} on {self.state.device} like "
                            f"the module, got {x.dtype} on {x.device}")
        n = self.outputs_for(T)
        conv = self.conv
        if self.fused:
            y = causal_conv1d(x, conv.weight[:, 0], conv.bias, self.state, dilation=conv.dilation[0])
            return self._zero_warmup(y)
        work = self._work_buffer(T, x)
        R = self.state_len
        work[:, :, :R].copy_(self.state)
        work[:, :, R:].copy_(x)
        start = self.offset
        if n > 0:
            span = (n - 1) * self.stride + self.k_eff
            y = F.conv1d(work[:, :, start:start + span], conv.weight, conv.bias, stride=self.stride,
                         dilation=conv.dilation, groups=conv.groups)
        else:  # the chunk completes no output; its inputs wait in the state
            y = x.new_empty(B, self.out_channels, 0)
        self.state.copy_(work[:, :, T:])
        self.offset = start + n * self.stride - T
        return self._zero_warmup(y)

    def _zero_warmup(self, y: torch.Tensor) -> torch.Tensor:
        if self.emitted < self.delay:
            y[:, :, :self.delay - self.emitted] = 0
        self.emitted += y.shape[-1]
        return y

    def extra_repr(self) -> str:
        return (f"mode={self.mode!r}, batch_size={self.batch_size}, delay={self.delay}, state_len={self.state_len}, "
                f"fused={self.fused}")
