"""Plot benchmark results: bench/results/<name>-<device-tag>.json -> a PNG beside each file.

    python bench/plot.py fsq            # every bench/results/fsq-*.json (not fsq-quick-*)
    python bench/plot.py path/to/x.json

Records follow the harness conventions: times in seconds under ``fs_s`` (flashstream),
``fs_validate_s``, ``fs_out_s`` and ``peer_s``; bandwidths in GB/s under ``fs_gbs``, ``fs_out_gbs``
and ``copy_gbs``; a case
label is built from ``log2_n``/``n``, ``levels_str`` and ``dtype`` (whichever are present).
Left panel: time per case (log scale), flashstream vs peer. Right panel: flashstream's achieved
bandwidth against the measured copy bandwidth (when present).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"

TIME_SERIES = [("fs_s", "flashstream"), ("fs_validate_s", "flashstream (validate=True)"),
               ("fs_out_s", "flashstream (out=, preallocated)"), ("peer_s", "peer"),
               # bench_sink_attention: flashstream and its three peers
               ("flashstream_s", "flashstream"), ("streamingllm_s", "StreamingLLM reference"),
               ("sdpa_gather_s", "SDPA over gathered keys"), ("flex_s", "FlexAttention")]
BW_SERIES = [("fs_gbs", "flashstream"), ("fs_out_gbs", "flashstream (out=, preallocated)"),
             ("copy_gbs", "device copy (roofline)")]


def _label(r: dict) -> str:
    parts = []
    if "log2_n" in r:
        parts.append(f"2^{r['log2_n']}")
    elif "n" in r:
        parts.append(str(r["n"]))
    if "T" in r:
        parts.append(f"T={r['T']}")
    for k in ("levels_str", "dtype"):
        if k in r:
            parts.append(str(r[k]))
    return " ".join(parts) or "?"


def _bars(ax, records: list[dict], series: list[tuple[str, str]], scale: float) -> bool:
    present = [(k, lab) for k, lab in series if any(r.get(k) is not None for r in records)]
    if not present:
        return False
    width = 0.8 / len(present)
    xs = range(len(records))
    for i, (key, lab) in enumerate(present):
        vals = [(r.get(key) or 0.0) * scale for r in records]
        ax.bar([x + (i - (len(present) - 1) / 2) * width for x in xs], vals, width, label=lab)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([_label(r) for r in records], rotation=45, ha="right", fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return True


def plot_file(path: str | Path) -> Path:
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    meta, records = data["metadata"], data["records"]
    fig, (ax_t, ax_b) = plt.subplots(1, 2, figsize=(14, 5.5))
    if _bars(ax_t, records, TIME_SERIES, 1e3):
        ax_t.set_yscale("log")
        ax_t.set_ylabel("time per call (ms, median, log scale)")
        ax_t.set_title("time (lower is better)")
    if _bars(ax_b, records, BW_SERIES, 1.0):
        ax_b.set_ylabel("GB/s (bytes read + written)")
        ax_b.set_title("bandwidth (higher is better)")
        for x, r in enumerate(records):
            if r.get("pct_copy") is not None and r.get("fs_gbs") is not None:
                ax_b.annotate(f"{r['pct_copy']:.0f}%", (x, r["fs_gbs"]), ha="center", va="bottom", fontsize=7)
    else:
        ax_b.set_visible(False)
    fig.suptitle(f"{meta.get('benchmark', path.stem)} on {meta.get('device', '?')} | torch {meta.get('torch')} "
                 f"| flashstream {meta.get('flashstream')} @ {str(meta.get('git_commit', '?'))[:10]} "
                 f"| {meta.get('timestamp_utc', '')}", fontsize=9)
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(__doc__)
        return 2
    paths: list[Path] = []
    for a in args:
        if a.endswith(".json"):
            paths.append(Path(a))
        else:
            paths += sorted(p for p in RESULTS_DIR.glob(f"{a}-*.json")
                            if json.loads(p.read_text(encoding="utf-8")).get("metadata", {}).get("benchmark") == a)
    if not paths:
        print(f"no results for {args} in {RESULTS_DIR}", file=sys.stderr)
        return 1
    for p in paths:
        print(plot_file(p))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
