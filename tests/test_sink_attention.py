"""flashstream.ops.sink_attention_offline against the fp64 gather reference, on every device and CPU ISA."""

import random

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import HealthCheck, given, settings

from flashstream.ops import sink_attention_offline
from references.sink_attention import sink_attention_reference, visible_tokens

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
TOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 4e-3}


def rand_qkv(B, S, Hq, Hkv, D, dtype, device, gen=None):
    q = torch.randn(B, S, Hq, D, generator=gen)
    k = torch.randn(B, S, Hkv, D, generator=gen)
    v = torch.randn(B, S, Hkv, D, generator=gen)
    return [t.to(dtype).to(device) for t in (q, k, v)]


def check(q, k, v, dtype, **kw):
    out, lse = sink_attention_offline(q, k, v, return_lse=True, **kw)
    ref, ref_lse = sink_attention_reference(q.cpu(), k.cpu(), v.cpu(), **kw)
    assert out.dtype == q.dtype and out.shape == q.shape and lse.dtype == torch.float32
    tol = TOL[dtype]
    torch.testing.assert_close(out.cpu().double(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(lse.cpu().double(), ref_lse, rtol=tol, atol=tol)


def test_visibility_rules_by_hand():
    # causal, sink 2, window 3: query 6 sees 0, 1 and 4, 5, 6
    assert visible_tokens(6, 0, 10, sink=2, window=3, mask="causal", chunk=None, full=False) == [0, 1, 4, 5, 6]
    assert visible_tokens(1, 0, 10, sink=2, window=3, mask="causal", chunk=None, full=False) == [0, 1]
    assert visible_tokens(6, 0, 10, sink=2, window=3, mask="causal", chunk=None, full=True) == list(range(7))
    # chunk 4: query 9 is in chunk [8, 12) and sees sinks 0, 1, the 3 before its chunk, and the chunk
    assert visible_tokens(9, 0, 12, sink=2, window=3, mask="chunk", chunk=4, full=False) == [0, 1, 5, 6, 7, 8, 9, 10, 11]


@pytest.mark.parametrize("positions", ["cache", "absolute", "none"])
@pytest.mark.parametrize("rope_style", ["half", "interleaved"])
@pytest.mark.parametrize("mask", ["causal", "chunk"])
def test_modes(device, positions, rope_style, mask):
    q, k, v = rand_qkv(2, 45, 6, 2, 64, torch.float32, device)
    check(q, k, v, torch.float32, sink=3, window=7, positions=positions, rope_style=rope_style, mask=mask,
          chunk_size=5 if mask == "chunk" else None, rope_theta=500.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("D", [64, 128])
def test_dtypes_and_head_dims(device, dtype, D):
    q, k, v = rand_qkv(1, 70, 8, 2, D, dtype, device)
    check(q, k, v, dtype, sink=4, window=16)


@pytest.mark.parametrize("seed", range(12))
def test_random_shapes(device, seed):
    rng = random.Random(seed)
    Hkv = rng.choice([1, 2, 3])
    G = rng.choice([1, 2, 3, 4, 7])
    D = rng.choice([2, 6, 16, 32, 64, 80, 128])
    S = rng.choice([1, 2, 13, 64, 65, 130])
    sink = rng.randint(0, 8)
    window = rng.choice([1, 2, 5, 31, 64, 100, 512, None])
    mask = rng.choice(["causal", "chunk"])
    full = torch.tensor([rng.random() < 0.4 for _ in range(Hkv)]) if rng.random() < 0.5 else None
    kw = dict(sink=sink, window=window, mask=mask, chunk_size=rng.randint(1, 20) if mask == "chunk" else None,
              positions=rng.choice(["cache", "absolute", "none"]), rope_style=rng.choice(["half", "interleaved"]),
              full_heads=None if full is None else full.to(device), scale=rng.choice([None, 0.3]))
    q, k, v = rand_qkv(rng.randint(1, 3), S, Hkv * G, Hkv, D, torch.float32, device)
    out, lse = sink_attention_offline(q, k, v, return_lse=True, **kw)
    kw["full_heads"] = full
    ref, ref_lse = sink_attention_reference(q.cpu(), k.cpu(), v.cpu(), **kw)
    torch.testing.assert_close(out.cpu().double(), ref, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(lse.cpu().double(), ref_lse, rtol=2e-5, atol=2e-5)


def test_every_cpu_isa(cpu_isa):
    # D = 80 is not a multiple of the AVX-512 lane count: exercises the scalar row path too.
    for D in (64, 80):
        q, k, v = rand_qkv(2, 67, 6, 3, D, torch.bfloat16, "cpu")
        check(q, k, v, torch.bfloat16, sink=4, window=20, positions="cache")
        q, k, v = rand_qkv(1, 67, 4, 4, D, torch.float32, "cpu")
        check(q, k, v, torch.float32, sink=2, window=9, mask="chunk", chunk_size=6, positions="absolute",
              full_heads=torch.tensor([False, True, False, True]))


def test_softcap_and_sink_logits(device):
    q, k, v = rand_qkv(2, 40, 4, 2, 64, torch.float32, device)
    q = q * 4  # large logits, so the cap matters
    sl = torch.randn(4) * 3
    check(q, k, v, torch.float32, sink=2, window=9, softcap=3.0, sink_logits=sl.to(device))
    # a huge sink logit takes (almost) all the mass: the output goes to 0, lse to the logit
    out, lse = sink_attention_offline(q, k, v, sink=2, window=9, sink_logits=torch.full((4,), 80.0, device=device),
                                      return_lse=True)
    assert out.abs().max() < 1e-20
    torch.testing.assert_close(lse.cpu(), torch.full_like(lse.cpu(), 80.0))


def test_window_none_equals_full_attention(device):
    q, k, v = rand_qkv(1, 50, 4, 4, 64, torch.float32, device)
    a = sink_attention_offline(q, k, v, sink=3, window=None, positions="absolute")
    b = sink_attention_offline(q, k, v, sink=0, window=10, positions="absolute",
                               full_heads=torch.ones(4, dtype=torch.bool, device=device))
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    # positions="absolute" with every token visible is plain causal RoPE attention: equals SDPA
    from references.sink_attention import rope
    pos = torch.arange(50)
    qr = rope(q.double().cpu(), pos[:, None], 10000.0, "half")
    kr = rope(k.double().cpu(), pos[:, None], 10000.0, "half")
    sdpa = torch.nn.functional.scaled_dot_product_attention(qr.transpose(1, 2), kr.transpose(1, 2),
                                                            v.double().cpu().transpose(1, 2), is_causal=True)
    torch.testing.assert_close(a.cpu().double(), sdpa.transpose(1, 2), rtol=2e-5, atol=2e-5)


def test_cache_positions_shift_invariant(device):
    # With positions="cache" a query sees only ranks, so prepending tokens that fall out of every
    # window (after the sinks) changes nothing: the last queries of a long sequence equal those of
    # the short one made of the sinks plus the recent tokens.
    sink, window = 4, 16
    q, k, v = rand_qkv(1, 300, 2, 1, 64, torch.float32, device)
    long = sink_attention_offline(q, k, v, sink=sink, window=window)
    keep = torch.cat([torch.arange(sink), torch.arange(300 - window, 300)])
    short = sink_attention_offline(q[:, keep], k[:, keep], v[:, keep], sink=sink, window=window)
    torch.testing.assert_close(long[:, -1], short[:, -1], rtol=1e-5, atol=1e-5)


def test_bad_inputs(device):
    q, k, v = rand_qkv(1, 8, 4, 2, 64, torch.float32, device)
    with pytest.raises(ValueError, match="positions must be"):
        sink_attention_offline(q, k, v, sink=1, window=4, positions="rank")
    with pytest.raises(ValueError, match="rope_style must be"):
        sink_attention_offline(q, k, v, sink=1, window=4, rope_style="neox")
    with pytest.raises(ValueError, match="window must be >= 1"):
        sink_attention_offline(q, k, v, sink=1, window=0)
    with pytest.raises(ValueError, match="sink must be >= 0"):
        sink_attention_offline(q, k, v, sink=-1, window=4)
    with pytest.raises(ValueError, match="multiple of k heads"):
        sink_attention_offline(q[:, :, :3].contiguous(), k, v, sink=1, window=4)
    with pytest.raises(ValueError, match="head dim must be even"):
        sink_attention_offline(q[..., :7].contiguous(), k[..., :7].contiguous(), v[..., :7].contiguous(), sink=1, window=4)
    with pytest.raises(TypeError, match="k must be"):
        sink_attention_offline(q, k.half(), v, sink=1, window=4)
    with pytest.raises(ValueError, match="contiguous"):
        sink_attention_offline(q.transpose(1, 2).contiguous().transpose(1, 2), k, v, sink=1, window=4)
    with pytest.raises(ValueError, match="full_heads must be"):
        sink_attention_offline(q, k, v, sink=1, window=4, full_heads=torch.ones(3, dtype=torch.bool, device=device))
    with pytest.raises(ValueError, match="chunk_size"):
        sink_attention_offline(q, k, v, sink=1, window=4, mask="chunk")


def test_empty(device):
    q, k, v = rand_qkv(0, 5, 4, 2, 64, torch.float32, device)
    assert sink_attention_offline(q, k, v, sink=1, window=4).shape == q.shape


def test_opcheck(device):
    q, k, v = rand_qkv(1, 9, 4, 2, 64, torch.float32, device)
    torch.library.opcheck(torch.ops.flashstream.sink_attention.default,
                          (q, k, v, None, None, None, None, None, 2, 4, "cache", 1e4, "half", "causal", 0, 0.125, 0.0, None))


def test_torch_compile_fullgraph(device):
    q, k, v = rand_qkv(1, 20, 4, 2, 64, torch.float32, device)

    def f(q, k, v):
        return sink_attention_offline(q * 2, k, v, sink=2, window=5).sum(-1)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor")
    torch.testing.assert_close(compiled(q, k, v), f(q, k, v))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_against_reference(data):
    """Hypothesis over the whole configuration space (small shapes), CPU, fp32."""
    Hkv = data.draw(st.integers(1, 3), "Hkv")
    G = data.draw(st.integers(1, 4), "G")
    D = data.draw(st.sampled_from([2, 4, 8, 18, 32, 64]), "D")
    S = data.draw(st.integers(1, 40), "S")
    mask = data.draw(st.sampled_from(["causal", "chunk"]), "mask")
    full = data.draw(st.lists(st.booleans(), min_size=Hkv, max_size=Hkv), "full")
    kw = dict(sink=data.draw(st.integers(0, 8), "sink"), window=data.draw(st.one_of(st.none(), st.integers(1, 45)), "window"),
              mask=mask, chunk_size=data.draw(st.integers(1, 12), "chunk") if mask == "chunk" else None,
              positions=data.draw(st.sampled_from(["cache", "absolute", "none"]), "positions"),
              rope_style=data.draw(st.sampled_from(["half", "interleaved"]), "style"),
              rope_theta=data.draw(st.sampled_from([10.0, 1e4, 1e6]), "theta"),
              full_heads=torch.tensor(full), softcap=data.draw(st.sampled_from([None, 2.0]), "softcap"))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), "seed"))
    q, k, v = rand_qkv(data.draw(st.integers(1, 2), "B"), S, Hkv * G, Hkv, D, torch.float32, "cpu", gen)
    out, lse = sink_attention_offline(q, k, v, return_lse=True, **kw)
    ref, ref_lse = sink_attention_reference(q, k, v, **kw)
    torch.testing.assert_close(out.double(), ref, rtol=3e-5, atol=3e-5)
    torch.testing.assert_close(lse.double(), ref_lse, rtol=3e-5, atol=3e-5)


def test_bf16_paths_agree():
    # bf16 inputs take bf16 dot products on AVX512-BF16 CPUs and fp32 FMAs elsewhere; both must
    # sit within bf16 rounding of each other (and of the reference, checked above per ISA).
    from flashstream import _C

    q, k, v = rand_qkv(2, 130, 6, 2, 128, torch.bfloat16, "cpu")
    before = _C.cpu_isa()
    try:
        outs = []
        for isa in _C.available_cpu_isas().split(","):
            _C.set_cpu_isa(isa)
            outs.append(sink_attention_offline(q, k, v, sink=3, window=50, softcap=4.0).float())
    finally:
        _C.set_cpu_isa(before)
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=2e-2, atol=2e-2)
        assert (o - outs[0]).abs().mean() < 2e-3
