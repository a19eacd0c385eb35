"""DuoAttention: all-full equals the dense model, all-streaming equals sinks + window, KV bytes are
linear in the full-head share, and gate training recovers planted retrieval heads."""

import pytest
import torch

from flashstream.models.llm import LlamaConfig, LlamaDecoder
from flashstream.models.llm.duo_attention import DuoAttention, gated_hidden, identify_retrieval_heads
from references.llama import reference_logits
from test_llama import TINY, run_chunks, tiny_model


def test_all_heads_full_equals_dense_model():
    model = tiny_model(0)
    ids = torch.randint(0, TINY.vocab_size, (2, 40))
    duo = DuoAttention(model, torch.ones(2, 2, dtype=torch.bool), sink=2, window=5, max_tokens=40, batch_size=2)
    got = run_chunks(model, duo.cache, ids, [7, 1, 13, 19])
    torch.testing.assert_close(got.double(), reference_logits(model, ids), rtol=1e-4, atol=1e-4)


def test_mixed_heads_equal_reference_and_all_streaming_equals_sink_window():
    model = tiny_model(1)
    ids = torch.randint(0, TINY.vocab_size, (1, 36))
    mixed = torch.tensor([[True, False], [False, False]])
    duo = DuoAttention(model, mixed, sink=2, window=5, max_tokens=36)
    got = run_chunks(model, duo.cache, ids, [5, 11, 1, 19])
    ref = reference_logits(model, ids, sink=2, window=5, full_heads=mixed)
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-4)
    none = DuoAttention(model, torch.zeros(2, 2, dtype=torch.bool), sink=2, window=5, max_tokens=36)
    torch.testing.assert_close(run_chunks(model, none.cache, ids, [36]).double(),
                               reference_logits(model, ids, sink=2, window=5), rtol=1e-4, atol=1e-4)


def test_kv_pool_bytes_linear_in_full_head_share():
    model, max_tokens, sink, window = tiny_model(0), 256, 4, 12
    per_slot = 2 * TINY.head_dim * 4  # k and v, fp32

    def pool_bytes(full):
        cache = DuoAttention(model, full, sink=sink, window=window, max_tokens=max_tokens, page_size=16).cache
        return sum(p.numel() * p.element_size() for p in cache.k_pool + cache.v_pool), cache.memory_bytes()

    heads = TINY.num_layers * TINY.num_kv_heads
    for n_full in range(heads + 1):
        full = torch.zeros(heads, dtype=torch.bool)
        full[:n_full] = True
        pools, total = pool_bytes(full.view(TINY.num_layers, TINY.num_kv_heads))
        share = n_full / heads
        expected = heads * per_slot * (share * max_tokens + (1 - share) * (sink + window))
        assert pools == pytest.approx(expected)
        assert total >= pools


def test_gated_forward_matches_the_cache_model():
    model = tiny_model(2)
    ids = torch.randint(0, TINY.vocab_size, (1, 30))
    full_logits = run_chunks(model, model.new_cache(window=None, positions="absolute", max_tokens=30), ids, [30])
    ones = torch.ones(TINY.num_layers, TINY.num_kv_heads)
    torch.testing.assert_close(model.logits(gated_hidden(model, ids, ones, sink=2, window=4)), full_logits,
                               rtol=1e-4, atol=1e-4)
    zeros = torch.zeros_like(ones)
    stream = run_chunks(model, model.new_cache(sink=2, window=4, positions="absolute"), ids, [30])
    torch.testing.assert_close(model.logits(gated_hidden(model, ids, zeros, sink=2, window=4)), stream,
                               rtol=1e-4, atol=1e-4)


def planted_model(retrieval_heads, heads=4, dim=16, sharp=3.0):
    """One attention-only layer: 'local' heads attend (almost) only to their own token (q = k =
    sharp * x, equal-norm inputs), so dropping old tokens does not change them; retrieval heads
    have q = 0, i.e. a uniform average over every visible token, which eviction changes."""
    cfg = LlamaConfig(vocab_size=61, hidden_size=dim, intermediate_size=8, num_layers=1, num_heads=heads,
                      num_kv_heads=heads, head_dim=dim)
    torch.manual_seed(0)
    model = LlamaDecoder(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
        model.layers[0].input_norm.weight.fill_(1.0)
        model.layers[0].mlp.down_proj.weight.zero_()
        attn = model.layers[0].attn
        for h in range(heads):
            rows = slice(h * dim, (h + 1) * dim)
            attn.k_proj.weight[rows] = sharp * torch.eye(dim)
            attn.q_proj.weight[rows] = 0.0 if h in retrieval_heads else sharp * torch.eye(dim)
    return model


def test_identification_recovers_planted_retrieval_heads():
    planted = {1, 3}
    model = planted_model(planted)
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 61, (4, 64), generator=gen) for _ in range(2)]
    gates = identify_retrieval_heads(model, batches, sink=2, window=6, steps=80, lr=0.05, l1=0.02)
    found = {h for h in range(4) if gates[0, h] > 0.5}
    assert found == planted, gates
