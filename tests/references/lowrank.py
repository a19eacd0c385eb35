"""Plain-PyTorch references for the low-rank chains: the unfused math in float64."""

import torch
import torch.nn.functional as F


def activate(z, activation):
    if activation == "gelu":
        return F.gelu(z)
    if activation == "silu":
        return F.silu(z)
    assert activation is None
    return z


def lowrank_linear_reference(x, A, B, bias=None, activation=None):
    z = x.double() @ A.double() @ B.double()
    if bias is not None:
        z = z + bias.double()
    return activate(z, activation)


def lowrank_ffn_reference(x, A1, B1, b1, A2, B2, b2, activation="gelu"):
    h = x.double() @ A1.double() @ B1.double()
    if b1 is not None:
        h = h + b1.double()
    y = activate(h, activation) @ A2.double() @ B2.double()
    if b2 is not None:
        y = y + b2.double()
    return y


def lowrank_gated_ffn_reference(x, A_gate, B_gate, A_up, B_up, A_down, B_down, activation="silu"):
    xd = x.double()
    gate = activate(xd @ A_gate.double() @ B_gate.double(), activation)
    up = xd @ A_up.double() @ B_up.double()
    return (gate * up) @ A_down.double() @ B_down.double()
