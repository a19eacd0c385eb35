"""flashstream.ops.lowrank_attention against the float64 dense reference (q, k, v built from the
factors, masked softmax), on every device and CPU ISA."""

import random

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import HealthCheck, given, settings

from flashstream.ops import lowrank_attention
from references.lowrank_attention import lowrank_attention_reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# fp32: the kernel's fp32 sums against float64. 16-bit: one rounding of the output (and fp32 math
# on the rounded inputs, which the reference sees too).
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 3e-3}


def make_inputs(B, S, Din, H, Dh, ranks, dtype=torch.float32, device="cpu", bias=True, gen=None):
    """x and factors scaled so that q, k, v have entries of order 1 (logits of order sqrt(Dh))."""
    N = H * Dh
    x = torch.randn(B, S, Din, generator=gen)
    factors = []
    for r in ranks:
        A = torch.randn(Din, r, generator=gen) / Din ** 0.5
        Bf = torch.randn(r, N, generator=gen) / r ** 0.5
        b = torch.randn(N, generator=gen) * 0.1 if bias else None
        factors += [A, Bf, b]
    return [None if t is None else t.to(dtype).to(device) for t in [x] + factors]


def check(args, H, dtype, causal=False, key_padding_mask=None):
    out = lowrank_attention(*args, num_heads=H, causal=causal, key_padding_mask=key_padding_mask)
    ref = lowrank_attention_reference(*[None if t is None else t.cpu() for t in args], num_heads=H, causal=causal,
                                      key_padding_mask=key_padding_mask)
    x = args[0]
    assert out.dtype == x.dtype and out.device == x.device and out.shape == (x.shape[0], x.shape[1], args[2].shape[1])
    tol = TOL[dtype]
    torch.testing.assert_close(out.cpu().double(), ref, rtol=tol, atol=tol)
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padding", [False, True])
def test_matches_reference(device, dtype, causal, padding):
    # MiniLM-like head geometry (12 x 32 here to keep it small), ranks differing per projection,
    # S spanning several key blocks and a partial one.
    B, S = 2, 150
    args = make_inputs(B, S, 96, 4, 32, (24, 16, 40), dtype, device)
    mask = None
    if padding:
        lengths = torch.tensor([S, 97])
        mask = (torch.arange(S)[None, :] >= lengths[:, None]).to(device)  # right padding, BERT-style
    check(args, 4, dtype, causal, mask)


@pytest.mark.parametrize("seed", range(10))
def test_random_shapes(device, seed):
    rng = random.Random(seed)
    H = rng.choice([1, 2, 3, 12])
    Dh = rng.choice([1, 3, 16, 20, 32, 64, 100])
    S = rng.choice([1, 2, 17, 64, 65, 129])
    ranks = tuple(rng.choice([1, 5, 16, 33, 70]) for _ in range(3))
    B = rng.randint(1, 3)
    args = make_inputs(B, S, rng.choice([1, 7, 48]), H, Dh, ranks, torch.float32, device, bias=rng.random() < 0.7)
    mask = (torch.rand(B, S) < rng.choice([0.0, 0.3, 0.9])).to(device) if rng.random() < 0.6 else None
    check(args, H, torch.float32, rng.random() < 0.5, mask)


def test_every_cpu_isa(cpu_isa):
    # Dh = 20 is not a multiple of any ISA's lanes: the padded head-dim path.
    for dtype, Dh in ((torch.float32, 64), (torch.bfloat16, 20), (torch.float16, 32)):
        args = make_inputs(2, 70, 40, 3, Dh, (8, 17, 12), dtype, "cpu")
        mask = torch.rand(2, 70) < 0.25
        check(args, 3, dtype, True, mask)
        check(args, 3, dtype, False, None)


def test_fully_padded_rows_are_zero(device):
    args = make_inputs(2, 20, 16, 2, 8, (4, 4, 4), torch.float32, device)
    mask = torch.zeros(2, 20, dtype=torch.bool)
    mask[1] = True                    # every key of sequence 1 is padding
    out = check(args, 2, torch.float32, False, mask.to(device))
    assert torch.equal(out[1].cpu(), torch.zeros(20, 16))
    # causal + left padding: the first queries see no key
    mask = torch.zeros(2, 20, dtype=torch.bool)
    mask[0, :5] = True
    out = check(args, 2, torch.float32, True, mask.to(device))
    assert torch.equal(out[0, :5].cpu(), torch.zeros(5, 16)) and out[0, 5:].abs().sum() > 0


def test_padding_keys_do_not_matter(device):
    # Changing x at padded positions must not change the unpadded queries' outputs.
    args = make_inputs(1, 90, 32, 2, 16, (8, 8, 8), torch.float32, device)
    mask = torch.zeros(1, 90, dtype=torch.bool, device=device)
    mask[0, 60:] = True
    out = lowrank_attention(*args, num_heads=2, key_padding_mask=mask)
    x2 = args[0].clone()
    x2[0, 60:] = torch.randn(30, 32, device=device) * 5
    out2 = lowrank_attention(x2, *args[1:], num_heads=2, key_padding_mask=mask)
    torch.testing.assert_close(out[0, :60], out2[0, :60], rtol=0, atol=0)


def test_independent_of_thread_count():
    # The query tile depends on the thread count; every row meets the same key blocks in the same
    # order whatever its tile, so the result is bitwise the same.
    args = make_inputs(1, 300, 48, 2, 32, (16, 16, 16))
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 7):
            torch.set_num_threads(threads)
            outs.append(lowrank_attention(*args, num_heads=2, causal=True))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_full_rank_factors_equal_sdpa(device):
    # A = I, B = W: the op is ordinary attention over x W; compare with torch's SDPA.
    B, S, H, Dh = 2, 50, 2, 16
    N = H * Dh
    x = torch.randn(B, S, N, dtype=torch.float64)
    Ws = [torch.randn(N, N, dtype=torch.float64) / N ** 0.5 for _ in range(3)]
    eye = torch.eye(N, dtype=torch.float64)
    args = [x.float()] + [t.float() for W in Ws for t in (eye, W, torch.zeros(N, dtype=torch.float64))]
    out = lowrank_attention(*[t.to(device) for t in args], num_heads=H, causal=True)
    q, k, v = [(x @ W).view(B, S, H, Dh).transpose(1, 2) for W in Ws]
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, S, N)
    torch.testing.assert_close(out.cpu().double(), sdpa, rtol=1e-5, atol=1e-5)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(B=st.integers(1, 2), S=st.integers(1, 80), H=st.integers(1, 4), Dh=st.integers(1, 40),
       r=st.integers(1, 40), causal=st.booleans(), pad=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1))
def test_fuzz(B, S, H, Dh, r, causal, pad, seed):
    gen = torch.Generator().manual_seed(seed)
    args = make_inputs(B, S, 24, H, Dh, (r, max(1, r // 2), r + 3), torch.float32, "cpu", gen=gen)
    mask = torch.rand(B, S, generator=gen) < pad
    check(args, H, torch.float32, causal, mask)


def test_opcheck(device):
    args = make_inputs(2, 33, 24, 2, 16, (8, 5, 7), torch.float32, device)
    mask = (torch.rand(2, 33) < 0.3).to(device)
    torch.library.opcheck(torch.ops.flashstream.lowrank_attention.default, (*args, 2, True, mask))
    args[3] = args[6] = None  # no q / k bias
    torch.library.opcheck(torch.ops.flashstream.lowrank_attention.default, (*args, 2, False, None))


def test_torch_compile(device):
    args = make_inputs(2, 40, 24, 2, 16, (8, 8, 8), torch.float32, device)
    mask = (torch.rand(2, 40) < 0.2).to(device)

    def f(x, *rest):
        return torch.nn.functional.gelu(lowrank_attention(x * 2, *rest, num_heads=2, causal=True,
                                                          key_padding_mask=mask))

    compiled = torch.compile(f, fullgraph=True)
    torch.testing.assert_close(compiled(*args), f(*args), rtol=1e-6, atol=1e-6)


def test_meta_shapes():
    args = make_inputs(3, 10, 24, 4, 8, (5, 6, 7), torch.bfloat16, "meta")
    out = lowrank_attention(*args, num_heads=4)
    assert out.shape == (3, 10, 32) and out.dtype == torch.bfloat16 and out.device.type == "meta"


def test_bad_inputs(device):
    def call(args, H=2, **kw):
        return lowrank_attention(*args, num_heads=H, **kw)

    good = make_inputs(2, 8, 12, 2, 4, (3, 3, 3), torch.float32, device)

    def replaced(i, value):
        args = list(good)
        args[i] = value
        return args

    with pytest.raises(ValueError, match=r"lowrank_attention: Bq must be \[rank, N\] with the rank of Aq = 3"):
        call(replaced(2, torch.randn(4, 8, device=device)))  # rank mismatch between Aq and Bq
    with pytest.raises(ValueError, match=r"lowrank_attention: Av must be \[D_in, rank\]"):
        call(replaced(7, torch.randn(11, 3, device=device)))
    with pytest.raises(ValueError, match=r"lowrank_attention: Bk must be \[rank, N\] with N = Bq.shape\[1\] = 8"):
        call(replaced(5, torch.randn(3, 6, device=device)))
    with pytest.raises(ValueError, match="multiple of num_heads = 3"):
        call(good, H=3)  # N = 8 is not 3 * head_dim
    with pytest.raises(ValueError, match="num_heads must be >= 1"):
        call(good, H=0)
    with pytest.raises(TypeError, match="num_heads must be an int"):
        call(good, H=2.0)
    with pytest.raises(TypeError, match="lowrank_attention: Ak must be Float"):
        call(replaced(4, good[4].double()))
    with pytest.raises(TypeError, match="lowrank_attention: x must be float32, float16 or bfloat16"):
        call([good[0].double()] + [None if t is None else t.double() for t in good[1:]])
    with pytest.raises(ValueError, match=r"lowrank_attention: bv must be \[N\] = \[8\]"):
        call(replaced(9, torch.randn(7, device=device)))
    with pytest.raises(ValueError, match=r"lowrank_attention: x must be \[B, S, D_in\]"):
        call(replaced(0, good[0][0]))
    with pytest.raises(ValueError, match="lowrank_attention: x must be contiguous"):
        call(replaced(0, good[0].transpose(0, 1).contiguous().transpose(0, 1)))
    with pytest.raises(ValueError, match=r"lowrank_attention: key_padding_mask must be \[B, S\]"):
        call(good, key_padding_mask=torch.zeros(2, 9, dtype=torch.bool, device=device))
    with pytest.raises(TypeError, match="lowrank_attention: key_padding_mask must be Bool"):
        call(good, key_padding_mask=torch.zeros(2, 8, device=device))
    with pytest.raises(ValueError, match="head_dim = N / num_heads must be <= 256"):
        call(make_inputs(1, 2, 4, 1, 257, (2, 2, 2), torch.float32, device), H=1)
    with pytest.raises(RuntimeError, match="inference-only"):
        call(replaced(1, good[1].clone().requires_grad_()))


def test_wrong_device():
    good = make_inputs(2, 8, 12, 2, 4, (3, 3, 3))
    other = "cuda" if torch.cuda.is_available() else "meta"
    args = list(good)
    args[2] = args[2].to(other)
    with pytest.raises((ValueError, RuntimeError), match="Bq must be on the same device as x"):
        lowrank_attention(*args, num_heads=2)
