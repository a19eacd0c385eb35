"""flashstream.ops.lowrank_linear / lowrank_ffn / lowrank_gated_ffn against the unfused fp64 math."""

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import HealthCheck, given, settings

from flashstream.ops import lowrank_ffn, lowrank_gated_ffn, lowrank_linear
from references.lowrank import lowrank_ffn_reference, lowrank_gated_ffn_reference, lowrank_linear_reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ACTIVATIONS = [None, "gelu", "silu"]
# fp32 accumulates exactly like the reference up to summation order; 16-bit outputs are rounded once.
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
       torch.float16: dict(rtol=2e-3, atol=2e-3)}


def factors(K, r, N, dtype, device, bias=True):
    """x-independent factors scaled so that x A B is O(1) for x ~ N(0, 1)."""
    A = (torch.randn(K, r, dtype=torch.float64) / K ** 0.5).to(dtype).to(device)
    B = (torch.randn(r, N, dtype=torch.float64) / r ** 0.5).to(dtype).to(device)
    b = torch.randn(N, dtype=torch.float64).to(dtype).to(device) if bias else None
    return A, B, b


def check(out, ref, dtype):
    assert out.dtype == dtype and out.shape == ref.shape
    torch.testing.assert_close(out.cpu().double(), ref.cpu(), **TOL[dtype])


# ---- lowrank_linear forward ---------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_reference(device, dtype, activation, bias):
    x = torch.randn(2, 150, 200, device=device).to(dtype)
    A, B, b = factors(200, 48, 170, dtype, device, bias)
    y = lowrank_linear(x, A, B, b, activation)
    check(y, lowrank_linear_reference(x, A, B, b, activation), dtype)


def test_linear_equals_unfused_fp32(device):
    # the bar: fused == the two-matmul chain (fp32, summation order aside)
    x = torch.randn(513, 384, device=device)
    A, B, b = factors(384, 64, 1536, torch.float32, device)
    y = lowrank_linear(x, A, B, b, "gelu")
    torch.testing.assert_close(y, torch.nn.functional.gelu(x @ A @ B + b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_linear_every_cpu_isa(cpu_isa, dtype):
    # sizes around the register tile (rows 4/6/12, panels 8/16/32), the k block (128) and the row tiles
    for M, K, r, N in [(1, 1, 1, 1), (13, 129, 33, 31), (97, 64, 512, 65), (300, 257, 7, 130), (5, 300, 128, 17)]:
        x = torch.randn(M, K).to(dtype)
        A, B, b = factors(K, r, N, dtype, "cpu")
        for activation in ACTIVATIONS:
            check(lowrank_linear(x, A, B, b, activation), lowrank_linear_reference(x, A, B, b, activation), dtype)


def test_cpu_isas_agree_closely(cpu_isa):
    from flashstream import _C

    x = torch.randn(200, 96)
    A, B, b = factors(96, 40, 77, torch.float32, "cpu")
    y = lowrank_linear(x, A, B, b, "silu")
    _C.set_cpu_isa("baseline")
    torch.testing.assert_close(y, lowrank_linear(x, A, B, b, "silu"), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("shape", [(64,), (0, 64), (3, 0, 64), (2, 3, 5, 64), (1, 1, 64)], ids=str)
def test_linear_leading_dims(device, shape):
    x = torch.randn(shape, device=device)
    A, B, b = factors(64, 16, 24, torch.float32, device)
    y = lowrank_linear(x, A, B, b)
    assert y.shape == (*shape[:-1], 24)
    if x.numel():
        check(y, lowrank_linear_reference(x, A, B, b), torch.float32)


def test_linear_strided_inputs(device):
    # factors stored transposed (e.g. an nn.Linear weight's .t()) and a non-contiguous x: no copy needed
    x = torch.randn(96, 70, device=device)[:, 3:67]
    At = torch.randn(20, 64, device=device) / 8
    Bt = torch.randn(50, 20, device=device) / 4
    y = lowrank_linear(x, At.t(), Bt.t(), None, "gelu")
    check(y, lowrank_linear_reference(x, At.t(), Bt.t(), None, "gelu"), torch.float32)


def test_linear_max_rank_and_empty_output(device):
    x = torch.randn(33, 40, device=device)
    A, B, b = factors(40, 512, 9, torch.float32, device)
    check(lowrank_linear(x, A, B, b), lowrank_linear_reference(x, A, B, b), torch.float32)
    A0, B0, _ = factors(40, 3, 0, torch.float32, device, bias=False)
    assert lowrank_linear(x, A0, B0).shape == (33, 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_linear_extreme_values_activation(device, dtype):
    # activations far in the tails: gelu -> 0 / identity, silu -> 0 / identity, no NaN
    x = torch.linspace(-60, 60, 241, device=device)[:, None].to(dtype)
    A = torch.ones(1, 1, device=device, dtype=dtype)
    B = torch.ones(1, 1, device=device, dtype=dtype)
    for activation in ("gelu", "silu"):
        y = lowrank_linear(x, A, B, None, activation)
        check(y, lowrank_linear_reference(x, A, B, None, activation), dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_16bit_gelu_error_bound(device, dtype):
    # 16-bit ops take a cheaper GELU on CPU (normal_cdf_16bit: Phi to 2e-6 absolute): each output
    # is within |z| * 2e-6 of the exact value, plus its own rounding (every representable z)
    x = torch.linspace(-14, 14, 40001, dtype=torch.float64).to(dtype).unique()[:, None].to(device)
    one = torch.ones(1, 1, device=device, dtype=dtype)
    y = lowrank_linear(x, one, one, None, "gelu").cpu().double()
    z = x.cpu().double()
    exact = torch.nn.functional.gelu(z)
    bound = z.abs() * 2e-6 + exact.abs() * torch.finfo(dtype).eps / 2 + torch.finfo(dtype).smallest_normal * 2 ** -10
    assert ((y - exact).abs() <= bound).all(), ((y - exact).abs() - bound).max()


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_cpu_row_tiles_cover_every_row_once(threads):
    # r = 512 makes the L2-sized row tile ~60 rows, so these M give many tiles whose count the
    # CPU path rounds up to a multiple of the thread count and fills unevenly (lowrank::RowTiles):
    # every row must still be computed exactly once, forward, FFN and backward alike
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for M in (1001, 131, 25, 2):
            for dtype in DTYPES:
                x = torch.randn(M, 40).to(dtype)
                A, B, b = factors(40, 512, 33, dtype, "cpu")
                check(lowrank_linear(x, A, B, b, "silu"), lowrank_linear_reference(x, A, B, b, "silu"), dtype)
                f = ffn_factors(40, 512, 70, 512, 24, dtype, "cpu")
                with torch.no_grad():
                    check(lowrank_ffn(x, *f), lowrank_ffn_reference(x, *f, "gelu"), dtype)
            A, B, _ = factors(40, 512, 33, torch.float32, "cpu", bias=False)
            leaves = [t.clone().requires_grad_() for t in (torch.randn(M, 40), A, B)]
            g = torch.randn(M, 33)
            lowrank_linear(*leaves, None, "gelu").backward(g)
            ref = [t.detach().double().requires_grad_() for t in leaves]
            lowrank_linear_reference(*ref, None, "gelu").backward(g.double())
            for got, want in zip(leaves, ref):
                torch.testing.assert_close(got.grad.double(), want.grad, rtol=1e-4, atol=1e-4)
    finally:
        torch.set_num_threads(before)


# ---- lowrank_linear backward --------------------------------------------------------------------

@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_grad_matches_fp64_autograd(device, activation, bias):
    x = torch.randn(3, 45, 70, device=device)
    A, B, b = factors(70, 24, 90, torch.float32, device, bias)
    leaves = [t.clone().requires_grad_() for t in (x, A, B) + ((b,) if bias else ())]
    y = lowrank_linear(leaves[0], leaves[1], leaves[2], leaves[3] if bias else None, activation)
    g = torch.randn_like(y)
    y.backward(g)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref = lowrank_linear_reference(ref_leaves[0], ref_leaves[1], ref_leaves[2], ref_leaves[3] if bias else None,
                                   activation)
    ref.backward(g.double())
    for got, want in zip(leaves, ref_leaves):
        assert got.grad.shape == got.shape
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_linear_grad_16bit(device, dtype):
    x = torch.randn(64, 96, device=device).to(dtype).requires_grad_()
    A, B, b = (t.requires_grad_() for t in factors(96, 32, 80, dtype, device))
    y = lowrank_linear(x, A, B, b, "silu")
    g = torch.randn_like(y)
    y.backward(g)
    leaves = [t.detach().double().requires_grad_() for t in (x, A, B, b)]
    lowrank_linear_reference(*leaves, "silu").backward(g.double())
    tol = dict(rtol=3e-2, atol=3e-2) if dtype == torch.bfloat16 else dict(rtol=5e-3, atol=5e-3)
    for got, want in zip((x, A, B, b), leaves):
        # grad_A/grad_B sum over 64 rows: compare relative to the gradient's scale
        scale = want.grad.abs().max().item()
        torch.testing.assert_close(got.grad.double() / scale, want.grad / scale, **tol)


def test_linear_grad_only_some_inputs(device):
    # LoRA fine-tuning: x and the frozen parts need no grad
    x = torch.randn(20, 30, device=device)
    A, B, _ = factors(30, 8, 12, torch.float32, device, bias=False)
    B.requires_grad_()
    lowrank_linear(x, A, B, None, "gelu").sum().backward()
    ref_B = B.detach().double().requires_grad_()
    lowrank_linear_reference(x, A, ref_B, None, "gelu").sum().backward()
    torch.testing.assert_close(B.grad.double(), ref_B.grad, rtol=1e-4, atol=1e-4)


def test_linear_gradcheck_against_fp64_reference_directions():
    # gradcheck needs fp64 (unsupported): check the backward op directionally instead,
    # <grad_out, J v> = <J^T grad_out, v>, with J v from fp64 finite differences of the reference.
    x = torch.randn(10, 12)
    A, B, b = factors(12, 5, 7, torch.float32, "cpu")
    g = torch.randn(10, 7)
    grads = torch.ops.flashstream.lowrank_linear_backward(g, x, A, B, b, "gelu")
    eps = 1e-6
    for i, t in enumerate((x, A, B, b)):
        v = torch.randn_like(t)
        args = [u.double() for u in (x, A, B, b)]
        plus, minus = list(args), list(args)
        plus[i] = args[i] + eps * v.double()
        minus[i] = args[i] - eps * v.double()
        jv = (lowrank_linear_reference(*plus, "gelu") - lowrank_linear_reference(*minus, "gelu")) / (2 * eps)
        torch.testing.assert_close((grads[i].double() * v.double()).sum(), (g.double() * jv).sum(), rtol=1e-4, atol=1e-4)


# ---- lowrank_ffn / lowrank_gated_ffn ------------------------------------------------------------

def ffn_factors(K, r1, d_ff, r2, N, dtype, device, bias=True):
    A1, B1, b1 = factors(K, r1, d_ff, dtype, device, bias)
    A2, B2, b2 = factors(d_ff, r2, N, dtype, device, bias)
    return A1, B1, b1, A2, B2, b2


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", ["gelu", "silu"])
@pytest.mark.parametrize("bias", [True, False])
def test_ffn_matches_reference(device, dtype, activation, bias):
    x = torch.randn(3, 70, 96, device=device).to(dtype)
    f = ffn_factors(96, 40, 300, 24, 96, dtype, device, bias)  # d_ff not a multiple of the tile
    with torch.no_grad():
        y = lowrank_ffn(x, *f, activation=activation)
    check(y, lowrank_ffn_reference(x, *f, activation), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_gated_ffn_matches_reference(device, dtype, activation):
    x = torch.randn(130, 64, device=device).to(dtype)
    Ag, Bg, _ = factors(64, 32, 200, dtype, device, bias=False)
    Au, Bu, _ = factors(64, 20, 200, dtype, device, bias=False)
    Ad, Bd, _ = factors(200, 16, 72, dtype, device, bias=False)
    y = lowrank_gated_ffn(x, Ag, Bg, Au, Bu, Ad, Bd, activation=activation)
    check(y, lowrank_gated_ffn_reference(x, Ag, Bg, Au, Bu, Ad, Bd, activation), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ffn_every_cpu_isa(cpu_isa, dtype):
    for M, K, r1, d_ff, r2, N in [(1, 8, 1, 1, 1, 1), (13, 33, 17, 129, 9, 20), (200, 48, 64, 384, 512, 40)]:
        x = torch.randn(M, K).to(dtype)
        f = ffn_factors(K, r1, d_ff, r2, N, dtype, "cpu")
        check(lowrank_ffn(x, *f), lowrank_ffn_reference(x, *f), dtype)
        Ag, Bg, _ = factors(K, r1, d_ff, dtype, "cpu", bias=False)
        Au, Bu, _ = factors(K, r2, d_ff, dtype, "cpu", bias=False)
        Ad, Bd, _ = factors(d_ff, r1, N, dtype, "cpu", bias=False)
        check(lowrank_gated_ffn(x, Ag, Bg, Au, Bu, Ad, Bd), lowrank_gated_ffn_reference(x, Ag, Bg, Au, Bu, Ad, Bd),
              dtype)


def test_ffn_equals_two_linears(device):
    x = torch.randn(77, 64, device=device)
    A1, B1, b1, A2, B2, b2 = ffn_factors(64, 16, 256, 16, 64, torch.float32, device)
    y = lowrank_ffn(x, A1, B1, b1, A2, B2, b2, activation="gelu")
    two = lowrank_linear(lowrank_linear(x, A1, B1, b1, "gelu"), A2, B2, b2)
    torch.testing.assert_close(y, two, rtol=1e-5, atol=1e-5)


def test_ffn_is_inference_only(device):
    x = torch.randn(4, 16, device=device, requires_grad=True)
    f = ffn_factors(16, 4, 32, 4, 16, torch.float32, device)
    with pytest.raises(RuntimeError, match="flashstream.lowrank_ffn: inference only"):
        lowrank_ffn(x, *f)
    with pytest.raises(RuntimeError, match="flashstream.lowrank_gated_ffn: inference only"):
        lowrank_gated_ffn(x, f[0], f[1], f[0], f[1], f[3], f[4])
    with torch.no_grad():
        assert lowrank_ffn(x, *f).shape == (4, 16)


# ---- bad inputs -----------------------------------------------------------------------------------

def test_linear_rejects_bad_inputs(device):
    x = torch.randn(5, 8, device=device)
    A, B, b = factors(8, 4, 6, torch.float32, device)
    cases = [
        ((x, A[:7], B), ValueError, r"flashstream.lowrank_linear: A must be \[K, r\] with K = 8, got \[7, 4\]"),
        ((x, A, B[:3]), ValueError, r"flashstream.lowrank_linear: B must be \[r, N\] with r = 4, got \[3, 6\]"),
        ((x, A, B, b[:5]), ValueError, r"flashstream.lowrank_linear: bias must be \[N\] = \[6\], got \[5\]"),
        ((x, A.half(), B), TypeError, r"flashstream.lowrank_linear: A must have x's dtype \(Float\), got Half"),
        ((x.double(), A.double(), B.double()), TypeError, "flashstream.lowrank_linear: x must be float32, float16 or bfloat16"),
        ((x, A[0], B), ValueError, r"flashstream.lowrank_linear: A must be 2-D \[K, r\], got \[4\]"),
        ((x, A, B, None, "relu"), ValueError, "flashstream.lowrank_linear: activation must be None, 'gelu' or 'silu', got 'relu'"),
        ((x[0, 0], A, B), ValueError, r"flashstream.lowrank_linear: x must be \[..., K\], got a 0-dim tensor"),
    ]
    for args, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            lowrank_linear(*args)


def test_rejects_rank_over_512(device):
    x = torch.randn(2, 8, device=device)
    A, B, _ = factors(8, 513, 4, torch.float32, device, bias=False)
    with pytest.raises(ValueError, match=r"flashstream.lowrank_linear: the rank \(A.shape\[1\]\) must be in \[1, 512\], got 513"):
        lowrank_linear(x, A, B)
    f = ffn_factors(8, 4, 16, 513, 8, torch.float32, device)
    with pytest.raises(ValueError, match=r"flashstream.lowrank_ffn: the rank \(A2.shape\[1\]\) must be in \[1, 512\], got 513"):
        lowrank_ffn(x, *f)


def test_ffn_rejects_bad_inputs(device):
    x = torch.randn(5, 8, device=device)
    A1, B1, b1, A2, B2, b2 = ffn_factors(8, 4, 16, 4, 8, torch.float32, device)
    with pytest.raises(ValueError, match=r"flashstream.lowrank_ffn: A2 must be \[d_ff, r2\] with d_ff = 16, got \[15, 4\]"):
        lowrank_ffn(x, A1, B1, b1, A2[:15], B2, b2)
    with pytest.raises(ValueError, match=r"flashstream.lowrank_ffn: b1 must be \[d_ff\] = \[16\]"):
        lowrank_ffn(x, A1, B1, b2, A2, B2, b2)
    with pytest.raises(ValueError, match="flashstream.lowrank_ffn: activation must be 'gelu' or 'silu', got 'tanh'"):
        lowrank_ffn(x, A1, B1, b1, A2, B2, b2, activation="tanh")
    with pytest.raises(TypeError, match="flashstream.lowrank_ffn: B2 must have x's dtype"):
        lowrank_ffn(x, A1, B1, b1, A2, B2.bfloat16(), b2)
    with pytest.raises(ValueError, match=r"flashstream.lowrank_gated_ffn: B_up must be \[r_up, d_ff\] with d_ff = 16, got \[4, 12\]"):
        lowrank_gated_ffn(x, A1, B1, A1, B1[:, :12], A2, B2)


def test_backward_op_rejects_bad_grad(device):
    x = torch.randn(5, 8, device=device)
    A, B, b = factors(8, 4, 6, torch.float32, device)
    with pytest.raises(ValueError, match=r"flashstream.lowrank_linear_backward: grad_y must be x.shape\[:-1\] \+ \[N\] = \[5, 6\], got \[5, 5\]"):
        torch.ops.flashstream.lowrank_linear_backward(torch.zeros(5, 5, device=device), x, A, B, b, None)
    with pytest.raises(TypeError, match="flashstream.lowrank_linear_backward: grad_y must have x's dtype"):
        torch.ops.flashstream.lowrank_linear_backward(torch.zeros(5, 6, device=device).half(), x, A, B, b, None)


# ---- torch.library.opcheck and torch.compile --------------------------------------------------------

def test_opcheck(device):
    x = torch.randn(2, 9, 16, device=device)
    A, B, b = factors(16, 5, 12, torch.float32, device)
    torch.library.opcheck(torch.ops.flashstream.lowrank_linear.default, (x, A, B, b, "gelu"))
    torch.library.opcheck(torch.ops.flashstream.lowrank_linear.default,
                          (x.requires_grad_(), A.requires_grad_(), B.requires_grad_(), b.requires_grad_(), "silu"))
    torch.library.opcheck(torch.ops.flashstream.lowrank_linear_backward.default,
                          (torch.randn(2, 9, 12, device=device), x.detach(), A.detach(), B.detach(), None, None))
    f = ffn_factors(16, 4, 40, 6, 16, torch.float32, device)
    torch.library.opcheck(torch.ops.flashstream.lowrank_ffn.default, (x.detach(), *f, "gelu"))
    torch.library.opcheck(torch.ops.flashstream.lowrank_gated_ffn.default,
                          (x.detach(), f[0], f[1], f[0], f[1], f[3], f[4], "silu"))


def test_torch_compile_fullgraph(device):
    x = torch.randn(4, 33, 24, device=device)
    A, B, b = factors(24, 8, 40, torch.float32, device)
    f = ffn_factors(24, 8, 96, 8, 24, torch.float32, device)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def block(x, A, B, b):
        h = lowrank_linear(x, A, B, b, "gelu")
        with torch.no_grad():
            y = lowrank_ffn(x, *f)
        return h.sum() + y.sum(), h

    A.requires_grad_()
    loss, h = block(x, A, B, b)
    loss.backward()
    torch.testing.assert_close(h, lowrank_linear(x, A, B, b, "gelu"))
    ref_A = A.detach().double().requires_grad_()
    (lowrank_linear_reference(x, ref_A, B, b, "gelu").sum() + lowrank_ffn_reference(x, *f).sum()).backward()
    torch.testing.assert_close(A.grad.double(), ref_A.grad, rtol=1e-4, atol=1e-4)


def test_torch_compile_inductor_inference(device):
    x = torch.randn(50, 24, device=device)
    A, B, b = factors(24, 8, 40, torch.float32, device)
    compiled = torch.compile(lambda x: lowrank_linear(x, A, B, b, "silu") * 2, fullgraph=True)
    torch.testing.assert_close(compiled(x), lowrank_linear(x, A, B, b, "silu") * 2)


# ---- shape fuzzing ------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(M=st.integers(0, 70), K=st.integers(1, 70), r=st.integers(1, 70), N=st.integers(1, 70),
       dtype=st.sampled_from(DTYPES), activation=st.sampled_from(ACTIVATIONS), bias=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_fuzz_linear(M, K, r, N, dtype, activation, bias, seed):
    torch.manual_seed(seed)
    x = torch.randn(M, K).to(dtype)
    A, B, b = factors(K, r, N, dtype, "cpu", bias)
    check(lowrank_linear(x, A, B, b, activation), lowrank_linear_reference(x, A, B, b, activation), dtype)


# ---- CUDA only ------------------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_matches_cpu_kernels(dtype):
    for M, K, r, N in [(1, 64, 16, 64), (300, 257, 128, 130), (4096, 768, 512, 96)]:
        x = torch.randn(M, K).to(dtype)
        A, B, b = factors(K, r, N, dtype, "cpu")
        y_cpu = lowrank_linear(x, A, B, b, "gelu")
        y_gpu = lowrank_linear(x.cuda(), A.cuda(), B.cuda(), b.cuda(), "gelu")
        check(y_gpu, lowrank_linear_reference(x, A, B, b, "gelu"), dtype)
        torch.testing.assert_close(y_gpu.cpu(), y_cpu, **TOL[dtype])


@cuda
def test_cuda_ffn_large_rank():
    x = torch.randn(1000, 128, device="cuda")
    f = ffn_factors(128, 512, 1000, 512, 128, torch.float32, "cuda")
    check(lowrank_ffn(x, *f), lowrank_ffn_reference(x, *f), torch.float32)
    Ag, Bg, _ = factors(128, 512, 700, torch.float32, "cuda", bias=False)
    Ad, Bd, _ = factors(700, 512, 64, torch.float32, "cuda", bias=False)
    check(lowrank_gated_ffn(x, Ag, Bg, Ag, Bg, Ad, Bd), lowrank_gated_ffn_reference(x, Ag, Bg, Ag, Bg, Ad, Bd),
          torch.float32)


@cuda
def test_cuda_graph_capture():
    x = torch.randn(256, 64, device="cuda")
    A, B, b = factors(64, 16, 64, torch.float32, "cuda")
    lowrank_linear(x, A, B, b)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph):
        y = lowrank_linear(x, A, B, b, "gelu")
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(y, lowrank_linear(x, A, B, b, "gelu"))


@cuda
def test_cuda_rejects_mixed_devices():
    x = torch.randn(5, 8, device="cuda")
    A, B, _ = factors(8, 4, 6, torch.float32, "cuda")
    with pytest.raises(ValueError, match="flashstream.lowrank_linear: B must be on the same device as x"):
        lowrank_linear(x, A, B.cpu())


@cuda
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_cuda_backward_matches_fp64(activation):
    x = torch.randn(300, 70, device="cuda", requires_grad=True)
    A, B, b = (t.requires_grad_() for t in factors(70, 24, 90, torch.float32, "cuda"))
    y = lowrank_linear(x, A, B, b, activation)
    g = torch.randn_like(y)
    y.backward(g)
    leaves = [t.detach().double().requires_grad_() for t in (x, A, B, b)]
    lowrank_linear_reference(*leaves, activation).backward(g.double())
    for got, want in zip((x, A, B, b), leaves):
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=1e-4, atol=1e-4)
