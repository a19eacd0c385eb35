"""Sink attention's tensor-core CUDA path (bf16 / fp16 chunked prefill, include/flashstream/sink/
cuda_tc.cuh) against the fp64 references, at shapes that take it (tc_params.h's rule: sm_80+, D 64
or 128, no split-KV, T * G >= 64 rows) and at neighbours that stay on the SIMT kernel. Needs a GPU;
tests/test_cuda_emu.py runs the same kernel emulated on the host."""

import random

import pytest
import torch

from flashstream.cache import SinkCache
from flashstream.ops import sink_attention_offline
from references.sink_attention import sink_attention_reference, streaming_reference

HALF_DTYPES = [torch.bfloat16, torch.float16]
# As tests/test_sink_attention.py: rounding the rotated queries / keys and P to the dtype before the
# mma (FlashInfer / FlashAttention do the same) stays well inside these on randn inputs (the host
# emulation reaches at most ~0.2 of them).
TOL = {torch.bfloat16: 3e-2, torch.float16: 4e-3}

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)),
                                reason="needs a CUDA device of compute capability 8.0 or newer")


def rand_qkv(B, S, Hq, Hkv, D, dtype):
    return [torch.randn(B, S, h, D).to(dtype).cuda() for h in (Hq, Hkv, Hkv)]


def check(q, k, v, dtype, **kw):
    out, lse = sink_attention_offline(q, k, v, return_lse=True, **kw)
    ref, ref_lse = sink_attention_reference(q.cpu(), k.cpu(), v.cpu(), **kw)
    assert out.dtype == dtype and out.device.type == "cuda"
    torch.testing.assert_close(out.cpu().double(), ref, rtol=TOL[dtype], atol=TOL[dtype])
    torch.testing.assert_close(lse.cpu().double(), ref_lse, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("G", [1, 3, 4])
def test_prefill_shapes(dtype, D, G):
    # T = 150: two full query tiles and a tail at G = 1; 21-query tiles at G = 3.
    q, k, v = rand_qkv(2, 150, 2 * G, 2, D, dtype)
    check(q, k, v, dtype, sink=4, window=40)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("positions", ["cache", "absolute", "none"])
@pytest.mark.parametrize("rope_style", ["half", "interleaved"])
@pytest.mark.parametrize("mask", ["causal", "chunk"])
def test_modes(dtype, positions, rope_style, mask):
    q, k, v = rand_qkv(1, 130, 8, 2, 64, dtype)
    check(q, k, v, dtype, sink=3, window=20, positions=positions, rope_style=rope_style, mask=mask,
          chunk_size=16 if mask == "chunk" else None, rope_theta=500.0)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
def test_full_heads_softcap_sink_logits(dtype):
    q, k, v = rand_qkv(2, 100, 12, 3, 128, dtype)
    check(q, k, v, dtype, sink=4, window=24, full_heads=torch.tensor([True, False, False], device="cuda"),
          softcap=8.0, sink_logits=torch.randn(12, device="cuda"))


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("window", [16, 300, None])
def test_chunked_prefill_over_paged_cache(dtype, window):
    # Chunks of 80 queries x G 4 (tensor cores) over a cache filled before and after the window wrapped.
    rng = random.Random(3)
    S, sink = 400, 4
    chunks = [80, 1, 80, 7, 80, 72, 80]
    full = torch.tensor([[False, True]])
    cache = SinkCache(1, 2, 2, 64, sink=sink, window=window, page_size=16, full_heads=full, max_tokens=S,
                      rope_style=rng.choice(["half", "interleaved"]), dtype=dtype, device="cuda")
    q, k, v = rand_qkv(2, S, 8, 2, 64, dtype)
    outs, n = [], 0
    for T in chunks:
        outs.append(cache.step(0, q[:, n:n + T], k[:, n:n + T], v[:, n:n + T]))
        n += T
    got = torch.cat(outs, dim=1)
    ref = streaming_reference(q.cpu(), k.cpu(), v.cpu(), chunks, sink=sink, window=window,
                              rope_style=cache.rope_style, full_heads=full[0])
    torch.testing.assert_close(got.cpu().double(), ref, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("T,G,D", [(15, 4, 64), (1, 4, 128), (100, 4, 96), (100, 2, 256)])
def test_neighbours_on_the_simt_kernel(dtype, T, G, D):
    # Fewer than 64 rows, or D outside {64, 128}: the SIMT kernel, same contract.
    q, k, v = rand_qkv(1, T, 2 * G, 2, D, dtype)
    check(q, k, v, dtype, sink=2, window=9)


def misaligned(t):
    """t's values in a contiguous tensor whose data starts 2 bytes past a 16-byte boundary."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    out = buf[1:].view(t.shape)
    out.copy_(t)
    return out


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
def test_unaligned_keys_take_the_simt_kernel(dtype):
    # cp.async needs 16-byte aligned key rows; such k / v go to the SIMT kernel, same result.
    q, k, v = rand_qkv(1, 128, 8, 2, 128, dtype)
    kw = dict(sink=4, window=50, positions="absolute")
    check(q, misaligned(k), misaligned(v), dtype, **kw)
    tc = sink_attention_offline(q, k, v, **kw)
    simt = sink_attention_offline(q, misaligned(k), misaligned(v), **kw)
    torch.testing.assert_close(tc, simt, rtol=TOL[dtype], atol=TOL[dtype])


def test_compiles_fullgraph():
    q, k, v = rand_qkv(1, 96, 8, 2, 128, torch.bfloat16)
    fn = torch.compile(lambda q, k, v: sink_attention_offline(q, k, v, sink=4, window=32), fullgraph=True)
    torch.testing.assert_close(fn(q, k, v), sink_attention_offline(q, k, v, sink=4, window=32), rtol=0, atol=0)
