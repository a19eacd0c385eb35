"""flashstream.ops.causal_conv1d against the fp64 reference, chunked == offline, state pools,
bad inputs, opcheck and torch.compile, on every device and CPU ISA."""

import random

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import HealthCheck, given, settings

from flashstream.ops import causal_conv1d, causal_conv1d_update
from references.conv import causal_conv1d_reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Relative to the largest |y|: fp32 sums in fp32; 16-bit outputs carry one rounding of their own.
TOL = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}
# (width, dilation): the causal-conv1d range, Conformer/vocoder widths, the 64 limit, dilations 1-8.
SHAPES = [(1, 1), (2, 1), (3, 1), (4, 1), (4, 2), (5, 3), (7, 8), (9, 1), (15, 2), (16, 5), (31, 1),
          (33, 4), (63, 1), (64, 8)]


def make(B, C, T, W, dilation, dtype, device, channel_last=False, bias=True, state=True):
    x = torch.randn(B, T, C).transpose(1, 2) if channel_last else torch.randn(B, C, T)
    x = x.to(dtype).to(device)
    w = (torch.randn(C, W) / W**0.5).to(dtype).to(device)
    b = torch.randn(C).to(dtype).to(device) if bias else None
    s = torch.randn(B, C, (W - 1) * dilation).to(dtype).to(device) if state else None
    return x, w, b, s


def assert_rel_close(got, want, tol):
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    assert got.shape == want.shape
    if want.numel() == 0:
        return
    scale = max(want.abs().max().item(), 1e-30)
    err = (got - want).abs().max().item() / scale
    assert err <= tol, f"max |error| / max |reference| = {err:.3g} > {tol:.3g}"


def random_chunks(T, rng, kind):
    """Chunk lengths summing to T: all ones, primes, or random (including ones and long ones)."""
    sizes = []
    while sum(sizes) < T:
        if kind == "ones":
            n = 1
        elif kind == "primes":
            n = rng.choice([2, 3, 5, 7, 11, 13, 17, 31, 67])
        else:
            n = rng.choice([1, 1, 2, rng.randint(1, 40), rng.randint(40, 300)])
        sizes.append(min(n, T - sum(sizes)))
    return sizes


def run_chunked(x, w, b, state, sizes, **kw):
    ys, t = [], 0
    for n in sizes:
        ys.append(causal_conv1d(x[:, :, t:t + n], w, b, state, **kw))
        t += n
    return torch.cat(ys, dim=-1)


@pytest.mark.parametrize("width,dilation", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channel_last", [False, True], ids=["time_major", "channel_last"])
def test_matches_reference(device, width, dilation, dtype, channel_last):
    x, w, b, s = make(2, 40, 97, width, dilation, dtype, device, channel_last)
    s0 = s.clone()
    y = causal_conv1d(x, w, b, s, dilation=dilation, activation="silu")
    y_ref, s_ref = causal_conv1d_reference(x, w, b, s0, dilation, "silu")
    assert y.dtype == dtype and y.shape == x.shape and y.stride() == x.stride()
    assert_rel_close(y, y_ref, TOL[dtype])
    assert torch.equal(s.cpu().double(), s_ref)  # the state holds inputs: copied, never rounded


@pytest.mark.parametrize("width,dilation", SHAPES, ids=str)
@pytest.mark.parametrize("kind", ["ones", "primes", "random"])
@pytest.mark.parametrize("channel_last", [False, True], ids=["time_major", "channel_last"])
def test_chunked_equals_offline_fp32(device, width, dilation, kind, channel_last):
    rng = random.Random(width * 1000 + dilation)
    T = 160 if kind == "ones" else 700
    x, w, b, s = make(3, 19, T, width, dilation, torch.float32, device, channel_last)
    s0 = s.clone()
    offline = causal_conv1d(x, w, b, s0.clone(), dilation=dilation)
    streamed = run_chunked(x, w, b, s, random_chunks(T, rng, kind), dilation=dilation)
    y_ref, s_ref = causal_conv1d_reference(x, w, b, s0, dilation)
    assert_rel_close(streamed, offline, 1e-6)
    assert_rel_close(streamed, y_ref, 1e-5)
    assert torch.equal(s.cpu().double(), s_ref)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("width,dilation", [(4, 1), (9, 3), (64, 8)], ids=str)
def test_chunked_equals_offline_16bit(device, dtype, width, dilation):
    x, w, b, s = make(2, 33, 400, width, dilation, dtype, device, channel_last=width == 9)
    s0 = s.clone()
    offline = causal_conv1d(x, w, b, s0.clone(), dilation=dilation, activation="silu")
    streamed = run_chunked(x, w, b, s, random_chunks(400, random.Random(7), "random"), dilation=dilation,
                           activation="silu")
    # each output is computed in fp32 in the same order whatever the chunking, then rounded once
    assert_rel_close(streamed, offline, TOL[dtype] / 4)
    y_ref, s_ref = causal_conv1d_reference(x, w, b, s0, dilation, "silu")
    assert_rel_close(streamed, y_ref, TOL[dtype])
    assert torch.equal(s.cpu().double(), s_ref)


def test_no_state_is_zero_padding(device):
    x, w, b, _ = make(2, 8, 50, 5, 2, torch.float32, device)
    y = causal_conv1d(x, w, b, dilation=2)
    y_ref, _ = causal_conv1d_reference(x, w, b, None, 2)
    assert_rel_close(y, y_ref, 1e-5)
    zeros = torch.zeros(2, 8, 8, device=device)
    torch.testing.assert_close(causal_conv1d(x, w, b, zeros, dilation=2), y, rtol=0, atol=0)


def test_no_bias_and_swish(device):
    x, w, _, s = make(2, 8, 30, 4, 1, torch.float32, device)
    s0 = s.clone()
    y = causal_conv1d(x, w, None, s, activation="swish")
    y_ref, _ = causal_conv1d_reference(x, w, None, s0, 1, "silu")
    assert_rel_close(y, y_ref, 1e-5)


@pytest.mark.parametrize("T", [0, 1, 2, 5])
def test_chunks_shorter_than_state(device, T):
    # T < L: the state shifts by T and takes x at its end
    x, w, b, s = make(2, 24, T, 8, 3, torch.float32, device)
    s0 = s.clone()
    y = causal_conv1d(x, w, b, s, dilation=3)
    y_ref, s_ref = causal_conv1d_reference(x, w, b, s0, 3)
    assert_rel_close(y, y_ref, 1e-5)
    assert torch.equal(s.cpu().double(), s_ref)


def test_empty_batch_and_channels(device):
    for B, C in ((0, 4), (3, 0)):
        x, w, b, s = make(B, C, 10, 3, 1, torch.float32, device)
        assert causal_conv1d(x, w, b, s).shape == (B, C, 10)


def test_width_one_has_no_state(device):
    x, w, b, s = make(2, 5, 9, 1, 4, torch.float32, device)
    assert s.shape == (2, 5, 0)
    y = causal_conv1d(x, w, b, s, dilation=4)
    torch.testing.assert_close(y, x * w[:, :1] + b[:, None])


def test_strided_state_views(device):
    # the state may be any non-overlapping view: a slice of a wider buffer, or channel-last
    x, w, b, _ = make(2, 16, 60, 6, 2, torch.float32, device)
    wide = torch.randn(2, 16, 25, device=device)
    s_slice = wide[:, :, 3:13]
    s_last = torch.randn(2, 10, 16, device=device).transpose(1, 2)
    for s in (s_slice, s_last):
        s0 = s.clone()
        keep = wide.clone()
        y = causal_conv1d(x, w, b, s, dilation=2)
        y_ref, s_ref = causal_conv1d_reference(x, w, b, s0, 2)
        assert_rel_close(y, y_ref, 1e-5)
        assert torch.equal(s.cpu().double(), s_ref)
        if s is s_slice:  # nothing outside the view is touched
            assert torch.equal(wide[:, :, :3], keep[:, :, :3]) and torch.equal(wide[:, :, 13:], keep[:, :, 13:])


def test_strided_weight_and_bias(device):
    x, _, _, s = make(2, 12, 40, 5, 1, torch.float32, device)
    w = torch.randn(5, 12, device=device).t()  # [C, W] view with strides (1, C)
    b = torch.randn(12, 2, device=device)[:, 1]  # stride 2
    s0 = s.clone()
    y = causal_conv1d(x, w, b, s)
    y_ref, s_ref = causal_conv1d_reference(x, w, b, s0, 1)
    assert_rel_close(y, y_ref, 1e-5)
    assert torch.equal(s.cpu().double(), s_ref)


def test_other_layouts_are_copied(device):
    x, w, b, s = make(2, 12, 40, 4, 1, torch.float32, device)
    xs = torch.randn(2, 24, 80, device=device)[:, ::2, ::2]  # neither dim unit-stride
    s0 = s.clone()
    y = causal_conv1d(xs, w, b, s)
    y_ref, s_ref = causal_conv1d_reference(xs, w, b, s0, 1)
    assert_rel_close(y, y_ref, 1e-5)
    assert torch.equal(s.cpu().double(), s_ref)


@pytest.mark.parametrize("channel_last", [False, True], ids=["time_major", "channel_last"])
def test_out_is_written_and_returned(device, channel_last):
    x, w, b, s = make(2, 24, 37, 6, 2, torch.float32, device, channel_last)
    s0, s2 = s.clone(), s.clone()
    want = causal_conv1d(x, w, b, s2, dilation=2, activation="silu")
    out = torch.full_like(want, float("nan"))  # preserves x's layout
    got = causal_conv1d(x, w, b, s, dilation=2, activation="silu", out=out)
    assert got is out
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    torch.testing.assert_close(s, s2, rtol=0, atol=0)
    # a strided view of a bigger buffer is fine as long as the vectorised dim is unit-stride
    big = torch.zeros(2, 24, 50, device=device)
    if not channel_last:
        causal_conv1d(x, w, b, s0, dilation=2, activation="silu", out=big[:, :, 5:42])
        torch.testing.assert_close(big[:, :, 5:42], want, rtol=0, atol=0)
        assert torch.all(big[:, :, :5] == 0) and torch.all(big[:, :, 42:] == 0)


def test_out_rejects(device):
    x, w, b, s = make(2, 8, 10, 4, 1, torch.float32, device)
    expect_error(ValueError, r"flashstream.causal_conv1d: out must be x.shape = \[2, 8, 10\], got \[2, 8, 9\]",
                 lambda: causal_conv1d(x, w, b, s, out=torch.empty(2, 8, 9, device=device)), s)
    expect_error(TypeError, "flashstream.causal_conv1d: out must be Float, got Half",
                 lambda: causal_conv1d(x, w, b, s, out=torch.empty(2, 8, 10, device=device, dtype=torch.half)), s)
    expect_error(ValueError, "flashstream.causal_conv1d: out must be unit-stride along time",
                 lambda: causal_conv1d(x, w, b, s, out=torch.empty(2, 10, 8, device=device).transpose(1, 2)), s)
    expect_error(ValueError, "flashstream.causal_conv1d: out must not share memory with x",
                 lambda: causal_conv1d(x, w, b, s, out=x), s)


# ---- decode path and state pools ------------------------------------------------------------------

@pytest.mark.parametrize("width,dilation", [(4, 1), (3, 2), (31, 1), (64, 8)], ids=str)
def test_decode_steps_equal_offline(device, width, dilation):
    x, w, b, s = make(4, 64, 50, width, dilation, torch.float32, device)
    s0 = s.clone()
    steps = torch.stack([causal_conv1d_update(x[:, :, t], s, w, b, dilation=dilation, activation="silu")
                         for t in range(50)], dim=-1)
    y_ref, s_ref = causal_conv1d_reference(x, w, b, s0, dilation, "silu")
    assert_rel_close(steps, y_ref, 1e-5)
    assert torch.equal(s.cpu().double(), s_ref)


def test_state_pool_with_indices(device):
    B, P, C, W, dil = 3, 7, 16, 4, 2
    pool = torch.randn(P, C, (W - 1) * dil, device=device)
    pool0 = pool.clone()
    idx = torch.tensor([5, 0, 3], dtype=torch.int32, device=device)
    x, w, b, _ = make(B, C, 20, W, dil, torch.float32, device)
    y = causal_conv1d(x, w, b, pool, dilation=dil, state_indices=idx)
    y_ref, s_ref = causal_conv1d_reference(x, w, b, pool0[idx.long()], dil)
    assert_rel_close(y, y_ref, 1e-5)
    assert torch.equal(pool[idx.long()].cpu().double(), s_ref)
    untouched = [i for i in range(P) if i not in idx.tolist()]
    assert torch.equal(pool[untouched], pool0[untouched])


def test_state_pool_decode_chain(device):
    # interleaved streams in a pool: each stream decoded one frame at a time equals its offline conv
    P, C, W = 6, 32, 4
    pool = torch.zeros(P, C, W - 1, device=device)
    _, w, b, _ = make(1, C, 1, W, 1, torch.float32, device)
    streams = {slot: torch.randn(1, C, 12, device=device) for slot in (4, 1, 2)}
    outs = {slot: [] for slot in streams}
    for t in range(12):
        slots = list(streams)[t % 3:] + list(streams)[:t % 3]  # batch order changes every step
        x = torch.cat([streams[s][:, :, t] for s in slots])
        idx = torch.tensor(slots, dtype=torch.int32, device=device)
        y = causal_conv1d_update(x, pool, w, b, state_indices=idx)
        for row, slot in enumerate(slots):
            outs[slot].append(y[row])
    for slot, x in streams.items():
        y_ref, s_ref = causal_conv1d_reference(x, w, b, None, 1)
        assert_rel_close(torch.stack(outs[slot], -1)[None], y_ref, 1e-5)
        assert torch.equal(pool[slot].cpu().double(), s_ref[0])


def test_padding_slots(device):
    pool = torch.randn(4, 8, 3, device=device)
    pool0 = pool.clone()
    x, w, b, _ = make(2, 8, 5, 4, 1, torch.float32, device)
    idx = torch.tensor([-1, 2], dtype=torch.int32, device=device)
    y = causal_conv1d(x, w, b, pool, state_indices=idx)
    y0, _ = causal_conv1d_reference(x[:1], w, b, None, 1)  # padding row: zero history
    assert_rel_close(y[:1], y0, 1e-5)
    mask = torch.ones(4, dtype=torch.bool)
    mask[2] = False
    assert torch.equal(pool[mask], pool0[mask])
    assert not torch.equal(pool[2], pool0[2])


# ---- every CPU ISA ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_cpu_isa(cpu_isa, dtype):
    # channel counts and lengths around the SIMD widths and the 256-output tile
    for C, T, cl in ((1, 1, False), (7, 255, False), (17, 257, True), (33, 513, False), (40, 3, True)):
        for W, dil in ((4, 1), (13, 3)):
            x, w, b, s = make(2, C, T, W, dil, dtype, "cpu", channel_last=cl)
            s0 = s.clone()
            y = causal_conv1d(x, w, b, s, dilation=dil, activation="silu")
            y_ref, s_ref = causal_conv1d_reference(x, w, b, s0, dil, "silu")
            assert_rel_close(y, y_ref, TOL[dtype])
            assert torch.equal(s.double(), s_ref)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_short_chunks_are_bit_exact(cpu_isa, dtype):
    # Chunks of at most 16 (AVX-512: the register path, for states of up to 48 inputs in one,
    # two or four registers, and narrow_rows_run for W = 2..4 at dilation 1) against one offline
    # call (the window path): the same taps in the same order, so the same bits; W = 50 (a state
    # of 49) stays on the window path. Plus a state pool with a padding slot (-1: zeros in,
    # nothing saved).
    rng = random.Random(5)
    for W, dil in ((2, 1), (3, 1), (4, 1), (5, 3), (9, 2), (17, 1), (4, 6), (31, 1), (33, 1), (7, 8), (50, 1)):
        x, w, b, s = make(3, 37, 90, W, dil, dtype, "cpu")
        s0 = s.clone()
        offline = causal_conv1d(x, w, b, s0.clone(), dilation=dil, activation="silu")
        sizes = [min(rng.choice([1, 2, 5, 15, 16]), 90 - t) for t in range(0, 90, 16)]
        sizes += [90 - sum(sizes)] if sum(sizes) < 90 else []
        streamed = run_chunked(x, w, b, s, [n for n in sizes if n], dilation=dil, activation="silu")
        assert torch.equal(streamed, offline), (W, dil)
        y_ref, s_ref = causal_conv1d_reference(x, w, b, s0, dil, "silu")
        assert torch.equal(s.double(), s_ref)
    x, w, b, _ = make(3, 37, 12, 4, 1, dtype, "cpu")
    pool = torch.randn(5, 37, 3).to(dtype)
    pool0 = pool.clone()
    idx = torch.tensor([3, -1, 0], dtype=torch.int32)
    y = causal_conv1d_update(x, pool, w, b, state_indices=idx)
    states = torch.stack([pool0[3], torch.zeros_like(pool0[0]), pool0[0]])
    y_ref, s_ref = causal_conv1d_reference(x, w, b, states, 1)
    assert_rel_close(y, y_ref, TOL[dtype])
    assert torch.equal(pool[3].double(), s_ref[0]) and torch.equal(pool[0].double(), s_ref[2])
    assert torch.equal(pool[[1, 2, 4]], pool0[[1, 2, 4]])


def test_layouts_agree(device):
    x, w, b, s = make(2, 48, 130, 7, 2, torch.float32, device)
    s2 = s.clone()
    y1 = causal_conv1d(x, w, b, s, dilation=2)
    y2 = causal_conv1d(x.transpose(1, 2).contiguous().transpose(1, 2), w, b, s2, dilation=2)
    assert_rel_close(y2, y1, 1e-6)
    assert torch.equal(s, s2)


# ---- bad inputs: clear errors, state untouched --------------------------------------------------

def expect_error(exc, match, fn, state):
    before = state.clone() if state is not None else None
    with pytest.raises(exc, match=match):
        fn()
    if state is not None:
        assert torch.equal(state, before), "a call that raised changed the state"


def test_rejects_bad_state(device):
    x, w, b, _ = make(2, 64, 10, 4, 2, torch.float32, device)
    s = torch.randn(2, 64, 4, device=device)
    expect_error(ValueError, r"flashstream.causal_conv1d: state must be \[B, C, \(W-1\)\*dilation\] = \[2, 64, 6\], got \[2, 64, 4\]",
                 lambda: causal_conv1d(x, w, b, s, dilation=2), s)
    s = torch.randn(2, 64, 6, device=device, dtype=torch.float16)
    expect_error(TypeError, "flashstream.causal_conv1d: state must be Float, got Half",
                 lambda: causal_conv1d(x, w, b, s, dilation=2), s)
    s = torch.randn(1, 64, 6, device=device).expand(2, 64, 6)
    expect_error(ValueError, "flashstream.causal_conv1d: state must not overlap itself",
                 lambda: causal_conv1d(x, w, b, s, dilation=2), None)


def test_rejects_bad_weight_and_args(device):
    x, _, b, s = make(2, 8, 10, 4, 1, torch.float32, device)
    w65 = torch.randn(8, 65, device=device)
    s65 = torch.randn(2, 8, 64, device=device)
    expect_error(ValueError, r"flashstream.causal_conv1d: weight width W must be in \[1, 64\], got 65",
                 lambda: causal_conv1d(x, w65, b, s65), s65)
    w = torch.randn(8, 4, device=device)
    expect_error(ValueError, r"flashstream.causal_conv1d: weight must be \[C, W\] = \[8, W\] \(depthwise\), got \[8, 1, 4\]",
                 lambda: causal_conv1d(x, w[:, None], b, s), s)
    expect_error(TypeError, "flashstream.causal_conv1d: weight must be Float, got BFloat16",
                 lambda: causal_conv1d(x, w.bfloat16(), b, s), s)
    expect_error(ValueError, r"flashstream.causal_conv1d: bias must be \[C\] = \[8\], got \[9\]",
                 lambda: causal_conv1d(x, w, torch.randn(9, device=device), s), s)
    expect_error(ValueError, r"flashstream.causal_conv1d: dilation must be in \[1, 2\^24\], got 0",
                 lambda: causal_conv1d(x, w, b, None, dilation=0), None)
    expect_error(ValueError, "flashstream.causal_conv1d: activation must be None, 'silu' or 'swish', got 'relu'",
                 lambda: causal_conv1d(x, w, b, s, activation="relu"), s)
    expect_error(ValueError, r"flashstream.causal_conv1d: x must be \[B, C, T\], got \[8, 10\]",
                 lambda: causal_conv1d(x[0], w, b, None), None)
    expect_error(TypeError, "flashstream.causal_conv1d: x must be float32, float16 or bfloat16, got Double",
                 lambda: causal_conv1d(x.double(), w.double(), None, None), None)


def test_rejects_bad_indices(device):
    x, w, b, _ = make(3, 8, 4, 4, 1, torch.float32, device)
    pool = torch.randn(5, 8, 3, device=device)
    expect_error(TypeError, "flashstream.causal_conv1d: state_indices must be Int, got Long",
                 lambda: causal_conv1d(x, w, b, pool, state_indices=torch.tensor([0, 1, 2], device=device)), pool)
    expect_error(ValueError, r"flashstream.causal_conv1d: state_indices must be \[B\] = \[3\], got \[2\]",
                 lambda: causal_conv1d(x, w, b, pool, state_indices=torch.tensor([0, 1], dtype=torch.int32, device=device)), pool)
    expect_error(ValueError, "flashstream.causal_conv1d: state_indices needs a state pool",
                 lambda: causal_conv1d(x, w, b, None, state_indices=torch.tensor([0, 1, 2], dtype=torch.int32, device=device)), None)
    expect_error(ValueError, r"state must be a pool \[P, C, \(W-1\)\*dilation\] = \[P, 8, 3\], got \[5, 8, 4\]",
                 lambda: causal_conv1d(x, w, b, torch.randn(5, 8, 4, device=device), state_indices=torch.tensor([0, 1, 2], dtype=torch.int32, device=device)), None)


def test_rejects_bad_index_values_on_cpu():
    x, w, b, _ = make(3, 8, 4, 4, 1, torch.float32, "cpu")
    pool = torch.randn(5, 8, 3)
    expect_error(ValueError, r"flashstream.causal_conv1d: state_indices must be < the pool size P = 5 \(or negative for padding\), got 5 at \[2\]",
                 lambda: causal_conv1d(x, w, b, pool, state_indices=torch.tensor([0, 1, 5], dtype=torch.int32)), pool)
    expect_error(ValueError, r"flashstream.causal_conv1d: state_indices must be distinct, got 1 at \[0\] and \[2\]",
                 lambda: causal_conv1d(x, w, b, pool, state_indices=torch.tensor([1, 0, 1], dtype=torch.int32)), pool)


def test_gradients_are_not_supported():
    x, w, b, _ = make(1, 4, 6, 3, 1, torch.float32, "cpu")
    w.requires_grad_(True)
    with pytest.raises(RuntimeError, match="flashstream.causal_conv1d: inference only, it has no backward"):
        causal_conv1d(x, w, b)
    with torch.no_grad():
        y = causal_conv1d(x, w, b)
    assert not y.requires_grad


# ---- opcheck and torch.compile --------------------------------------------------------------------

def test_opcheck(device):
    op = torch.ops.flashstream.causal_conv1d.default
    x, w, b, s = make(2, 16, 21, 4, 2, torch.float32, device)
    torch.library.opcheck(op, (x, w, b, s, 2, "silu", None))
    torch.library.opcheck(op, (x, w, None, None, 1, None, None))
    xc, w3, _, s3 = make(2, 16, 5, 3, 1, torch.bfloat16, device, channel_last=True)
    torch.library.opcheck(op, (xc, w3, None, s3, 1, None, None))
    pool = torch.randn(4, 16, 2, device=device)
    idx = torch.tensor([3, 1], dtype=torch.int32, device=device)
    torch.library.opcheck(op, (x[:, :, :1].contiguous(), w3.float(), None, pool, 1, None, idx))
    out = torch.empty_like(x)
    torch.library.opcheck(torch.ops.flashstream.causal_conv1d_out.default, (x, w, b, s, 2, "silu", None, out))


def test_torch_compile_fullgraph(device):
    _, w, b, _ = make(2, 16, 1, 5, 3, torch.float32, device)

    def step(x, state):
        return causal_conv1d(x * 2.0, w, b, state, dilation=3, activation="silu") + 1.0

    def step_out(x, state, out):
        causal_conv1d(x, w, b, state, dilation=3, out=out)
        return out * 2.0

    backend = "aot_eager" if device == "cpu" else "inductor"
    compiled = torch.compile(step, fullgraph=True, backend=backend)
    compiled_out = torch.compile(step_out, fullgraph=True, backend=backend)
    s_eager = torch.randn(2, 16, 12, device=device)
    s_comp = s_eager.clone()
    for T in (7, 7, 1, 30):
        x = torch.randn(2, 16, T, device=device)
        torch.testing.assert_close(compiled(x, s_comp), step(x, s_eager), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(s_comp, s_eager, rtol=0, atol=0)
        o_eager, o_comp = torch.empty_like(x), torch.empty_like(x)
        torch.testing.assert_close(compiled_out(x, s_comp, o_comp), step_out(x, s_eager, o_eager), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(o_comp, o_eager, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(s_comp, s_eager, rtol=0, atol=0)


# ---- shape fuzzing ----------------------------------------------------------------------------------

@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(B=st.integers(1, 3), C=st.integers(1, 70), W=st.integers(1, 64), dil=st.integers(1, 8),
       T=st.integers(1, 300), channel_last=st.booleans(), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**31 - 1))
def test_fuzz(B, C, W, dil, T, channel_last, dtype, seed):
    torch.manual_seed(seed)
    x, w, b, s = make(B, C, T, W, dil, dtype, "cpu", channel_last=channel_last)
    s0 = s.clone()
    sizes = random_chunks(T, random.Random(seed), "random")
    y = run_chunked(x, w, b, s, sizes, dilation=dil)
    y_ref, s_ref = causal_conv1d_reference(x, w, b, s0, dil)
    assert_rel_close(y, y_ref, TOL[dtype])
    assert torch.equal(s.double(), s_ref)


# ---- CUDA only --------------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("T", [1, 16, 33, 1000])
@pytest.mark.parametrize("width,dilation", [(2, 1), (4, 1), (9, 2), (64, 8)], ids=str)
def test_cuda_matches_cpu(T, width, dilation):
    for cl in (False, True):
        x, w, b, s = make(3, 130, T, width, dilation, torch.float32, "cpu", channel_last=cl)
        sg = s.cuda()
        y_cpu = causal_conv1d(x, w, b, s, dilation=dilation)
        y_gpu = causal_conv1d(x.cuda(), w.cuda(), b.cuda(), sg, dilation=dilation)
        assert_rel_close(y_gpu, y_cpu, 1e-6)
        assert torch.equal(sg.cpu(), s)


@cuda
def test_cuda_graph_capture_with_pool():
    P, C, W = 8, 256, 4
    pool = torch.zeros(P, C, W - 1, device="cuda")
    w = torch.randn(C, W, device="cuda")
    b = torch.randn(C, device="cuda")
    x = torch.zeros(4, C, device="cuda")
    idx = torch.tensor([6, 2, 0, 5], dtype=torch.int32, device="cuda")
    causal_conv1d_update(x, pool, w, b, state_indices=idx)  # warm up outside the capture
    pool.zero_()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph):
        y = causal_conv1d_update(x, pool, w, b, state_indices=idx)
    frames = torch.randn(10, 4, C, device="cuda")
    outs = []
    for t in range(10):
        x.copy_(frames[t])
        graph.replay()
        outs.append(y.clone())
    torch.cuda.synchronize()
    seq = frames.permute(1, 2, 0)  # [4, C, 10]
    y_ref, s_ref = causal_conv1d_reference(seq, w, b, None, 1)
    assert_rel_close(torch.stack(outs, -1), y_ref, 1e-5)
    assert torch.equal(pool[idx.long()].cpu().double(), s_ref)


@cuda
def test_cuda_out_of_range_index_is_padding():
    pool = torch.randn(2, 8, 3, device="cuda")
    pool0 = pool.clone()
    x = torch.randn(1, 8, 4, device="cuda")
    w = torch.randn(8, 4, device="cuda")
    y = causal_conv1d(x, w, None, pool, state_indices=torch.tensor([7], dtype=torch.int32, device="cuda"))
    torch.testing.assert_close(y, causal_conv1d(x, w, None, None))
    assert torch.equal(pool, pool0)


@cuda
def test_cuda_rejects_mixed_devices():
    x = torch.randn(2, 8, 4, device="cuda")
    w = torch.randn(8, 4, device="cuda")
    s = torch.randn(2, 8, 3)
    expect_error(ValueError, "flashstream.causal_conv1d: state must be on the same device as x", lambda: causal_conv1d(x, w, None, s), s)
