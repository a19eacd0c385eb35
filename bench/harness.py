"""Shared benchmark harness: run metadata, timing, a copy-bandwidth roofline and JSON results.

Every ``bench/bench_<op>.py`` uses it the same way::

    from harness import metadata, time_fn, copy_bandwidth, write_results
    t = time_fn(lambda: op(x), device="cuda")          # seconds, median
    bw = copy_bandwidth(nbytes, "cuda")                # bytes/s, read + write counted
    write_results("fsq", records)                      # bench/results/fsq-<device-tag>.json

Timing:
  * CUDA: CUDA events around each call, the L2 flushed before every rep (a 256 MiB buffer is
    zeroed), warmup reps first, the median of the timed reps.
  * CPU: ``torch.utils.benchmark.Timer(...).blocked_autorange`` on ``torch.get_num_threads()``
    threads, its median.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import statistics
import subprocess
from pathlib import Path
from typing import Any, Callable

import torch

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"

FLUSH_BYTES = 256 << 20  # larger than the L2 of any current GPU (H100: 50 MiB, B200: 126 MiB)
CUDA_WARMUP = 5
CUDA_REPS = 30
CPU_MIN_RUN_TIME = 1.0  # seconds per measurement; benchmarks may lower it (e.g. --quick)


# ---- what ran where ----------------------------------------------------------------------------

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    """HEAD of the repository holding this file; FLASHSTREAM_COMMIT overrides (for copies of a
    working tree without .git); 'unknown' otherwise. '+dirty' marks uncommitted changes."""
    env = os.environ.get("FLASHSTREAM_COMMIT")
    if env:
        return env
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=BENCH_DIR, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=BENCH_DIR,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "") if head else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return f"{_cpu_model()} ({torch.get_num_threads()} threads)"


def device_tag(device: str) -> str:
    """Short tag for file names: 'cpu-2c' (threads torch uses), 'h100', 'a100', ... ."""
    if torch.device(device).type != "cuda":
        return f"cpu-{torch.get_num_threads()}c"
    name = torch.cuda.get_device_name(torch.device(device))
    # "NVIDIA H100 80GB HBM3" -> "h100"; "NVIDIA GeForce RTX 4090" -> "rtx4090" is not needed yet.
    m = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Za-z]?)\b", name)
    if m:
        return m.group(1).lower()
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "cuda"


def metadata(device: str = "cpu") -> dict[str, Any]:
    import flashstream

    try:
        isa = flashstream._C.cpu_isa()
    except Exception:  # an extension without the ISA report
        isa = "unknown"
    is_cuda = torch.device(device).type == "cuda"
    return {
        "device": device_name(device),
        "device_tag": device_tag(device),
        "device_type": "cuda" if is_cuda else "cpu",
        "cpu": _cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_isa": isa,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "flashstream": getattr(flashstream, "__version__", "unknown"),
        "git_commit": _git_commit(),
        "built_from_commit": getattr(flashstream._C, "git_commit", "unknown"),
        "timestamp_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# ---- timing ------------------------------------------------------------------------------------

_flush_buffers: dict[torch.device, torch.Tensor] = {}


def _flush_l2(device: torch.device) -> None:
    buf = _flush_buffers.get(device)
    if buf is None:
        buf = _flush_buffers[device] = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device=device)
    buf.zero_()


def time_fn(fn: Callable[[], Any], *, device: str, reps: int = CUDA_REPS, warmup: int = CUDA_WARMUP,
            min_run_time: float | None = None) -> float:
    """Median seconds per call of ``fn()`` on ``device`` (see the module docstring for how)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        with torch.cuda.device(dev):
            for _ in range(warmup):
                fn()
            torch.cuda.synchronize(dev)
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
            for s, e in zip(starts, ends):
                _flush_l2(dev)
                s.record()
                fn()
                e.record()
            torch.cuda.synchronize(dev)
            return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) * 1e-3
    from torch.utils import benchmark

    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=CPU_MIN_RUN_TIME if min_run_time is None else min_run_time).median


_copy_cache: dict[tuple[int, str], float] = {}


def copy_bandwidth(nbytes: int, device: str, **time_kwargs: Any) -> float:
    """Measured ``dst.copy_(src)`` bandwidth for ``nbytes``-byte buffers on ``device``, in bytes/s,
    counting the read and the write (2 * nbytes per copy): the roofline for memory-bound ops.

    On CUDA the L2 is flushed before each rep, so any size measures DRAM. On CPU nothing is
    flushed, so the buffers are at least FLUSH_BYTES (256 MiB) to stream from DRAM, not the LLC."""
    if torch.device(device).type != "cuda":
        nbytes = max(int(nbytes), FLUSH_BYTES)
    key = (int(nbytes), str(torch.device(device)))
    if key not in _copy_cache:
        src = torch.ones(int(nbytes), dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        t = time_fn(lambda: dst.copy_(src), device=device, **time_kwargs)
        _copy_cache[key] = 2 * nbytes / t
        del src, dst
    return _copy_cache[key]


# ---- results -----------------------------------------------------------------------------------

def write_results(name: str, records: list[dict[str, Any]], *, device: str | None = None) -> Path:
    """Write ``{"metadata": ..., "records": [...]}`` to ``bench/results/<name>-<device-tag>.json``.

    ``device`` defaults to the records' ``"device"`` field (else cpu)."""
    if device is None:
        device = next((r["device"] for r in records if "device" in r), "cpu")
    meta = metadata(device)
    meta["benchmark"] = name
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}-{meta['device_tag']}.json"
    path.write_text(json.dumps({"metadata": meta, "records": records}, indent=1) + "\n", encoding="utf-8")
    return path


def fmt_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """Plain-text table: ``columns`` = [(key, header, format spec)]; missing values print '-'."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        line = []
        for key, _, spec in columns:
            v = r.get(key)
            line.append("-" if v is None else format(v, spec))
        cells.append(line)
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    out = []
    for k, row in enumerate(cells):
        out.append("  ".join(c.rjust(w) for c, w in zip(row, widths)))
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
