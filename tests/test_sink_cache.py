"""flashstream.cache.SinkCache: streaming through the paged cache equals the offline op and the fp64
references, for any chunking; eviction, EMA sinks, pool limits, reset, long streams, graphs."""

import random

import pytest
import torch

from flashstream.cache import SinkCache
from flashstream.ops import sink_attention_offline, sink_cache_append, sink_cache_attend
from references.sink_attention import sink_attention_reference, streaming_reference


def rand_qkv(B, S, Hq, Hkv, D, dtype, device):
    return [torch.randn(B, S, h, D).to(dtype).to(device) for h in (Hq, Hkv, Hkv)]


def random_chunks(rng, S, window):
    """Chunk sizes summing to S: ones, primes, and chunks longer than the window."""
    out, n = [], 0
    while n < S:
        T = rng.choice([1, 1, 2, 3, 5, 7, 13, 31, (window or 8) + rng.randint(1, 9)])
        T = min(T, S - n)
        out.append(T)
        n += T
    return out


def stream(cache, q, k, v, chunks, layer=0, mask="causal", **kw):
    outs, n = [], 0
    for T in chunks:
        outs.append(cache.step(layer, q[:, n:n + T], k[:, n:n + T], v[:, n:n + T], mask=mask, **kw))
        n += T
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("seed", range(16))
def test_streaming_equals_offline(device, seed):
    rng = random.Random(seed)
    Hkv, G = rng.choice([1, 2, 3]), rng.choice([1, 2, 3, 4])
    D = rng.choice([16, 64, 128])
    sink = rng.randint(0, 8)
    window = rng.choice([1, 3, 8, 17, 64, 200, None])
    S = rng.choice([40, 97, 250])
    full = torch.tensor([[rng.random() < 0.3 for _ in range(Hkv)]])
    positions = rng.choice(["cache", "absolute", "none"])
    style = rng.choice(["half", "interleaved"])
    B = rng.randint(1, 3)
    cache = SinkCache(1, B, Hkv, D, sink=sink, window=window, page_size=rng.choice([1, 3, 16, 64]), full_heads=full,
                      positions=positions, rope_style=style, max_tokens=S, dtype=torch.float32, device=device)
    q, k, v = rand_qkv(B, S, Hkv * G, Hkv, D, torch.float32, device)
    got = stream(cache, q, k, v, random_chunks(rng, S, window))
    want = sink_attention_offline(q, k, v, sink=sink, window=window, positions=positions, rope_style=style,
                                  full_heads=full[0].to(device))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert cache.lengths.tolist() == [S] * B


def test_long_window_streaming_equals_offline(device):
    # window 512 with a ring that wraps, chunks of 1 to more than the window, bf16 storage
    rng = random.Random(9)
    S, window = 1400, 512
    cache = SinkCache(1, 1, 2, 64, sink=8, window=window, page_size=64, dtype=torch.bfloat16, device=device)
    q, k, v = rand_qkv(1, S, 6, 2, 64, torch.bfloat16, device)
    got = stream(cache, q, k, v, random_chunks(rng, S, window))
    want = sink_attention_offline(q, k, v, sink=8, window=window)
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("seed", range(4))
def test_chunk_mask_streaming_equals_offline(device, seed):
    rng = random.Random(100 + seed)
    C, sink, window = rng.choice([1, 4, 7, 16]), rng.randint(0, 5), rng.choice([1, 5, 12, 40])
    S = 61
    full = torch.tensor([[False, rng.random() < 0.5]])
    cache = SinkCache(1, 2, 2, 64, sink=sink, window=window, page_size=rng.choice([1, 5, 16]), full_heads=full,
                      max_tokens=S, dtype=torch.float32, device=device)
    q, k, v = rand_qkv(2, S, 4, 2, 64, torch.float32, device)
    chunks = [C] * (S // C) + ([S % C] if S % C else [])
    got = stream(cache, q, k, v, chunks, mask="chunk")
    want = sink_attention_offline(q, k, v, sink=sink, window=window, mask="chunk", chunk_size=C,
                                  full_heads=full[0].to(device))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_streaming_matches_fp64_reference(device, dtype):
    rng = random.Random(7)
    sink, window, S = 3, 11, 60
    full = torch.tensor([[False, True, False]])
    cache = SinkCache(1, 2, 3, 64, sink=sink, window=window, page_size=4, full_heads=full, max_tokens=S,
                      rope_style="interleaved", dtype=dtype, device=device)
    q, k, v = rand_qkv(2, S, 6, 3, 64, dtype, device)
    got = stream(cache, q, k, v, random_chunks(rng, S, window))
    ref, _ = sink_attention_reference(q.cpu(), k.cpu(), v.cpu(), sink=sink, window=window, rope_style="interleaved",
                                      full_heads=full[0])
    tol = {torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 4e-3}[dtype]
    torch.testing.assert_close(got.cpu().double(), ref, rtol=tol, atol=tol)


def test_step_of_t_equals_t_steps_of_one(device):
    cache_a = SinkCache(1, 1, 2, 64, sink=2, window=9, page_size=4, dtype=torch.float32, device=device)
    cache_b = SinkCache(1, 1, 2, 64, sink=2, window=9, page_size=4, dtype=torch.float32, device=device)
    q, k, v = rand_qkv(1, 40, 2, 2, 64, torch.float32, device)
    a = stream(cache_a, q, k, v, [40])
    b = stream(cache_b, q, k, v, [1] * 40)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.9])
def test_ema_sinks_match_reference(device, alpha):
    rng = random.Random(3)
    sink, window, S = 3, 5, 47
    full = torch.tensor([[False, True]])
    cache = SinkCache(1, 2, 2, 32, sink=sink, window=window, page_size=3, ema_alpha=alpha, full_heads=full,
                      max_tokens=S, dtype=torch.float32, device=device)
    q, k, v = rand_qkv(2, S, 4, 2, 32, torch.float32, device)
    chunks = random_chunks(rng, S, window)
    got = stream(cache, q, k, v, chunks)
    ref = streaming_reference(q.cpu(), k.cpu(), v.cpu(), chunks, sink=sink, window=window, ema_alpha=alpha,
                              full_heads=full[0])
    torch.testing.assert_close(got.cpu().double(), ref, rtol=2e-5, atol=2e-5)
    # EMA actually changed something (else this test could not fail)
    static = sink_attention_offline(q, k, v, sink=sink, window=window, full_heads=full[0].to(device))
    assert (got - static).abs().max() > 1e-3


def test_ema_alpha_one_is_static_bit_for_bit(device):
    q, k, v = rand_qkv(1, 80, 4, 2, 64, torch.bfloat16, device)
    chunks = random_chunks(random.Random(5), 80, 6)
    outs = []
    for alpha in (None, 1.0):
        cache = SinkCache(1, 1, 2, 64, sink=4, window=6, page_size=5, ema_alpha=alpha, device=device)
        outs.append(stream(cache, q, k, v, chunks))
    assert torch.equal(outs[0], outs[1])


def live_rows(cache, layer, b, h):
    """Pool rows (page * page_size + row) holding tokens stream b, head h still retains."""
    n = int(cache.layer_lengths[layer, b])
    full = bool(cache.full_heads[layer][h])
    if full or cache.window is None:
        tokens = range(n)
    else:
        tokens = list(range(min(cache.sink, n))) + list(range(max(cache.sink, n - cache.window), n))
    rows = []
    for p in tokens:
        slot = p if (full or cache.window is None or p < cache.sink) else cache.sink + (p - cache.sink) % cache.window
        page = int(cache.page_table[layer][b, h, slot // cache.page_size])
        rows.append(page * cache.page_size + slot % cache.page_size)
    return rows


def poison_dead_slots(cache, layer=0):
    live = torch.zeros(cache.k_pool[layer].shape[0] * cache.page_size, dtype=torch.bool)
    for b in range(cache.batch_size):
        for h in range(cache.num_kv_heads):
            live[live_rows(cache, layer, b, h)] = True
    dead = (~live).to(cache.device)
    for pool in (cache.k_pool[layer], cache.v_pool[layer]):
        pool.view(-1, cache.head_dim)[dead] = float("nan")
    return int((~live).sum())


def test_evicted_slots_never_reach_an_output(device):
    rng = random.Random(11)
    sink, window, S = 2, 7, 90
    full = torch.tensor([[True, False]])
    clean = SinkCache(1, 2, 2, 64, sink=sink, window=window, page_size=4, full_heads=full, max_tokens=S,
                      dtype=torch.float32, device=device)
    dirty = SinkCache(1, 2, 2, 64, sink=sink, window=window, page_size=4, full_heads=full, max_tokens=S,
                      dtype=torch.float32, device=device)
    q, k, v = rand_qkv(2, S, 4, 2, 64, torch.float32, device)
    n, poisoned = 0, 0
    for T in random_chunks(rng, S, window):
        poisoned += poison_dead_slots(dirty)
        a = clean.step(0, q[:, n:n + T], k[:, n:n + T], v[:, n:n + T])
        b = dirty.step(0, q[:, n:n + T], k[:, n:n + T], v[:, n:n + T])
        assert torch.isfinite(b).all()
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        n += T
    assert poisoned > 0


def test_memory_constant_over_a_long_stream(device):
    window = 8
    cache = SinkCache(2, 2, 2, 32, sink=2, window=window, page_size=3, dtype=torch.float32, device=device)
    before = cache.memory_bytes()
    ptrs = [t.data_ptr() for t in cache.k_pool + cache.v_pool]
    rng = random.Random(0)
    S = 100 * window
    q, k, v = rand_qkv(2, S, 4, 2, 32, torch.float32, device)
    for layer in range(2):
        out = stream(cache, q, k, v, random_chunks(rng, S, window), layer=layer)
        assert torch.isfinite(out).all()
        assert cache.memory_bytes() == before
    assert [t.data_ptr() for t in cache.k_pool + cache.v_pool] == ptrs
    # pools + tables + lengths + masks, and nothing that grows with the stream
    slots = 2 * 2 * 2 * (-(-(2 + window) // 3) * 3)  # layers * streams * heads * padded slots
    assert before >= 2 * slots * 32 * 4
    assert cache.lengths.tolist() == [S, S]


def snapshot(cache):
    return [t.clone() for t in cache.k_pool + cache.v_pool + [cache._lengths]]


def test_pool_exhaustion_raises_and_changes_nothing(device):
    cache = SinkCache(1, 2, 2, 16, sink=2, window=4, page_size=4, full_heads=torch.tensor([[False, True]]),
                      max_tokens=20, dtype=torch.float32, device=device)
    q, k, v = rand_qkv(2, 30, 2, 2, 16, torch.float32, device)
    stream(cache, q, k, v, [15])
    before = snapshot(cache)
    with pytest.raises(ValueError, match="pool exhausted"):
        cache.step(0, q[:, 15:25], k[:, 15:25], v[:, 15:25])
    for a, b in zip(before, snapshot(cache)):
        assert torch.equal(a.nan_to_num(), b.nan_to_num())
    cache.step(0, q[:, 15:20], k[:, 15:20], v[:, 15:20])  # exactly max_tokens: fine
    assert cache.lengths.tolist() == [20, 20]


def test_append_op_rejects_overflow_before_writing():
    # The CPU op checks the page table's capacity itself (not only SinkCache's host mirror).
    cache = SinkCache(1, 1, 1, 16, sink=1, window=None, page_size=4, max_tokens=8, dtype=torch.float32, device="cpu")
    k = torch.randn(1, 9, 1, 16)
    before = snapshot(cache)
    with pytest.raises(ValueError, match="pool exhausted"):
        sink_cache_append(k, k, cache.k_pool[0], cache.v_pool[0], cache.page_table[0], cache._lengths[0], sink=1,
                          window=None, full_heads=cache.full_heads[0])
    for a, b in zip(before, snapshot(cache)):
        assert torch.equal(a, b)


def test_reset_restarts_only_the_given_streams(device):
    q, k, v = rand_qkv(3, 50, 2, 1, 32, torch.float32, device)
    cache = SinkCache(1, 3, 1, 32, sink=2, window=6, page_size=4, dtype=torch.float32, device=device)
    stream(cache, q, k, v, [20, 5])
    cache.reset([1])
    assert cache.lengths.tolist() == [25, 0, 25]
    out = cache.step(0, q[:, 25:40], k[:, 25:40], v[:, 25:40])
    fresh = SinkCache(1, 1, 1, 32, sink=2, window=6, page_size=4, dtype=torch.float32, device=device)
    want1 = fresh.step(0, q[1:2, 25:40], k[1:2, 25:40], v[1:2, 25:40])
    torch.testing.assert_close(out[1:2], want1, rtol=1e-6, atol=1e-6)
    full = sink_attention_offline(*(t[:, :40].contiguous() for t in (q, k, v)), sink=2, window=6)
    torch.testing.assert_close(out[[0, 2]], full[[0, 2], 25:40], rtol=1e-5, atol=1e-5)


def test_cache_positions_after_ten_million_tokens(device):
    # Ring contents depend on the stream length only modulo the window, so shifting a stream's
    # counter by a multiple of the window past the sinks relabels its ring tokens as tokens ~10M
    # later: that is the state of a 10-million-token stream. In "cache" mode its outputs must equal
    # those of the unshifted stream, and those of a fresh stream fed only the visible tokens.
    sink, window = 4, 24
    q, k, v = rand_qkv(1, 120, 4, 2, 64, torch.float32, device)
    mk = lambda: SinkCache(1, 1, 2, 64, sink=sink, window=window, page_size=8, dtype=torch.float32, device=device)
    short, long = mk(), mk()
    stream(short, q, k, v, [90])
    stream(long, q, k, v, [90])
    shift = (10_000_000 // window) * window
    long._lengths += shift
    long._host_lengths[0][0] += shift
    a = stream(short, q[:, 90:], k[:, 90:], v[:, 90:], [1] * 30)
    b = stream(long, q[:, 90:], k[:, 90:], v[:, 90:], [1] * 30)
    assert long.lengths.item() == shift + 120
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # A fresh stream fed the sinks and the window-1 tokens before token 119, then token 119.
    keep = list(range(sink)) + list(range(119 - window + 1, 120))
    fresh = mk()
    f = stream(fresh, q[:, keep], k[:, keep], v[:, keep], [len(keep)])
    torch.testing.assert_close(b[:, -1], f[:, -1], rtol=1e-6, atol=1e-6)


def test_arbitrary_page_tables(device):
    # The kernels follow the page table: permuting pages (and the pool rows with them) changes nothing.
    cache = SinkCache(1, 2, 2, 32, sink=3, window=10, page_size=3, dtype=torch.float32, device=device)
    q, k, v = rand_qkv(2, 40, 4, 2, 32, torch.float32, device)
    kp, vp = cache.k_pool[0].clone(), cache.v_pool[0].clone()
    P = kp.shape[0]
    perm = torch.randperm(P)
    table = perm.to(torch.int32).to(device)[cache.page_table[0].long()]
    kp2, vp2 = torch.full_like(kp, float("nan")), torch.full_like(vp, float("nan"))
    lengths = torch.zeros(2, dtype=torch.int64, device=device)
    kw = dict(sink=3, window=10)
    n = 0
    for T in [5, 1, 13, 2, 19]:
        qs, ks, vs = (t[:, n:n + T].contiguous() for t in (q, k, v))
        a = cache.step(0, qs, ks, vs)
        b, _ = sink_cache_attend(qs, ks, vs, kp2, vp2, table, lengths, **kw)
        sink_cache_append(ks, vs, kp2, vp2, table, lengths, **kw)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        n += T


def test_bad_arguments(device):
    with pytest.raises(ValueError, match="max_tokens"):
        SinkCache(1, 1, 2, 32, window=None, device=device)
    with pytest.raises(ValueError, match="full_heads must be"):
        SinkCache(1, 1, 2, 32, full_heads=torch.ones(2, 3, dtype=torch.bool), max_tokens=4, device=device)
    with pytest.raises(ValueError, match="ema_alpha"):
        SinkCache(1, 1, 2, 32, sink=0, ema_alpha=0.5, device=device)
    cache = SinkCache(1, 1, 2, 32, sink=2, window=4, dtype=torch.float32, device=device)
    q, k, v = rand_qkv(1, 3, 2, 2, 32, torch.float32, device)
    before = snapshot(cache)
    with pytest.raises(ValueError, match="mask must be"):
        cache.step(0, q, k, v, mask="bidirectional")
    with pytest.raises(TypeError):
        cache.step(0, q, k.double(), v)
    for a, b in zip(before, snapshot(cache)):
        assert torch.equal(a, b)


def test_opcheck(device):
    cache = SinkCache(1, 2, 2, 32, sink=2, window=5, page_size=4, full_heads=torch.tensor([[True, False]]),
                      max_tokens=32, dtype=torch.float32, device=device)
    q, k, v = rand_qkv(2, 7, 4, 2, 32, torch.float32, device)
    cache.step(0, q, k, v)
    args = (q, k, v, cache.k_pool[0], cache.v_pool[0], cache.page_table[0], cache._lengths[0].clone(),
            cache.full_heads[0])
    torch.library.opcheck(torch.ops.flashstream.sink_attention.default,
                          args + (2, 5, "cache", 1e4, "half", "causal", 7, 0.2, 0.0, None))
    torch.library.opcheck(torch.ops.flashstream.sink_cache_append.default,
                          (k, v, cache.k_pool[0].clone(), cache.v_pool[0].clone(), cache.page_table[0],
                           cache._lengths[0].clone(), cache.full_heads[0], 2, 5, 0.5))


def test_torch_compile_fullgraph(device):
    cache = SinkCache(1, 1, 2, 32, sink=2, window=5, page_size=4, dtype=torch.float32, device=device)
    ref_cache = SinkCache(1, 1, 2, 32, sink=2, window=5, page_size=4, dtype=torch.float32, device=device)
    q, k, v = rand_qkv(1, 12, 4, 2, 32, torch.float32, device)

    def step(q, k, v, kp, vp, table, lengths):
        out, _ = sink_cache_attend(q, k, v, kp, vp, table, lengths, sink=2, window=5)
        sink_cache_append(k, v, kp, vp, table, lengths, sink=2, window=5)
        return out * 2

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor")
    for n in range(0, 12, 3):
        sl = slice(n, n + 3)
        got = compiled(q[:, sl].contiguous(), k[:, sl].contiguous(), v[:, sl].contiguous(), cache.k_pool[0], cache.v_pool[0], cache.page_table[0],
                       cache._lengths[0])
        want = ref_cache.step(0, q[:, sl], k[:, sl], v[:, sl]) * 2
        torch.testing.assert_close(got, want)
    assert cache._lengths[0].item() == 12


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA-graph capture needs a CUDA device")
def test_cuda_graph_decode_step():
    B, Hkv, D = 2, 2, 64
    cache = SinkCache(1, B, Hkv, D, sink=4, window=16, page_size=8, dtype=torch.bfloat16, device="cuda")
    eager = SinkCache(1, B, Hkv, D, sink=4, window=16, page_size=8, dtype=torch.bfloat16, device="cuda")
    q, k, v = rand_qkv(B, 60, 8, Hkv, D, torch.bfloat16, "cuda")
    stream(cache, q, k, v, [20])
    stream(eager, q, k, v, [20])
    sq, sk, sv = q[:, :1].clone(), k[:, :1].clone(), v[:, :1].clone()
    sout = torch.empty_like(sq)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        cache.step(0, sq, sk, sv, out=sout)  # into a caller-owned output (the LSE buffer is made once)
    # capture recorded the step without running it: the cache is still at 20
    assert cache.lengths.tolist() == [20, 20]
    for t in range(20, 60):
        sq.copy_(q[:, t:t + 1]); sk.copy_(k[:, t:t + 1]); sv.copy_(v[:, t:t + 1])
        g.replay()
        want = eager.step(0, q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1])
        torch.testing.assert_close(sout, want, rtol=0, atol=0)
    assert cache.lengths.tolist() == [60, 60]


def test_step_into_caller_owned_output(device):
    a = SinkCache(1, 2, 2, 32, sink=2, window=5, page_size=4, dtype=torch.float32, device=device)
    b = SinkCache(1, 2, 2, 32, sink=2, window=5, page_size=4, dtype=torch.float32, device=device)
    q, k, v = rand_qkv(2, 12, 4, 2, 32, torch.float32, device)
    buf = torch.full((2, 1, 4, 32), float("nan"), device=device)
    for t in range(12):
        sl = slice(t, t + 1)
        got = a.step(0, q[:, sl], k[:, sl], v[:, sl], out=buf)
        assert got is buf
        torch.testing.assert_close(buf, b.step(0, q[:, sl], k[:, sl], v[:, sl]), rtol=0, atol=0)
    assert len(a._lse_buffers) == 1  # one LSE buffer, reused by every step


def test_attention_out_op(device):
    q, k, v = rand_qkv(1, 9, 4, 2, 64, torch.float32, device)
    args = (q, k, v, None, None, None, None, None, 2, 4, "cache", 1e4, "half", "causal", 0, 0.125, 0.0, None)
    want, want_lse = torch.ops.flashstream.sink_attention.default(*args)
    out, lse = torch.empty_like(q), torch.empty(1, 9, 4, device=device)
    torch.ops.flashstream.sink_attention_out.default(*args, out, lse)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    torch.testing.assert_close(lse, want_lse, rtol=0, atol=0)
    with pytest.raises(ValueError, match="out must be q.shape"):
        torch.ops.flashstream.sink_attention_out.default(*args, out[:, :8], lse)
    with pytest.raises(ValueError, match="lse must be"):
        torch.ops.flashstream.sink_attention_out.default(*args, out, lse[..., :3])
    with pytest.raises(ValueError, match="must not overlap"):
        torch.ops.flashstream.sink_attention_out.default(*args, q, lse)
    torch.library.opcheck(torch.ops.flashstream.sink_attention_out.default, args + (out, lse))


def test_append_without_attending_equals_step(device):
    # append() stores exactly what step() stores, so later queries see the same cache
    a = SinkCache(1, 1, 2, 16, sink=2, window=5, page_size=4, dtype=torch.float32, device=device)
    b = SinkCache(1, 1, 2, 16, sink=2, window=5, page_size=4, dtype=torch.float32, device=device)
    q, k, v = rand_qkv(1, 12, 2, 2, 16, torch.float32, device)
    a.step(0, q[:, :9], k[:, :9], v[:, :9])
    b.append(0, k[:, :9], v[:, :9])
    torch.testing.assert_close(a.step(0, q[:, 9:], k[:, 9:], v[:, 9:]), b.step(0, q[:, 9:], k[:, 9:], v[:, 9:]),
                               rtol=0, atol=0)


def test_compact_needs_a_rank_slot_cache(device):
    cache = SinkCache(1, 1, 1, 16, sink=2, window=5, dtype=torch.float32, device=device)
    with pytest.raises(ValueError, match="window=None"):
        cache.compact(0, torch.zeros(1, 1, 1, dtype=torch.int64, device=device))
