"""Low-rank (FlashSVD) attention benchmark: flashstream.ops.lowrank_attention vs the unfused SVD path.

    python bench/bench_lowrank_attention.py [--device cpu|cuda] [--batch 32] [--seqs 128,256,512]
                                            [--threads N] [--quick]

Shapes: MiniLM (d = 384, 12 heads of 32) and BERT-base (d = 768, 12 heads of 64), non-causal
encoder attention with right padding (a quarter of the batch padded to 3/4 of the length), two
ranks per model (d/4 and d/2 for each of q, k, v). In inference mode it times

  * fused:   flashstream.ops.lowrank_attention(x, Aq, Bq, bq, ...): P = x [Aq|Ak|Av] once, q/k/v tiles
             rebuilt on chip, online softmax;
  * unfused: what a truncated-SVD model runs with stock PyTorch ("vanilla SVD"): P_z = x A_z,
             q/k/v = P_z B_z + b_z materialised, then F.scaled_dot_product_attention with the
             padding mask.

Both are checked to agree before timing. Activation memory: on CUDA the measured peak
(torch.cuda.max_memory_allocated above the inputs); on CPU, where torch tracks no allocations,
the bytes of the tensors each path materialises (modelled: P and the output for fused; P_q, P_k,
P_v, q, k, v and the output for unfused, SDPA's own scratch not counted), marked as such.
Results go to bench/results/lowrank_attention-<device-tag>.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

import flashstream  # noqa: E402,F401
from flashstream.ops import lowrank_attention  # noqa: E402

MODELS = {"minilm": (384, 12), "bert-base": (768, 12)}


def make(B, S, d, H, r, dtype, device, gen):
    x = torch.randn(B, S, d, generator=gen)
    fac = []
    for _ in range(3):
        fac += [torch.randn(d, r, generator=gen) / d ** 0.5, torch.randn(r, d, generator=gen) / r ** 0.5,
                torch.randn(d, generator=gen) * 0.1]
    lengths = torch.full((B,), S)
    lengths[: B // 4] = (3 * S) // 4
    mask = torch.arange(S)[None, :] >= lengths[:, None]  # True = padding
    return [t.to(device=device, dtype=dtype) for t in [x] + fac], mask.to(device)


def unfused(x, Aq, Bq, bq, Ak, Bk, bk, Av, Bv, bv, H, mask):
    B, S, _ = x.shape
    q = ((x @ Aq) @ Bq + bq).view(B, S, H, -1).transpose(1, 2)
    k = ((x @ Ak) @ Bk + bk).view(B, S, H, -1).transpose(1, 2)
    v = ((x @ Av) @ Bv + bv).view(B, S, H, -1).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=~mask[:, None, None, :])
    return out.transpose(1, 2).reshape(B, S, -1)


def peak_cuda(fn, device):
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del out
    return peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seqs", default=None, help="comma-separated sequence lengths (default 128,256,512; CPU 128,256)")
    ap.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="short CPU timings (0.2 s per measurement)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.device(args.device).type == "cuda"
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if cuda else torch.float32)
    seqs = [int(s) for s in (args.seqs or ("128,256,512" if cuda else "128,256")).split(",")]
    min_run = 0.2 if args.quick else None
    e = torch.finfo(dtype).bits // 8
    gen = torch.Generator().manual_seed(0)
    records = []
    for model, (d, H) in MODELS.items():
        for S in seqs:
            for r in (d // 4, d // 2):
                (x, *fac), mask = make(args.batch, S, d, H, r, dtype, args.device, gen)
                with torch.inference_mode():
                    fused_fn = lambda: lowrank_attention(x, *fac, num_heads=H, key_padding_mask=mask)  # noqa: E731
                    unfused_fn = lambda: unfused(x, *fac, H, mask)  # noqa: E731
                    a, b = fused_fn(), unfused_fn()
                    keep = ~mask[..., None]  # padded queries' rows are not compared (SDPA's differ by convention)
                    err = ((a.float() - b.float()).abs() * keep).max().item()
                    tol = 1e-3 if dtype == torch.float32 else 5e-2
                    if err > tol:
                        raise SystemExit(f"fused and unfused disagree: max |diff| {err:.3g} > {tol} ({model}, S={S}, r={r})")
                    t_f = harness.time_fn(fused_fn, device=args.device, min_run_time=min_run)
                    t_u = harness.time_fn(unfused_fn, device=args.device, min_run_time=min_run)
                    M = args.batch * S
                    rec = {"device": args.device, "model": model, "d": d, "heads": H, "batch": args.batch, "seq": S,
                           "rank": r, "dtype": str(dtype).removeprefix("torch."), "fused_ms": t_f * 1e3,
                           "unfused_ms": t_u * 1e3, "speedup": t_u / t_f, "max_abs_diff": err}
                    if cuda:
                        rec["fused_peak_mib"] = peak_cuda(fused_fn, args.device) / 2**20
                        rec["unfused_peak_mib"] = peak_cuda(unfused_fn, args.device) / 2**20
                        rec["memory"] = "measured: max_memory_allocated above the inputs"
                    else:
                        rp = 3 * ((r + 15) // 16 * 16)
                        rec["fused_peak_mib"] = (M * rp * 4 + M * d * e) / 2**20
                        rec["unfused_peak_mib"] = (3 * M * r * e + 3 * M * d * e + M * d * e) / 2**20
                        rec["memory"] = "modelled: bytes of the tensors each path materialises"
                    records.append(rec)
                    print(f"{model:9s} S={S:4d} r={r:3d}  fused {t_f*1e3:8.2f} ms  unfused {t_u*1e3:8.2f} ms  "
                          f"x{t_u/t_f:5.2f}  act MiB {rec['fused_peak_mib']:7.1f} vs {rec['unfused_peak_mib']:7.1f}",
                          flush=True)
    path = harness.write_results("lowrank_attention", records, device=args.device)
    print(harness.fmt_table(records, [("model", "model", "s"), ("seq", "S", "d"), ("rank", "r", "d"),
                                      ("fused_ms", "fused ms", ".2f"), ("unfused_ms", "unfused ms", ".2f"),
                                      ("speedup", "speedup", ".2f"), ("fused_peak_mib", "fused MiB", ".1f"),
                                      ("unfused_peak_mib", "unfused MiB", ".1f")]))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
