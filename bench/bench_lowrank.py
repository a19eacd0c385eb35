"""Fused low-rank matmul chains (issue 6): flashstream vs the unfused PyTorch chain, one run.

Cases (defaults; --quick: fewer and smaller):
  lowrank_linear  y = x A B        vs  two torch.matmul ((x @ A) @ B) and the dense x @ W (W = A B)
                  M = 8192, K = N = 4096, r in {64, 128, 256}; BERT/MiniLM-sized
                  (M = 4096; K, N) in {(384, 1536), (768, 3072)}, r in {64, 128}
  lowrank_linear  with bias + GELU vs the unfused torch chain (matmul, matmul, add, gelu)
  lowrank_ffn     act(x A1 B1 + b1) A2 B2 + b2 vs the unfused chain (MiniLM 384/1536, BERT-base 768/3072)
  lowrank_gated_ffn  (silu(x Ag Bg) * x Au Bu) Ad Bd vs the unfused chain (SmolLM2-sized 576/1536)

Latency: bench/harness.py's time_fn (CUDA events with the L2 flushed; CPU: blocked_autorange
median on torch.get_num_threads() threads). Peak activation memory, the bytes allocated during one
call beyond its inputs:
  * CUDA: torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), minus the memory
    allocated before the call;
  * CPU: the running sum of the allocator's [memory] events (+alloc / -free, one per allocation)
    recorded by torch.profiler(profile_memory=True) over one call, its maximum. flashstream's CPU kernels also
    keep per-thread tile scratch outside torch's allocator (aligned_alloc: the x block and the
    rank-space tile, at most ~0.5 MiB per thread); the profiler cannot see it, so it is added as
    the analytic bound `scratch_bytes` (tile rows x (128 + round_up(r, 32)) x 4 bytes per thread,
    FFN: its rank and hidden tiles too).

Writes bench/results/lowrank-<device-tag>.json (+ .png) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from harness import fmt_table, time_fn, write_results  # noqa: E402

import flashstream  # noqa: E402,F401
from flashstream.ops import lowrank_ffn, lowrank_gated_ffn, lowrank_linear  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def peak_bytes(fn, device: str) -> int:
    """Bytes allocated by one call of fn beyond what was allocated before it (see the docstring)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        del out
        return int(peak)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    # every allocation / free as its own event (+nbytes / -nbytes), in time order
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return int(peak)


def cpu_scratch_bytes(widths: int, device: str) -> int:
    """Analytic per-call bound of the CPU kernels' tile scratch (not visible to the profiler)."""
    if torch.device(device).type == "cuda":
        return 0
    rows = max(12, min(256, 32768 // max(1, widths)))
    return rows * (128 + widths) * 4 * torch.get_num_threads()


def rnd(*shape, dtype, device, scale=1.0):
    return (torch.randn(*shape, device=device) * scale).to(dtype)


def measure(fns: dict, device: str, min_run_time: float) -> dict:
    out = {}
    for name, fn in fns.items():
        fn()
        out[f"{name}_s"] = time_fn(fn, device=device, min_run_time=min_run_time)
        out[f"{name}_peak_bytes"] = peak_bytes(fn, device)
    return out


def bench_linear(device, dtype, M, K, N, r, activation, min_run_time):
    x = rnd(M, K, dtype=dtype, device=device)
    A = rnd(K, r, dtype=dtype, device=device, scale=K ** -0.5)
    B = rnd(r, N, dtype=dtype, device=device, scale=r ** -0.5)
    b = rnd(N, dtype=dtype, device=device) if activation else None
    W = A @ B
    with torch.no_grad():
        if activation:
            fns = {"fused": lambda: lowrank_linear(x, A, B, b, activation),
                   "unfused": lambda: F.gelu(torch.matmul(torch.matmul(x, A), B) + b)}
        else:
            fns = {"fused": lambda: lowrank_linear(x, A, B),
                   "unfused": lambda: torch.matmul(torch.matmul(x, A), B),
                   "dense": lambda: torch.matmul(x, W)}
        ref = fns["unfused"]()
        err = ((fns["fused"]().float() - ref.float()).norm() / ref.float().norm()).item()
        rec = measure(fns, device, min_run_time)
    rec.update(op="lowrank_linear", activation=activation or "none", dtype=str(dtype).split(".")[-1], M=M, K=K, N=N,
               r=r, rel_err_vs_unfused=err, device=device, scratch_bytes=cpu_scratch_bytes(-(-r // 32) * 32, device))
    rec["speedup_vs_unfused"] = rec["unfused_s"] / rec["fused_s"]
    if "dense_s" in rec:
        rec["speedup_vs_dense"] = rec["dense_s"] / rec["fused_s"]
    rec["gflops_fused"] = 2 * M * r * (K + N) / rec["fused_s"] / 1e9
    return rec


def bench_ffn(device, dtype, M, K, d_ff, r, gated, min_run_time):
    def factor(rows, cols):
        return rnd(rows, cols, dtype=dtype, device=device, scale=rows ** -0.5)

    x = rnd(M, K, dtype=dtype, device=device)
    with torch.no_grad():
        if gated:
            Ag, Bg, Au, Bu, Ad, Bd = factor(K, r), factor(r, d_ff), factor(K, r), factor(r, d_ff), factor(d_ff, r), factor(r, K)
            fns = {"fused": lambda: lowrank_gated_ffn(x, Ag, Bg, Au, Bu, Ad, Bd, activation="silu"),
                   "unfused": lambda: (F.silu(x @ Ag @ Bg) * (x @ Au @ Bu)) @ Ad @ Bd}
            op, widths = "lowrank_gated_ffn", 3 * (-(-r // 32) * 32) + 2 * 128
        else:
            A1, B1, A2, B2 = factor(K, r), factor(r, d_ff), factor(d_ff, r), factor(r, K)
            b1, b2 = rnd(d_ff, dtype=dtype, device=device), rnd(K, dtype=dtype, device=device)
            fns = {"fused": lambda: lowrank_ffn(x, A1, B1, b1, A2, B2, b2, activation="gelu"),
                   "unfused": lambda: F.gelu(x @ A1 @ B1 + b1) @ A2 @ B2 + b2}
            op, widths = "lowrank_ffn", 2 * (-(-r // 32) * 32) + 128
        ref = fns["unfused"]()
        err = ((fns["fused"]().float() - ref.float()).norm() / ref.float().norm()).item()
        rec = measure(fns, device, min_run_time)
    rec.update(op=op, activation="silu" if gated else "gelu", dtype=str(dtype).split(".")[-1], M=M, K=K, N=K,
               d_ff=d_ff, r=r, rel_err_vs_unfused=err, device=device, scratch_bytes=cpu_scratch_bytes(widths, device))
    rec["speedup_vs_unfused"] = rec["unfused_s"] / rec["fused_s"]
    return rec


def cases(quick: bool):
    if quick:
        lin = [(2048, 1024, 1024, 64), (2048, 384, 1536, 64)]
        return lin, [(2048, 1024, 1024, 128)], [(1024, 384, 1536, 64, False), (1024, 576, 1536, 128, True)]
    lin = [(8192, 4096, 4096, r) for r in (64, 128, 256)]
    lin += [(4096, K, N, r) for K, N in ((384, 1536), (768, 3072)) for r in (64, 128)]
    act = [(4096, 768, 3072, 128), (8192, 4096, 4096, 128)]
    ffn = [(4096, 384, 1536, 64, False), (4096, 768, 3072, 128, False), (4096, 768, 3072, 256, False),
           (4096, 576, 1536, 128, True)]
    return lin, act, ffn


def plot(records, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['op'].replace('lowrank_', '')}{'+' + r['activation'] if r['op'] == 'lowrank_linear' and r['activation'] != 'none' else ''} "
              f"{r['dtype'][:4]} M{r['M']} K{r['K']}{' dff' + str(r['d_ff']) if 'd_ff' in r else ' N' + str(r['N'])} r{r['r']}"
              for r in records]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(10, 0.6 * len(records)), 11))
    xs = range(len(records))
    w = 0.27
    for k, (key, name) in enumerate([("fused", "flashstream fused"), ("unfused", "unfused torch chain"),
                                     ("dense", "dense x @ W")]):
        ax1.bar([i + (k - 1) * w for i in xs], [r.get(f"{key}_s", 0) * 1e3 for r in records], w, label=name)
        ax2.bar([i + (k - 1) * w for i in xs], [r.get(f"{key}_peak_bytes", 0) / 2**20 for r in records], w, label=name)
    ax1.set_ylabel("latency (ms)")
    ax1.set_yscale("log")
    ax2.set_ylabel("peak activation memory (MiB)")
    for ax in (ax1, ax2):
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, fontsize=7, rotation=60, ha="right")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtypes", default=None, help="comma-separated (default: CPU float32,bfloat16; CUDA bfloat16,float16,float32)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="small shapes, short runs; writes lowrank-quick-*.json")
    ap.add_argument("--min-run-time", type=float, default=None, help="CPU seconds per measurement")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    default_dtypes = "float32,bfloat16" if device == "cpu" else "bfloat16,float16,float32"
    dtypes = [DTYPES[d] for d in (args.dtypes or default_dtypes).split(",")]
    min_run_time = args.min_run_time if args.min_run_time is not None else (0.2 if args.quick else 0.5)
    lin, act, ffn = cases(args.quick)
    records = []
    for dtype in dtypes:
        for M, K, N, r in lin:
            records.append(bench_linear(device, dtype, M, K, N, r, None, min_run_time))
            print(f"{records[-1]['op']} {dtype} M={M} K={K} N={N} r={r}: {records[-1]['speedup_vs_unfused']:.2f}x unfused", flush=True)
        for M, K, N, r in act:
            records.append(bench_linear(device, dtype, M, K, N, r, "gelu", min_run_time))
        for M, K, d_ff, r, gated in ffn:
            records.append(bench_ffn(device, dtype, M, K, d_ff, r, gated, min_run_time))
            print(f"{records[-1]['op']} {dtype} M={M} K={K} d_ff={d_ff} r={r}: {records[-1]['speedup_vs_unfused']:.2f}x unfused", flush=True)
    for r in records:
        for key in ("fused", "unfused", "dense"):
            if f"{key}_s" in r:
                r[f"{key}_ms"] = r[f"{key}_s"] * 1e3
    name = "lowrank-quick" if args.quick else "lowrank"
    path = write_results(name, records, device=device)
    cols = [("op", "op", ""), ("activation", "act", ""), ("dtype", "dtype", ""), ("M", "M", "d"), ("K", "K", "d"),
            ("N", "N", "d"), ("d_ff", "d_ff", "d"), ("r", "r", "d"), ("fused_ms", "fused ms", ".2f"),
            ("unfused_ms", "unfused ms", ".2f"), ("dense_ms", "dense ms", ".2f"),
            ("speedup_vs_unfused", "x unfused", ".2f"), ("speedup_vs_dense", "x dense", ".2f"),
            ("fused_peak_bytes", "fused peak B", "d"), ("scratch_bytes", "+scratch B", "d"),
            ("unfused_peak_bytes", "unfused peak B", "d"), ("rel_err_vs_unfused", "rel err", ".1e")]
    print(fmt_table(records, cols))
    print(f"wrote {path}")
    if not args.no_plot:
        png = path.with_suffix(".png")
        meta = json.loads(path.read_text())["metadata"]
        plot(records, png, f"flashstream low-rank chains vs unfused torch, {meta['device']}")
        print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
