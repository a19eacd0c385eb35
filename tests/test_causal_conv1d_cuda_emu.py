"""The causal conv1d CUDA kernels, run on the host: tests/cuda_emu/causal_conv1d_emu.cpp compiles
include/flashstream/conv/cuda.cuh with the host C++ compiler (the launcher is nvcc-only; the
kernels are plain C++ there) and runs every thread of each grid in turn against a float64
reference. This checks the kernels' index math, state pools and launch-path choice on machines
without a GPU; timing, memory ordering between threads and device intrinsics are not covered."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "tests" / "cuda_emu" / "causal_conv1d_emu.cpp"


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


def test_cuda_kernels_on_host(tmp_path):
    cxx = shutil.which("c++") or shutil.which("g++")
    inc = cuda_include_dir()
    if cxx is None or inc is None:
        pytest.skip("needs a host C++ compiler and the CUDA toolkit headers (cuda_runtime.h)")
    exe = tmp_path / "causal_conv1d_emu"
    build = subprocess.run([cxx, "-std=c++20", "-O1", f"-I{ROOT / 'include'}", f"-I{inc}", str(SOURCE), "-o", str(exe)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:]
    assert run.stdout.strip().endswith("cases, 0 failed"), run.stdout[-2000:]
