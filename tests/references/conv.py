"""Plain-PyTorch fp64 references for the streaming convolutions."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d_reference(x, weight, bias=None, state=None, dilation=1, activation=None):
    """(y, new_state) in fp64 on the CPU: the offline depthwise conv of state ++ x."""
    x64 = x.detach().double().cpu()
    B, C, T = x64.shape
    W = weight.shape[1]
    L = (W - 1) * dilation
    prev = state.detach().double().cpu() if state is not None else torch.zeros(B, C, L, dtype=torch.float64)
    full = torch.cat([prev, x64], dim=-1)
    b = bias.detach().double().cpu() if bias is not None else None
    w64 = weight.detach().double().cpu()
    y = torch.zeros(B, C, T, dtype=torch.float64)  # sum over taps: y[t] = sum_k w[k] full[t + k*dilation]
    for k in range(W):
        y += w64[None, :, k, None] * full[:, :, k * dilation:k * dilation + T]
    if b is not None:
        y += b[None, :, None]
    if activation in ("silu", "swish"):
        y = F.silu(y)
    return y, full[..., full.shape[-1] - L:]
