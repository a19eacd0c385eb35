"""SirLLM retention benchmark: compacting one layer's KV cache to the kept tokens.

    python bench/bench_sink_compact.py [--device cpu|cuda] [--threads N] [--quick]

One retention step of SirLLM per layer: a cache of L = kept + step tokens per (stream, kv head)
keeps n = kept of them (sinks, key tokens, the window), moved to the front in stream order. Timed:

  * fs:          flashstream.ops.sink_cache_compact, in place on the paged pools (k and v, one call);
  * torch_paged: the same move in plain PyTorch on the same pools: slot -> pool-row indices through
                 the page table, then ``flat.index_copy_(0, dst_rows, flat[src_rows])`` for k and v
                 (the gather allocates the kept rows once);
  * sirllm_ref:  the paper's reference (Zoeyyao27/SirLLM ``evict_for_space_token_entropy``): a dense
                 ``[B, H, L, D]`` cache indexed with the kept list, ``k[:, :, keep]``, a new tensor
                 per call for k and v (HF-cache layout, one list for every head).

Bytes moved are the kept rows read and written (k and v); ``frac_copy`` compares the achieved
bandwidth with a plain ``copy_`` of a large buffer. All three give the same kept rows (checked
before timing). Results go to bench/results/sink_compact-<device-tag>.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

import flashstream  # noqa: E402,F401
from flashstream.ops import sink_cache_compact  # noqa: E402

CONFIGS = [  # (B, Hkv, D, kept, step): SmolLM2-135M's 3 kv heads x 64; Llama-3-8B's 8 x 128
    (1, 3, 64, 1024, 64),
    (4, 3, 64, 1024, 64),
    (1, 8, 128, 4096, 64),
    (8, 8, 128, 4096, 64),
]


def build(B, H, D, L, n, page_size, dtype, device, gen):
    pph = -(-L // page_size)
    P = B * H * pph
    table = torch.randperm(P, generator=gen).view(B, H, pph).to(torch.int32).to(device)
    kp = torch.randn(P, page_size, D, generator=gen).to(dtype).to(device)
    vp = torch.randn(P, page_size, D, generator=gen).to(dtype).to(device)
    # SirLLM's kept set: 4 sinks, the last (n // 2) tokens, and random key tokens in between.
    recent, sinks = n // 2, 4
    mid = torch.randperm(L - recent - sinks, generator=gen)[: n - recent - sinks] + sinks
    keep = torch.cat([torch.arange(sinks), mid.sort().values, torch.arange(L - recent, L)]).to(device)
    return kp, vp, table, keep


def slot_rows(table, page_size):
    rows = table.long()[..., None] * page_size + torch.arange(page_size, device=table.device)
    return rows.flatten(-2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="the first two configs, shorter timing")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev, dtype = args.device, torch.bfloat16
    kw = {"min_run_time": 0.2} if args.quick and dev == "cpu" else {}
    gen = torch.Generator().manual_seed(0)
    records = []
    for B, H, D, n, step in CONFIGS[:2] if args.quick else CONFIGS:
        L, ps = n + step, args.page_size
        kp, vp, table, keep = build(B, H, D, L, n, ps, dtype, dev, gen)
        keep_bh = keep.expand(B, H, n).contiguous()
        lengths = torch.full((B,), L, dtype=torch.int64, device=dev)
        rows = slot_rows(table, ps)
        src_rows, dst_rows = rows.gather(2, keep_bh).flatten(), rows[..., :n].flatten()
        dense_k = torch.randn(B, H, L, D, generator=gen).to(dtype).to(dev)
        dense_v = torch.randn(B, H, L, D, generator=gen).to(dtype).to(dev)

        def fs():
            lengths.fill_(L)  # a cheap reset: the move of a compacted cache is the same work again
            sink_cache_compact(kp, vp, table, lengths, keep_bh)

        def torch_paged():
            for pool in (kp, vp):
                flat = pool.view(-1, D)
                flat.index_copy_(0, dst_rows, flat[src_rows])

        def sirllm_ref():
            return dense_k[:, :, keep], dense_v[:, :, keep]

        # Same kept rows from every path (on copies; from here on, timing only).
        ck, cv = kp.clone(), vp.clone()
        sink_cache_compact(ck, cv, table, lengths.clone(), keep_bh)
        tk = kp.clone().view(-1, D)
        tk.index_copy_(0, dst_rows, tk[src_rows])
        assert torch.equal(ck.view(-1, D)[dst_rows], tk[dst_rows])
        assert torch.equal(ck.view(-1, D)[dst_rows], kp.view(-1, D)[src_rows])
        assert torch.equal(sirllm_ref()[0], dense_k.index_select(2, keep))

        moved = 2 * 2 * B * H * n * D * kp.element_size()  # k and v rows, read + written
        roof = harness.copy_bandwidth(moved // 2, dev, **kw)
        rec = dict(device=dev, B=B, Hkv=H, D=D, kept=n, cache_tokens=L, page_size=ps, dtype=str(dtype),
                   bytes_moved=moved, copy_bw_GBs=roof / 1e9)
        for name, fn in (("fs", fs), ("torch_paged", torch_paged), ("sirllm_ref", sirllm_ref)):
            t = harness.time_fn(fn, device=dev, **kw)
            rec[f"{name}_us"] = t * 1e6
            rec[f"{name}_frac_copy"] = moved / t / roof
        rec["speedup_vs_torch_paged"] = rec["torch_paged_us"] / rec["fs_us"]
        rec["speedup_vs_sirllm_ref"] = rec["sirllm_ref_us"] / rec["fs_us"]
        records.append(rec)
        print(harness.fmt_table([rec], [("B", "B", "d"), ("Hkv", "Hkv", "d"), ("D", "D", "d"), ("kept", "kept", "d"),
                                       ("fs_us", "fs us", ".1f"), ("torch_paged_us", "torch paged us", ".1f"),
                                       ("sirllm_ref_us", "SirLLM ref us", ".1f"),
                                       ("fs_frac_copy", "fs/copy bw", ".2f")]), flush=True)
    path = harness.write_results("sink_compact-quick" if args.quick else "sink_compact", records, device=dev)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
