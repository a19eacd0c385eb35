"""The sink_cache_compact CUDA kernel's tile phases, run on the host: tests/cuda_emu/sink_compact_emu.cpp
compiles include/flashstream/sink/cuda_compact.cuh with the host C++ compiler and runs every thread
of every block in the kernel's order (per tile: all loads, then all stores) against a dense gather
reference. This checks the tiling, the in-place ordering across tiles, the word sizes and the
skipping of bad indices without a GPU; timing and device memory ordering are not covered."""

import shutil
import subprocess
from pathlib import Path

import pytest

from test_causal_conv1d_cuda_emu import cuda_include_dir

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "tests" / "cuda_emu" / "sink_compact_emu.cpp"


def test_compact_kernel_on_host(tmp_path):
    cxx = shutil.which("c++") or shutil.which("g++")
    inc = cuda_include_dir()
    if cxx is None or inc is None:
        pytest.skip("needs a host C++ compiler and the CUDA toolkit headers (cuda_runtime.h)")
    exe = tmp_path / "sink_compact_emu"
    build = subprocess.run([cxx, "-std=c++20", "-O1", f"-I{ROOT / 'include'}", f"-I{inc}", str(SOURCE), "-o", str(exe)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:]
    assert run.stdout.strip().endswith("cases, 0 failed"), run.stdout[-2000:]
