"""The Llama decoder over SinkCache: against the fp64 reference on tiny random weights (any
chunking), and on SmolLM2 against transformers loading the same GGUF (skipped when absent)."""

import importlib.util
import random

import pytest
import torch

from flashstream.data import smollm2
from flashstream.models.llm import LlamaConfig, LlamaDecoder
from references.llama import reference_logits

TINY = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=6,
                   num_kv_heads=2, head_dim=16, rope_theta=1e4)


def tiny_model(seed=0, cfg=TINY):
    torch.manual_seed(seed)
    model = LlamaDecoder(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    return model


def run_chunks(model, cache, ids, chunks):
    outs, n = [], 0
    with torch.no_grad():
        for T in chunks:
            outs.append(model(ids[:, n:n + T], cache))
            n += T
    return torch.cat(outs, 1)


def random_chunks(rng, S):
    out = []
    while sum(out) < S:
        out.append(min(rng.choice([1, 2, 3, 7, 16, 33]), S - sum(out)))
    return out


@pytest.mark.parametrize("positions", ["absolute", "cache"])
@pytest.mark.parametrize("seed", [0, 1])
def test_full_cache_equals_reference_any_chunking(positions, seed):
    model = tiny_model(seed)
    ids = torch.randint(0, TINY.vocab_size, (2, 40))
    ref = reference_logits(model, ids, positions=positions)
    cache = model.new_cache(2, window=None, positions=positions, max_tokens=40, page_size=8)
    got = run_chunks(model, cache, ids, random_chunks(random.Random(seed), 40))
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("positions", ["absolute", "cache"])
def test_sink_window_equals_reference(positions):
    model = tiny_model(3)
    ids = torch.randint(0, TINY.vocab_size, (1, 48))
    ref = reference_logits(model, ids, sink=3, window=10, positions=positions)
    cache = model.new_cache(sink=3, window=10, positions=positions, page_size=4)
    got = run_chunks(model, cache, ids, random_chunks(random.Random(7), 48))
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-4)
    # Eviction really changed the result (the test would not notice a cache that keeps everything).
    assert (ref - reference_logits(model, ids, positions=positions)).abs().max() > 1e-2


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None or importlib.util.find_spec("accelerate") is None,
                    reason="transformers and accelerate (the independent GGUF loader) not installed")
def test_smollm2_logits_match_transformers(smollm2_model):
    from transformers import AutoModelForCausalLM
    model, tok = smollm2_model
    text = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
            "must be in want of a wife. ") * 8
    ids = torch.tensor([tok.encode(text, add_bos=True)[:128]])
    assert ids.shape[1] == 128
    path = smollm2.smollm2_gguf_path()
    ref_model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    with torch.no_grad():
        ref = ref_model(ids).logits
    del ref_model
    cache = model.new_cache(window=None, positions="absolute", max_tokens=128)
    full = run_chunks(model, cache, ids, [128])
    assert (full - ref).abs().max().item() < 1e-3
    cache.reset()
    chunked = run_chunks(model, cache, ids, [1, 5, 64, 31, 27])
    assert (chunked - ref).abs().max().item() < 1e-3


def test_overflowing_chunk_raises_before_any_layer_writes():
    # Full-head cache of 20 tokens: a chunk that would overflow must leave every layer untouched
    # (the last layer's step would be the first to notice on its own).
    model = tiny_model(5)
    cache = model.new_cache(1, window=None, max_tokens=20, dtype=torch.float32)
    ids = torch.randint(0, model.config.vocab_size, (1, 30))
    model(ids[:, :15], cache)
    before = [t.clone() for t in (*cache.k_pool, *cache.v_pool, cache.layer_lengths)]
    with pytest.raises(ValueError, match="pool exhausted"):
        model(ids[:, 15:25], cache)
    after = [*cache.k_pool, *cache.v_pool, cache.layer_lengths]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    model(ids[:, 15:20], cache)  # exactly max_tokens: fine
    assert cache.layer_lengths.tolist() == [[20]] * model.config.num_layers
