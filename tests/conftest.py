"""Shared fixtures: devices to test on, and every CPU instruction set compiled into the module."""

import pytest
import torch

import flashstream
from flashstream import _C

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
CPU_ISAS = _C.available_cpu_isas().split(",")


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(params=CPU_ISAS)
def cpu_isa(request):
    """Runs the test once per CPU ISA available here (baseline, avx2, avx512), restoring the default."""
    before = _C.cpu_isa()
    _C.set_cpu_isa(request.param)
    yield request.param
    _C.set_cpu_isa(before)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_report_header(config):
    return (f"flashstream {flashstream.__version__}, torch {torch.__version__}, CUDA kernels built: "
            f"{bool(_C.with_cuda)}, GPU visible: {torch.cuda.is_available()}, CPU ISAs: {','.join(CPU_ISAS)}")
