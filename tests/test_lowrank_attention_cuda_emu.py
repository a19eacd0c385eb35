"""The low-rank attention CUDA kernels, run on the host: tests/cuda_emu/lowrank_attention_emu.cpp
compiles include/flashstream/lowrank/attention_cuda.cuh with the host C++ compiler (the launchers
are nvcc-only; the kernels are plain C++ there), runs each block's 256 threads as host threads
(barriers for __syncthreads / __syncwarp, shuffles through memory) and compares with a float64
reference. This checks the kernels' index math, shared-memory layout, barriers, masks and head-dim
buckets without a GPU; timing, occupancy and device intrinsics are not covered."""

import shutil
import subprocess
from pathlib import Path

import pytest

from test_causal_conv1d_cuda_emu import cuda_include_dir

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "tests" / "cuda_emu" / "lowrank_attention_emu.cpp"


def test_cuda_kernels_on_host(tmp_path):
    cxx = shutil.which("c++") or shutil.which("g++")
    inc = cuda_include_dir()
    if cxx is None or inc is None:
        pytest.skip("needs a host C++ compiler and the CUDA toolkit headers (cuda_runtime.h)")
    exe = tmp_path / "lowrank_attention_emu"
    build = subprocess.run([cxx, "-std=c++20", "-O1", f"-I{ROOT / 'include'}", f"-I{inc}", str(SOURCE), "-o", str(exe),
                            "-pthread"], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:]
    assert run.stdout.strip().endswith("cases, 0 failed"), run.stdout[-2000:]
