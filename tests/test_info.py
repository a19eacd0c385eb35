"""`flashstream info` reports the build and, per op, which kernels exist."""

import subprocess
import sys

import torch

from flashstream import _C


def test_info_lists_every_op_with_its_kernels():
    out = subprocess.run([sys.executable, "-m", "flashstream", "info"], check=True, capture_output=True, text=True).stdout
    assert f"torch       {torch.__version__}" in out
    for op in ("flashstream::fsq", "flashstream::fsq_backward", "flashstream::fsq_indices_to_codes"):
        line = next(l for l in out.splitlines() if l.startswith(op + " "))
        cpu, cuda = line.split()[1:]
        assert cpu == "yes"
        assert cuda == ("yes" if _C.with_cuda else "no")
    assert f"active {_C.cpu_isa()}" in out


def test_every_registered_op_has_cpu_and_cuda_kernels_when_built_with_cuda():
    ops = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("flashstream::")]
    assert ops
    for name in ops:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU"), name
        if _C.with_cuda:
            assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA"), name
