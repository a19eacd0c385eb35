"""Causal conv1d benchmark: flashstream.ops.causal_conv1d against the streaming pattern people use
today (``F.conv1d`` over ``torch.cat([state, x])``, then the state sliced back) and, on CUDA,
Dao-AILab ``causal-conv1d`` (widths 2-4, its limit).

    python bench/bench_causal_conv.py [--device cpu|cuda] [--quick] [--no-peer] [--threads N]

Cases (depthwise, dilation 1, bias, no activation):
  * ``step``: a streaming step, ``x [B, C, 16]`` with its state ``[B, C, W-1]`` updated in place,
    for C in {1024, 4096}, B in {1, 8, 64}, W in {4, 31} (CUDA adds W = 2, 3);
  * ``decode``: one frame, ``x [B, C, 1]``, states in a pool addressed by ``state_indices``;
  * ``prefill``: a long chunk, ``x [4, 1024, 4096]`` (CUDA: ``[8, 4096, 4096]``), state updated.
For each: flashstream's time (returning a fresh ``y``, and into a preallocated ``out=``, the
allocation-free streaming-loop form), the ``F.conv1d`` + ``torch.cat`` peer's (speedup = peer / ours), the
causal-conv1d peer's where it applies (``causal_conv1d_update`` for step/decode,
``causal_conv1d_fn`` for prefill, which then carries no state), and flashstream's bandwidth
(x read, y written, state read and written) as a share of the measured copy bandwidth.
Before timing, every case's output and new state are checked against a float64 evaluation.

Results go to bench/results/causal_conv-<device-tag>.json (causal_conv-quick-... with --quick).
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

import flashstream  # noqa: E402
from flashstream.ops import causal_conv1d  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
GOALS = {"cuda": {"speedup": 3.0, "speedup_dao": 1.0}, "cpu": {"speedup": 2.0}}


def check(x, w, b, state, y, new_state) -> None:
    """Asserts y / new_state against float64 F.conv1d over state ++ x (per-dtype tolerance)."""
    L = w.shape[1] - 1
    full = torch.cat([state.double(), x.double()], -1)
    ref = F.conv1d(full, w.double()[:, None], b.double(), groups=x.shape[1])
    tol = 1e-5 if x.dtype == torch.float32 else 2e-2
    err = ((y.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
    assert err <= tol, f"causal_conv1d output differs from float64 by {err:.3g} (relative)"
    assert torch.equal(new_state.double(), full[..., full.shape[-1] - L:]), "causal_conv1d state update is wrong"


def cat_peer(x, w3, b, state):
    """The eager streaming pattern: concatenate, convolve, keep the tail."""
    full = torch.cat([state, x], -1)
    y = F.conv1d(full, w3, b, groups=x.shape[1])
    state.copy_(full[..., full.shape[-1] - state.shape[-1]:])
    return y


def dao_peer():
    try:
        import causal_conv1d as dao  # noqa: F401
        from causal_conv1d import causal_conv1d_fn, causal_conv1d_update
        return causal_conv1d_fn, causal_conv1d_update
    except ImportError as e:
        print(f"peer causal-conv1d not importable ({e}); skipping it", file=sys.stderr)
        return None


def bench_case(device, kind, B, C, T, W, dtype_name, dao, quick) -> dict:
    dtype = DTYPES[dtype_name]
    kw = {"min_run_time": 0.2} if quick and device == "cpu" else ({"reps": 10} if quick else {})
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, C, T, generator=g).to(dtype).to(device)
    w = (torch.randn(C, W, generator=g) / W**0.5).to(dtype).to(device)
    b = torch.randn(C, generator=g).to(dtype).to(device)
    P = 2 * B if kind == "decode" else B
    pool = torch.randn(P, C, W - 1, generator=g).to(dtype).to(device)
    idx = torch.randperm(P, generator=g)[:B].to(torch.int32).to(device) if kind == "decode" else None
    rows = idx.long() if idx is not None else slice(None)
    rec = {"device": device, "kind": kind, "B": B, "C": C, "T": T, "W": W, "dtype": dtype_name,
           "n": f"{kind} B{B} C{C} T{T} W{W}"}

    with torch.inference_mode():
        state0 = pool[rows].clone()
        y = causal_conv1d(x, w, b, pool, state_indices=idx)
        check(x.cpu(), w.cpu(), b.cpu(), state0.cpu(), y.cpu(), pool[rows].cpu())
        rec["fs_s"] = harness.time_fn(lambda: causal_conv1d(x, w, b, pool, state_indices=idx), device=device, **kw)
        out = torch.empty_like(y)  # the streaming-loop form: y preallocated once
        rec["fs_out_s"] = harness.time_fn(lambda: causal_conv1d(x, w, b, pool, state_indices=idx, out=out),
                                          device=device, **kw)

        state = pool[rows].clone()
        w3 = w[:, None].contiguous()
        if idx is None:
            rec["peer_s"] = harness.time_fn(lambda: cat_peer(x, w3, b, state), device=device, **kw)
        else:  # the pool is gathered and scattered back around the step, as an eager server does
            def pooled_peer():
                s = pool[rows]
                out = cat_peer(x, w3, b, s)
                pool[rows] = s
                return out
            rec["peer_s"] = harness.time_fn(pooled_peer, device=device, **kw)
        rec["speedup"] = rec["peer_s"] / rec["fs_s"]
        rec["speedup_out"] = rec["peer_s"] / rec["fs_out_s"]

        if dao is not None and device == "cuda" and 2 <= W <= 4:
            fn, update = dao
            if kind == "prefill":
                rec["dao_s"] = harness.time_fn(lambda: fn(x, w, b), device=device, **kw)
            else:
                kwargs = {"conv_state_indices": idx} if idx is not None else {}
                rec["dao_s"] = harness.time_fn(lambda: update(x, pool, w, b, **kwargs), device=device, **kw)
            rec["speedup_dao"] = rec["dao_s"] / rec["fs_s"]

        esize = x.element_size()
        moved = (2 * B * C * T + 2 * B * C * (W - 1) + C * (W + 1)) * esize
        rec["bytes"] = moved
        rec["fs_gbs"] = moved / rec["fs_s"] / 1e9
        rec["copy_gbs"] = harness.copy_bandwidth(moved // 2, device, **kw) / 1e9
        rec["pct_copy"] = 100.0 * rec["fs_gbs"] / rec["copy_gbs"]
    goals = {k: v for k, v in GOALS["cuda" if device == "cuda" else "cpu"].items()
             if k != "speedup_dao" or "speedup_dao" in rec}
    if kind == "prefill":
        goals = {k: v for k, v in goals.items() if k != "speedup"}  # the T=16 step goal
    rec["goals"] = goals
    rec["goals_met"] = all(rec.get(k) is not None and rec[k] >= v for k, v in goals.items())
    del x, w, b, pool
    gc.collect()
    return rec


def cases(device: str, quick: bool):
    widths = [4, 31] if device == "cpu" else [2, 3, 4, 31]
    batches = [1, 64] if quick else [1, 8, 64]
    chans = [1024] if quick else [1024, 4096]
    for W in widths:
        for C in chans:
            for B in batches:
                yield "step", B, C, 16, W
    for B in ([8] if quick else [8, 64]):
        yield "decode", B, 4096, 1, 4
    for W in ([4] if quick else [4, 31]):
        yield ("prefill", 4, 1024, 4096, W) if device == "cpu" else ("prefill", 8, 4096, 4096, W)


COLUMNS = [
    ("n", "case", ""), ("dtype", "dtype", ""), ("fs_us", "fs us", ".1f"), ("fs_out_us", "fs out= us", ".1f"),
    ("peer_us", "cat+conv1d us", ".1f"), ("speedup", "speedup", ".2f"), ("speedup_out", "spd out=", ".2f"), ("dao_us", "causal-conv1d us", ".1f"), ("speedup_dao", "vs dao", ".2f"),
    ("fs_gbs", "fs GB/s", ".1f"), ("pct_copy", "% copy", ".1f"), ("goals_met", "goals", ""),
]


def table(records: list[dict]) -> str:
    rows = []
    for r in records:
        row = dict(r)
        for k in ("fs", "fs_out", "peer", "dao"):
            if r.get(f"{k}_s") is not None:
                row[f"{k}_us"] = r[f"{k}_s"] * 1e6
        row["goals_met"] = "met" if r["goals_met"] else "NOT met"
        rows.append(row)
    return harness.fmt_table(rows, COLUMNS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="fewer cases and reps; writes causal_conv-quick-*.json")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--no-peer", action="store_true", help="skip causal-conv1d")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads); "
                    "1 avoids OpenMP stalls on a loaded machine")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device visible to torch")
    device = args.device
    dao = None if args.no_peer or device != "cuda" else dao_peer()
    meta = harness.metadata(device)
    print(f"causal_conv1d benchmark on {meta['device']}; torch {meta['torch']} (CUDA {meta['torch_cuda']}), "
          f"flashstream {meta['flashstream']} @ {meta['git_commit'][:12]}, CPU ISA {meta['cpu_isa']}")
    records = []
    for dtype_name in args.dtypes.split(","):
        for kind, B, C, T, W in cases(device, args.quick):
            rec = bench_case(device, kind, B, C, T, W, dtype_name, dao, args.quick)
            records.append(rec)
            print(f"  {rec['n']} {dtype_name}: fs {rec['fs_s'] * 1e6:.1f} us, peer {rec['peer_s'] * 1e6:.1f} us",
                  flush=True)
    print()
    print(table(records))
    goals = GOALS[device]
    print("\ngoals: " + ", ".join(f"{k} >= {v:g}" for k, v in goals.items())
          + f" (speedup on step/decode cases); met in {sum(r['goals_met'] for r in records)}/{len(records)} cases")
    path = harness.write_results("causal_conv-quick" if args.quick else "causal_conv", records, device=device)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
