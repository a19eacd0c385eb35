"""StreamingLLM: constant KV memory over a stream >= 100x the window; equal to full attention
while the stream fits; equal to the fp64 sink + window reference with cache positions."""

import pytest
import torch

from flashstream.models.llm import StreamingLLM
from references.llama import reference_logits
from test_llama import TINY, run_chunks, tiny_model


def test_memory_constant_over_a_stream_100x_the_window():
    model = tiny_model(0)
    sink, window = 2, 6
    llm = StreamingLLM(model, sink=sink, window=window, page_size=4)
    start = llm.memory_bytes()
    ids = torch.randint(0, TINY.vocab_size, (1, 100 * window + 37))
    sizes = []
    for _, logits in llm.stream(ids, chunk=13):
        assert torch.isfinite(logits).all()
        sizes.append(llm.memory_bytes())
    assert sizes == [start] * len(sizes)
    assert int(llm.cache.lengths[0]) == ids.shape[1]
    # The pools hold sink + window slots (rounded up to pages), not the stream.
    pool_bytes = sum(p.numel() * p.element_size() for p in llm.cache.k_pool + llm.cache.v_pool)
    per_token = 2 * TINY.num_layers * TINY.num_kv_heads * TINY.head_dim * 4
    assert pool_bytes == per_token * 8  # ceil((2 + 6) / 4) pages of 4 slots
    full = model.new_cache(window=None, positions="absolute", max_tokens=ids.shape[1])
    assert full.memory_bytes() > 50 * start


@pytest.mark.parametrize("length", [1, 9, 16])
def test_equals_full_attention_while_the_stream_fits(length):
    model = tiny_model(1)
    ids = torch.randint(0, TINY.vocab_size, (2, length))
    llm = StreamingLLM(model, sink=4, window=12, batch_size=2, page_size=4)
    got = run_chunks(model, llm.cache, ids, [min(5, length), *([1] * max(0, length - 5))])
    full = run_chunks(model, model.new_cache(2, window=None, positions="absolute", max_tokens=16), ids, [length])
    torch.testing.assert_close(got, full, rtol=1e-4, atol=1e-4)


def test_greedy_generation_equals_full_attention_while_it_fits():
    model = tiny_model(2)
    prompt = torch.randint(0, TINY.vocab_size, (1, 10))
    ours = StreamingLLM(model, sink=4, window=26).generate(prompt, 20, chunk=4)
    full = model.new_cache(window=None, positions="absolute", max_tokens=30)
    logits, out = model(prompt, full), []
    for _ in range(20):
        out.append(logits[:, -1].argmax(-1, keepdim=True))
        logits = model(out[-1], full)
    assert torch.equal(ours, torch.cat(out, 1))


def test_past_the_window_equals_reference_with_cache_positions():
    model = tiny_model(4)
    ids = torch.randint(0, TINY.vocab_size, (1, 40))
    llm = StreamingLLM(model, sink=4, window=8, page_size=3)
    got = torch.cat([logits for _, logits in llm.stream(ids, chunk=6)], 1)
    ref = reference_logits(model, ids, sink=4, window=8, positions="cache")
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-4)
