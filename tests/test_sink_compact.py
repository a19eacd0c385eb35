"""flashstream.ops.sink_cache_compact against the plain-PyTorch gather reference, on every device and
CPU ISA; bad indices raise before anything moves; opcheck; torch.compile; and the point of the op:
a compacted full-layout cache attends exactly like a cache that only ever held the kept tokens."""

import random

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from flashstream.cache import SinkCache
from flashstream.ops import sink_attention_offline, sink_cache_compact
from references.sink_compact import sink_cache_compact_reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def random_cache(rng, B, Hkv, D, page_size, pages_per_head, dtype, device, lengths=None):
    """Pools with random contents and a shuffled page table (each (b, h) owns distinct pages)."""
    P = B * Hkv * pages_per_head + rng.randint(0, 3)
    perm = torch.randperm(P)[: B * Hkv * pages_per_head]
    table = perm.view(B, Hkv, pages_per_head).to(torch.int32)
    kp = torch.randn(P, page_size, D).to(dtype)
    vp = torch.randn(P, page_size, D).to(dtype)
    cap = pages_per_head * page_size
    if lengths is None:
        lengths = [rng.randint(0, cap) for _ in range(B)]
    return kp.to(device), vp.to(device), table.to(device), torch.tensor(lengths, dtype=torch.int64, device=device)


def random_keep(rng, lengths, Hkv, n, index_dtype, device):
    keep = torch.empty(len(lengths), Hkv, n, dtype=torch.int64)
    for b, L in enumerate(lengths):
        for h in range(Hkv):
            keep[b, h] = torch.tensor(sorted(rng.sample(range(L), n)), dtype=torch.int64)
    return keep.to(index_dtype).to(device)


@pytest.mark.parametrize("seed", range(12))
def test_matches_reference(device, seed):
    rng = random.Random(seed)
    B, Hkv = rng.randint(1, 3), rng.randint(1, 4)
    D = rng.choice([1, 3, 8, 64, 128, 256])
    page_size, pph = rng.choice([1, 3, 16]), rng.randint(1, 6)
    dtype = rng.choice(DTYPES)
    cap = page_size * pph
    L = rng.randint(0, cap)
    n = rng.randint(0, L)
    kp, vp, table, lengths = random_cache(rng, B, Hkv, D, page_size, pph, dtype, device, [L] * B)
    keep = random_keep(rng, [L] * B, Hkv, n, rng.choice([torch.int32, torch.int64]), device)
    want = sink_cache_compact_reference(kp, vp, table, lengths, keep)
    sink_cache_compact(kp, vp, table, lengths, keep)
    for got, exp in zip((kp, vp, lengths), want):
        assert torch.equal(got, exp)  # a move: bit-exact


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_fuzz_against_reference(data):
    """Hypothesis over shapes, dtypes, page tables, lengths per stream and kept sets (CPU)."""
    B, Hkv = data.draw(st.integers(1, 3), "B"), data.draw(st.integers(1, 3), "Hkv")
    D = data.draw(st.integers(1, 40), "D")
    page_size, pph = data.draw(st.integers(1, 8), "page_size"), data.draw(st.integers(1, 5), "pph")
    cap = page_size * pph
    lengths = data.draw(st.lists(st.integers(0, cap), min_size=B, max_size=B), "lengths")
    n = data.draw(st.integers(0, min(lengths)), "n")
    rng = random.Random(data.draw(st.integers(0, 2**31 - 1), "seed"))
    kp, vp, table, lens = random_cache(rng, B, Hkv, D, page_size, pph, data.draw(st.sampled_from(DTYPES), "dtype"),
                                       "cpu", lengths)
    keep = torch.cat([random_keep(rng, [L], Hkv, n, torch.int64, "cpu") for L in lengths])
    keep = keep.to(data.draw(st.sampled_from([torch.int32, torch.int64]), "index dtype"))
    want = sink_cache_compact_reference(kp, vp, table, lens, keep)
    sink_cache_compact(kp, vp, table, lens, keep)
    for got, exp in zip((kp, vp, lens), want):
        assert torch.equal(got, exp)


def test_every_cpu_isa(cpu_isa):
    rng = random.Random(7)
    kp, vp, table, lengths = random_cache(rng, 2, 3, 64, 5, 4, torch.bfloat16, "cpu", [20, 17])
    keep = torch.stack([random_keep(rng, [20], 3, 9, torch.int64, "cpu")[0],
                        random_keep(rng, [17], 3, 9, torch.int64, "cpu")[0]])
    want = sink_cache_compact_reference(kp, vp, table, lengths, keep)
    sink_cache_compact(kp, vp, table, lengths, keep)
    for got, exp in zip((kp, vp, lengths), want):
        assert torch.equal(got, exp)


def test_identity_and_empty_keep(device):
    rng = random.Random(1)
    kp, vp, table, lengths = random_cache(rng, 2, 2, 16, 4, 3, torch.float32, device, [9, 9])
    before = (kp.clone(), vp.clone())
    sink_cache_compact(kp, vp, table, lengths, torch.arange(9, device=device).expand(2, 2, 9).contiguous())
    assert torch.equal(kp, before[0]) and torch.equal(vp, before[1]) and lengths.tolist() == [9, 9]
    sink_cache_compact(kp, vp, table, lengths, torch.empty(2, 2, 0, dtype=torch.int64, device=device))
    assert torch.equal(kp, before[0]) and lengths.tolist() == [0, 0]


def snapshot(*ts):
    return [t.clone() for t in ts]


@pytest.mark.parametrize("bad, match", [
    ([0, 2, 9], "outside"),        # 9 >= lengths
    ([-1, 2, 3], "outside"),
    ([0, 3, 2], "strictly ascending"),
    ([0, 2, 2], "strictly ascending"),
])
def test_bad_indices_raise_before_writing(bad, match):
    rng = random.Random(2)
    kp, vp, table, lengths = random_cache(rng, 2, 2, 8, 4, 3, torch.float32, "cpu", [9, 9])
    keep = torch.tensor([[[0, 4, 5], [1, 2, 3]], [[0, 1, 8], bad]], dtype=torch.int64)
    before = snapshot(kp, vp, table, lengths)
    with pytest.raises(ValueError, match=f"sink_cache_compact: .*{match}"):
        sink_cache_compact(kp, vp, table, lengths, keep)
    for a, b in zip(before, (kp, vp, table, lengths)):
        assert torch.equal(a, b)


def test_bad_arguments(device):
    rng = random.Random(3)
    kp, vp, table, lengths = random_cache(rng, 1, 2, 8, 4, 2, torch.float32, device, [6])
    keep = torch.tensor([[[0, 1], [2, 3]]], device=device)
    with pytest.raises(TypeError, match="keep must be int64 or int32"):
        sink_cache_compact(kp, vp, table, lengths, keep.float())
    with pytest.raises(TypeError, match="v_pool must be"):
        sink_cache_compact(kp, vp.double(), table, lengths, keep)
    with pytest.raises(ValueError, match=r"keep must be \[B, Hkv, n\]"):
        sink_cache_compact(kp, vp, table, lengths, keep[:, :1])
    with pytest.raises(ValueError, match="page table holds 8"):
        sink_cache_compact(kp, vp, table, lengths, torch.arange(9, device=device).expand(1, 2, 9).contiguous())
    with pytest.raises(ValueError, match="lengths must be"):
        sink_cache_compact(kp, vp, table, lengths[:0], keep)
    with pytest.raises(ValueError, match="keep must be contiguous"):
        sink_cache_compact(kp, vp, table, lengths, torch.tensor([[[0, 2], [1, 3]]], device=device).transpose(1, 2))
    with pytest.raises(ValueError, match="different tensors"):
        sink_cache_compact(kp, kp, table, lengths, keep)
    if device == "cpu":
        with pytest.raises(ValueError, match="page_table entries"):
            sink_cache_compact(kp, vp, torch.full_like(table, 99), lengths, keep)
        with pytest.raises(ValueError, match=r"lengths must be in \[0, 8\]"):
            sink_cache_compact(kp, vp, table, torch.tensor([9]), keep)


def test_opcheck(device):
    rng = random.Random(4)
    kp, vp, table, lengths = random_cache(rng, 2, 2, 32, 4, 3, torch.float32, device, [10, 10])
    keep = random_keep(rng, [10, 10], 2, 6, torch.int64, device)
    torch.library.opcheck(torch.ops.flashstream.sink_cache_compact.default, (kp, vp, table, lengths, keep))


def test_torch_compile_fullgraph(device):
    rng = random.Random(5)
    kp, vp, table, lengths = random_cache(rng, 1, 2, 16, 4, 3, torch.float32, device, [12])
    keep = random_keep(rng, [12], 2, 7, torch.int32, device)
    want = sink_cache_compact_reference(kp, vp, table, lengths, keep)

    def compact_and_read(kp, vp, table, lengths, keep):
        sink_cache_compact(kp, vp, table, lengths, keep)
        return lengths * 2

    compiled = torch.compile(compact_and_read, fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor")
    out = compiled(kp, vp, table, lengths, keep)
    assert torch.equal(kp, want[0]) and torch.equal(vp, want[1]) and out.tolist() == [14]


@pytest.mark.parametrize("seed", range(4))
def test_compacted_cache_attends_like_a_cache_of_the_kept_tokens(device, seed):
    """positions='cache' over a compacted full-layout cache == offline attention over the kept tokens
    followed by the new ones, at ranks 0..n: StreamingLLM-style positions over any retained set."""
    rng = random.Random(seed)
    B, Hkv, G, D, S, T = 2, 2, 2, 32, 23, rng.choice([1, 4])
    cache = SinkCache(1, B, Hkv, D, sink=0, window=None, page_size=rng.choice([1, 5, 16]), max_tokens=S + T,
                      positions="cache", dtype=torch.float32, device=device)
    q = torch.randn(B, S + T, Hkv * G, D, device=device)
    k, v = torch.randn(B, S + T, Hkv, D, device=device), torch.randn(B, S + T, Hkv, D, device=device)
    cache.step(0, q[:, :S], k[:, :S], v[:, :S])
    n = rng.randint(1, S)
    kept = sorted(rng.sample(range(S), n))  # one kept set for every stream and head (SirLLM's case)
    keep = torch.tensor(kept, device=device).expand(B, Hkv, n).contiguous()
    sink_cache_compact(cache.k_pool[0], cache.v_pool[0], cache.page_table[0], cache.layer_lengths[0], keep)
    cache._host_lengths[0] = [n] * B
    got = cache.step(0, q[:, S:], k[:, S:], v[:, S:])
    idx = torch.tensor(kept + list(range(S, S + T)), device=device)
    want = sink_attention_offline(q[:, idx].contiguous(), k[:, idx].contiguous(), v[:, idx].contiguous(), sink=0,
                                  window=None, positions="cache")[:, n:]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compares the CUDA kernel with the CPU one")
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_cpu(dtype):
    rng = random.Random(6)
    for D in (3, 64, 130, 256):  # 2-, 4- and 16-byte words
        kp, vp, table, lengths = random_cache(rng, 3, 2, D, 7, 40, dtype, "cpu", [250, 280, 171])
        # 170 rows: several tiles of the ordered move, most rows shifted by a few slots
        keep = torch.stack([random_keep(rng, [L], 2, 170, torch.int64, "cpu")[0] for L in (250, 280, 171)])
        ck, cv, cl = kp.cuda(), vp.cuda(), lengths.cuda()
        sink_cache_compact(ck, cv, table.cuda(), cl, keep.cuda())
        sink_cache_compact(kp, vp, table, lengths, keep)
        assert torch.equal(ck.cpu(), kp) and torch.equal(cv.cpu(), vp) and torch.equal(cl.cpu(), lengths)
