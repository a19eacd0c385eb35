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
