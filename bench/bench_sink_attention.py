"""Sink-cache attention benchmark: one layer's streaming step through flashstream.cache.SinkCache
against the StreamingLLM reference and SDPA over gathered keys.

    python bench/bench_sink_attention.py [--device cpu|cuda] [--threads N] [--quick]

Shapes (the issue's CPU case): SmolLM2-135M, 9 q heads, 3 kv heads, D = 64, 4 sinks + a window of
1024, batch 1, the cache already full (steady state), steps of T = 64 (chunk) and T = 1 (decode),
positions="cache" (StreamingLLM's pos-shift), fp32 and bf16. Each contender does a whole step:
attention of the T new queries over the cache plus themselves, and the cache update.

* ``flashstream``: ``cache.step(0, q, k, v)`` (paged cache, in-kernel rotary, fused append/evict).
* ``streamingllm``: StreamingLLM's code path (mit-han-lab/streaming-llm, ``StartRecentKVCache`` +
  ``pos_shift/modify_llama.py``): ``torch.cat`` of the new k, v onto the pre-rotary cache,
  re-rotation of every cached key at positions ``arange(kv_len)``, eager attention (repeat_kv,
  matmul, causal mask, fp32 softmax, matmul), then eviction by ``torch.cat`` of the first ``sink``
  and the last ``window`` tokens.
* ``sdpa_gather``: a ring buffer updated with ``index_copy_``; the step gathers the visible keys
  (sinks + the window before the step + the step), rotates them at their cache ranks, builds the
  sink/window boolean mask and calls ``scaled_dot_product_attention``.
* ``flex`` (CUDA only, when FlexAttention imports): the same gather with ``flex_attention`` and a
  sink/window block mask. FlashInfer is not wired in yet (see the issue's notes).

``speedup_vs_streamingllm`` = streamingllm time / flashstream time (goal on CPU: >= 3x). Before
timing, flashstream's output is checked against ``sdpa_gather`` (same semantics).
Results: bench/results/sink_attention-<device-tag>[-tN].json. Each record carries the machine's load
average around it, and each time is the minimum over --repeats medians: on a shared machine, oversubscribed intra-op threads make torch's many small ops
(the peers) far slower than their own cost, so compare runs taken at low load, or with --threads 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

import flashstream  # noqa: E402
from flashstream.cache import SinkCache  # noqa: E402

HQ, HKV, D, SINK, WINDOW, THETA = 9, 3, 64, 4, 1024, 100000.0
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
GOALS = {"cpu": {"speedup_vs_streamingllm": 3.0}}


def rope(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """GPT-NeoX rotate-half rotary of x [..., L, D] at positions pos [L] (as HF Llama does)."""
    inv = THETA ** (-torch.arange(0, D, 2, dtype=torch.float32, device=x.device) / D)
    ang = pos.float()[:, None] * inv
    emb = torch.cat([ang, ang], dim=-1)
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class StreamingLLMReference:
    """StartRecentKVCache + pos-shift attention, as in mit-han-lab/streaming-llm ([B, H, S, D])."""

    def __init__(self, k0: torch.Tensor, v0: torch.Tensor):
        self.k, self.v = k0, v0  # pre-rotary [B, Hkv, S, D]

    def step(self, q, k, v):  # q [B, Hq, T, D]; k, v [B, Hkv, T, D]
        T = q.shape[2]
        k_all = torch.cat([self.k, k], dim=2)
        v_all = torch.cat([self.v, v], dim=2)
        L = k_all.shape[2]
        pos = torch.arange(L, device=q.device)
        k_rot = rope(k_all, pos)
        q_rot = rope(q, pos[L - T:])
        g = HQ // HKV
        k_rep = k_rot.repeat_interleave(g, dim=1)
        v_rep = v_all.repeat_interleave(g, dim=1)
        scores = torch.matmul(q_rot, k_rep.transpose(2, 3)) / D ** 0.5
        causal = torch.ones(T, L, dtype=torch.bool, device=q.device).tril(L - T)
        scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs, v_rep)
        # eviction (StartRecentKVCache.__call__): keep the first SINK and the last WINDOW tokens
        self.k = torch.cat([k_all[:, :, :SINK], k_all[:, :, -WINDOW:]], dim=2)
        self.v = torch.cat([v_all[:, :, :SINK], v_all[:, :, -WINDOW:]], dim=2)
        return out


class GatherSDPA:
    """A ring of pre-rotary keys; each step gathers the keys the step can see (sinks, the last
    WINDOW - 1 tokens before it, the step), rotates keys and queries at their index in that
    gathered list and runs SDPA (or FlexAttention) with the sink/window mask. Exact for T = 1;
    for T > 1 a query's distance to the sinks is off by its offset in the step (the exact ranks
    need two rotary frames, which SDPA cannot take): a speed peer, not a reference."""

    def __init__(self, k_hist, v_hist, n, flex=None):  # k_hist [B, n, Hkv, D]: the whole history
        B = k_hist.shape[0]
        self.n = n
        self.k = torch.zeros(B, SINK + WINDOW, HKV, D, dtype=k_hist.dtype, device=k_hist.device)
        self.v = torch.zeros_like(self.k)
        for p in list(range(SINK)) + list(range(n - WINDOW, n)):
            s = p if p < SINK else SINK + (p - SINK) % WINDOW
            self.k[:, s], self.v[:, s] = k_hist[:, p], v_hist[:, p]
        self.flex = flex
        self.mask_cache = {}

    def mask(self, T, dev):
        if T not in self.mask_cache:
            L = SINK + WINDOW - 1 + T
            idx = torch.arange(L, device=dev)
            i = torch.arange(L - T, L, device=dev)
            self.mask_cache[T] = (idx[None] <= i[:, None]) & ((idx[None] < SINK) | (idx[None] > i[:, None] - WINDOW))
        return self.mask_cache[T]

    def step(self, q, k, v):  # [B, T, H, D]
        T, n, dev = q.shape[1], self.n, q.device
        old = torch.arange(n - WINDOW + 1, n, device=dev)
        slots = torch.cat([torch.arange(SINK, device=dev), SINK + (old - SINK) % WINDOW])
        keys = torch.cat([self.k.index_select(1, slots), k], dim=1).transpose(1, 2)
        vals = torch.cat([self.v.index_select(1, slots), v], dim=1).transpose(1, 2)
        L = keys.shape[2]
        pos = torch.arange(L, device=dev)
        kr = rope(keys, pos)
        qr = rope(q.transpose(1, 2), pos[L - T:])
        if self.flex is None:
            out = F.scaled_dot_product_attention(qr, kr, vals, attn_mask=self.mask(T, dev), enable_gqa=True)
        else:
            out = self.flex(qr, kr, vals, T)
        keep_from = max(SINK, n, n + T - WINDOW)  # new tokens that stay in the ring
        ps = SINK + (torch.arange(keep_from, n + T, device=dev) - SINK) % WINDOW
        self.k.index_copy_(1, ps, k[:, keep_from - n:])
        self.v.index_copy_(1, ps, v[:, keep_from - n:])
        self.n += T
        return out.transpose(1, 2)


def make_flex():
    """FlexAttention over the gathered keys with the sink/window block mask (CUDA), or None."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return None
    compiled = torch.compile(flex_attention)
    masks = {}

    def run(q, k, v, T):
        L = k.shape[2]
        if T not in masks:
            def mask_mod(b, h, qi, ki):
                i = qi + (L - T)
                return (ki <= i) & ((ki < SINK) | (ki > i - WINDOW))
            masks[T] = create_block_mask(mask_mod, None, None, T, L, device=q.device)
        return compiled(q, k, v, block_mask=masks[T], enable_gqa=True)

    return run


def check_against_reference(device, dtype):
    """flashstream's step equals the fp64 gather reference (tests/references) on a short stream."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from references.sink_attention import reference_step

    n0, T = 200, 16
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, n0 + T, h, D, generator=g).to(dtype) for h in (HQ, HKV, HKV))
    cache = SinkCache(1, 1, HKV, D, sink=SINK, window=40, page_size=16, rope_theta=THETA, dtype=dtype, device=device)
    cache.step(0, q[:, :n0].contiguous().to(device), k[:, :n0].contiguous().to(device), v[:, :n0].contiguous().to(device))
    out = cache.step(0, *(t[:, n0:].contiguous().to(device) for t in (q, k, v)))
    ref, _ = reference_step(q[:, n0:], k, v, n0, sink=SINK, window=40, rope_theta=THETA)
    err = (out.cpu().double() - ref).abs().max().item()
    assert err < (1e-4 if dtype == torch.float32 else 5e-2), f"flashstream differs from the reference by {err}"
    return err


def timed(fn, device, repeats, **kw):
    """Min over `repeats` of harness.time_fn's median: on a shared machine the least-disturbed run."""
    return min(harness.time_fn(fn, device=device, **kw) for _ in range(repeats))


def bench_case(device, dtype_name, T, quick, repeats=1):
    dtype = DTYPES[dtype_name]
    n = SINK + WINDOW + 500  # steady state: the ring has wrapped
    g = torch.Generator().manual_seed(0)
    hist_k = torch.randn(1, n, HKV, D, generator=g).to(dtype).to(device)
    hist_v = torch.randn(1, n, HKV, D, generator=g).to(dtype).to(device)
    q = torch.randn(1, T, HQ, D, generator=g).to(dtype).to(device)
    k = torch.randn(1, T, HKV, D, generator=g).to(dtype).to(device)
    v = torch.randn(1, T, HKV, D, generator=g).to(dtype).to(device)
    kw = {} if device == "cuda" else {"min_run_time": 0.3 if quick else 1.0}
    rec = {"device": device, "dtype": dtype_name, "T": T, "B": 1, "Hq": HQ, "Hkv": HKV, "D": D, "sink": SINK,
           "window": WINDOW, "positions": "cache"}

    cache = SinkCache(1, 1, HKV, D, sink=SINK, window=WINDOW, page_size=16, rope_theta=THETA, dtype=dtype,
                      device=device)
    cache.step(0, hist_q := torch.zeros(1, n, HQ, D, dtype=dtype, device=device), hist_k, hist_v)
    del hist_q
    # Each timed call is a full step; the cache keeps streaming (the state stays steady).
    rec["flashstream_s"] = timed(lambda: cache.step(0, q, k, v), device, repeats, **kw)

    ref = StreamingLLMReference(hist_k[:, :SINK + WINDOW - T].transpose(1, 2).contiguous(),
                                hist_v[:, :SINK + WINDOW - T].transpose(1, 2).contiguous())
    qh, kh, vh = (t.transpose(1, 2).contiguous() for t in (q, k, v))

    def sl_step():
        out = ref.step(qh, kh, vh)
        # StartRecentKVCache.evict_for_space(T): drop the oldest recent tokens, keep the sinks
        ref.k = torch.cat([ref.k[:, :, :SINK], ref.k[:, :, SINK + T:]], dim=2)
        ref.v = torch.cat([ref.v[:, :, :SINK], ref.v[:, :, SINK + T:]], dim=2)
        return out

    rec["streamingllm_s"] = timed(sl_step, device, repeats, **kw)
    gather = GatherSDPA(hist_k, hist_v, n)
    rec["sdpa_gather_s"] = timed(lambda: gather.step(q, k, v), device, repeats, **kw)
    if device == "cuda":
        flex = make_flex()
        if flex is not None:
            gflex = GatherSDPA(hist_k, hist_v, n, flex=flex)
            rec["flex_s"] = timed(lambda: gflex.step(q, k, v), device, repeats, **kw)
    rec["speedup_vs_streamingllm"] = rec["streamingllm_s"] / rec["flashstream_s"]
    rec["speedup_vs_sdpa_gather"] = rec["sdpa_gather_s"] / rec["flashstream_s"]
    return rec


COLUMNS = [("dtype", "dtype", "s"), ("T", "T", "d"), ("flashstream_s", "flashstream s", ".3e"),
           ("streamingllm_s", "StreamingLLM s", ".3e"), ("sdpa_gather_s", "SDPA-gather s", ".3e"),
           ("flex_s", "flex s", ".3e"), ("speedup_vs_streamingllm", "x StreamingLLM", ".2f"),
           ("speedup_vs_sdpa_gather", "x SDPA", ".2f")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="shorter timing, results under a -quick name")
    ap.add_argument("--repeats", type=int, default=3, help="timings per contender; the minimum is kept")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args(argv)
    device = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    records = []
    for dtype_name in DTYPES:
        err = check_against_reference(device, DTYPES[dtype_name])
        for T in (64, 1):
            load_before = os.getloadavg()[0]
            rec = bench_case(device, dtype_name, T, args.quick, args.repeats)
            rec["repeats"] = args.repeats
            rec["max_abs_err_vs_reference"] = err
            rec["threads"] = torch.get_num_threads()
            rec["loadavg_1min"] = [load_before, os.getloadavg()[0]]
            records.append(rec)
            print(harness.fmt_table([rec], COLUMNS), flush=True)
    goals = GOALS.get(device, {})
    for rec in records:
        rec["goals"] = goals
    print(harness.fmt_table(records, COLUMNS))
    name = "sink_attention-quick" if args.quick else "sink_attention"
    if args.threads:
        name += f"-t{args.threads}"
    path = harness.write_results(name, records, device=device)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
