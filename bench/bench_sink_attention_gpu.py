"""Sink attention on a GPU (issue 3's H100 bench): decode vs FlashInfer, chunked prefill vs
FlexAttention, mixed full/streaming heads in one launch vs two.

    python bench/bench_sink_attention_gpu.py [--device cuda] [--only decode,prefill,mixed] [--budget-s S]
    python bench/bench_sink_attention_gpu.py --dry-run     # CPU, tiny sizes: builds every case, runs the checks

Shapes: D = 128, 32 q heads / 8 kv heads, bf16, 4 sinks, page size 16, rotary theta 1e4 (given to
every contender), positions="cache" (StreamingLLM's pos-shift: a key rotates at its rank among the
keys its query sees). Every cache is at steady state (the ring has wrapped). L2 is flushed before
every timed rep (bench/harness.py); each time is the median of harness.time_fn's reps.

Decode, B in {1, 8, 64} x window W in {1K, 4K, 32K} (each query sees 4 + W keys):
* ``fs_attend``: ``sink_cache_attend`` (attention of the step over the cache + its own k, v; no
  append), eager and captured in a CUDA graph; ``fs_step``: ``SinkCache.step(out=...)``
  (attention + fused append/evict), eager and in a graph (each replay advances the stream).
* ``flashinfer``: ``BatchDecodeWithPagedKVCacheWrapper(..., "NHD", use_cuda_graph=True)`` with
  ``pos_encoding_mode="ROPE_LLAMA"`` over a paged cache (page 16) holding the same 4 + W tokens in
  rank order, so its in-kernel rotary (key at its index in the page list, query at kv_len - 1)
  is exactly positions="cache". plan() runs once outside the timing; run() eager and in a graph.
  Its CUDA-core decode kernel by default; ``--flashinfer-tensor-cores`` adds the tensor-core one
  (``flashinfer_tc_*``; FlashInfer suggests it for GQA groups >= 4) and the ratio takes the faster.
  Only run() is timed: FlashInfer cannot keep this layout by itself in a stream (token-granular
  sinks and a sliding ring need a re-pack every step; its pages have no first-page offset).
* ``copy``: ``dst.copy_(src)`` of the same KV bytes (harness.copy_bandwidth, read + write counted)
  and of 1 GiB (the peak). ``fs_gbs`` = KV bytes read / fs attention time (graph);
  ``frac_copy`` = fs_gbs / copy bandwidth of the same bytes (issue goal >= 0.8 at long windows).

Chunked prefill, B = 1, T in {512, 1024, 4096} x W in {1K, 4K} (mask "causal": each query sees the
sinks and its own last W tokens):
* ``fs_attend`` (positions "cache" and "absolute") and ``fs_step`` (attention + append), eager.
* ``flex``: ``torch.compile(flex_attention)`` over the gathered keys (sinks, the W - 1 tokens
  before the chunk, the chunk), rotated beforehand at their absolute positions, with the
  sink+window block mask (``flex_attn``: attention only; ``flex_full``: gather + rotary +
  attention). Same function as fs with positions="absolute", which is what the numerical check
  compares; ``speedup_vs_flex`` = flex_attn / fs_attend (positions "cache", the product mode).
  flashstream's prefill here takes its tensor-core kernel (include/flashstream/sink/cuda_tc.cuh:
  bf16, D 128, T x 4 >= 64 rows, no split-KV, aligned key rows; tc_params.h's rule), decode and
  the mixed-heads decode the SIMT one (cuda.cuh).

Mixed heads, decode, B in {1, 16} x context N in {4K, 32K}: kv heads 0-3 full (see all N tokens),
4-7 streaming (4 sinks + 1020): one ``sink_cache_attend`` over one cache with ``full_heads`` vs two
launches over two caches (full heads; streaming heads), q pre-split (not timed), eager and in a
CUDA graph each; ``speedup_vs_two_launches`` = two / one (goal >= 1.3).

Before timing, each contender is checked against a fp32 PyTorch reference written from the
semantics (on up to 2 streams / 8 queries) and against each other (all outputs): max abs diff and
relative error are recorded. FlashInfer or FlexAttention failing to import, JIT-compile or run is
recorded in the JSON (``flashinfer_error`` / ``flex_error``) and the other contenders go on.
A flashstream mismatch makes the script exit 1 after writing the results.
Results: bench/results/sink_attention_gpu-<device-tag>.json and .png (written after every case, so a
run cut short keeps what it measured). ``--budget-s`` (default 240 s, gpu_check.sh allows 300)
skips the cases left when it runs out, recording them as skipped.

On the GPU machine bench/gpu_check.sh runs it (FlashInfer and apache-tvm-ffi come from the carried
.whl/, see bench/prepare_gpu_wheels.sh). Alone there: install .whl/*.whl into a --target folder on
PYTHONPATH, build with FLASHSTREAM_CUDA=ON, run this file. Expect FlashInfer's first plan() to
JIT-compile its decode kernel (three nvcc jobs, not yet timed there; ``flashinfer_plan_s``) and each prefill shape to
compile FlexAttention; ``case_wall_s`` records each case's wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

HQ, HKV, D, SINK, PAGE, THETA = 32, 8, 128, 4, 16, 10000.0
DTYPE = torch.bfloat16
REL_TOL = 1e-2  # bf16 outputs vs an fp32 reference on the same bf16 inputs
REF_STREAMS = 2  # streams checked against the fp32 reference
REF_QUERIES = 8  # prefill queries checked against the fp32 reference
EXTRA = 37  # tokens past sink + window before the timed steps: the ring has wrapped, unaligned to pages

SIZES = {
    "full": {"decode_B": (1, 8, 64), "decode_W": (1024, 4096, 32768), "prefill_T": (512, 1024, 4096),
             "prefill_W": (1024, 4096), "mixed_B": (1, 16), "mixed_N": (4096, 32768), "mixed_W": 1020},
    # --dry-run: the same cases at sizes a CPU runs in seconds
    "dry": {"decode_B": (1, 3), "decode_W": (20, 70), "prefill_T": (24, 50), "prefill_W": (20, 70),
            "mixed_B": (1, 2), "mixed_N": (64, 200), "mixed_W": 20},
}
GOALS = {"decode": {"speedup_vs_flashinfer": 1.0, "frac_copy_at_32k": 0.8},
         "prefill": {"speedup_vs_flex": 1.0}, "mixed": {"speedup_vs_two_launches": 1.3}}


# ---- references (fp32, from the semantics) --------------------------------------------------------

def rope_tables(pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [L, D/2] (fp32, angles in fp64) of the rotate-half rotary at positions pos [L]."""
    inv = THETA ** (-torch.arange(0, D, 2, dtype=torch.float64, device=pos.device) / D)
    ang = (pos.to(torch.float64)[:, None] * inv).float()
    return ang.cos(), ang.sin()


def rope(x: torch.Tensor, pos: torch.Tensor, tables=None) -> torch.Tensor:
    """Rotate-half (Llama / GPT-NeoX) rotary of x [..., L, D] at positions pos [L], in fp32."""
    cos, sin = rope_tables(pos) if tables is None else tables
    x = x.float()
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def attend_ref(q: torch.Tensor, keys: torch.Tensor, vals: torch.Tensor, kpos=None, qpos=None) -> torch.Tensor:
    """One query per stream, q [b, Hq, D], over keys/vals [b, L, Hkv, D], rotated at kpos [L] and
    qpos (default: ranks 0..L-1, the query at L-1, i.e. positions="cache"). Returns fp32 [b, Hq, D]."""
    L = keys.shape[1]
    if kpos is None:
        kpos, qpos = torch.arange(L, device=keys.device), L - 1
    kr = rope(keys.transpose(1, 2), kpos)
    qr = rope(q[:, :, None], torch.tensor([qpos], device=q.device))
    out = F.scaled_dot_product_attention(qr, kr, vals.float().transpose(1, 2), enable_gqa=True)
    return out[:, :, 0]


def compare(out: torch.Tensor, ref: torch.Tensor) -> dict:
    out, ref = out.float(), ref.float()
    err = {"max_abs": (out - ref).abs().max().item(),
           "rel": ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()}
    err["ok"] = bool(math.isfinite(err["rel"]) and err["rel"] <= REL_TOL)
    return err


def randn(shape, gen, device):
    return torch.randn(shape, generator=gen, device=device, dtype=DTYPE)


# ---- cases' shared pieces -----------------------------------------------------------------------

def filled_cache(B, Hkv, hist_k, hist_v, device, **kw):
    """A one-layer SinkCache fed hist [B, n, Hkv, D] by append (no attention), in chunks."""
    from flashstream.cache import SinkCache

    cache = SinkCache(1, B, Hkv, D, sink=SINK, page_size=PAGE, rope_theta=THETA, dtype=DTYPE, device=device, **kw)
    n, chunk = hist_k.shape[1], 4096
    for s in range(0, n, chunk):
        cache.append(0, hist_k[:, s:s + chunk], hist_v[:, s:s + chunk])
    return cache


def attend_fn(cache, q, k, v, window, out, *, positions="cache", full_heads=True):
    """A callable running sink_cache_attend over layer 0 of `cache` into out = (o, lse)."""
    from flashstream.ops.sink import sink_cache_attend

    fh = cache.full_heads[0] if full_heads else None
    return lambda: sink_cache_attend(q, k, v, cache.k_pool[0], cache.v_pool[0], cache.page_table[0],
                                     cache.layer_lengths[0], sink=SINK, window=window, full_heads=fh,
                                     positions=positions, rope_theta=THETA, out=out)


def out_pair(q):
    return torch.empty_like(q), torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)


def on_cuda(device) -> bool:
    """Whether the GPU-only parts (graphs, timing, FlashInfer, compiled Flex) run; the test of the
    bench patches it to drive those parts on CPU with stand-ins."""
    return torch.device(device).type == "cuda"


def graphed(fn, device):
    """fn captured in a CUDA graph (replay callable), or fn itself off CUDA (the dry run)."""
    if not on_cuda(device):
        return fn
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    torch.cuda.synchronize()
    return g.replay


def timed(fn, device):
    if not on_cuda(device):
        fn()  # the dry run checks that it runs; CPU timings of these sizes mean nothing
        return None
    return harness.time_fn(fn, device=device)


def describe(e: Exception) -> str:
    """An exception for the JSON: its message's head and tail (a failed JIT build's cause is at the
    end of a long ninja log) and where it was raised."""
    msg = f"{type(e).__name__}: {e}"
    if len(msg) > 3000:
        msg = msg[:800] + " [...] " + msg[-2200:]
    where = " / ".join(traceback.format_exc().strip().splitlines()[-6:-1])
    return msg + " | at: " + where[-1500:]


_broken_peers: dict[str, str] = {}  # peers that failed before ever running (a failed JIT build)
_working_peers: set[str] = set()


def try_peer(rec, name, fn, sticky=False):
    """Runs a peer's part; on any failure records why and goes on. With `sticky`, a peer that fails
    before it has ever run is skipped in the cases after (each retry of a failed JIT build would
    cost a minute); a failure after a success (say, out of memory in one case) is not."""
    if name in _broken_peers:
        rec[f"{name}_error"] = "not run: failed in an earlier case: " + _broken_peers[name][:300]
        return None
    try:
        result = fn()
        _working_peers.add(name)
        return result
    except Exception as e:  # noqa: BLE001  (a peer that cannot run must not stop the bench)
        rec[f"{name}_error"] = describe(e)
        if sticky and name not in _working_peers:
            _broken_peers[name] = rec[f"{name}_error"]
        print(f"  {name} failed: {type(e).__name__}: {str(e)[:300]} ... {str(e)[-600:]}", flush=True)
        return None


# ---- FlashInfer ---------------------------------------------------------------------------------

def paged_rank_order(keys, vals):
    """keys/vals [B, L, Hkv, D] in rank order -> FlashInfer's NHD paged cache (k, v [B*P, PAGE,
    Hkv, D]) with indptr [B+1], indices [B*P], last_page_len [B] (int32): only the last page of a
    stream is partial, as FlashInfer requires."""
    B, L = keys.shape[:2]
    P = -(-L // PAGE)
    pad = (0, 0, 0, 0, 0, P * PAGE - L)
    kc = F.pad(keys, pad).reshape(B * P, PAGE, HKV, D)
    vc = F.pad(vals, pad).reshape(B * P, PAGE, HKV, D)
    dev = keys.device
    indptr = (torch.arange(B + 1, device=dev) * P).to(torch.int32)
    indices = torch.arange(B * P, device=dev, dtype=torch.int32)
    last = torch.full((B,), L - (P - 1) * PAGE, device=dev, dtype=torch.int32)
    return kc, vc, indptr, indices, last


def flashinfer_emulated(q, kc, vc, indptr, indices, last, b):
    """What FlashInfer's ROPE_LLAMA decode computes for stream b, in fp32 from the paged inputs:
    keys read through the page list, each rotated at its index there, the query at kv_len - 1."""
    pages = indices[indptr[b]:indptr[b + 1]].long()
    L = (len(pages) - 1) * PAGE + int(last[b])
    keys = kc[pages].reshape(-1, HKV, D)[:L]
    vals = vc[pages].reshape(-1, HKV, D)[:L]
    return attend_ref(q[b:b + 1], keys[None], vals[None])[0]


class FlashInferDecode:
    """BatchDecodeWithPagedKVCacheWrapper planned once (CUDA-graph mode: fixed buffers)."""

    def __init__(self, q, kc, vc, indptr, indices, last, use_tensor_cores=False):
        import flashinfer

        self.version = getattr(flashinfer, "__version__", "unknown")
        dev = q.device
        self.ws = torch.zeros(128 << 20, dtype=torch.uint8, device=dev)
        self.bufs = (indptr.clone(), indices.clone(), last.clone())
        self.wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            self.ws, "NHD", use_cuda_graph=True, use_tensor_cores=use_tensor_cores, paged_kv_indptr_buffer=self.bufs[0],
            paged_kv_indices_buffer=self.bufs[1], paged_kv_last_page_len_buffer=self.bufs[2])
        t0 = time.perf_counter()
        self.wrapper.plan(indptr, indices, last, HQ, HKV, D, PAGE, pos_encoding_mode="ROPE_LLAMA",
                          q_data_type=DTYPE, kv_data_type=DTYPE, rope_theta=THETA, sm_scale=D ** -0.5)
        self.plan_s = time.perf_counter() - t0  # the first plan() includes the JIT build of the kernel
        self.q, self.cache = q, (kc, vc)
        self.out = torch.empty_like(q)

    def run(self):
        return self.wrapper.run(self.q, self.cache, out=self.out)


# ---- FlexAttention ------------------------------------------------------------------------------

def sink_window_mask_mod(W):
    """Sink+window visibility over the gathered keys [sinks | the W-1 tokens before the chunk | the
    chunk]: gathered key j >= SINK is stream token n - W + 1 + (j - SINK), query qi is n + qi, and a
    query sees the sinks and its last W tokens (itself included)."""
    def mask_mod(b, h, qi, kj):
        return (kj < SINK) | ((kj >= qi + SINK) & (kj <= qi + SINK + W - 1))
    return mask_mod


class FlexPrefill:
    """flex_attention (compiled) with the sink+window block mask; off CUDA (the dry run) the same
    mask_mod, evaluated densely, drives SDPA, which checks the gather and the mask construction."""

    def __init__(self, T, L, W, device):
        self.mask_mod = sink_window_mask_mod(W)
        self.cuda = on_cuda(device)
        if self.cuda:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention

            self.block_mask = create_block_mask(self.mask_mod, None, None, T, L, device=device)
            self.flex = torch.compile(flex_attention, dynamic=False)
        else:
            qi = torch.arange(T, device=device)[:, None]
            kj = torch.arange(L, device=device)[None, :]
            self.dense = self.mask_mod(None, None, qi, kj)

    def __call__(self, q, k, v):  # [B, H, T | L, D]
        if self.cuda:
            return self.flex(q, k, v, block_mask=self.block_mask, enable_gqa=True)
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=self.dense,
                                              enable_gqa=True).to(q.dtype)


# ---- the cases ----------------------------------------------------------------------------------

def decode_visible(hist, n, m, new, W):
    """Keys (or values) [b, SINK + W, Hkv, D] in rank order that the decode query at stream index
    m >= n sees: the sinks, hist tokens [m - W + 1, n), then tokens n..m, all `new` (every step
    since the cache held n tokens fed the same k, v)."""
    lo = m - W + 1
    parts = [hist[:, :SINK]]
    if lo < n:
        parts.append(hist[:, lo:n])
    parts.append(new.expand(-1, m - max(lo, n) + 1, -1, -1))
    return torch.cat(parts, dim=1)


def decode_case(B, W, device, copy_peak, flashinfer_tensor_cores=False):
    rec = {"kind": "decode", "device": device, "B": B, "W": W, "Hq": HQ, "Hkv": HKV, "D": D, "sink": SINK,
           "page_size": PAGE, "dtype": "bf16", "positions": "cache"}
    gen = torch.Generator(device=device).manual_seed(1000 * B + W)
    n = SINK + W + EXTRA
    hist_k, hist_v = randn((B, n, HKV, D), gen, device), randn((B, n, HKV, D), gen, device)
    q, k, v = randn((B, 1, HQ, D), gen, device), randn((B, 1, HKV, D), gen, device), randn((B, 1, HKV, D), gen, device)
    cache = filled_cache(B, HKV, hist_k, hist_v, device, window=W)
    nr = min(B, REF_STREAMS)
    hk, hv = hist_k[:nr].clone(), hist_v[:nr].clone()

    def ref_at(m):
        return attend_ref(q[:nr, 0], decode_visible(hk, n, m, k[:nr], W), decode_visible(hv, n, m, v[:nr], W))

    # FlashInfer's cache: the same 4 + W tokens in rank order, built while the history is at hand.
    keys, vals = decode_visible(hist_k, n, n, k, W), decode_visible(hist_v, n, n, v, W)
    paged = paged_rank_order(keys, vals)
    del hist_k, hist_v, keys, vals
    ref_n = ref_at(n)
    # The paged inputs handed to FlashInfer encode the same function (checked on the emulation).
    emu = torch.stack([flashinfer_emulated(q[:, 0], *paged, b) for b in range(nr)])
    rec["flashinfer_inputs_vs_ref"] = compare(emu, ref_n)

    o_att = out_pair(q)
    attend = attend_fn(cache, q, k, v, W, o_att)
    attend()
    rec["fs_attend_vs_ref"] = compare(o_att[0][:nr, 0], ref_n)
    out_at_n = o_att[0][:, 0].clone()  # the timed calls below overwrite o_att at later stream positions
    o_step = torch.empty_like(q)

    def step():
        cache.step(0, q, k, v, out=o_step)

    step()  # the cache held n tokens: this step's query is at stream index n
    rec["fs_step_vs_ref"] = compare(o_step[:nr, 0], ref_n)
    step_graph = graphed(step, device)
    attend_graph = graphed(attend, device)
    m = int(cache.lengths[0])  # capture ran no kernels; the warm-ups did
    step_graph()
    rec["fs_step_graph_vs_ref"] = compare(o_step[:nr, 0], ref_at(m))

    rec["fs_attend_s"] = timed(attend, device)
    rec["fs_attend_graph_s"] = timed(attend_graph, device)
    rec["fs_step_s"] = timed(step, device)
    rec["fs_step_graph_s"] = timed(step_graph, device)

    variants = [("flashinfer", False)] + ([("flashinfer_tc", True)] if flashinfer_tensor_cores else [])
    for name, tc in variants if on_cuda(device) else []:
        def flashinfer_part():
            fi = FlashInferDecode(q[:, 0].contiguous(), *paged, use_tensor_cores=tc)
            rec["flashinfer_version"] = fi.version
            rec[f"{name}_plan_s"] = fi.plan_s
            fi.run()
            rec[f"{name}_vs_ref"] = compare(fi.out[:nr], ref_n)
            rec[f"{name}_vs_fs"] = compare(out_at_n, fi.out)  # all streams
            rec[f"{name}_s"] = timed(fi.run, device)
            rec[f"{name}_graph_s"] = timed(graphed(fi.run, device), device)
        try_peer(rec, name, flashinfer_part, sticky=True)

    kv_bytes = B * HKV * (SINK + W) * D * 2 * DTYPE.itemsize
    rec["kv_bytes"] = kv_bytes
    if rec["fs_attend_graph_s"]:
        copy_same = harness.copy_bandwidth(kv_bytes, device)
        rec["copy_gbs"] = copy_same / 1e9
        rec["copy_peak_gbs"] = copy_peak / 1e9
        rec["fs_gbs"] = kv_bytes / rec["fs_attend_graph_s"] / 1e9
        rec["frac_copy"] = rec["fs_gbs"] / rec["copy_gbs"]
        rec["frac_copy_peak"] = rec["fs_gbs"] / rec["copy_peak_gbs"]
        rec["pct_copy"] = 100 * rec["frac_copy"]
        # Against FlashInfer's faster variant when both ran (CUDA-core decode; tensor-core decode).
        fi_best = min((rec[k] for k in ("flashinfer_graph_s", "flashinfer_tc_graph_s") if rec.get(k)), default=None)
        if fi_best:
            rec["speedup_vs_flashinfer"] = fi_best / rec["fs_attend_graph_s"]
            rec["speedup_step_vs_flashinfer"] = fi_best / rec["fs_step_graph_s"]
            rec["flashinfer_gbs"] = kv_bytes / fi_best / 1e9
    return rec


def prefill_case(T, W, device):
    B = 1
    rec = {"kind": "prefill", "device": device, "B": B, "T": T, "W": W, "Hq": HQ, "Hkv": HKV, "D": D, "sink": SINK,
           "page_size": PAGE, "dtype": "bf16", "mask": "causal"}
    gen = torch.Generator(device=device).manual_seed(7 * T + W)
    n = SINK + W + EXTRA
    hist_k, hist_v = randn((B, n, HKV, D), gen, device), randn((B, n, HKV, D), gen, device)
    q, k, v = randn((B, T, HQ, D), gen, device), randn((B, T, HKV, D), gen, device), randn((B, T, HKV, D), gen, device)
    cache = filled_cache(B, HKV, hist_k, hist_v, device, window=W)
    seq_k, seq_v = torch.cat([hist_k, k], 1), torch.cat([hist_v, v], 1)  # the stream, tokens 0..n+T-1

    # Reference on a few queries spread over the chunk (both position modes).
    qis = sorted({round(j * (T - 1) / (REF_QUERIES - 1)) for j in range(REF_QUERIES)})
    ref_cache, ref_abs = [], []
    for qi in qis:
        i = n + qi
        idx = torch.cat([torch.arange(SINK, device=device), torch.arange(i - W + 1, i + 1, device=device)])
        ks, vs = seq_k[:, idx], seq_v[:, idx]
        ref_cache.append(attend_ref(q[:, qi], ks, vs)[0])
        ref_abs.append(attend_ref(q[:, qi], ks, vs, kpos=idx, qpos=i)[0])
    ref_cache, ref_abs = torch.stack(ref_cache), torch.stack(ref_abs)

    o_c, o_a = out_pair(q), out_pair(q)
    attend_c = attend_fn(cache, q, k, v, W, o_c)
    attend_a = attend_fn(cache, q, k, v, W, o_a, positions="absolute")
    attend_c()
    attend_a()
    rec["fs_attend_vs_ref"] = compare(o_c[0][0, qis], ref_cache)
    rec["fs_attend_absolute_vs_ref"] = compare(o_a[0][0, qis], ref_abs)
    abs_at_n = o_a[0].clone()  # the timed calls below overwrite o_a

    # The peer's inputs: gathered keys at absolute positions, rotated beforehand.
    L = SINK + W - 1 + T
    gidx = torch.cat([torch.arange(SINK, device=device), torch.arange(n - W + 1, n + T, device=device)])
    qtab, ktab = rope_tables(torch.arange(n, n + T, device=device)), rope_tables(gidx)  # built once, as a peer would

    def gather_rotate():
        kg = torch.cat([hist_k[:, :SINK], hist_k[:, n - W + 1:], k], 1).transpose(1, 2)
        vg = torch.cat([hist_v[:, :SINK], hist_v[:, n - W + 1:], v], 1).transpose(1, 2)
        return rope(q.transpose(1, 2), None, qtab).to(DTYPE), rope(kg, None, ktab).to(DTYPE), vg

    def flex_part():
        flex = FlexPrefill(T, L, W, device)
        qr, kr, vg = gather_rotate()
        out = flex(qr, kr, vg).transpose(1, 2)  # [B, T, Hq, D]
        rec["flex_vs_ref"] = compare(out[0, qis], ref_abs)
        rec["flex_vs_fs_absolute"] = compare(abs_at_n, out)  # every query
        rec["flex_attn_s"] = timed(lambda: flex(qr, kr, vg), device)
        rec["flex_full_s"] = timed(lambda: flex(*gather_rotate()), device)
    try_peer(rec, "flex", flex_part)

    rec["fs_attend_s"] = timed(attend_c, device)
    rec["fs_attend_absolute_s"] = timed(attend_a, device)
    rec["fs_step_s"] = timed(lambda: cache.step(0, q, k, v), device)
    if rec["fs_attend_s"] and rec.get("flex_attn_s"):
        rec["speedup_vs_flex"] = rec["flex_attn_s"] / rec["fs_attend_s"]
        rec["speedup_absolute_vs_flex"] = rec["flex_attn_s"] / rec["fs_attend_absolute_s"]
    flops = 4 * B * HQ * T * (SINK + W) * D  # QK^T and PV over each query's visible keys
    if rec["fs_attend_s"]:
        rec["fs_tflops"] = flops / rec["fs_attend_s"] / 1e12
    return rec


def mixed_case(B, N, Ws, device):
    rec = {"kind": "mixed", "device": device, "B": B, "N": N, "W": Ws, "Hq": HQ, "Hkv": HKV, "D": D, "sink": SINK,
           "page_size": PAGE, "dtype": "bf16", "full_kv_heads": HKV // 2}
    gen = torch.Generator(device=device).manual_seed(31 * B + N)
    hk, hq = HKV // 2, HQ // 2  # kv heads [0, hk) are full; their q heads are [0, hq)
    hist_k, hist_v = randn((B, N, HKV, D), gen, device), randn((B, N, HKV, D), gen, device)
    q, k, v = randn((B, 1, HQ, D), gen, device), randn((B, 1, HKV, D), gen, device), randn((B, 1, HKV, D), gen, device)
    full = torch.zeros(1, HKV, dtype=torch.bool)
    full[0, :hk] = True
    one = filled_cache(B, HKV, hist_k, hist_v, device, window=Ws, full_heads=full, max_tokens=N + 64)
    c_full = filled_cache(B, hk, hist_k[:, :, :hk], hist_v[:, :, :hk], device, window=None, max_tokens=N + 64)
    c_str = filled_cache(B, hk, hist_k[:, :, hk:], hist_v[:, :, hk:], device, window=Ws)
    q_f, q_s = q[:, :, :hq].contiguous(), q[:, :, hq:].contiguous()
    k_f, k_s = k[:, :, :hk].contiguous(), k[:, :, hk:].contiguous()
    v_f, v_s = v[:, :, :hk].contiguous(), v[:, :, hk:].contiguous()
    o1, of, os_ = out_pair(q), out_pair(q_f), out_pair(q_s)
    launch_one = attend_fn(one, q, k, v, Ws, o1)
    att_f = attend_fn(c_full, q_f, k_f, v_f, None, of, full_heads=False)
    att_s = attend_fn(c_str, q_s, k_s, v_s, Ws, os_, full_heads=False)

    def launch_two():
        att_f()
        att_s()

    launch_one()
    launch_two()
    nr = min(B, REF_STREAMS)
    seq_k, seq_v = torch.cat([hist_k[:nr], k[:nr]], 1), torch.cat([hist_v[:nr], v[:nr]], 1)
    ref_f = attend_ref(q[:nr, 0, :hq], seq_k[:, :, :hk], seq_v[:, :, :hk])
    idx = torch.cat([torch.arange(SINK, device=device), torch.arange(N - Ws + 1, N + 1, device=device)])
    ref_s = attend_ref(q[:nr, 0, hq:], seq_k[:, idx, hk:], seq_v[:, idx, hk:])
    ref = torch.cat([ref_f, ref_s], dim=1)
    rec["fs_one_launch_vs_ref"] = compare(o1[0][:nr, 0], ref)
    two = torch.cat([of[0], os_[0]], dim=2)
    rec["fs_two_launches_vs_ref"] = compare(two[:nr, 0], ref)
    rec["one_vs_two_launches"] = compare(o1[0], two)  # all streams
    rec["fs_one_launch_s"] = timed(launch_one, device)
    rec["fs_two_launches_s"] = timed(launch_two, device)
    rec["fs_one_launch_graph_s"] = timed(graphed(launch_one, device), device)
    rec["fs_two_launches_graph_s"] = timed(graphed(launch_two, device), device)
    if rec["fs_one_launch_graph_s"]:
        rec["speedup_vs_two_launches"] = rec["fs_two_launches_graph_s"] / rec["fs_one_launch_graph_s"]
        rec["speedup_vs_two_launches_eager"] = rec["fs_two_launches_s"] / rec["fs_one_launch_s"]
        kv_bytes = B * hk * ((N + 1) + (SINK + Ws)) * D * 2 * DTYPE.itemsize
        rec["kv_bytes"] = kv_bytes
        rec["fs_gbs"] = kv_bytes / rec["fs_one_launch_graph_s"] / 1e9
    return rec


# ---- report -------------------------------------------------------------------------------------

def checks_of(rec):
    return {k: v for k, v in rec.items() if isinstance(v, dict) and "rel" in v}


def fs_checks_ok(rec) -> bool:
    """flashstream's own checks (peers' disagreements are recorded, not fatal)."""
    return all(v["ok"] for k, v in checks_of(rec).items() if k.startswith(("fs_", "one_vs")))


def meets_goals(rec):
    if rec["kind"] == "decode" and rec.get("speedup_vs_flashinfer") is not None:
        ok = rec["speedup_vs_flashinfer"] >= GOALS["decode"]["speedup_vs_flashinfer"]
        if rec["W"] >= 32768:
            ok = ok and rec["frac_copy"] >= GOALS["decode"]["frac_copy_at_32k"]
        return ok
    if rec["kind"] == "prefill" and rec.get("speedup_vs_flex") is not None:
        return rec["speedup_vs_flex"] >= GOALS["prefill"]["speedup_vs_flex"]
    if rec["kind"] == "mixed" and rec.get("speedup_vs_two_launches") is not None:
        return rec["speedup_vs_two_launches"] >= GOALS["mixed"]["speedup_vs_two_launches"]
    return None


def us(rec, key):
    return None if rec.get(key) is None else rec[key] * 1e6


TABLES = {
    "decode": [("B", "B", "d"), ("W", "W", "d"), ("fs_attend_graph_us", "fs attend graph us", ".1f"),
               ("fs_step_graph_us", "fs step graph us", ".1f"), ("fs_attend_us", "fs attend eager us", ".1f"),
               ("flashinfer_graph_us", "FlashInfer graph us", ".1f"),
               ("flashinfer_tc_graph_us", "FI tc graph us", ".1f"),
               ("speedup_vs_flashinfer", "x FlashInfer", ".2f"),
               ("fs_gbs", "fs GB/s", ".0f"), ("frac_copy", "of copy", ".2f"), ("max_err", "max |err|", ".1e")],
    "prefill": [("T", "T", "d"), ("W", "W", "d"), ("fs_attend_us", "fs attend us", ".1f"),
                ("fs_attend_absolute_us", "fs abs us", ".1f"), ("fs_step_us", "fs step us", ".1f"),
                ("flex_attn_us", "flex us", ".1f"), ("flex_full_us", "flex+gather us", ".1f"),
                ("speedup_vs_flex", "x flex", ".2f"), ("max_err", "max |err|", ".1e")],
    "mixed": [("B", "B", "d"), ("N", "N", "d"), ("fs_one_launch_graph_us", "one launch graph us", ".1f"),
              ("fs_two_launches_graph_us", "two launches graph us", ".1f"), ("fs_one_launch_us", "one eager us", ".1f"),
              ("fs_two_launches_us", "two eager us", ".1f"), ("speedup_vs_two_launches", "x two", ".2f"),
              ("max_err", "max |err|", ".1e")],
}


def table(kind, records):
    rows = []
    for r in records:
        if r.get("kind") != kind or r.get("skipped") or r.get("error"):
            continue
        row = dict(r)
        for key in list(r):
            if key.endswith("_s") and isinstance(r[key], float):
                row[key[:-2] + "_us"] = us(r, key)
        errs = [v["max_abs"] for v in checks_of(r).values()]
        row["max_err"] = max(errs) if errs else None
        rows.append(row)
    return harness.fmt_table(rows, TABLES[kind]) if rows else ""


def plot(path: Path, records) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("decode", lambda r: f"B{r['B']} W{r['W'] // 1024}K",
               [("fs_attend_graph_s", "flashstream attend (graph)"), ("fs_step_graph_s", "flashstream step (graph)"),
                ("flashinfer_graph_s", "FlashInfer run (graph)")]),
              ("prefill", lambda r: f"T{r['T']} W{r['W'] // 1024}K",
               [("fs_attend_s", "flashstream (cache pos)"), ("fs_attend_absolute_s", "flashstream (abs pos)"),
                ("flex_attn_s", "FlexAttention")]),
              ("mixed", lambda r: f"B{r['B']} N{r['N'] // 1024}K",
               [("fs_one_launch_graph_s", "one launch (graph)"), ("fs_two_launches_graph_s", "two launches (graph)")])]
    fig, axes = plt.subplots(1, 4, figsize=(22, 5))
    for ax, (kind, label, series) in zip(axes, panels):
        rs = [r for r in records if r.get("kind") == kind and not r.get("skipped") and not r.get("error")]
        width = 0.8 / len(series)
        for i, (key, name) in enumerate(series):
            ax.bar([x + (i - (len(series) - 1) / 2) * width for x in range(len(rs))],
                   [(r.get(key) or 0) * 1e6 for r in rs], width, label=name)
        ax.set_xticks(range(len(rs)))
        ax.set_xticklabels([label(r) for r in rs], rotation=45, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("us (median, L2 flushed)")
        ax.set_title(kind)
        ax.legend(fontsize=7)
    rs = [r for r in records if r.get("kind") == "decode" and r.get("frac_copy") is not None]
    ax = axes[3]
    ax.bar(range(len(rs)), [r["frac_copy"] for r in rs])
    ax.axhline(0.8, color="k", ls="--", lw=0.8)
    ax.set_xticks(range(len(rs)))
    ax.set_xticklabels([f"B{r['B']} W{r['W'] // 1024}K" for r in rs], rotation=45, ha="right", fontsize=8)
    ax.set_title("decode: KV bytes / time / copy bandwidth (same bytes)")
    meta = json.loads(path.read_text(encoding="utf-8"))["metadata"]
    fig.suptitle(f"sink attention on {meta['device']} | torch {meta['torch']} | "
                 f"{str(meta.get('git_commit'))[:10]} | {meta['timestamp_utc']}", fontsize=9)
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# ---- main ---------------------------------------------------------------------------------------

def has_cuda_kernels() -> bool:
    import flashstream  # noqa: F401  (registers the ops)

    return torch._C._dispatch_has_kernel_for_dispatch_key("flashstream::sink_attention", "CUDA")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU, tiny sizes: build every case and run the flashstream + reference checks")
    ap.add_argument("--only", default="decode,prefill,mixed", help="comma-separated subset of decode,prefill,mixed")
    ap.add_argument("--budget-s", type=float, default=240.0, help="skip the cases left after this many seconds")
    ap.add_argument("--flashinfer-tensor-cores", action="store_true",
                    help="also time FlashInfer's tensor-core decode (use_tensor_cores=True; its JIT build of the "
                         "prefill kernels takes minutes more)")
    args = ap.parse_args(argv)
    kinds = [s for s in args.only.split(",") if s]
    if args.dry_run:
        device, sizes = "cpu", SIZES["dry"]
    else:
        if args.device != "cuda" or not torch.cuda.is_available():
            print("bench_sink_attention_gpu: needs a CUDA GPU (this is the H100 bench; --dry-run checks the "
                  "cases on CPU); nothing to do here.")
            return 0
        if not has_cuda_kernels():
            print("bench_sink_attention_gpu: flashstream was built without its CUDA kernels "
                  "(FLASHSTREAM_CUDA=ON); cannot run.", file=sys.stderr)
            return 1
        device, sizes = "cuda", SIZES["full"]
    start = time.monotonic()
    cases = []
    if "decode" in kinds:
        cases += [("decode", B, W) for W in sizes["decode_W"] for B in sizes["decode_B"]]
    if "prefill" in kinds:
        cases += [("prefill", T, W) for W in sizes["prefill_W"] for T in sizes["prefill_T"]]
    if "mixed" in kinds:
        cases += [("mixed", B, N) for N in sizes["mixed_N"] for B in sizes["mixed_B"]]
    copy_peak = harness.copy_bandwidth(1 << 30, device) if device == "cuda" else None
    records, path, failed = [], None, []
    for kind, a, b in cases:
        elapsed = time.monotonic() - start
        if elapsed > args.budget_s:
            records.append({"kind": kind, "device": device, "case": [a, b],
                            "skipped": f"time budget ({elapsed:.0f} s)"})
            print(f"{kind} {a} {b}: skipped (time budget)", flush=True)
            continue
        t0 = time.monotonic()
        try:
            if kind == "decode":
                rec = decode_case(a, b, device, copy_peak, args.flashinfer_tensor_cores)
            elif kind == "prefill":
                rec = prefill_case(a, b, device)
            else:
                rec = mixed_case(a, b, sizes["mixed_W"], device)
        except Exception as e:  # noqa: BLE001  (a flashstream failure: record it, go on, exit 1 at the end)
            rec = {"kind": kind, "device": device, "case": [a, b], "error": describe(e)}
            print(f"{kind} {a} {b}: FAILED {type(e).__name__}: {str(e)[:500]}", flush=True)
        rec["case_wall_s"] = time.monotonic() - t0
        rec["goals"] = GOALS[kind]
        rec["meets_goal"] = meets_goals(rec)
        rec["fs_checks_ok"] = fs_checks_ok(rec) and "error" not in rec
        if not rec["fs_checks_ok"]:
            failed.append(f"{kind} {a} {b}")
        records.append(rec)
        if "error" not in rec:
            bad = [f"{k}: rel {v['rel']:.2e}" for k, v in checks_of(rec).items() if not v["ok"]]
            print(f"{kind} {a} {b}: {rec['case_wall_s']:.1f} s" + (f"  CHECK FAILED {bad}" if bad else "  checks ok"),
                  flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()
            path = harness.write_results("sink_attention_gpu", records, device=device)
    for kind in ("decode", "prefill", "mixed"):
        t = table(kind, records)
        if t:
            print(f"\n{kind}:\n{t}")
    if path is not None:
        print(f"wrote {path}")
        try:
            print(f"wrote {plot(path, records)}")
        except Exception as e:  # noqa: BLE001  (the JSON is what matters)
            print(f"no plot ({e})", file=sys.stderr)
    if failed:
        print(f"flashstream disagrees with the reference in: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
