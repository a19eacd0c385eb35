"""flashstream.nn streaming convolutions: any chunking equals the offline conv (shifted by delay)."""

import copy
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flashstream.nn import AlignBranches, Delay, StreamingConv1d, StreamingConvTranspose1d, StreamingSequential


def chunks(T, rng, kind):
    sizes = []
    while sum(sizes) < T:
        n = {"ones": 1, "primes": rng.choice([2, 3, 5, 7, 11, 13]),
             "random": rng.choice([0, 1, 2, rng.randint(1, 30), rng.randint(30, 120)])}[kind]
        sizes.append(min(n, T - sum(sizes)))
    return sizes


def stream(module, x, sizes):
    outs, t = [], 0
    with torch.no_grad():
        for n in sizes:
            outs.append(module(x[:, :, t:t + n]))
            t += n
    return torch.cat(outs, dim=-1)


def offline(module, x):
    with torch.no_grad():
        return copy.deepcopy(module).double()(x.double())


def assert_rel_close(got, want, tol=1e-6):
    assert got.shape == want.shape, (got.shape, want.shape)
    if want.numel():
        err = (got.double() - want).abs().max().item() / max(want.abs().max().item(), 1e-30)
        assert err <= tol, f"relative error {err:.3g} > {tol:.3g}"


def rand_conv(rng, c_in_max=12):
    groups = rng.choice([1, 2, 3, "depthwise"])
    base = rng.randint(1, 4)
    if groups == "depthwise":
        c_in = c_out = rng.randint(1, c_in_max)
        groups = c_in
    else:
        c_in, c_out = base * groups, rng.randint(1, 3) * groups
    k, dil, s = rng.randint(1, 64), rng.randint(1, 8), rng.randint(1, 5)
    return nn.Conv1d(c_in, c_out, k, stride=s, dilation=dil, groups=groups, padding=rng.randint(0, (k - 1) * dil // 2 + 1))


@pytest.mark.parametrize("seed", range(24))
@pytest.mark.parametrize("kind", ["ones", "primes", "random"])
def test_causal_mode_equals_offline_causal_conv(seed, kind):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    conv = rand_conv(rng)
    N = rng.randint(1, 150) if kind != "ones" else rng.randint(1, 60)
    x = torch.randn(2, conv.in_channels, N)
    m = StreamingConv1d(conv, "causal", batch_size=2)
    y = stream(m, x, chunks(N, rng, kind))
    k_eff = conv.dilation[0] * (conv.kernel_size[0] - 1) + 1
    ref = F.conv1d(F.pad(x.double(), (k_eff - 1, 0)), conv.weight.double(), conv.bias.double(),
                   stride=conv.stride, dilation=conv.dilation, groups=conv.groups)
    assert m.delay == 0
    assert_rel_close(y, ref)


@pytest.mark.parametrize("seed", range(24))
def test_centered_mode_equals_offline_shifted(seed):
    rng = random.Random(100 + seed)
    torch.manual_seed(seed)
    conv = rand_conv(rng)
    N = conv.dilation[0] * (conv.kernel_size[0] - 1) + rng.randint(1, 300)
    x = torch.randn(3, conv.in_channels, N)
    m = StreamingConv1d(conv, "centered", batch_size=3)
    # the tail of the input is flushed with zeros, as the offline conv's right padding
    flush = m.delay * conv.stride[0] + conv.stride[0]
    xz = F.pad(x, (0, flush))
    y = stream(m, xz, chunks(N + flush, rng, "random"))
    ref = offline(conv, x)
    assert torch.all(y[:, :, :m.delay] == 0)
    got = y[:, :, m.delay:m.delay + ref.shape[-1]]
    assert got.shape[-1] == ref.shape[-1], "the flush should complete every offline output"
    assert_rel_close(got, ref)


@pytest.mark.parametrize("k,dil", [(1, 1), (3, 1), (4, 2), (31, 1), (64, 8)])
@pytest.mark.parametrize("mode", ["causal", "centered"])
def test_depthwise_uses_the_kernel(k, dil, mode):
    conv = nn.Conv1d(16, 16, k, dilation=dil, groups=16, padding=(k - 1) * dil // 2 if k % 2 else 0)
    m = StreamingConv1d(conv, mode, batch_size=2)
    assert m.fused == (mode == "causal" or k % 2 == 1)
    x = torch.randn(2, 16, 700)
    y = stream(m, x, chunks(700, random.Random(k), "random"))
    if mode == "causal":
        ref = F.conv1d(F.pad(x.double(), ((k - 1) * dil, 0)), conv.weight.double(), conv.bias.double(),
                       dilation=dil, groups=16)
    else:
        ref = offline(conv, x)
    n = min(ref.shape[-1], y.shape[-1] - m.delay)
    assert n >= 100
    assert_rel_close(y[:, :, m.delay:m.delay + n], ref[:, :, :n])


def test_fused_and_generic_paths_agree():
    conv = nn.Conv1d(8, 8, 5, dilation=3, groups=8)
    fused = StreamingConv1d(conv, batch_size=2)
    generic = StreamingConv1d(conv, batch_size=2)
    generic.fused = False
    x = torch.randn(2, 8, 90)
    sizes = chunks(90, random.Random(3), "random")
    assert fused.fused
    torch.testing.assert_close(stream(fused, x, sizes), stream(generic, x, sizes), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fused.state, generic.state, rtol=0, atol=0)


def test_leftover_inputs_wait_in_the_state():
    conv = nn.Conv1d(3, 4, 4, stride=3)
    m = StreamingConv1d(conv, "causal")
    with torch.no_grad():
        counts = [m(torch.randn(1, 3, t)).shape[-1] for t in (1, 1, 1, 2, 0, 5, 3)]
    # causal outputs end at inputs 0, 3, 6, 9, 12: after 1, 2, 3, 5, 5, 10, 13 inputs
    assert counts == [1, 0, 0, 1, 0, 2, 1]


def test_reset_and_bf16():
    conv = nn.Conv1d(8, 8, 7, groups=8, padding=3).to(torch.bfloat16)
    m = StreamingConv1d(conv, "centered", batch_size=2)
    x = torch.randn(2, 8, 64, dtype=torch.bfloat16)
    a = stream(m, x, [5] * 12 + [4])
    m.reset()
    b = stream(m, x, [1] * 64)
    assert torch.equal(a, b)
    assert_rel_close(a[:, :, m.delay:], offline(conv, x.float())[:, :, :64 - m.delay], 1.6e-2)


def test_rejects_bad_input():
    m = StreamingConv1d(nn.Conv1d(4, 4, 3), batch_size=2)
    with pytest.raises(ValueError, match=r"flashstream.StreamingConv1d: x must be \[batch_size, C_in, T\] = \[2, 4, T\], got \[1, 4, 5\]"):
        m(torch.randn(1, 4, 5))
    with pytest.raises(ValueError, match="padding_mode='zeros'"):
        StreamingConv1d(nn.Conv1d(4, 4, 3, padding=1, padding_mode="reflect"), "centered")
    with pytest.raises(ValueError, match="mode must be 'causal' or 'centered'"):
        StreamingConv1d(nn.Conv1d(4, 4, 3), "anticausal")


# ---- transposed ----------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(30))
def test_conv_transpose_equals_offline_shifted(seed):
    rng = random.Random(200 + seed)
    torch.manual_seed(seed)
    groups = rng.choice([1, 2])
    k, s, dil = rng.randint(1, 16), rng.randint(1, 5), rng.randint(1, 3)
    pad = rng.randint(0, max(0, (k - 1) * dil // 2))
    out_pad = rng.randint(0, max(0, min(s, dil) - 1))
    conv = nn.ConvTranspose1d(2 * groups, 3 * groups, k, stride=s, padding=pad, output_padding=out_pad,
                              dilation=dil, groups=groups)
    N = rng.randint(1, 80)
    x = torch.randn(2, conv.in_channels, N)
    m = StreamingConvTranspose1d(conv, batch_size=2)
    assert m.state.shape == (2, conv.out_channels, max((k - 1) * dil + 1 - s, 0))
    y = stream(m, x, chunks(N, rng, rng.choice(["ones", "primes", "random"])))
    assert y.shape[-1] == N * s
    ref = offline(conv, x)
    n = min(ref.shape[-1], N * s - m.delay)  # frames both have
    assert torch.all(y[:, :, :m.delay] == 0)
    assert_rel_close(y[:, :, m.delay:m.delay + n], ref[:, :, :n])


# ---- composition -----------------------------------------------------------------------------------

def settled(net, x, extra=37):
    """Offline outputs that no right-edge padding can reach: those unchanged when x goes on."""
    a = offline(net, x)
    b = offline(net, torch.cat([x, torch.randn(*x.shape[:2], extra)], -1))[:, :, :a.shape[-1]]
    same = ((a - b).abs() <= 1e-9 * a.abs().max()).all(dim=1).all(dim=0)
    n = int(same.long().cumprod(0).sum())
    assert n > 10, "the test signal is too short for this network"
    return a[:, :, :n]


@pytest.mark.parametrize("seed", range(6))
def test_sequential_stack_equals_offline(seed):
    rng = random.Random(300 + seed)
    torch.manual_seed(seed)
    layers = [nn.Conv1d(4, 8, 7, padding=3), nn.ELU(), nn.Conv1d(8, 8, 4, stride=2, padding=1),
              nn.Conv1d(8, 8, 3, dilation=3, padding=3, groups=8), nn.ConvTranspose1d(8, 6, 4, stride=2, padding=1),
              nn.Conv1d(6, 5, 5, stride=rng.choice([1, 3]), padding=2)]
    net = nn.Sequential(*layers)
    s = StreamingSequential(*copy.deepcopy(layers), mode="centered", batch_size=2)
    x = torch.randn(2, 4, 400)
    ref = settled(net, x)
    y = stream(s, x, chunks(400, rng, "random"))
    assert torch.all(y[:, :, :s.delay] == 0)
    n = min(ref.shape[-1], y.shape[-1] - s.delay)
    assert n > 10
    assert_rel_close(y[:, :, s.delay:s.delay + n], ref[:, :, :n], 1e-5)
    s.reset()
    y2 = stream(s, x, [1] * 400)
    assert_rel_close(y2, y.double(), 1e-6)


class Residual(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, x):
        return x + self.block(x)


def test_align_branches_residual():
    torch.manual_seed(0)
    block = [nn.Conv1d(6, 6, 5, padding=2), nn.Tanh(), nn.Conv1d(6, 6, 3, dilation=2, padding=2, groups=3)]
    net = Residual(nn.Sequential(*block))
    branch = StreamingSequential(*copy.deepcopy(block), mode="centered")
    align = AlignBranches(branch, nn.Identity(), channels=6)
    assert align.delay == branch.delay == 4 and align.branch_delays == [4, 0]
    x = torch.randn(1, 6, 200)
    outs, t = [], 0
    with torch.no_grad():
        for n in chunks(200, random.Random(1), "random"):
            a, b = align(x[:, :, t:t + n])
            outs.append(a + b)
            t += n
    y = torch.cat(outs, -1)
    ref = settled(net, x)
    n = min(ref.shape[-1], 200 - align.delay)
    assert_rel_close(y[:, :, align.delay:align.delay + n], ref[:, :, :n], 1e-5)


def test_delay_line():
    d = Delay(5, 3, batch_size=2)
    x = torch.randn(2, 3, 40)
    y = stream(d, x, chunks(40, random.Random(2), "random"))
    assert torch.equal(y[:, :, 5:], x[:, :, :35]) and torch.all(y[:, :, :5] == 0)


def test_sequential_rejects_mismatched_prebuilt_module():
    pre = StreamingConv1d(nn.Conv1d(4, 4, 3, stride=2, padding=1), "centered", input_delay=0)
    with pytest.raises(ValueError, match="was built for input_delay=0, but its input lags by 1 frames"):
        StreamingSequential(nn.Conv1d(4, 4, 3, padding=1), pre, mode="centered")


# ---- CUDA graphs --------------------------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_step():
    conv = nn.Conv1d(64, 64, 4, groups=64).cuda()
    m = StreamingConv1d(conv, batch_size=4)
    x = torch.zeros(4, 64, 16, device="cuda")
    with torch.no_grad():
        m(x)
        m.reset()
        stream_ = torch.cuda.Stream()
        stream_.wait_stream(torch.cuda.current_stream())
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(stream_), torch.cuda.graph(graph):
            y = m(x)
    data = torch.randn(4, 64, 16 * 6, device="cuda")
    outs = []
    for i in range(6):
        x.copy_(data[:, :, 16 * i:16 * (i + 1)])
        graph.replay()
        outs.append(y.clone())
    ref = F.conv1d(F.pad(data, (3, 0)), conv.weight, conv.bias, groups=64)
    torch.testing.assert_close(torch.cat(outs, -1), ref, rtol=1e-5, atol=1e-5)


def test_align_branches_of_different_delays():
    torch.manual_seed(1)
    a_layers = [nn.Conv1d(4, 5, 9, padding=4), nn.ReLU(), nn.Conv1d(5, 5, 5, dilation=2, padding=4)]
    b_layers = [nn.Conv1d(4, 5, 3, padding=1)]
    a = StreamingSequential(*copy.deepcopy(a_layers), mode="centered", batch_size=2)
    b = StreamingSequential(*copy.deepcopy(b_layers), mode="centered", batch_size=2)
    align = AlignBranches(a, b, channels=5, batch_size=2)
    assert (a.delay, b.delay, align.delay) == (8, 1, 8)
    x = torch.randn(2, 4, 300)
    ya, yb, t = [], [], 0
    with torch.no_grad():
        for n in chunks(300, random.Random(5), "primes"):
            oa, ob = align(x[:, :, t:t + n])
            ya.append(oa)
            yb.append(ob)
            t += n
    ref_a, ref_b = settled(nn.Sequential(*a_layers), x), settled(nn.Sequential(*b_layers), x)
    for y, ref in ((torch.cat(ya, -1), ref_a), (torch.cat(yb, -1), ref_b)):
        n = min(ref.shape[-1], 300 - align.delay)
        assert_rel_close(y[:, :, align.delay:align.delay + n], ref[:, :, :n], 1e-5)


def test_channel_last_chunks_and_grad_mode():
    conv = nn.Conv1d(32, 32, 4, groups=32)
    m = StreamingConv1d(conv, batch_size=2)
    x = torch.randn(2, 100, 32).transpose(1, 2)  # [B, C, T] view of a [B, T, C] tensor
    y = stream(m, x, chunks(100, random.Random(9), "random"))
    ref = F.conv1d(F.pad(x.double(), (3, 0)), conv.weight.double(), conv.bias.double(), groups=32)
    assert_rel_close(y, ref)
    with pytest.raises(RuntimeError, match="inference only"):
        m(x[:, :, :4])  # grad mode with parameters that require grad: the kernel has no backward


def test_conv_transpose_reset():
    conv = nn.ConvTranspose1d(3, 2, 6, stride=2, padding=2)
    m = StreamingConvTranspose1d(conv)
    x = torch.randn(1, 3, 40)
    a = stream(m, x, [7] * 5 + [5])
    m.reset()
    assert torch.equal(stream(m, x, [7] * 5 + [5]), a)  # reset: the same run again, bit for bit
    m.reset()
    assert_rel_close(stream(m, x, [1] * 40), a.double())  # overlap-add order differs: rounding only
