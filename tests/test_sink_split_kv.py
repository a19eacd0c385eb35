"""Split-KV decode (include/flashstream/sink/split.h): when a step's (stream, head, query tile) items
are too few to fill the threads, each item's keys are cut into splits whose partial softmax states
are merged. Decode steps over long caches against the fp64 reference, with the split forced by a
thread count above the item count; and the split path against the unsplit one."""

import random

import pytest
import torch

from flashstream.cache import SinkCache
from references.sink_attention import reference_step

TOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 4e-3}


@pytest.fixture
def threads():
    """Sets the intra-op thread count for one test (restored after): with more threads than work
    items the CPU binding splits the keys."""
    old = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(old)


def decode(cache, q, k, v, prefix, **kw):
    """Prefill `prefix` tokens in one step, then decode the rest one token at a time."""
    outs = [cache.step(0, q[:, :prefix], k[:, :prefix], v[:, :prefix], **kw)]
    for t in range(prefix, q.shape[1]):
        outs.append(cache.step(0, q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], **kw))
    return torch.cat(outs, dim=1)


def rand_qkv(B, S, Hq, Hkv, D, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(B, S, h, D, generator=gen).to(dtype) for h in (Hq, Hkv, Hkv)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("positions", ["cache", "absolute", "none"])
def test_split_decode_matches_fp64_reference(threads, dtype, positions):
    threads(8)  # B * Hkv = 2 items for 8 threads: every decode step splits its ~700 keys
    sink, window, S, prefix = 5, 640, 720, 690
    cache = SinkCache(1, 1, 2, 64, sink=sink, window=window, page_size=16, positions=positions,
                      rope_style="interleaved", dtype=dtype, device="cpu")
    q, k, v = rand_qkv(1, S, 6, 2, 64, dtype, seed=1)
    got = decode(cache, q, k, v, prefix)
    ref, _ = reference_step(q[:, prefix:], k, v, prefix, sink=sink, window=window, positions=positions,
                            rope_style="interleaved")
    torch.testing.assert_close(got[:, prefix:].double(), ref, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("seed", range(6))
def test_split_decode_random_configs(threads, seed):
    rng = random.Random(seed)
    threads(rng.choice([3, 4, 8, 16]))
    Hkv, G, D = rng.choice([1, 2]), rng.choice([1, 3, 4]), rng.choice([32, 64, 128])
    sink, window = rng.randint(0, 8), rng.choice([300, 700, None])
    S = rng.choice([500, 900])
    prefix = S - rng.randint(3, 12)
    full = torch.tensor([[rng.random() < 0.5 for _ in range(Hkv)]])
    softcap = rng.choice([None, 30.0])
    sink_logits = torch.randn(Hkv * G) if rng.random() < 0.5 else None
    cache = SinkCache(1, 1, Hkv, D, sink=sink, window=window, page_size=rng.choice([1, 7, 64]), full_heads=full,
                      max_tokens=S, dtype=torch.float32, device="cpu")
    q, k, v = rand_qkv(1, S, Hkv * G, Hkv, D, torch.float32, seed)
    got = decode(cache, q, k, v, prefix, softcap=softcap, sink_logits=sink_logits)
    ref, _ = reference_step(q[:, prefix:], k, v, prefix, sink=sink, window=window, full_heads=full[0],
                            softcap=softcap, sink_logits=sink_logits)
    torch.testing.assert_close(got[:, prefix:].double(), ref, rtol=2e-5, atol=2e-5)


def test_split_and_unsplit_agree_but_differ_in_rounding(threads):
    # The same decode steps with one thread (one item per (stream, head): no split) and with 8
    # (split): equal within fp32 rounding, and not bit-identical, so the split path really ran.
    S, prefix = 800, 790
    q, k, v = rand_qkv(1, S, 3, 1, 64, torch.float32, seed=5)
    outs = []
    for n in (1, 8):
        threads(n)
        cache = SinkCache(1, 1, 1, 64, sink=4, window=1020, page_size=16, dtype=torch.float32, device="cpu")
        outs.append(decode(cache, q, k, v, prefix)[:, prefix:])
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    assert not torch.equal(outs[0], outs[1])


def test_split_decode_every_cpu_isa(threads, cpu_isa):
    threads(8)
    S, prefix = 600, 595
    cache = SinkCache(1, 2, 1, 64, sink=4, window=512, page_size=16, dtype=torch.bfloat16, device="cpu")
    q, k, v = rand_qkv(2, S, 2, 1, 64, torch.bfloat16, seed=3)
    got = decode(cache, q, k, v, prefix)
    ref, _ = reference_step(q[:, prefix:], k, v, prefix, sink=4, window=512)
    torch.testing.assert_close(got[:, prefix:].double(), ref, rtol=3e-2, atol=3e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_split_decode_cuda(dtype):
    # One stream, one kv head: a single block per step, so the launcher splits the ~4K keys
    # across the SMs; sink logits and full heads go through the merge.
    S, prefix = 4200, 4190
    sink_logits = torch.randn(4, device="cuda")
    cache = SinkCache(1, 1, 2, 128, sink=4, window=4096, page_size=16, full_heads=torch.tensor([[True, False]]),
                      max_tokens=S, dtype=dtype, device="cuda")
    q, k, v = (t.cuda() for t in rand_qkv(1, S, 4, 2, 128, dtype, seed=11))
    got = decode(cache, q, k, v, prefix, sink_logits=sink_logits)
    ref, _ = reference_step(q[:, prefix:], k, v, prefix, sink=4, window=4096, full_heads=torch.tensor([True, False]),
                            sink_logits=sink_logits.cpu())
    torch.testing.assert_close(got[:, prefix:].cpu().double(), ref, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_keys_past_the_shared_rotary_table(dtype):
    # The CPU binding rotates keys with a shared table of the first 16384 positions
    # (csrc/cpu/rope_table.h); a full-attention stream longer than that takes per-block rows for
    # the rest. Decode steps at key positions up to ~16.5K, interleaved rotary, against fp64.
    S, prefix = 16_500, 16_496
    cache = SinkCache(1, 1, 1, 16, sink=0, window=None, page_size=64, max_tokens=S, positions="absolute",
                      rope_style="interleaved", dtype=dtype, device="cpu")
    q, k, v = rand_qkv(1, S, 2, 1, 16, dtype, seed=5)
    for t in range(0, prefix, 4096):  # prefill in chunks (their queries are not checked)
        end = min(t + 4096, prefix)
        cache.step(0, q[:, t:end], k[:, t:end], v[:, t:end])
    got = torch.cat([cache.step(0, q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1]) for t in range(prefix, S)], dim=1)
    ref, _ = reference_step(q[:, prefix:], k, v, prefix, sink=0, window=None, positions="absolute",
                            rope_style="interleaved")
    torch.testing.assert_close(got.double(), ref, rtol=TOL[dtype], atol=TOL[dtype])
