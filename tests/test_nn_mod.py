"""flashstream.nn.MoDBlock around a small pre-norm transformer block that returns its residual delta."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from flashstream.nn import MoDBlock
from references.mod import gather_reference, route_reference

D, HEADS = 32, 4


class TinyBlock(nn.Module):
    """Causal attention over the given positions (padding, position -1, masked out) + MLP; returns
    the residual delta f(x) = attn + mlp(norm2(x + attn))."""

    def __init__(self):
        super().__init__()
        self.norm1 = nn.RMSNorm(D, eps=1e-6)
        self.qkv = nn.Linear(D, 3 * D)
        self.proj = nn.Linear(D, D)
        self.norm2 = nn.RMSNorm(D, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, D))
        self.seen_positions = None
        self.seen_normed = None

    def forward(self, x, normed=None, positions=None):
        self.seen_positions, self.seen_normed = positions, normed
        B, K, _ = x.shape
        h = self.norm1(x) if normed is None else normed
        q, k, v = self.qkv(h).view(B, K, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
        if positions is None:
            positions = torch.arange(K, device=x.device).expand(B, K)
        pi, pj = positions[:, :, None], positions[:, None, :]
        allowed = ((pj <= pi) & (pj >= 0)) | torch.eye(K, dtype=torch.bool, device=x.device)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])
        a = self.proj(a.transpose(1, 2).reshape(B, K, D))
        return a + self.mlp(self.norm2(x + a))


def make(capacity, **kw):
    torch.manual_seed(1)
    block, router = TinyBlock(), nn.Linear(D, 1)
    return MoDBlock(block, capacity, router, **kw), block, router


def test_capacity_one_is_the_dense_block(device):
    mod, block, router = make(1.0, weighted=False)
    mod.to(device)
    x = torch.randn(2, 50, D, device=device)
    dense = x + block(x, positions=torch.arange(50, device=device).expand(2, 50))
    assert torch.equal(mod(x), dense)


def test_capacity_one_weighted_is_dense_times_router(device):
    mod, block, router = make(1.0)
    mod.to(device)
    x = torch.randn(2, 50, D, device=device)
    dense = x + torch.sigmoid(router(x)) * block(x)
    torch.testing.assert_close(mod(x), dense)


@pytest.mark.parametrize("fused_norm", [False, True])
def test_routed_block(device, fused_norm):
    mod, block, router = make(0.3, norm=None)
    if fused_norm:
        mod.norm = block.norm1
    mod.to(device)
    B, T = 3, 64
    x = torch.randn(B, T, D, device=device)
    positions = torch.arange(T, device=device).expand(B, T) + 1000  # e.g. a chunk deep in a stream
    out, indices, weights = mod(x, positions=positions, return_route=True)

    scores = router(x).squeeze(-1)
    ref_idx, _, _ = route_reference(scores, 0.3)
    assert torch.equal(indices.cpu(), ref_idx)
    # kept tokens keep their original positions
    assert torch.equal(block.seen_positions, indices + 1000)
    x_sel = gather_reference(x, indices)
    if fused_norm:
        torch.testing.assert_close(block.seen_normed, block.norm1(x_sel))
    want_delta = block(x_sel, positions=indices + 1000)
    want = x.clone()
    for b in range(B):
        want[b, indices[b]] = x[b, indices[b]] + torch.sigmoid(scores[b, indices[b]])[:, None] * want_delta[b]
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)

    skipped = torch.ones(B, T, dtype=torch.bool, device=device)
    skipped.scatter_(1, indices, False)
    assert torch.equal(out[skipped], x[skipped])  # bit-identical


class OutputBlock(nn.Module):
    """The same block, returning x + f(x) as Hugging Face layers do."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, positions=None):
        return x + self.inner(x, positions=positions)


def test_block_returning_its_output(device):
    mod, block, router = make(0.3)
    mod.to(device)
    out_mod = MoDBlock(OutputBlock(block), 0.3, router, returns_output=True).to(device)
    x = torch.randn(2, 64, D, device=device)
    out, indices, _ = out_mod(x, return_route=True)
    # Same as the delta form: the residual is not scaled by the router weight.
    torch.testing.assert_close(out, mod(x), rtol=1e-5, atol=1e-5)
    skipped = torch.ones(2, 64, dtype=torch.bool, device=device)
    skipped.scatter_(1, indices, False)
    assert torch.equal(out[skipped], x[skipped])


@pytest.mark.parametrize("returns_output", [False, True])
def test_inplace_inference(device, returns_output):
    mod, block, router = make(0.3)
    inner = OutputBlock(block) if returns_output else block
    ref = MoDBlock(inner, 0.3, router, returns_output=returns_output).to(device)
    fast = MoDBlock(inner, 0.3, router, returns_output=returns_output, inplace=True).to(device)
    x = torch.randn(2, 64, D, device=device)
    with torch.inference_mode():
        want = ref(x)
        y = x.clone()
        assert fast(y) is y
        assert torch.equal(y, want)
    # With a gradient needed, inplace falls back to the out-of-place scatter.
    xg = x.clone().requires_grad_()
    out = fast(xg)
    assert out is not xg
    torch.testing.assert_close(out, want)
    out.sum().backward()
    assert router.weight.grad is not None


def test_per_frame_routing_keeps_text(device):
    mod, block, router = make(0.25)
    mod.to(device)
    B, T = 2, 60
    x = torch.randn(B, T, D, device=device)
    frames = (torch.arange(T, device=device) // 12).expand(B, T)
    routable = torch.ones(B, T, dtype=torch.bool, device=device)
    routable[:, 10:12] = False  # two text tokens after frame 0's vision tokens
    routable[1, 40:44] = False
    out, indices, weights = mod(x, groups=frames, routable=routable, return_route=True)
    ref_idx, ref_w, kept = route_reference(router(x).squeeze(-1), 0.25, frames, routable)
    assert torch.equal(indices.cpu(), ref_idx)
    assert kept[1] > kept[0] and (indices[0] == -1).any()  # rows keep different counts: padding
    for b in range(B):
        text = (~routable[b]).nonzero().squeeze(1)
        assert all(t in indices[b].tolist() for t in text.tolist())
    valid = indices >= 0
    pos = block.seen_positions
    assert torch.equal(pos[valid], indices[valid]) and (pos[~valid] == -1).all()


def test_router_learns(device):
    mod, block, router = make(0.3)
    mod.to(device)
    x = torch.randn(2, 40, D, device=device, requires_grad=True)
    mod(x).square().mean().backward()
    assert router.weight.grad is not None and router.weight.grad.abs().sum() > 0
    assert block.qkv.weight.grad.abs().sum() > 0 and x.grad.abs().sum() > 0


def test_torch_compile_fullgraph(device):
    mod, block, router = make(0.5)
    mod.to(device)
    x = torch.randn(2, 40, D, device=device)
    compiled = torch.compile(mod, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), mod(x))


def test_rejects():
    with pytest.raises(ValueError, match=r"flashstream.MoDBlock: capacity must be in \[0, 1\], got 2"):
        MoDBlock(TinyBlock(), 2, nn.Linear(D, 1))
    mod, _, _ = make(0.5)
    with pytest.raises(ValueError, match=r"flashstream.MoDBlock: x must be \[B, T, D\]"):
        mod(torch.randn(40, D))
