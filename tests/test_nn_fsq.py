"""flashstream.nn.FSQ: projections, several codebooks, channel-first layout, decoding, gradients."""

import pytest
import torch

from flashstream.nn import FSQ
from flashstream.ops import fsq


def test_plain_module_is_the_op(device):
    q = FSQ([8, 5, 5, 5]).to(device)
    x = torch.randn(2, 10, 4, device=device)
    out, indices = q(x)
    codes, want = fsq(x, [8, 5, 5, 5])
    assert torch.equal(out, codes) and torch.equal(indices, want)
    assert q.codebook_size == 1000 and indices.shape == (2, 10)
    assert torch.equal(q.indices_to_codes(indices), out)


def test_projections_and_codebooks(device):
    q = FSQ([3] * 8, dim=64, num_codebooks=2).to(device)
    x = torch.randn(3, 7, 64, device=device)
    out, indices = q(x)
    assert out.shape == x.shape and indices.shape == (3, 7, 2)
    z = q.project_in(x).view(3, 7, 2, 8)
    codes, want = fsq(z.contiguous(), [3] * 8)
    assert torch.equal(indices, want)
    torch.testing.assert_close(out, q.project_out(codes.flatten(-2)))
    torch.testing.assert_close(q.indices_to_codes(indices), out)


def test_channel_first(device):
    q = FSQ([8, 5, 5, 5], dim=16, channel_first=True).to(device)
    x = torch.randn(2, 16, 5, 6, device=device)  # [B, C, H, W]
    out, indices = q(x)
    assert out.shape == x.shape and indices.shape == (2, 5, 6)
    q_last = FSQ([8, 5, 5, 5], dim=16).to(device)
    q_last.load_state_dict(q.state_dict())
    out_last, indices_last = q_last(x.movedim(1, -1))
    assert torch.equal(indices, indices_last)
    torch.testing.assert_close(out, out_last.movedim(-1, 1))
    torch.testing.assert_close(q.indices_to_codes(indices), out)


def test_gradients_reach_projections(device):
    q = FSQ([8, 5, 5, 5], dim=32).to(device)
    x = torch.randn(4, 9, 32, device=device, requires_grad=True)
    out, _ = q(x)
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert q.project_in.weight.grad.abs().sum() > 0


def test_wrong_width_raises():
    with pytest.raises(ValueError, match="flashstream.FSQ: expected 32 channels"):
        FSQ([8, 5, 5, 5], dim=32)(torch.randn(2, 31))
    with pytest.raises(ValueError, match="num_codebooks must be >= 1"):
        FSQ([3, 3], num_codebooks=0)
