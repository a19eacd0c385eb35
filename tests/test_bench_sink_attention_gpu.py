"""The GPU sink-attention bench's --dry-run: every case's inputs (the paged cache handed to
FlashInfer, the sink+window mask handed to FlexAttention, the two-cache split of mixed heads) are
built at tiny sizes on CPU and checked against the fp32 reference, so the bench cannot rot
between GPU sessions."""

import importlib.util
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_sink_attention_gpu.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_sink_attention_gpu", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_dry_run_passes(bench, capsys):
    assert bench.main(["--dry-run"]) == 0
    assert "CHECK FAILED" not in capsys.readouterr().out


def test_checks_catch_a_wrong_case(bench, monkeypatch):
    # One token of history off: flashstream must then disagree with the (wrong) reference.
    visible = bench.decode_visible
    monkeypatch.setattr(bench, "decode_visible", lambda h, n, m, new, W: visible(h, n, m + 1, new, W))
    rec = bench.decode_case(2, 20, "cpu", None)
    assert not bench.fs_checks_ok(rec)
    # A window one token too wide in the FlexAttention mask: the peer's check fails, flashstream's pass.
    mask_mod = bench.sink_window_mask_mod
    monkeypatch.setattr(bench, "sink_window_mask_mod", lambda W: mask_mod(W + 1))
    rec = bench.prefill_case(30, 20, "cpu")
    assert bench.fs_checks_ok(rec) and not rec["flex_vs_ref"]["ok"]


def test_flashinfer_page_layout(bench):
    # Only the last page of a stream is partial; indptr/indices/last_page_len describe every token.
    keys = torch.randn(3, 2 * bench.PAGE + 5, bench.HKV, bench.D).to(bench.DTYPE)
    kc, vc, indptr, indices, last = bench.paged_rank_order(keys, keys)
    assert indptr.tolist() == [0, 3, 6, 9] and last.tolist() == [5, 5, 5]
    pages = indices[indptr[1]:indptr[2]].long()
    assert torch.equal(kc[pages].reshape(-1, bench.HKV, bench.D)[: keys.shape[1]], keys[1])


class _FakeFlashInferDecode:
    """Stands in for flashinfer.BatchDecodeWithPagedKVCacheWrapper on CPU: the keyword arguments
    the bench passes (checked against flashinfer 0.6.18.post1's signatures when this was written)
    and ROPE_LLAMA decode computed by the bench's emulation."""

    def __init__(self, bench, ws, layout, *, use_cuda_graph, use_tensor_cores, paged_kv_indptr_buffer,
                 paged_kv_indices_buffer, paged_kv_last_page_len_buffer):
        assert layout == "NHD" and use_cuda_graph and ws.dtype == torch.uint8
        self.bench = bench

    def plan(self, indptr, indices, last, num_qo_heads, num_kv_heads, head_dim, page_size, *, pos_encoding_mode,
             q_data_type, kv_data_type, rope_theta, sm_scale):
        b = self.bench
        assert (num_qo_heads, num_kv_heads, head_dim, page_size) == (b.HQ, b.HKV, b.D, b.PAGE)
        assert pos_encoding_mode == "ROPE_LLAMA" and rope_theta == b.THETA and q_data_type == kv_data_type == b.DTYPE
        self.table = (indptr, indices, last)

    def run(self, q, cache, out):
        rows = [self.bench.flashinfer_emulated(q, *cache, *self.table, s) for s in range(q.shape[0])]
        out.copy_(torch.stack(rows))
        return out


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_gpu_branches_with_stand_ins(bench, monkeypatch):
    # The parts that only run on a GPU (FlashInfer, compiled Flex, graphs, timing, bandwidth ratios),
    # driven on CPU with stand-ins: eager flex_attention, an emulated FlashInfer, fixed times.
    import sys
    import types

    fake = types.ModuleType("flashinfer")
    fake.__version__ = "stand-in"
    fake.BatchDecodeWithPagedKVCacheWrapper = lambda *a, **kw: _FakeFlashInferDecode(bench, *a, **kw)
    monkeypatch.setitem(sys.modules, "flashinfer", fake)
    monkeypatch.setattr(bench, "on_cuda", lambda device: True)
    monkeypatch.setattr(bench, "graphed", lambda fn, device: fn)
    monkeypatch.setattr(bench, "timed", lambda fn, device: (fn(), 1e-4)[1])
    monkeypatch.setattr(bench.harness, "copy_bandwidth", lambda nbytes, device: 2e12)
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)

    rec = bench.decode_case(2, 20, "cpu", 3e12, flashinfer_tensor_cores=True)
    assert not any(k.endswith("_error") for k in rec), rec
    assert rec["flashinfer_vs_ref"]["ok"] and rec["flashinfer_vs_fs"]["ok"] and rec["flashinfer_tc_vs_fs"]["ok"]
    assert rec["speedup_vs_flashinfer"] == 1.0 and rec["frac_copy"] > 0 and bench.fs_checks_ok(rec)
    rec = bench.prefill_case(30, 20, "cpu")
    assert "flex_error" not in rec, rec.get("flex_error")
    assert rec["flex_vs_ref"]["ok"] and rec["flex_vs_fs_absolute"]["ok"] and rec["speedup_vs_flex"] == 1.0
    rec = bench.mixed_case(2, 64, 20, "cpu")
    assert rec["speedup_vs_two_launches"] == 1.0 and bench.fs_checks_ok(rec)


def test_a_peer_that_never_ran_is_not_retried(bench, monkeypatch):
    monkeypatch.setattr(bench, "_broken_peers", {})
    monkeypatch.setattr(bench, "_working_peers", set())
    calls = []

    def jit_fails():
        calls.append(1)
        raise RuntimeError("Ninja build failed")

    recs = [{}, {}]
    for rec in recs:
        bench.try_peer(rec, "flashinfer", jit_fails, sticky=True)
    assert len(calls) == 1 and "Ninja build failed" in recs[0]["flashinfer_error"]
    assert recs[1]["flashinfer_error"].startswith("not run: failed in an earlier case")
    # after a success, a later failure (one case out of memory) does not stop the next cases
    bench.try_peer({}, "flex", lambda: None, sticky=True)
    bench.try_peer({}, "flex", jit_fails, sticky=True)
    bench.try_peer({}, "flex", jit_fails, sticky=True)
    assert len(calls) == 3
