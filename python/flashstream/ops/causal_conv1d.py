"""Depthwise causal conv1d with carried state (K2): the streaming form of
``F.conv1d(x, weight[:, None], bias, padding=(W-1)*dilation, dilation=dilation, groups=C)[..., :T]``.

``state`` ``[B, C, (W-1)*dilation]`` holds the inputs that precede ``x`` and is updated in place to
the last ``(W-1)*dilation`` inputs, so feeding any chunking of a sequence through one state gives
the offline result. Every output sums its taps in the same order on every path, so on a given
device and CPU ISA the chunked result equals the offline one bit for bit.

Inference only: the op mutates its state, and torch registers no autograd formula for mutating
ops, so the wrapper raises when a gradient is asked of it (grad mode on and an input requiring
grad) instead of letting torch silently drop the gradient.
"""

from __future__ import annotations

import torch

__all__ = ["causal_conv1d", "causal_conv1d_update", "state_len"]

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_WIDTH = 64


def state_len(width: int, dilation: int = 1) -> int:
    """Length of the carried state: ``(width - 1) * dilation``."""
    return (int(width) - 1) * int(dilation)


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  state: torch.Tensor | None = None, *, dilation: int = 1, activation: str | None = None,
                  state_indices: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Depthwise causal convolution of ``x`` continuing from ``state``.

    Args:
        x: ``[B, C, T]`` float32/float16/bfloat16, contiguous or channel-last (``x.stride(1) == 1``,
            e.g. ``h.transpose(1, 2)`` of a ``[B, T, C]`` tensor); other layouts are copied first.
            ``y`` comes back in the same layout.
        weight: ``[C, W]``, x's dtype, ``1 <= W <= 64`` (an ``nn.Conv1d(C, C, W, groups=C)`` weight
            is ``conv.weight[:, 0]``).
        bias: ``[C]`` or None.
        state: ``[B, C, (W-1)*dilation]`` of x's dtype, any strides, updated in place; None means
            zero left padding and nothing is saved. With ``state_indices`` it is a pool
            ``[P, C, (W-1)*dilation]`` and batch row ``b`` uses row ``state_indices[b]``.
        dilation: >= 1.
        activation: None, ``"silu"`` or ``"swish"`` (the same), applied to the output.
        state_indices: int32 ``[B]`` or None: rows of the state pool (continuous batching). A
            negative index is a padding row: it starts from zeros and saves nothing. Indices must
            be distinct and ``< P``; the CPU checks this and raises, the CUDA kernel cannot without
            a host sync, so there an index ``>= P`` is treated as padding (never read or written
            out of bounds) and duplicates are the caller's error.

        out: ``[B, C, T]`` of x's dtype to write ``y`` into (then returned): a streaming step with
            no allocation at all. Unit-stride along time (channels for channel-last x); must not
            share memory with ``x`` or ``state``.

    The call is CUDA-graph capturable: no allocation besides ``y`` (none with ``out``) and no host
    sync. A call that raises leaves ``state`` (and ``out``) as it was.
    """
    _check_no_grad(x, weight, bias)
    if out is not None:
        torch.ops.flashstream.causal_conv1d_out.default(x, weight, bias, state, int(dilation), activation,
                                                        state_indices, out)
        return out
    return torch.ops.flashstream.causal_conv1d.default(x, weight, bias, state, int(dilation), activation,
                                                       state_indices)


def _check_no_grad(*tensors: torch.Tensor | None) -> None:
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError("flashstream.causal_conv1d: inference only, it has no backward; call it under "
                           "torch.no_grad() or torch.inference_mode(), or pass tensors that do not require grad")


def causal_conv1d_update(x: torch.Tensor, state: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None = None, *, dilation: int = 1, activation: str | None = None,
                         state_indices: torch.Tensor | None = None) -> torch.Tensor:
    """Decode step: ``x`` ``[B, C]`` (one frame) or ``[B, C, T]`` (a few), ``state`` updated in place.

    The same op as :func:`causal_conv1d` (which picks its small-T kernels by itself); returns a
    tensor of x's shape.
    """
    if x.dim() == 2:
        return causal_conv1d(x.unsqueeze(-1), weight, bias, state, dilation=dilation, activation=activation,
                             state_indices=state_indices).squeeze(-1)
    return causal_conv1d(x, weight, bias, state, dilation=dilation, activation=activation,
                         state_indices=state_indices)


# ---- fake kernel: the output's shape and layout, with the checks knowable without data ----------

def _channel_last(x: torch.Tensor) -> tuple[bool, bool]:
    """(channel_last, time_unit) exactly as csrc/causal_conv1d_args.h decides them."""
    _, C, T = x.shape
    c_unit = C <= 1 or x.stride(1) == 1
    t_unit = T <= 1 or x.stride(2) == 1
    if not (c_unit or t_unit):
        return False, True  # copied to contiguous
    return c_unit and (not t_unit or T == 1), t_unit


def _check_fake(x, weight, state, dilation, activation, state_indices):
    op = "flashstream.causal_conv1d"
    torch._check(x.dtype in _FLOAT_DTYPES, lambda: f"{op}: x must be float32, float16 or bfloat16, got {x.dtype}")
    torch._check(x.dim() == 3, lambda: f"{op}: x must be [B, C, T], got {list(x.shape)}")
    B, C, T = x.shape
    torch._check(weight.dim() == 2 and weight.shape[0] == C, lambda: f"{op}: weight must be [C, W] = [{C}, W], got {list(weight.shape)}")
    W = weight.shape[1]
    torch._check(1 <= W <= MAX_WIDTH, lambda: f"{op}: weight width W must be in [1, {MAX_WIDTH}], got {W}")
    torch._check(dilation >= 1, lambda: f"{op}: dilation must be >= 1, got {dilation}")
    torch._check(activation in (None, "silu", "swish"), lambda: f"{op}: activation must be None, 'silu' or 'swish', got {activation!r}")
    if state is not None:
        L = (W - 1) * dilation
        torch._check(state.dim() == 3 and state.shape[1] == C and state.shape[2] == L,
                     lambda: f"{op}: state must be [B, C, (W-1)*dilation] = [{B}, {C}, {L}], got {list(state.shape)}")
    torch._check(state_indices is None or state is not None, lambda: f"{op}: state_indices needs a state pool")


@torch.library.register_fake("flashstream::causal_conv1d")
def _causal_conv1d_fake(x, weight, bias=None, state=None, dilation=1, activation=None, state_indices=None):
    _check_fake(x, weight, state, dilation, activation, state_indices)
    B, C, T = x.shape
    channel_last, _ = _channel_last(x)
    if channel_last:
        return x.new_empty((B, T, C)).transpose(1, 2)
    return x.new_empty((B, C, T))


@torch.library.register_fake("flashstream::causal_conv1d_out")
def _causal_conv1d_out_fake(x, weight, bias, state, dilation, activation, state_indices, out):
    _check_fake(x, weight, state, dilation, activation, state_indices)
    torch._check(out.shape == x.shape, lambda: f"flashstream.causal_conv1d: out must be x.shape = {list(x.shape)}, got {list(out.shape)}")
