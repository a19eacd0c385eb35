"""Peak activation memory of one call: the most bytes that the call itself holds at once, above
what was allocated before it (weights and inputs excluded), on CUDA or CPU.

* CUDA: ``torch.cuda.reset_peak_memory_stats`` then ``max_memory_allocated() - memory_allocated()``
  around the call (what FlashSVD's ``acc_peak_time`` measures; the caching allocator's own
  reserve is not counted).
* CPU: there are no allocator statistics, so the call runs under ``torch.profiler`` with
  ``profile_memory=True``, which records every allocation and free of torch's CPU allocator with a
  timestamp; the running sum of those events in time order peaks at the call's peak. Memory that
  libraries take outside torch's allocator (MKL/oneDNN scratch, Python objects) is not counted.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

__all__ = ["peak_activation_bytes"]


def _cpu_peak(fn: Callable[[], Any]) -> tuple[int, Any]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    # The raw event list: the aggregated ``prof.events()`` folds allocations into the op that made
    # them, so only the raw "[memory]" events keep each allocation's own time.
    deltas = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    live = peak = 0
    for _, nbytes in deltas:
        live += nbytes
        peak = max(peak, live)
    return peak, result


def peak_activation_bytes(fn: Callable[[], Any], device: str | torch.device) -> tuple[int, Any]:
    """``(peak bytes, fn())``: the peak extra memory that ``fn()`` allocates on ``device`` (the
    module docstring says how each device is measured). The result is kept alive until the end,
    so its own bytes count."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        before = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        result = fn()
        torch.cuda.synchronize(dev)
        return torch.cuda.max_memory_allocated(dev) - before, result
    if dev.type != "cpu":
        raise ValueError(f"flashstream peak_activation_bytes: device must be cpu or cuda, got {dev}")
    return _cpu_peak(fn)
