"""flashstream.lowrank: truncated SVD (Eckart-Young), energy-threshold ranks, svd_compress on modules,
and LowRankLinear's unfused and fused paths."""

import pytest
import torch
from torch import nn

import flashstream
from flashstream.lowrank import LowRankLinear, rank_for_energy, svd_compress, truncated_svd


def spectrum_weight(N, K, decay=0.8, dtype=torch.float64):
    """A weight [N, K] with known singular values decay**i (orthogonal U, V from QR)."""
    k = min(N, K)
    U = torch.linalg.qr(torch.randn(N, k, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(K, k, dtype=torch.float64))[0]
    S = decay ** torch.arange(k, dtype=torch.float64)
    return (U * S) @ V.T, S


@pytest.mark.parametrize("shape", [(40, 24), (24, 40), (32, 32)])
def test_eckart_young_error_is_tail_energy(shape):
    W, S = spectrum_weight(*shape)
    for r in (1, 5, 17, min(shape)):
        A, B, svals = truncated_svd(W, r)
        assert A.shape == (shape[1], r) and B.shape == (r, shape[0])
        torch.testing.assert_close(svals, S, rtol=1e-10, atol=1e-12)
        err = torch.linalg.matrix_norm(W.T - A @ B) ** 2
        torch.testing.assert_close(err, (S[r:] ** 2).sum(), rtol=1e-8, atol=1e-12)


def test_random_weight_error_is_tail_energy():
    W = torch.randn(64, 48, dtype=torch.float64)
    S = torch.linalg.svdvals(W)
    A, B, _ = truncated_svd(W, 20)
    torch.testing.assert_close(torch.linalg.matrix_norm(W.T - A @ B) ** 2, (S[20:] ** 2).sum(), rtol=1e-8, atol=0)


def test_energy_threshold_picks_minimal_rank():
    S = torch.tensor([4.0, 2.0, 1.0, 1.0, 0.5], dtype=torch.float64)  # squares 16, 4, 1, 1, 0.25 (total 22.25)
    cum = torch.cumsum(S ** 2, 0) / (S ** 2).sum()
    for energy in (0.1, 16 / 22.25, 0.72, 0.9, 0.95, 0.99, 1.0):
        r = rank_for_energy(S, energy)
        assert cum[r - 1] >= energy * (1 - 1e-12)               # enough
        assert r == 1 or cum[r - 2] < energy                     # and minimal
    assert rank_for_energy(S, 16 / 22.25) == 1                   # exactly the first value's share
    assert rank_for_energy(S, 1.0) == 5
    with pytest.raises(ValueError, match="energy must be in"):
        rank_for_energy(S, 0.0)


def test_energy_compress_ranks_and_error():
    W, S = spectrum_weight(48, 32, decay=0.7)
    model = nn.Sequential(nn.Linear(32, 48, dtype=torch.float64))
    with torch.no_grad():
        model[0].weight.copy_(W)
    svd_compress(model, energy=0.99)
    m = model[0]
    assert isinstance(m, LowRankLinear)
    assert m.rank == rank_for_energy(S, 0.99)
    kept = 1 - torch.linalg.matrix_norm(W.T - m.A @ m.B) ** 2 / (S ** 2).sum()
    assert kept >= 0.99 and m.rank < 32


def test_full_rank_reproduces_linear_exactly_fp64():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(24, 40), nn.GELU(), nn.Linear(40, 16)).double()
    x = torch.randn(5, 7, 24, dtype=torch.float64)
    ref = model(x)
    svd_compress(model, rank=10_000, fused=False)  # capped at min(in, out): full rank
    assert [m.rank for m in (model[0], model[2])] == [24, 16]
    torch.testing.assert_close(model(x), ref, rtol=1e-12, atol=1e-12)


def test_non_linear_modules_untouched_and_rank_specs():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Linear(16, 16)
            self.k = nn.Linear(16, 16)
            self.norm = nn.LayerNorm(16)
            self.conv = nn.Conv1d(16, 16, 3)
            self.emb = nn.Embedding(10, 16)

    model = nn.Sequential(Block(), Block())
    norm, conv, emb = model[0].norm, model[0].conv, model[0].emb
    before = {k: v.clone() for k, v in model.state_dict().items() if ".q." not in k and ".k." not in k}
    svd_compress(model, rank={"0.q": 4, "1.k": 6}, fused=False)
    assert isinstance(model[0].q, LowRankLinear) and model[0].q.rank == 4
    assert isinstance(model[1].k, LowRankLinear) and model[1].k.rank == 6
    assert type(model[0].k) is nn.Linear and type(model[1].q) is nn.Linear
    assert model[0].norm is norm and model[0].conv is conv and model[0].emb is emb
    after = model.state_dict()
    for k, v in before.items():
        if k in after:
            assert torch.equal(after[k], v)
    # callable: per-layer rank, None leaves a layer alone
    model = nn.Sequential(Block(), Block())
    svd_compress(model, rank=lambda name, lin: 3 if name.endswith("q") else None, fused=False)
    assert [type(m).__name__ for m in (model[0].q, model[0].k, model[1].q, model[1].k)] == \
        ["LowRankLinear", "Linear", "LowRankLinear", "Linear"]


def test_bad_specs():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
    with pytest.raises(ValueError, match="exactly one of"):
        svd_compress(model)
    with pytest.raises(ValueError, match="exactly one of"):
        svd_compress(model, rank=2, energy=0.9)
    with pytest.raises(ValueError, match=r"rank names \['1'\] are not nn.Linear"):
        svd_compress(model, rank={"1": 2})
    with pytest.raises(ValueError, match="rank for '0' must be an int in"):
        svd_compress(model, rank=lambda name, lin: 0)
    with pytest.raises(ValueError, match="rank must be an int in"):
        truncated_svd(torch.randn(4, 6), 5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_lowrank_linear_unfused_matches_factors(dtype):
    lin = nn.Linear(32, 24, dtype=dtype)
    m = LowRankLinear.from_linear(lin, 8, fused=False)
    assert m.A.dtype == dtype and m.bias is not None
    x = torch.randn(3, 32, dtype=dtype)
    ref = (x.double() @ m.A.double() @ m.B.double() + m.bias.double())
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(m(x).double(), ref, rtol=tol, atol=tol)


def test_package_attribute():
    assert flashstream.lowrank.svd_compress is svd_compress


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_lowrank_linear_fused_equals_unfused(dtype):
    lin = nn.Linear(48, 40, dtype=dtype)
    fused = LowRankLinear.from_linear(lin, 12, fused=True)
    unfused = LowRankLinear.from_linear(lin, 12, fused=False)
    x = torch.randn(2, 9, 48, dtype=dtype)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(fused(x), unfused(x), rtol=tol, atol=tol)


def test_svd_compress_fused_model_matches_unfused():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
    x = torch.randn(4, 10, 32)
    a = svd_compress(__import__("copy").deepcopy(model), rank=16, fused=True)
    b = svd_compress(model, rank=16, fused=False)
    assert all(m.fused for m in a.modules() if isinstance(m, LowRankLinear))
    torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-5)


def test_fused_rank_limit():
    from flashstream.ops.lowrank import MAX_RANK
    with pytest.raises(ValueError, match=f"takes rank <= {MAX_RANK}"):
        LowRankLinear(MAX_RANK + 1, MAX_RANK + 1, MAX_RANK + 1, fused=True)
    assert LowRankLinear(MAX_RANK + 1, MAX_RANK + 1, MAX_RANK + 1, fused=False).rank == MAX_RANK + 1
