"""FSQ benchmark: flashstream.ops.fsq against lucidrains' vector-quantize-pytorch FSQ (the peer).

    python bench/bench_fsq.py [--device cpu|cuda] [--sizes 20,24] [--quick]

Cases: n = 2^size vectors for each size, levels [3]*8 and [8,5,5,5], z in bf16 and fp32. For each:
  * flashstream fsq time with validate=False and validate=True (NaN check: one device sync on CUDA);
  * the peer's time, called the way its users do: ``FSQ(levels)(z)`` on a ``[1, n, d]`` tensor,
    which returns (codes, int32 indices); it upcasts bf16 to fp32 internally;
  * flashstream's achieved bandwidth counting bytes read (z) and written (codes + int64 indices),
    as GB/s and as % of the measured device copy bandwidth (dst.copy_(src) moving the same bytes;
    on CPU at least 256 MiB each way so that it streams from DRAM, see harness.copy_bandwidth);
  * speedup = peer time / flashstream time;
  * on every device, the time to allocate and fill the two outputs (``out_alloc_fill``) and to
    fill preallocated ones (``out_fill``): the floor of any op that returns fresh outputs, which
    shows how much of flashstream's time is allocation / page faults rather than the kernel.

The peer bounds with ``half_l = (L - 1)(1 + eps) / 2`` and ``shift = atanh(offset / half_l)``
where the FSQ paper's formula (and flashstream) use ``(1 - eps)`` and ``tan``: its codes differ on a
small fraction of vectors, so this compares speed, not bit-equal outputs (the agreement on a sample
is recorded as ``peer_index_agreement``). flashstream's own codes and indices are asserted against
a plain-PyTorch fp64 evaluation of the paper's formula on a sample before anything is timed.

Results go to bench/results/fsq-<device-tag>.json (fsq-quick-... with --quick) and a PNG beside it.
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

import flashstream  # noqa: E402

LEVELS = ([3] * 8, [8, 5, 5, 5])
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
EPS = 1e-3
GOALS = {"cuda": {"pct_copy": 85.0, "speedup": 10.0}, "cpu": {"speedup": 3.0}}


# ---- correctness sanity check ------------------------------------------------------------------

def reference_fsq(z: torch.Tensor, levels: list[int], eps: float = EPS):
    """The FSQ paper's formula (appendix A.1) in fp64 on the CPU: (codes, indices, pre-round value)."""
    z64 = z.detach().to("cpu", torch.float64)
    L = torch.tensor(levels, dtype=torch.float64)
    half_l = (L - 1) * (1 - eps) / 2
    offset = torch.where(L.remainder(2) == 0, 0.5, 0.0).to(torch.float64)
    shift = torch.tan(offset / half_l)
    bounded = torch.tanh(z64 + shift) * half_l - offset
    q = torch.round(bounded)  # round half to even
    half_width = torch.div(L, 2, rounding_mode="floor")
    codes = q / half_width
    basis = torch.cumprod(torch.tensor([1] + levels[:-1], dtype=torch.int64), 0)
    indices = ((q + half_width).to(torch.int64) * basis).sum(-1)
    return codes, indices, bounded


def check_against_reference(device: str, levels: list[int], dtype: torch.dtype, rows: int = 8192) -> dict:
    """Assert that flashstream's codes and indices equal the fp64 reference, except where the fp64
    pre-round value lies within 1e-5 of a rounding boundary (fp32 math may land either side)."""
    g = torch.Generator().manual_seed(1234)
    z = torch.randn(rows, len(levels), generator=g) * 2.0
    z[:8] = torch.tensor([0.0, -0.0, math.inf, -math.inf, 1e30, -1e30, 1e-30, 0.5])[:, None].expand(8, len(levels))
    z = z.to(dtype)
    codes, indices = flashstream.ops.fsq(z.to(device), levels, eps=EPS, validate=True)
    codes, indices = codes.cpu(), indices.cpu()
    ref_codes, ref_indices, bounded = reference_fsq(z, levels)
    frac = bounded - torch.floor(bounded)
    ambiguous = (frac - 0.5).abs() < 1e-5
    code_bad = codes != ref_codes.to(dtype)
    assert not (code_bad & ~ambiguous).any(), (
        f"fsq {levels} {dtype} on {device}: {int((code_bad & ~ambiguous).sum())} codes differ from the fp64 reference")
    row_ok = ~ambiguous.any(-1)
    idx_bad = (indices != ref_indices) & row_ok
    assert not idx_bad.any(), f"fsq {levels} {dtype} on {device}: {int(idx_bad.sum())} indices differ from the fp64 reference"
    return {"rows": rows, "boundary_rows": int((~row_ok).sum()), "boundary_mismatches": int(code_bad.any(-1).sum())}


# ---- the benchmark -----------------------------------------------------------------------------

def make_peer(levels: list[int], device: str):
    from vector_quantize_pytorch import FSQ

    return FSQ(levels).to(device).eval()


def peer_agreement(peer, z: torch.Tensor, ours: torch.Tensor) -> float:
    with torch.no_grad():
        _, idx = peer(z[None])
    return float((idx[0].to(torch.int64) == ours).double().mean())


def bench_case(device: str, log2_n: int, levels: list[int], dtype_name: str, peer_ok: bool, quick: bool) -> dict:
    dtype = DTYPES[dtype_name]
    n, d = 1 << log2_n, len(levels)
    rec: dict = {"device": device, "log2_n": log2_n, "n": n, "levels": levels,
                 "levels_str": "x".join(map(str, levels)) if len(set(levels)) > 1 else f"{levels[0]}^{d}",
                 "d": d, "dtype": dtype_name}
    rec["check"] = check_against_reference(device, levels, dtype)

    g = torch.Generator(device="cpu").manual_seed(log2_n * 100 + d)
    z = (torch.randn(n, d, generator=g) * 1.5).to(device=device, dtype=dtype)
    elem = z.element_size()
    moved = n * d * elem * 2 + n * 8  # read z, write codes and int64 indices
    rec["bytes"] = moved
    kw = {"min_run_time": 0.2} if (quick and device == "cpu") else ({"reps": 10} if quick else {})

    with torch.inference_mode():
        fs = lambda: flashstream.ops.fsq(z, levels, eps=EPS, validate=False)  # noqa: E731
        fs_val = lambda: flashstream.ops.fsq(z, levels, eps=EPS, validate=True)  # noqa: E731
        rec["fs_s"] = harness.time_fn(fs, device=device, **kw)
        rec["fs_validate_s"] = harness.time_fn(fs_val, device=device, **kw)

        # Floors for an op returning fresh outputs: allocate + write them, and write preallocated.
        codes_buf = torch.empty_like(z)
        idx_buf = torch.empty(n, dtype=torch.int64, device=device)

        def alloc_fill():
            torch.empty_like(z).fill_(1)
            torch.empty(n, dtype=torch.int64, device=device).fill_(1)

        def fill():
            codes_buf.fill_(1)
            idx_buf.fill_(1)

        rec["out_alloc_fill_s"] = harness.time_fn(alloc_fill, device=device, **kw)
        rec["out_fill_s"] = harness.time_fn(fill, device=device, **kw)
        # The streaming-loop form: outputs allocated once, no page faults or allocator work per call.
        fs_out = lambda: flashstream.ops.fsq(z, levels, eps=EPS, validate=False, out=(codes_buf, idx_buf))  # noqa: E731
        rec["fs_out_s"] = harness.time_fn(fs_out, device=device, **kw)
        del codes_buf, idx_buf

        copy_bw = harness.copy_bandwidth(moved // 2, device, **kw)
        rec["copy_gbs"] = copy_bw / 1e9
        rec["fs_gbs"] = moved / rec["fs_s"] / 1e9
        rec["fs_validate_gbs"] = moved / rec["fs_validate_s"] / 1e9
        rec["pct_copy"] = 100.0 * rec["fs_gbs"] / rec["copy_gbs"]
        rec["pct_copy_validate"] = 100.0 * rec["fs_validate_gbs"] / rec["copy_gbs"]
        rec["fs_out_gbs"] = moved / rec["fs_out_s"] / 1e9
        rec["pct_copy_out"] = 100.0 * rec["fs_out_gbs"] / rec["copy_gbs"]

        if peer_ok:
            peer = make_peer(levels, device)
            z3 = z.view(1, n, d)
            _, ours = flashstream.ops.fsq(z[:65536], levels, eps=EPS, validate=False)
            rec["peer_index_agreement"] = peer_agreement(peer, z[:65536], ours)
            rec["peer_s"] = harness.time_fn(lambda: peer(z3), device=device, **kw)
            rec["speedup"] = rec["peer_s"] / rec["fs_s"]
            rec["speedup_validate"] = rec["peer_s"] / rec["fs_validate_s"]
            rec["speedup_out"] = rec["peer_s"] / rec["fs_out_s"]
            del peer, z3
    goals = GOALS["cuda" if device.startswith("cuda") else "cpu"]
    rec["goals"] = goals
    rec["goals_met"] = all(rec.get(k) is not None and rec[k] >= v for k, v in goals.items())
    del z
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return rec


COLUMNS = [
    ("n_str", "n", ""), ("levels_str", "levels", ""), ("dtype", "dtype", ""),
    ("fs_ms", "fs ms", ".3f"), ("fs_validate_ms", "fs+val ms", ".3f"), ("fs_out_ms", "fs out= ms", ".3f"),
    ("peer_ms", "peer ms", ".2f"),
    ("fs_gbs", "fs GB/s", ".1f"), ("copy_gbs", "copy GB/s", ".1f"), ("pct_copy", "% copy", ".1f"),
    ("pct_copy_out", "% copy out=", ".1f"),
    ("speedup", "speedup", ".1f"), ("speedup_validate", "spd(val)", ".1f"),
    ("out_alloc_fill_ms", "alloc+fill ms", ".3f"), ("out_fill_ms", "fill ms", ".3f"), ("goals_met", "goals", ""),
]


def table(records: list[dict]) -> str:
    rows = []
    for r in records:
        row = dict(r)
        row["n_str"] = f"2^{r['log2_n']}"
        for k in ("fs", "fs_validate", "fs_out", "peer", "out_alloc_fill", "out_fill"):
            if r.get(f"{k}_s") is not None:
                row[f"{k}_ms"] = r[f"{k}_s"] * 1e3
        row["goals_met"] = "met" if r.get("goals_met") else "NOT met"
        rows.append(row)
    return harness.fmt_table(rows, COLUMNS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", default=None, help="comma-separated log2 of the vector counts (default 20,24; --quick: 20)")
    ap.add_argument("--quick", action="store_true", help="fewer reps, 2^20 only unless --sizes; writes fsq-quick-*.json")
    ap.add_argument("--no-peer", action="store_true", help="skip vector-quantize-pytorch")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device visible to torch")
    device = "cuda" if args.device == "cuda" else "cpu"
    sizes = [int(s) for s in (args.sizes or ("20" if args.quick else "20,24")).split(",") if s.strip()]
    peer_ok = not args.no_peer
    if peer_ok:
        try:
            import vector_quantize_pytorch  # noqa: F401
        except ImportError as e:
            print(f"peer vector-quantize-pytorch not importable ({e}); timing flashstream only", file=sys.stderr)
            peer_ok = False

    meta = harness.metadata(device)
    print(f"fsq benchmark on {meta['device']}; torch {meta['torch']} (CUDA {meta['torch_cuda']}), "
          f"flashstream {meta['flashstream']} @ {meta['git_commit'][:12]}, CPU ISA {meta['cpu_isa']}")
    records = []
    for log2_n in sizes:
        for levels in LEVELS:
            for dtype_name in DTYPES:
                rec = bench_case(device, log2_n, list(levels), dtype_name, peer_ok, args.quick)
                records.append(rec)
                print(f"  done 2^{log2_n} {rec['levels_str']} {dtype_name}: fs {rec['fs_s'] * 1e3:.3f} ms"
                      + (f", peer {rec['peer_s'] * 1e3:.2f} ms" if "peer_s" in rec else ""), flush=True)
    print()
    print(table(records))
    goals = GOALS[device]
    print("\ngoals: " + ", ".join(f"{k} >= {v:g}" for k, v in goals.items())
          + f"; met in {sum(r['goals_met'] for r in records)}/{len(records)} cases")
    name = "fsq-quick" if args.quick else "fsq"
    path = harness.write_results(name, records, device=device)
    print(f"wrote {path}")
    if not args.no_plot:
        try:
            import plot

            print(f"wrote {plot.plot_file(path)}")
        except ImportError as e:
            print(f"no plot ({e})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
