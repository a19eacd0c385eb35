"""lowrank_linear's tensor-core CUDA path (bf16 / fp16, include/flashstream/lowrank/cuda_tc.cuh)
against the fp64 unfused math, at shapes that take it and at shapes that fall back to the SIMT
kernel (the dispatch rule of tc_params.h: sm_80+, 1 <= r <= 256, K, r, N multiples of 8,
row-major operands with row strides multiples of 8 and 16-byte aligned pointers). Needs a GPU;
tests/test_cuda_emu.py runs the same kernel emulated on the host."""

import pytest
import torch

from flashstream.ops import lowrank_linear
from references.lowrank import lowrank_linear_reference

HALF_DTYPES = [torch.bfloat16, torch.float16]
# The tensor-core path rounds x A to the dtype (as the unfused chain does) and the output once.
TOL = {torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2), torch.float16: dict(rtol=2e-3, atol=2e-3)}

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)),
                                reason="needs a CUDA device of compute capability 8.0 or newer")


def factors(K, r, N, dtype, bias=True):
    A = (torch.randn(K, r, dtype=torch.float64) / K ** 0.5).to(dtype).cuda()
    B = (torch.randn(r, N, dtype=torch.float64) / r ** 0.5).to(dtype).cuda()
    b = torch.randn(N, dtype=torch.float64).to(dtype).cuda() if bias else None
    return A, B, b


def check(y, x, A, B, b, activation, dtype):
    assert y.dtype == dtype and y.device.type == "cuda"
    torch.testing.assert_close(y.double().cpu(), lowrank_linear_reference(x, A, B, b, activation).cpu(), **TOL[dtype])


# (M, K, r, N): each rank bucket (64 / 128 / 256), row / k / column tails, one row, several N tiles.
TC_SHAPES = [(1000, 256, 64, 520), (257, 136, 72, 200), (130, 64, 256, 264), (1, 8, 8, 8), (513, 1024, 128, 1032)]
# Fall back to the SIMT kernel: r > 256, K / r / N not multiples of 8.
FALLBACK_SHAPES = [(300, 64, 264, 72), (200, 100, 64, 64), (200, 64, 60, 64), (200, 64, 64, 70)]


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("activation", [None, "gelu", "silu"])
@pytest.mark.parametrize("shape", TC_SHAPES + FALLBACK_SHAPES, ids=str)
def test_tc_and_fallback_shapes_match_fp64(dtype, activation, shape):
    M, K, r, N = shape
    x = torch.randn(M, K, device="cuda").to(dtype)
    A, B, b = factors(K, r, N, dtype)
    check(lowrank_linear(x, A, B, b, activation), x, A, B, b, activation, dtype)
    check(lowrank_linear(x, A, B, None, activation), x, A, B, None, activation, dtype)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
def test_tc_strided_and_fallback_layouts(dtype):
    base = torch.randn(300, 96, device="cuda").to(dtype)
    A, B, b = factors(64, 32, 48, dtype)
    for x in (base[:, :64], base[:, 8:72]):  # row stride 96: on the tensor-core path
        check(lowrank_linear(x, A, B, b, "gelu"), x, A, B, b, "gelu", dtype)
    x = base[:, 1:65]  # misaligned rows: SIMT
    check(lowrank_linear(x, A, B, b, "gelu"), x, A, B, b, "gelu", dtype)
    At = A.t().contiguous().t()  # unit row stride: SIMT
    check(lowrank_linear(base[:, :64], At, B, b, None), base[:, :64], At, B, b, None, dtype)


@pytest.mark.parametrize("r", [64, 128, 256])
def test_tc_issue_shape_matches_two_matmuls(r):
    # the issue's benchmark shape (M 8192, K = N = 4096): against cuBLAS's two bf16 GEMMs
    x = torch.randn(8192, 4096, device="cuda", dtype=torch.bfloat16)
    A, B, b = factors(4096, r, 4096, torch.bfloat16)
    y = lowrank_linear(x, A, B, b, "gelu")
    torch.testing.assert_close(y, torch.nn.functional.gelu(x @ A @ B + b), rtol=3e-2, atol=3e-2)


def test_tc_opcheck_and_compile():
    x = torch.randn(3, 40, 64, device="cuda", dtype=torch.bfloat16)
    A, B, b = factors(64, 16, 24, torch.bfloat16)
    torch.library.opcheck(torch.ops.flashstream.lowrank_linear.default, (x, A, B, b, "silu"))
    compiled = torch.compile(lambda x: lowrank_linear(x, A, B, b, "silu"), fullgraph=True)
    torch.testing.assert_close(compiled(x), lowrank_linear(x, A, B, b, "silu"))


def test_tc_backward_still_matches_fp64():
    # forward on tensor cores, backward on the SIMT kernels
    x = torch.randn(200, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    A, B, b = (t.requires_grad_() for t in factors(64, 32, 72, torch.bfloat16))
    lowrank_linear(x, A, B, b, "gelu").sum().backward()
    refs = [t.detach().double().requires_grad_() for t in (x, A, B, b)]
    lowrank_linear_reference(*refs, "gelu").sum().backward()
    for t, ref in zip((x, A, B, b), refs):
        torch.testing.assert_close(t.grad.double(), ref.grad, rtol=5e-2, atol=5e-2)
