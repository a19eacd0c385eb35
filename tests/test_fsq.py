"""flashstream.ops.fsq / fsq_indices_to_codes against the fp64 reference, on every device and CPU ISA."""

import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import HealthCheck, given, settings

import flashstream
from flashstream.ops import fsq, fsq_indices_to_codes
from references.fsq import fsq_grad_reference, fsq_reference, indices_to_codes_reference, near_tie

LEVELS = [[3] * 8, [8, 5, 5, 5], [7, 5, 5, 5, 5], [8, 6, 5], [2], [2, 3, 4, 5, 6, 7, 8, 9, 10],
          [4] * 12, [5] * 27, [5000, 3]]  # the last: too many levels to prove the reciprocal route exact
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def random_z(shape, dtype, device, scale=2.0):
    """Normal values wide enough to hit every level and saturate, plus exact zeros and +-inf."""
    z = torch.randn(shape, dtype=torch.float64) * scale
    flat = z.view(-1)
    if flat.numel() >= 8:
        flat[:4] = torch.tensor([0.0, -0.0, math.inf, -math.inf])
    return z.to(dtype).to(device)


def check_against_reference(z, levels, codes, indices, eps=1e-3):
    ref_codes, ref_indices, bounded = fsq_reference(z, levels, eps)
    tie = near_tie(bounded, levels)
    assert tie.sum() <= max(2, 0.02 * tie.numel()), "too many near-ties for the test to mean anything"
    ok = ~tie
    assert indices.dtype == torch.int64 and codes.dtype == z.dtype
    assert codes.shape == z.shape and indices.shape == z.shape[:-1]
    torch.testing.assert_close(indices.cpu()[ok], ref_indices[ok], rtol=0, atol=0)
    # codes are q / (L // 2) rounded once to z's dtype: exact
    torch.testing.assert_close(codes.cpu()[ok], ref_codes.to(z.dtype)[ok], rtol=0, atol=0)


@pytest.mark.parametrize("levels", LEVELS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference(device, levels, dtype):
    z = random_z((4099, len(levels)), dtype, device)
    codes, indices = fsq(z, levels)
    check_against_reference(z, levels, codes, indices)


@pytest.mark.parametrize("levels", [[3] * 8, [8, 5, 5, 5], [8, 6, 5], [4] * 12], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_cpu_isa(cpu_isa, levels, dtype):
    # Sizes around the tile and SIMD widths exercise the ragged-tail path of each ISA.
    for n in (1, 7, 255, 257, 3001):
        z = random_z((n, len(levels)), dtype, "cpu")
        codes, indices = fsq(z, levels)
        check_against_reference(z, levels, codes, indices)


def test_cpu_isas_agree(cpu_isa):
    from flashstream import _C

    z = random_z((2000, 4), torch.float32, "cpu")
    codes, indices = fsq(z, [8, 5, 5, 5])
    _C.set_cpu_isa("baseline")
    base_codes, base_indices = fsq(z, [8, 5, 5, 5])
    torch.testing.assert_close(indices, base_indices, rtol=0, atol=0)
    torch.testing.assert_close(codes, base_codes, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(4,), (0, 4), (3, 0, 4), (2, 3, 5, 4), (1, 1, 4)], ids=str)
def test_leading_dims(device, shape):
    z = random_z(shape, torch.float32, device)
    codes, indices = fsq(z, [8, 5, 5, 5])
    assert codes.shape == shape and indices.shape == shape[:-1]
    if z.numel():
        check_against_reference(z.cpu(), [8, 5, 5, 5], codes.cpu(), indices.cpu())


def test_codebook_beyond_int32(device):
    levels = [1000, 1000, 1000, 7]  # 7e9 codes: indices beyond int32
    z = random_z((5000, 4), torch.float32, device, scale=0.3)
    codes, indices = fsq(z, levels)
    check_against_reference(z, levels, codes, indices)
    assert indices.max().item() > 2**31
    back = fsq_indices_to_codes(indices, levels)
    torch.testing.assert_close(back, codes, rtol=0, atol=0)


def test_bf16_indices_are_exact(device):
    # Indices come from the fp32 computation, never from bf16-rounded codes.
    levels = [7, 7, 7, 7]  # codes q/3 are not representable in bf16
    z = random_z((3000, 4), torch.bfloat16, device, scale=1.0)
    codes, indices = fsq(z, levels)
    _, ref_indices, bounded = fsq_reference(z, levels)
    ok = ~near_tie(bounded, levels)
    torch.testing.assert_close(indices.cpu()[ok], ref_indices[ok], rtol=0, atol=0)
    torch.testing.assert_close(fsq_indices_to_codes(indices, levels, torch.bfloat16), codes, rtol=0, atol=0)


def test_cosyvoice2_bound(device):
    # CosyVoice 2's tokenizer: levels [3]*8, bound 0.999 * tanh(z), round, index sum h_j 3^j.
    z = random_z((4096, 8), torch.float32, device, scale=1.5)
    codes, indices = fsq(z, [3] * 8)
    h = torch.round(0.999 * torch.tanh(z.double().cpu()))
    expected = ((h + 1).long() * torch.tensor([3**j for j in range(8)])).sum(-1)
    bounded = 0.999 * torch.tanh(z.double().cpu())
    ok = ~near_tie(bounded, [3] * 8)
    torch.testing.assert_close(indices.cpu()[ok], expected[ok], rtol=0, atol=0)
    torch.testing.assert_close(codes.cpu()[ok], h.float()[ok], rtol=0, atol=0)


def test_infinities_saturate(device):
    levels = [8, 5, 4, 3]
    z = torch.tensor([[math.inf] * 4, [-math.inf] * 4], device=device)
    codes, indices = fsq(z, levels)
    hw = torch.tensor([4, 2, 2, 1], dtype=torch.float32)
    top = torch.tensor([l - 1 - l // 2 for l in levels], dtype=torch.float32) / hw
    torch.testing.assert_close(codes.cpu(), torch.stack([top, -torch.ones(4)]))
    assert indices.tolist() == [math.prod(levels) - 1, 0]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_indices_to_codes_inverts(device, dtype):
    levels = [8, 5, 5, 5]
    z = random_z((1000, 4), dtype, device)
    codes, indices = fsq(z, levels)
    torch.testing.assert_close(fsq_indices_to_codes(indices, levels, dtype), codes, rtol=0, atol=0)
    every = torch.arange(math.prod(levels), device=device)
    decoded = fsq_indices_to_codes(every, levels, torch.float32)
    torch.testing.assert_close(decoded.cpu(), indices_to_codes_reference(every, levels).float(), rtol=0, atol=0)


def test_indices_to_codes_shapes(device):
    idx = torch.randint(0, 6561, (2, 0, 3), device=device)
    assert fsq_indices_to_codes(idx, [3] * 8).shape == (2, 0, 3, 8)
    idx = torch.tensor(5, device=device)
    assert fsq_indices_to_codes(idx, [3] * 8).shape == (8,)


def test_out_of_range_indices(device):
    idx = torch.tensor([0, 6561, 5], device=device)
    with pytest.raises(ValueError, match=r"flashstream.fsq_indices_to_codes: indices must be in \[0, prod\(levels\)\)"):
        fsq_indices_to_codes(idx, [3] * 8)
    with pytest.raises(ValueError, match="fsq_indices_to_codes"):
        fsq_indices_to_codes(torch.tensor([-1], device=device), [3] * 8)
    codes = fsq_indices_to_codes(idx, [3] * 8, validate=False)
    assert torch.isnan(codes[1]).all() and not torch.isnan(codes[[0, 2]]).any()


def test_nan_input(device):
    z = random_z((10, 4), torch.float32, device)
    z[3, 2] = math.nan
    with pytest.raises(ValueError, match="flashstream.fsq: z contains NaN"):
        fsq(z, [8, 5, 5, 5])
    codes, indices = fsq(z, [8, 5, 5, 5], validate=False)
    assert indices[3].item() == -1 and torch.isnan(codes[3, 2])
    assert (indices[torch.arange(10, device=device) != 3] >= 0).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_straight_through_gradient(device, dtype):
    levels = [8, 5, 5, 5]
    z = random_z((257, 4), dtype, device, scale=1.0)
    z[:2] = 0.5  # keep the gradient finite: no infinities here
    z.requires_grad_(True)
    codes, indices = fsq(z, levels)
    assert not indices.requires_grad
    g = torch.randn(codes.shape, dtype=dtype, device=device)
    (grad,) = torch.autograd.grad(codes, z, g)
    expected = fsq_grad_reference(g, z.detach(), levels)
    tol = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(grad.cpu().double(), expected, rtol=tol, atol=tol)


def test_gradient_through_non_contiguous_grad(device):
    z = torch.randn(64, 4, device=device, requires_grad=True)
    codes, _ = fsq(z, [8, 5, 5, 5])
    codes.sum().backward()  # the incoming gradient is an expanded (stride-0) tensor
    torch.testing.assert_close(z.grad.cpu().double(), fsq_grad_reference(torch.ones(64, 4), z.detach(), [8, 5, 5, 5]))


def test_opcheck(device):
    z = torch.randn(33, 4, device=device)
    levels = [8, 5, 5, 5]
    torch.library.opcheck(torch.ops.flashstream.fsq.default, (z, levels, 1e-3, True))
    torch.library.opcheck(torch.ops.flashstream.fsq.default, (z.clone().requires_grad_(), levels, 1e-3, False))
    torch.library.opcheck(torch.ops.flashstream.fsq_backward.default, (torch.randn_like(z), z, levels, 1e-3))
    idx = torch.randint(0, 1000, (5, 7), device=device)
    torch.library.opcheck(torch.ops.flashstream.fsq_indices_to_codes.default, (idx, levels, torch.bfloat16, True))


def test_torch_compile_fullgraph(device):
    levels = [8, 5, 5, 5]

    def roundtrip(x):
        codes, indices = fsq(x * 2.0, levels)
        return codes + 1.0, fsq_indices_to_codes(indices, levels)

    compiled = torch.compile(roundtrip, fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor")
    x = torch.randn(3, 17, 4, device=device)
    for got, want in zip(compiled(x), roundtrip(x)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)

    xg = x.clone().requires_grad_()
    compiled(xg)[0].sum().backward()
    xe = x.clone().requires_grad_()
    roundtrip(xe)[0].sum().backward()
    torch.testing.assert_close(xg.grad, xe.grad)


def test_torch_compile_dynamic_shapes(device):
    compiled = torch.compile(lambda x: fsq(x, [3] * 8)[1], fullgraph=True, dynamic=True, backend="aot_eager")
    for n in (5, 9, 130):
        x = torch.randn(n, 8, device=device)
        assert torch.equal(compiled(x), fsq(x, [3] * 8)[1])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_out_variant_writes_in_place(device, dtype):
    levels = [8, 5, 5, 5]
    codes = torch.empty(3, 50, 4, dtype=dtype, device=device)
    indices = torch.empty(3, 50, dtype=torch.int64, device=device)
    ptrs = (codes.data_ptr(), indices.data_ptr())
    for _ in range(3):  # a streaming loop reuses the same buffers
        z = random_z((3, 50, 4), dtype, device)
        got = fsq(z, levels, out=(codes, indices))
        assert got[0] is codes and got[1] is indices and (codes.data_ptr(), indices.data_ptr()) == ptrs
        want_codes, want_indices = fsq(z, levels)
        assert torch.equal(codes, want_codes) and torch.equal(indices, want_indices)
    torch.library.opcheck(torch.ops.flashstream.fsq_out.default, (z, levels, 1e-3, True, codes, indices))


def test_out_variant_under_compile(device):
    levels = [3] * 8

    def step(x, codes, indices):
        fsq(x, levels, out=(codes, indices))
        return codes.sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x = torch.randn(16, 8, device=device)
    codes, indices = torch.empty_like(x), torch.empty(16, dtype=torch.int64, device=device)
    compiled(x, codes, indices)
    want_codes, want_indices = fsq(x, levels)
    assert torch.equal(codes, want_codes) and torch.equal(indices, want_indices)


def test_out_variant_rejects(device):
    z = torch.randn(5, 4, device=device)
    good_codes, good_idx = torch.empty_like(z), torch.empty(5, dtype=torch.int64, device=device)
    with pytest.raises(ValueError, match=r"flashstream.fsq_out: indices must be z.shape\[:-1\] = \[5\], got \[4\]"):
        fsq(z, [8, 5, 5, 5], out=(good_codes, torch.empty(4, dtype=torch.int64, device=device)))
    with pytest.raises(TypeError, match="flashstream.fsq_out: codes must be Float, got Half"):
        fsq(z, [8, 5, 5, 5], out=(torch.empty(5, 4, dtype=torch.half, device=device), good_idx))
    with pytest.raises(ValueError, match="flashstream.fsq_out: codes and indices must not overlap z"):
        fsq(z, [8, 5, 5, 5], out=(z, good_idx))
    with pytest.raises(ValueError, match="flashstream.fsq_out: codes must be contiguous"):
        fsq(z, [8, 5, 5, 5], out=(torch.empty(4, 5, device=device).t(), good_idx))


# ---- bad inputs: clear exceptions naming the op and the argument --------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.int32, torch.int64])
def test_rejects_dtype(device, dtype):
    z = torch.zeros(3, 4, dtype=dtype, device=device)
    with pytest.raises(TypeError, match="flashstream.fsq: z must be float32, float16 or bfloat16, got"):
        fsq(z, [8, 5, 5, 5])


def test_rejects_bad_shapes(device):
    with pytest.raises(ValueError, match=r"flashstream.fsq: z must be \[..., len\(levels\)\] = \[..., 4\], got \[3, 5\]"):
        fsq(torch.zeros(3, 5, device=device), [8, 5, 5, 5])
    with pytest.raises(ValueError, match="0-dim"):
        fsq(torch.tensor(1.0, device=device), [8])
    with pytest.raises(ValueError, match="flashstream.fsq: z must be contiguous"):
        fsq(torch.zeros(3, 4, device=device).t(), [8, 5, 5])
    with pytest.raises(ValueError, match="flashstream.fsq: z must be contiguous"):
        fsq(torch.zeros(6, 8, device=device)[:, :4], [8, 5, 5, 5])


@pytest.mark.parametrize("levels,message", [
    ([], "levels must not be empty"),
    ([8, 1, 5], r"every level must be >= 2 \(levels\[1\] = 1\)"),
    ([8, 2**24 + 1], r"every level must be <= 2\^24"),
    ([2**20] * 4, "product of levels must fit in int64"),
    ([2] * 33, "at most 32 levels"),
])
def test_rejects_bad_levels(device, levels, message):
    z = torch.zeros(2, max(len(levels), 1), device=device)
    with pytest.raises(ValueError, match=f"flashstream.fsq: levels .*{message}"):
        fsq(z, levels)


def test_rejects_bad_levels_types():
    with pytest.raises(TypeError, match=r"flashstream.fsq: levels\[1\] must be an int, got float"):
        fsq(torch.zeros(2, 2), [3, 2.5])
    with pytest.raises(TypeError, match="flashstream.fsq: levels must be a sequence of ints"):
        fsq(torch.zeros(2, 2), 3)
    codes, _ = fsq(torch.zeros(2, 2), torch.tensor([3, 5]))  # a 1-D integer tensor is fine
    assert codes.shape == (2, 2)


@pytest.mark.parametrize("eps", [-0.1, 1.0, 2.0])
def test_rejects_bad_eps(eps):
    with pytest.raises(ValueError, match=r"flashstream.fsq: eps must be in \[0, 1\)"):
        fsq(torch.zeros(2, 2), [3, 3], eps=eps)


def test_indices_to_codes_rejects(device):
    with pytest.raises(TypeError, match="flashstream.fsq_indices_to_codes: indices must be Long"):
        fsq_indices_to_codes(torch.zeros(3, dtype=torch.int32, device=device), [3, 3])
    with pytest.raises(TypeError, match="flashstream.fsq_indices_to_codes: dtype must be float32, float16 or bfloat16"):
        fsq_indices_to_codes(torch.zeros(3, dtype=torch.int64, device=device), [3, 3], torch.float64)
    with pytest.raises(ValueError, match="flashstream.fsq_indices_to_codes: indices must be contiguous"):
        fsq_indices_to_codes(torch.zeros(4, 4, dtype=torch.int64, device=device).t(), [3, 3])


def test_backward_op_rejects_mismatched_grad(device):
    z = torch.randn(5, 4, device=device)
    with pytest.raises(ValueError, match=r"flashstream.fsq_backward: grad_codes must be z.shape = \[5, 4\], got \[5, 3\]"):
        torch.ops.flashstream.fsq_backward(torch.zeros(5, 3, device=device), z, [8, 5, 5, 5])
    with pytest.raises(TypeError, match="flashstream.fsq_backward: grad_codes must be Float, got Half"):
        torch.ops.flashstream.fsq_backward(torch.zeros(5, 4, device=device, dtype=torch.half), z, [8, 5, 5, 5])


# ---- shape fuzzing --------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lead=st.lists(st.integers(0, 9), min_size=0, max_size=3),
    levels=st.lists(st.integers(2, 17), min_size=1, max_size=10),
    dtype=st.sampled_from(DTYPES),
    scale=st.sampled_from([0.1, 1.0, 4.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_fuzz_shapes(lead, levels, dtype, scale, seed):
    torch.manual_seed(seed)
    z = (torch.randn(*lead, len(levels), dtype=torch.float64) * scale).to(dtype)
    codes, indices = fsq(z, levels)
    assert codes.shape == z.shape and indices.shape == z.shape[:-1]
    if z.numel() == 0:
        return
    ref_codes, ref_indices, bounded = fsq_reference(z, levels)
    ok = ~near_tie(bounded, levels)
    assert torch.equal(indices[ok], ref_indices[ok])
    assert torch.equal(codes[ok], ref_codes.to(dtype)[ok])
    assert torch.equal(fsq_indices_to_codes(indices[ok], levels, dtype), codes[ok])


# ---- CUDA only ------------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_cuda_matches_cpu_kernels():
    for levels in ([3] * 8, [8, 5, 5, 5], [2, 3, 4, 5, 6, 7, 8, 9, 10]):
        for dtype in DTYPES:
            z = random_z((1 << 16, len(levels)), dtype, "cpu")
            c_cpu, i_cpu = fsq(z, levels)
            c_gpu, i_gpu = fsq(z.cuda(), levels)
            # tanh differs in the last ulp between the two; at most a near-tie can round differently
            assert (i_gpu.cpu() != i_cpu).float().mean() < 1e-4


@cuda
def test_cuda_unaligned_view_uses_runtime_path():
    base = torch.randn(1001 * 4 + 1, device="cuda")
    z = base[1:].view(1001, 4)  # 4-byte offset: not 16-byte aligned
    codes, indices = fsq(z, [8, 5, 5, 5])
    check_against_reference(z, [8, 5, 5, 5], codes, indices)


@cuda
def test_cuda_graph_capture():
    levels = [8, 5, 5, 5]
    z = torch.randn(4096, 4, device="cuda")
    fsq(z, levels)  # warm up outside the capture
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph):
        codes, indices = fsq(z, levels)  # validate=True: the readback is skipped while capturing
    for _ in range(3):
        z.copy_(torch.randn_like(z))
        graph.replay()
        torch.cuda.synchronize()
        want_codes, want_indices = fsq(z, levels)
        assert torch.equal(indices, want_indices) and torch.equal(codes, want_codes)


@cuda
def test_cuda_rejects_mixed_devices():
    z = torch.randn(5, 4, device="cuda")
    with pytest.raises(ValueError, match="flashstream.fsq_backward: grad_codes must be on the same device as z"):
        torch.ops.flashstream.fsq_backward(torch.zeros(5, 4), z, [8, 5, 5, 5])


@cuda
def test_cuda_on_current_stream():
    z = torch.randn(1 << 18, 8, device="cuda")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        codes, indices = fsq(z, [3] * 8, validate=False)
    s.synchronize()
    want_codes, want_indices = fsq(z, [3] * 8)
    assert torch.equal(indices, want_indices)
