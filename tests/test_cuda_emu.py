"""CUDA kernels run on the host: each tests/cuda_emu/*_emu.cpp compiles a kernel header of
include/flashstream with the host C++ compiler (the launchers are nvcc-only; the kernels are plain
C++ there), runs the threads of each grid on the host in the kernel's order and compares with a
float64 or gather reference. This checks index math, shared-memory layouts, barriers, masks and
in-place orderings on machines without a GPU; timing, occupancy, device memory ordering and device
intrinsics are not covered.

* causal_conv1d_emu.cpp: include/flashstream/conv/cuda.cuh, every thread of each grid in turn
  (decode, forward and state-save kernels, state pools, the launch-path choice);
* sink_compact_emu.cpp: include/flashstream/sink/cuda_compact.cuh, every thread of every block
  (per tile: all loads, then all stores; in-place order across tiles, bad indices skipped);
* lowrank_attention_emu.cpp: include/flashstream/lowrank/attention_cuda.cuh, each block's 256
  threads as host threads (warp_emu.h: barriers for __syncthreads / __syncwarp, shuffles through
  memory; shared with the two tensor-core emulators);
* lowrank_tc_emu.cpp: include/flashstream/lowrank/cuda_tc.cuh (lowrank_linear on tensor cores),
  256 host threads a block, mma.sync emulated from the PTX fragment tables, cp.async as copies;
  plus its shared-memory bank conflicts, buffer overlaps, tile coverage and dispatch rule;
* sink_tc_emu.cpp: include/flashstream/sink/cuda_tc.cuh (sink attention on tensor cores), 128
  host threads a block, mma.sync / ldmatrix emulated from the PTX tables (mma_emu.h, shared with
  lowrank_tc_emu.cpp), against a float64 gather reference over paged caches; plus bank
  conflicts, region layout, fragment coverage and the dispatch rule.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EMULATORS = {  # source -> extra compiler flags
    "causal_conv1d_emu.cpp": [],
    "sink_compact_emu.cpp": [],
    "lowrank_attention_emu.cpp": ["-pthread"],
    "lowrank_tc_emu.cpp": ["-pthread"],
    "sink_tc_emu.cpp": ["-pthread"],
}


def cuda_include_dir():
    """The CUDA toolkit's include dir: CUDA_HOME / CUDA_PATH, else what nvcc itself passes to the
    host compiler (nvcc may be a wrapper script living outside the toolkit)."""
    dirs = [Path(r) / "include" for r in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")) if r]
    nvcc = shutil.which("nvcc")
    if nvcc:
        try:
            dry = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                                 capture_output=True, text=True, timeout=60)
            dirs += [Path(d) for d in re.findall(r'-I"?([^"\s]+)', dry.stdout + dry.stderr)]
        except (OSError, subprocess.SubprocessError):
            pass
        dirs.append(Path(nvcc).resolve().parents[1] / "include")
    return next((d for d in dirs if (d / "cuda_runtime.h").is_file()), None)


@pytest.mark.parametrize("source", sorted(EMULATORS))
def test_cuda_kernels_on_host(tmp_path, source):
    cxx = shutil.which("c++") or shutil.which("g++")
    inc = cuda_include_dir()
    if cxx is None or inc is None:
        pytest.skip("needs a host C++ compiler and the CUDA toolkit headers (cuda_runtime.h)")
    exe = tmp_path / Path(source).stem
    build = subprocess.run([cxx, "-std=c++20", "-O1", f"-I{ROOT / 'include'}", f"-I{inc}",
                            str(ROOT / "tests" / "cuda_emu" / source), "-o", str(exe), *EMULATORS[source]],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:]
    assert run.stdout.strip().endswith("cases, 0 failed"), run.stdout[-2000:]
