"""flashstream.ops.mod_* (mixture-of-depths) against the NumPy / PyTorch references, on every device
and CPU ISA."""

import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import HealthCheck, given, settings

from flashstream.ops import (keep_count, mod_gather, mod_gather_rmsnorm, mod_route, mod_scatter, mod_scatter_,
                             mod_scatter_output, mod_scatter_output_)
from references.mod import gather_reference, rmsnorm_reference, route_reference, scatter_reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def tied_scores(B, T, dtype, device, levels=7):
    """Scores with many exact ties (few distinct values), plus -0.0 / +0.0 pairs."""
    s = torch.randint(-levels, levels + 1, (B, T)).double() / 4
    s[:, ::5] = 0.0
    s[:, 1::7] = -0.0
    return s.to(dtype).to(device)


def frame_groups(B, T, device, max_len=40):
    """Per-row frame ids: runs of random length, ascending."""
    g = torch.empty(B, T, dtype=torch.int64)
    for b in range(B):
        lengths = torch.randint(1, max_len + 1, (T,))
        ids = torch.repeat_interleave(torch.arange(T), lengths)[:T]
        g[b] = ids
    return g.to(device)


def check_route(scores, capacity, **kw):
    indices, weights = mod_route(scores, capacity, **kw)
    ref_i, ref_w, _ = route_reference(scores, capacity, kw.get("groups"), kw.get("routable"), kw.get("max_kept"))
    assert indices.dtype == torch.int64 and weights.dtype == scores.dtype
    assert torch.equal(indices.cpu(), ref_i), (indices, ref_i)
    torch.testing.assert_close(weights.cpu().double(), ref_w.to(scores.dtype).double(), rtol=1e-6, atol=1e-6, equal_nan=True)
    return indices, weights


# ---- mod_route --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("capacity", [0.0, 0.1, 0.2, 0.5, 0.97, 1.0])
def test_route_one_group(device, dtype, capacity):
    for T in (1, 7, 33, 300, 2049):  # around the small-group (pairwise) / radix boundary
        indices, _ = check_route(tied_scores(3, T, dtype, device), capacity)
        assert indices.shape == (3, keep_count(capacity, T))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("capacity", [0.1, 0.25, 0.6])
def test_route_per_frame_with_text(device, dtype, capacity):
    B, T = 4, 1500
    scores = tied_scores(B, T, dtype, device)
    groups = frame_groups(B, T, device, max_len=200)
    routable = torch.rand(B, T, device=device) > 0.2
    check_route(scores, capacity, groups=groups, routable=routable)
    check_route(scores, capacity, groups=groups.int())
    check_route(scores, capacity, routable=routable)


def test_route_every_cpu_isa(cpu_isa):
    scores = tied_scores(2, 999, torch.bfloat16, "cpu")
    check_route(scores, 0.3, groups=frame_groups(2, 999, "cpu"), routable=torch.rand(2, 999) > 0.1)


def test_route_distinct_scores_match_topk(device):
    scores = torch.randn(5, 4096, device=device)
    indices, weights = mod_route(scores, 0.125)
    want = scores.topk(512, dim=1).indices.sort(dim=1).values
    assert torch.equal(indices, want)
    torch.testing.assert_close(weights, torch.sigmoid(scores.gather(1, want)))


def test_route_ties_lower_index_and_signed_zero(device):
    scores = torch.tensor([[0.0, 1.0, -0.0, 1.0, 0.0, -1.0]], device=device)
    assert mod_route(scores, 0.5)[0].tolist() == [[0, 1, 3]]  # 1, 1, then the first zero
    scores = torch.tensor([[-0.0, 0.0, 0.0]], device=device)
    assert mod_route(scores, 0.34)[0].tolist() == [[0, 1]]  # ceil(1.02) = 2; -0 ties +0


def test_route_nan_and_inf(device):
    scores = torch.tensor([[math.nan, -math.inf, 3.0, math.inf, math.nan, -1.0] * 8], device=device)
    check_route(scores, 0.5)  # 48 tokens: the radix path
    check_route(scores[:, :6], 0.8)  # 6 tokens: the pairwise path, keeps 5: the later NaN left out
    assert mod_route(scores[:, :6], 0.8)[0].tolist() == [[0, 1, 2, 3, 5]]


def test_keep_count_rounding():
    assert keep_count(0.55, 100) == 55 and 0.55 * 100 > 55  # not 56
    assert keep_count(0.2, 10) == 2 and keep_count(0.21, 10) == 3
    assert keep_count(0.0, 10) == 0 and keep_count(1.0, 10) == 10 and keep_count(0.5, 0) == 0
    assert keep_count(1e-12, 5) == 0  # within the 1e-9 * n tolerance of 0
    scores = torch.randn(1, 100)
    assert mod_route(scores, 0.55)[0].shape == (1, 55)
    assert mod_route(scores, 0.55, routable=torch.ones(1, 100, dtype=torch.bool))[0].shape == (1, 55)


def test_route_max_kept(device):
    scores = torch.randn(3, 100, device=device)
    routable = torch.rand(3, 100, device=device) > 0.5
    _, _, kept = route_reference(scores, 0.3, None, routable)
    check_route(scores, 0.3, routable=routable, max_kept=max(kept) + 5)  # extra padding
    with pytest.raises(ValueError, match=f"flashstream.mod_route: max_kept = {max(kept) - 1} but a row keeps {max(kept)}"):
        mod_route(scores, 0.3, routable=routable, max_kept=max(kept) - 1)
    # Not validating: each row is cut to its first K kept tokens.
    check_route(scores, 0.3, routable=routable, max_kept=max(kept) - 1, validate=False)


def test_route_groups_must_not_decrease(device):
    scores = torch.randn(2, 12, device=device)
    groups = torch.tensor([[0, 0, 0, 1, 1, 1, 0, 0, 0, 2, 2, 2]] * 2, device=device)
    with pytest.raises(ValueError, match="flashstream.mod_route: groups must be non-decreasing"):
        mod_route(scores, 0.5, groups=groups)
    check_route(scores, 0.5, groups=groups, validate=False)  # then runs are groups
    # Ids of non-routable tokens are ignored, wherever they sit.
    routable = groups != 0
    routable[:, :3] = True
    groups_text = groups.clone()
    groups_text[:, 6:9] = -5
    check_route(scores, 0.5, groups=groups_text, routable=routable)


def test_route_all_text_and_empty(device):
    scores = torch.randn(2, 9, device=device)
    indices, weights = mod_route(scores, 0.3, routable=torch.zeros(2, 9, dtype=torch.bool, device=device))
    assert indices.tolist() == [list(range(9))] * 2 and (weights == 1).all()
    indices, weights = mod_route(torch.randn(2, 0, device=device), 0.5)
    assert indices.shape == (2, 0) and weights.shape == (2, 0)
    indices, _ = mod_route(torch.randn(0, 5, device=device), 0.5, routable=torch.ones(0, 5, dtype=torch.bool, device=device))
    assert indices.shape == (0, 0)


def test_route_gradient_reaches_scores(device):
    scores = torch.randn(3, 50, device=device, requires_grad=True)
    routable = torch.rand(3, 50, device=device) > 0.3
    indices, weights = mod_route(scores, 0.2, routable=routable)
    g = torch.randn_like(weights)
    (grad,) = torch.autograd.grad(weights, scores, g)
    want = torch.zeros(3, 50, device=device)
    s = torch.sigmoid(scores.detach())
    for b in range(3):
        for k, t in enumerate(indices[b].tolist()):
            if t >= 0 and routable[b, t]:
                want[b, t] = g[b, k] * s[b, t] * (1 - s[b, t])
    torch.testing.assert_close(grad, want)


# ---- gather / scatter -------------------------------------------------------------------------------

def route_for(B, T, capacity, device, text=True):
    scores = torch.randn(B, T, device=device)
    routable = (torch.rand(B, T, device=device) > 0.25) if text else None
    return mod_route(scores, capacity, routable=routable)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("D", [1, 5, 16, 72, 259])
def test_gather(device, dtype, D):
    x = torch.randn(3, 90, D, device=device).to(dtype)
    indices, _ = route_for(3, 90, 0.3, device)
    assert (indices == -1).any()  # padding exercised
    assert torch.equal(mod_gather(x, indices), gather_reference(x, indices))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("D", [8, 37, 256])
def test_gather_rmsnorm(device, dtype, D):
    x = (torch.randn(2, 70, D, device=device) * 3).to(dtype)
    w = (torch.rand(D, device=device) + 0.5).to(dtype)
    indices, _ = route_for(2, 70, 0.4, device)
    x_sel, normed = mod_gather_rmsnorm(x, indices, w, 1e-5)
    ref_sel = gather_reference(x, indices)
    assert torch.equal(x_sel, ref_sel)
    ref = rmsnorm_reference(ref_sel, w, 1e-5)
    ref = torch.where((indices >= 0).unsqueeze(-1), ref, 0.0)
    tol = {torch.float32: 2e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(normed.double(), ref.to(dtype).double(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("D", [3, 16, 100])
@pytest.mark.parametrize("weighted", [True, False])
def test_scatter(device, dtype, D, weighted):
    B, T = 3, 80
    x = torch.randn(B, T, D, device=device).to(dtype)
    indices, weights = route_for(B, T, 0.3, device)
    weights = weights.to(dtype) if weighted else None
    delta = torch.randn(B, indices.shape[1], D, device=device).to(dtype)
    out = mod_scatter(x, delta, indices, weights)
    want = scatter_reference(x.cpu(), delta.cpu(), indices.cpu(), None if weights is None else weights.cpu())
    # Kept rows: the compiler may fuse w * delta + x into one fma (AVX2/AVX-512, CUDA): 1 ulp.
    torch.testing.assert_close(out.cpu(), want)
    skipped = torch.ones(B, T, dtype=torch.bool)
    for b in range(B):
        skipped[b, indices[b][indices[b] >= 0].cpu()] = False
    assert torch.equal(out.cpu()[skipped].view(torch.int16 if dtype != torch.float32 else torch.int32),
                       x.cpu()[skipped].view(torch.int16 if dtype != torch.float32 else torch.int32))
    y = x.clone()
    assert mod_scatter_(y, delta, indices, weights) is y
    assert torch.equal(y, out)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("D", [3, 64])
def test_scatter_output(device, dtype, D):
    # The block returned y = x_sel + f: kept rows get x + w * (y - x), the residual not rescaled.
    B, T = 2, 50
    x = torch.randn(B, T, D, device=device).to(dtype)
    indices, weights = route_for(B, T, 0.4, device)
    weights = weights.to(dtype)
    y = (gather_reference(x, indices).float() + torch.randn(B, indices.shape[1], D, device=device)).to(dtype)
    out = mod_scatter_output(x, y, indices, weights)
    want = x.clone()
    for b in range(B):
        for k, t in enumerate(indices[b].tolist()):
            if t >= 0:
                xf = x[b, t].float()
                want[b, t] = (xf + weights[b, k].float() * (y[b, k].float() - xf)).to(dtype)
    torch.testing.assert_close(out, want)
    z = x.clone()
    assert mod_scatter_output_(z, y, indices, weights) is z and torch.equal(z, out)


def test_ops_every_cpu_isa(cpu_isa):
    for D in (1, 7, 8, 33, 64, 129):
        for dtype in DTYPES:
            x = torch.randn(2, 40, D).to(dtype)
            indices, weights = route_for(2, 40, 0.5, "cpu")
            weights = weights.to(dtype)
            delta = torch.randn(2, indices.shape[1], D).to(dtype)
            assert torch.equal(mod_gather(x, indices), gather_reference(x, indices))
            torch.testing.assert_close(mod_scatter(x, delta, indices, weights), scatter_reference(x, delta, indices, weights))
            w = torch.rand(D).to(dtype) + 0.5
            _, normed = mod_gather_rmsnorm(x, indices, w, 1e-6)
            ref = torch.where((indices >= 0).unsqueeze(-1), rmsnorm_reference(gather_reference(x, indices), w, 1e-6), 0.0)
            tol = {torch.float32: 2e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
            torch.testing.assert_close(normed.double(), ref.to(dtype).double(), rtol=tol, atol=tol)


def test_capacity_one_scatter_is_dense_residual(device):
    x = torch.randn(2, 33, 24, device=device)
    indices, _ = mod_route(torch.randn(2, 33, device=device), 1.0)
    assert torch.equal(indices, torch.arange(33, device=device).expand(2, 33))
    delta = torch.randn(2, 33, 24, device=device)
    assert torch.equal(mod_scatter(x, delta, indices), x + delta)


# ---- autograd ---------------------------------------------------------------------------------------

def test_gather_scatter_gradients(device):
    B, T, D = 2, 40, 12
    x = torch.randn(B, T, D, device=device, requires_grad=True)
    scores = torch.randn(B, T, device=device, requires_grad=True)
    routable = torch.rand(B, T, device=device) > 0.3
    lin = torch.nn.Linear(D, D).to(device)

    def run(gather, scatter):
        indices, weights = mod_route(scores, 0.3, routable=routable)
        return scatter(x, torch.tanh(lin(gather(x, indices))), indices, weights)

    def ref_gather(x, indices):
        return gather_reference(x, indices)

    def ref_scatter(x, delta, indices, weights):
        upd = (weights.unsqueeze(-1) * delta) * (indices >= 0).unsqueeze(-1)
        return x.scatter_add(1, indices.clamp(min=0).unsqueeze(-1).expand(-1, -1, D), upd)

    g = torch.randn(B, T, D, device=device)
    grads = torch.autograd.grad(run(mod_gather, mod_scatter), (x, scores, lin.weight), g)
    want = torch.autograd.grad(run(ref_gather, ref_scatter), (x, scores, lin.weight), g)
    for a, b in zip(grads, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert grads[1].abs().sum() > 0  # the router learns through the weights


def test_scatter_output_gradients(device):
    B, T, D = 2, 30, 8
    x = torch.randn(B, T, D, device=device, requires_grad=True)
    scores = torch.randn(B, T, device=device, requires_grad=True)
    indices, weights = mod_route(scores, 0.4)
    y = torch.randn(B, indices.shape[1], D, device=device, requires_grad=True)
    g = torch.randn(B, T, D, device=device)
    got = torch.autograd.grad(mod_scatter_output(x, y, indices, weights), (x, y, scores), g, retain_graph=True)
    idx = indices.unsqueeze(-1).expand(-1, -1, D)
    ref = x.scatter(1, idx, x.gather(1, idx) + weights.unsqueeze(-1) * (y - x.gather(1, idx)))
    want = torch.autograd.grad(ref, (x, y, scores), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_gather_rmsnorm_gradients(device):
    B, T, D = 2, 30, 20
    x = torch.randn(B, T, D, device=device, requires_grad=True)
    w = (torch.rand(D, device=device) + 0.5).requires_grad_()
    indices, _ = route_for(B, T, 0.5, device)
    g1, g2 = torch.randn(2, B, indices.shape[1], D, device=device)
    x_sel, normed = mod_gather_rmsnorm(x, indices, w, 1e-5)
    got = torch.autograd.grad((x_sel * g1).sum() + (normed * g2).sum(), (x, w))
    ref_sel = gather_reference(x, indices)
    ref_norm = torch.nn.functional.rms_norm(ref_sel, (D,), w, 1e-5) * (indices >= 0).unsqueeze(-1)
    want = torch.autograd.grad((ref_sel * g1).sum() + (ref_norm * g2).sum(), (x, w))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_opcheck(device):
    B, T, D = 2, 30, 8
    x = torch.randn(B, T, D, device=device)
    scores = torch.randn(B, T, device=device)
    routable = torch.rand(B, T, device=device) > 0.3
    indices, weights = mod_route(scores, 0.3, routable=routable)
    delta = torch.randn(B, indices.shape[1], D, device=device)
    ops = torch.ops.flashstream
    torch.library.opcheck(ops.mod_route.default, (scores, 0.3, None, None, None, True))
    # opcheck's aot_dispatch test sums the outputs into the first one, here int64: it cannot run
    # with a gradient; the route's gradient is tested against a reference above and under compile.
    torch.library.opcheck(ops.mod_route.default, (scores.clone().requires_grad_(), 0.3, None, routable, 20, True),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    torch.library.opcheck(ops.mod_route.default, (scores, 0.3, None, routable, None, True))
    torch.library.opcheck(ops.mod_gather.default, (x.clone().requires_grad_(), indices, True))
    torch.library.opcheck(ops.mod_gather_rmsnorm.default,
                          (x.clone().requires_grad_(), indices, torch.rand(D, device=device).requires_grad_(), 1e-6, True))
    torch.library.opcheck(ops.mod_scatter.default, (x.clone().requires_grad_(), delta.clone().requires_grad_(), indices,
                                                    weights.clone().requires_grad_(), True))
    torch.library.opcheck(ops.mod_scatter.default, (x, delta, indices, None, False))
    torch.library.opcheck(ops.mod_scatter_.default, (x.clone(), delta, indices, weights, True))
    torch.library.opcheck(ops.mod_scatter_output.default, (x.clone().requires_grad_(), delta.clone().requires_grad_(),
                                                           indices, weights.clone().requires_grad_(), True))
    torch.library.opcheck(ops.mod_scatter_output_.default, (x.clone(), delta, indices, None, True))


def test_torch_compile_fullgraph(device):
    D = 16
    lin = torch.nn.Linear(D, D).to(device)

    def mod_layer(x, scores):
        indices, weights = mod_route(scores, 0.25)
        return mod_scatter(x, lin(mod_gather(x, indices)), indices, weights)

    compiled = torch.compile(mod_layer, fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor")
    x = torch.randn(2, 40, D, device=device, requires_grad=True)
    scores = torch.randn(2, 40, device=device, requires_grad=True)
    got = compiled(x, scores)
    want = mod_layer(x, scores)
    torch.testing.assert_close(got, want)
    g1 = torch.autograd.grad(got.sum(), (x, scores))
    g2 = torch.autograd.grad(want.sum(), (x, scores))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_torch_compile_data_dependent_k(device):
    def layer(x, scores, routable):
        indices, weights = mod_route(scores, 0.25, routable=routable)
        x_sel, normed = mod_gather_rmsnorm(x, indices, torch.ones(x.shape[-1], device=x.device))
        return mod_scatter(x, normed * 0.5 + x_sel, indices, weights)

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 40, 8, device=device)
    scores = torch.randn(2, 40, device=device)
    routable = torch.rand(2, 40, device=device) > 0.5
    torch.testing.assert_close(compiled(x, scores, routable), layer(x, scores, routable))


# ---- bad inputs -------------------------------------------------------------------------------------

def test_rejects_bad_indices(device):
    x = torch.randn(2, 10, 4, device=device)
    delta = torch.randn(2, 3, 4, device=device)
    good = torch.tensor([[1, 4, -1], [0, 2, 9]], device=device)
    for bad, what in [([[1, 10, -1], [0, 2, 9]], r"indices must be in \[0, T\) = \[0, 10\) or -1 \(padding\), got 10"),
                      ([[1, -2, -1], [0, 2, 9]], "indices must be .* got -2")]:
        bad = torch.tensor(bad, device=device)
        with pytest.raises(ValueError, match=f"flashstream.mod_gather: {what}"):
            mod_gather(x, bad)
        with pytest.raises(ValueError, match=f"flashstream.mod_scatter: {what}"):
            mod_scatter(x, delta, bad)
        y = x.clone()
        with pytest.raises(ValueError, match=f"flashstream.mod_scatter_: {what}"):
            mod_scatter_(y, delta, bad)
        assert torch.equal(y, x)  # an op that raises leaves its state as before
        # validate=False: out-of-range entries are padding, nothing out of bounds is touched
        assert torch.equal(mod_gather(x, bad, validate=False), gather_reference(x, torch.where((bad >= 0) & (bad < 10), bad, -1)))
    for bad in ([[4, 1, -1], [0, 2, 9]], [[1, 1, -1], [0, 2, 9]], [[1, -1, 4], [0, 2, 9]]):
        bad = torch.tensor(bad, device=device)
        with pytest.raises(ValueError, match="flashstream.mod_scatter: indices rows must be strictly increasing"):
            mod_scatter(x, delta, bad)
        mod_gather(x, bad)  # any order is fine for a gather
    mod_scatter(x, delta, good)


def test_rejects_bad_arguments(device):
    x = torch.randn(2, 10, 4, device=device)
    idx = torch.tensor([[1, 4], [0, 2]], device=device)
    delta = torch.randn(2, 2, 4, device=device)
    with pytest.raises(TypeError, match="flashstream.mod_gather: x must be float32, float16 or bfloat16, got"):
        mod_gather(x.double(), idx)
    with pytest.raises(ValueError, match=r"flashstream.mod_gather: x must be \[B, T, D\], got \[10, 4\]"):
        mod_gather(x[0], idx)
    with pytest.raises(TypeError, match="flashstream.mod_gather: indices must be int64, got Int"):
        mod_gather(x, idx.int())
    with pytest.raises(ValueError, match=r"flashstream.mod_gather: indices must be \[B, K\] with B = 2, got \[3, 5\]"):
        mod_gather(x, torch.zeros(3, 5, dtype=torch.int64, device=device))
    with pytest.raises(ValueError, match="flashstream.mod_gather: x must be contiguous"):
        mod_gather(x.transpose(1, 2).contiguous().transpose(1, 2), idx)
    with pytest.raises(ValueError, match=r"flashstream.mod_scatter: delta must be \[B, K, D\] = \[2, 2, 4\], got \[2, 3, 4\]"):
        mod_scatter(x, torch.randn(2, 3, 4, device=device), idx)
    with pytest.raises(TypeError, match="flashstream.mod_scatter: delta must be Float, got BFloat16"):
        mod_scatter(x, delta.bfloat16(), idx)
    with pytest.raises(ValueError, match=r"flashstream.mod_scatter_output: y must be \[B, K, D\] = \[2, 2, 4\], got \[2, 3, 4\]"):
        mod_scatter_output(x, torch.randn(2, 3, 4, device=device), idx)
    with pytest.raises(ValueError, match="flashstream.mod_scatter_output_: indices rows must be strictly increasing"):
        mod_scatter_output_(x.clone(), delta, torch.tensor([[4, 1], [0, 2]], device=device))
    with pytest.raises(ValueError, match=r"flashstream.mod_scatter: weights must be \[B, K\] = \[2, 2\], got \[2\]"):
        mod_scatter(x, delta, idx, torch.ones(2, device=device))
    with pytest.raises(ValueError, match=r"flashstream.mod_gather_rmsnorm: norm_weight must be \[D\] = \[4\], got \[5\]"):
        mod_gather_rmsnorm(x, idx, torch.ones(5, device=device))
    with pytest.raises(ValueError, match="flashstream.mod_gather_rmsnorm: eps must be >= 0"):
        mod_gather_rmsnorm(x, idx, torch.ones(4, device=device), -1.0)
    s = torch.randn(2, 10, device=device)
    with pytest.raises(ValueError, match=r"flashstream.mod_route: capacity must be in \[0, 1\], got 1.5"):
        mod_route(s, 1.5)
    with pytest.raises(ValueError, match=r"flashstream.mod_route: scores must be \[B, T\], got \[2, 10, 1\]"):
        mod_route(s[..., None], 0.5)
    with pytest.raises(TypeError, match="flashstream.mod_route: groups must be int64 or int32, got Float"):
        mod_route(s, 0.5, groups=s)
    with pytest.raises(ValueError, match=r"flashstream.mod_route: groups must be scores.shape = \[2, 10\], got \[2, 9\]"):
        mod_route(s, 0.5, groups=torch.zeros(2, 9, dtype=torch.int64, device=device))
    with pytest.raises(TypeError, match="flashstream.mod_route: routable must be Bool, got Long"):
        mod_route(s, 0.5, routable=torch.ones(2, 10, dtype=torch.int64, device=device))
    with pytest.raises(ValueError, match="flashstream.mod_route: max_kept must be >= 0, got -1"):
        mod_route(s, 0.5, max_kept=-1)


def test_rejects_mixed_devices():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    x = torch.randn(2, 10, 4, device="cuda")
    with pytest.raises(ValueError, match="flashstream.mod_gather: indices must be on the same device as x"):
        mod_gather(x, torch.zeros(2, 3, dtype=torch.int64))


# ---- fuzzing ----------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(B=st.integers(0, 3), T=st.integers(0, 120), capacity=st.sampled_from([0.0, 0.05, 0.2, 1 / 3, 0.5, 1.0]),
       frame=st.integers(1, 50), text=st.booleans(), levels=st.integers(1, 40), seed=st.integers(0, 2**31 - 1))
def test_fuzz_route(B, T, capacity, frame, text, levels, seed):
    torch.manual_seed(seed)
    scores = tied_scores(B, T, torch.float32, "cpu", levels)
    groups = (torch.arange(T) // frame).expand(B, T).contiguous()
    routable = torch.rand(B, T) > 0.3 if text else None
    check_route(scores, capacity, groups=groups, routable=routable)


# ---- CUDA only ------------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_route_matches_cpu_kernels(dtype):
    # Large groups (radix select in one block), small ones (pairwise ranks), text, ties.
    for T, frame in ((8192, 8192), (8192, 256), (5000, 1500), (3000, 7)):
        scores = tied_scores(4, T, dtype, "cpu", levels=50)
        groups = (torch.arange(T) // frame).expand(4, T).contiguous()
        routable = torch.rand(4, T) > 0.1
        for kw in ({}, {"groups": groups}, {"groups": groups, "routable": routable}):
            i_cpu, w_cpu = mod_route(scores, 0.2, **kw)
            i_gpu, w_gpu = mod_route(scores.cuda(), 0.2, **{k: v.cuda() for k, v in kw.items()})
            assert torch.equal(i_gpu.cpu(), i_cpu)
            torch.testing.assert_close(w_gpu.cpu(), w_cpu)


@cuda
def test_cuda_unaligned_views_use_the_element_path():
    base = torch.randn(2 * 50 * 24 + 1, device="cuda")
    x = base[1:].view(2, 50, 24)  # 4-byte offset: not 16-byte aligned
    indices, weights = route_for(2, 50, 0.3, "cuda")
    assert torch.equal(mod_gather(x, indices), gather_reference(x, indices))
    delta = torch.randn(2, indices.shape[1], 24, device="cuda")
    torch.testing.assert_close(mod_scatter(x, delta, indices, weights).cpu(),
                               scatter_reference(x.cpu(), delta.cpu(), indices.cpu(), weights.cpu()))


@cuda
def test_cuda_graph_capture():
    x = torch.randn(2, 512, 64, device="cuda")
    scores = torch.randn(2, 512, device="cuda")
    groups = (torch.arange(512, device="cuda") // 64).expand(2, 512).contiguous()

    def step():
        indices, weights = mod_route(scores, 0.2, groups=groups, max_kept=8 * 13)  # 8 frames of 64 keep 13 each
        return mod_scatter(x, mod_gather(x, indices) * 2, indices, weights)

    step()  # warm up outside the capture
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph):
        out = step()  # validation readbacks are skipped while capturing
    for _ in range(3):
        scores.copy_(torch.randn_like(scores))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, step())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(B=st.integers(0, 3), T=st.integers(1, 60), D=st.integers(1, 70), frac=st.floats(0.0, 1.0),
       dtype=st.sampled_from(DTYPES), weighted=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_fuzz_gather_scatter(B, T, D, frac, dtype, weighted, seed):
    torch.manual_seed(seed)
    x = torch.randn(B, T, D).to(dtype)
    indices, weights = mod_route(torch.randn(B, T), frac, routable=torch.rand(B, T) > 0.5)
    weights = weights.to(dtype) if weighted else None
    delta = torch.randn(B, indices.shape[1], D).to(dtype)
    assert torch.equal(mod_gather(x, indices), gather_reference(x, indices))
    torch.testing.assert_close(mod_scatter(x, delta, indices, weights), scatter_reference(x, delta, indices, weights))


def test_scatter_unvalidated_out_of_range_is_skipped(device):
    x = torch.randn(2, 10, 4, device=device)
    delta = torch.randn(2, 3, 4, device=device)
    bad = torch.tensor([[1, 4, 10], [-7, 2, 1 << 40]], device=device)
    out = mod_scatter(x, delta, bad, validate=False)
    want = scatter_reference(x.cpu(), delta.cpu(), torch.tensor([[1, 4, -1], [-1, 2, -1]]))
    torch.testing.assert_close(out.cpu(), want)


def test_route_per_frame_streaming_equals_offline(device):
    # Per-frame top-k needs no look-ahead: routing a stream chunk by chunk (chunks of whole frames,
    # of any length, including single frames) picks exactly the tokens offline routing picks.
    B, frames, L = 2, 12, 20
    T = frames * L
    scores = tied_scores(B, T, torch.float32, device, levels=4)
    groups = (torch.arange(T, device=device) // L).expand(B, T).contiguous()
    routable = torch.rand(B, T, device=device) > 0.15
    offline, w_off = mod_route(scores, 0.3, groups=groups, routable=routable)
    cuts = [0, 1, 2, 5, 6, 11, 12]  # frame boundaries
    pieces, weights = [[] for _ in range(B)], [[] for _ in range(B)]
    for f0, f1 in zip(cuts[:-1], cuts[1:]):
        sl = slice(f0 * L, f1 * L)
        idx, w = mod_route(scores[:, sl].contiguous(), 0.3, groups=groups[:, sl].contiguous(),
                           routable=routable[:, sl].contiguous())
        for b in range(B):
            keep = idx[b] >= 0
            pieces[b].append(idx[b][keep] + f0 * L)
            weights[b].append(w[b][keep])
    for b in range(B):
        keep = offline[b] >= 0
        assert torch.equal(torch.cat(pieces[b]), offline[b][keep])
        assert torch.equal(torch.cat(weights[b]), w_off[b][keep])
