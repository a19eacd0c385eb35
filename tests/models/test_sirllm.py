"""SirLLM: the kept set equals a reference top-k of entropy * decay**age (plus sinks and window)
for any step sizes; with no key-token memory it is StreamingLLM; memory stays constant."""

import random

import pytest
import torch

from flashstream.models.llm import SirLLM, StreamingLLM
from flashstream.models.llm.sirllm import token_entropy
from test_llama import TINY, tiny_model


def reference_entropy(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """-log p(x_t | x_<t) from the logits of the whole stream ([B, S, V]), fp64; 0 for t = 0."""
    logp = torch.log_softmax(logits.double(), -1)
    ent = torch.zeros(ids.shape, dtype=torch.float64)
    ent[:, 1:] = -logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    return ent


def reference_kept(ent: torch.Tensor, L: int, *, sink: int, window: int, key_tokens: int, decay: float) -> list[int]:
    """Kept positions after L tokens of one stream: sinks, window, and the top key_tokens of the
    tokens older than the window by entropy * decay**age (ties: the more recent)."""
    if L <= sink + window + key_tokens:
        return list(range(L))
    sinks = list(range(sink))
    recent = list(range(L - window, L))
    cand = range(sink, L - window)
    score = {p: float(ent[p]) * decay ** (L - 1 - p) for p in cand}
    top = sorted(cand, key=lambda p: (score[p], p), reverse=True)[:key_tokens]
    return sorted(sinks + top + recent)


def chunks_of(rng, S, max_step):
    out = []
    while sum(out) < S:
        out.append(min(rng.choice([1, 1, 2, 3, 5, max_step]), max_step, S - sum(out)))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_kept_set_is_topk_of_decayed_entropy(seed):
    rng = random.Random(seed)
    model = tiny_model(seed)
    sink, window, key_tokens = rng.choice([0, 2, 4]), rng.choice([1, 5, 9]), rng.choice([1, 4, 7])
    decay = rng.choice([1.0, 0.95, 0.6])
    B, S = 2, 70
    llm = SirLLM(model, sink=sink, window=window, key_tokens=key_tokens, decay=decay, max_step=6, batch_size=B,
                 page_size=rng.choice([1, 4, 16]), dtype=torch.float32)
    ids = torch.randint(0, TINY.vocab_size, (B, S))
    outs, n = [], 0
    for T in chunks_of(rng, S, 6):
        outs.append(llm.step(ids[:, n:n + T]))
        n += T
        ent = reference_entropy(torch.cat(outs, 1), ids[:, :n])
        for b in range(B):
            want = reference_kept(ent[b], n, sink=sink, window=window, key_tokens=key_tokens, decay=decay)
            assert llm.kept_positions[b].tolist() == want, (n, b)
        torch.testing.assert_close(llm.entropy[:, :llm.n], ent.gather(1, llm.kept_positions), rtol=1e-5, atol=1e-5)
    assert llm.cache.lengths.tolist() == [sink + window + key_tokens] * B
    assert (llm.cache.layer_lengths == llm.n).all()


@pytest.mark.parametrize("decay", [1.0, 0.5])
def test_without_key_tokens_it_is_streaming_llm(decay):
    """key_tokens=0, one token per step (after a prefill that fits): StreamingLLM with window + 1."""
    model = tiny_model(11)
    sink, window, S = 3, 7, 36
    ids = torch.randint(0, TINY.vocab_size, (2, S))
    sir = SirLLM(model, sink=sink, window=window, key_tokens=0, decay=decay, max_step=11, batch_size=2,
                 page_size=4, dtype=torch.float32)
    ref = StreamingLLM(model, sink=sink, window=window + 1, batch_size=2, page_size=4, dtype=torch.float32)
    prefill = sink + window + 1
    got = [sir.step(ids[:, :prefill])] + [sir.step(ids[:, t:t + 1]) for t in range(prefill, S)]
    want = [ref.step(ids[:, :prefill])] + [ref.step(ids[:, t:t + 1]) for t in range(prefill, S)]
    # Same math, keys summed in another order (ring slots vs compacted slots): fp32 rounding only.
    torch.testing.assert_close(torch.cat(got, 1), torch.cat(want, 1), rtol=1e-4, atol=1e-4)
    assert sir.kept_positions[0].tolist() == list(range(sink)) + list(range(S - window, S))


def test_key_tokens_change_the_result_and_survive_the_window():
    model = tiny_model(12)
    ids = torch.randint(0, TINY.vocab_size, (1, 80))
    sir = SirLLM(model, sink=2, window=6, key_tokens=5, max_step=4, dtype=torch.float32)
    plain = SirLLM(model, sink=2, window=6, key_tokens=0, max_step=4, dtype=torch.float32)
    a = torch.cat([lg for _, lg in sir.stream(ids, 4)], 1)
    b = torch.cat([lg for _, lg in plain.stream(ids, 4)], 1)
    assert not torch.allclose(a[:, 20:], b[:, 20:])
    kept = sir.kept_positions[0].tolist()
    assert len(kept) == 13 and any(2 <= p < 80 - 6 for p in kept)  # key tokens from far before the window


def test_memory_constant_and_bounded():
    model = tiny_model(13)
    sir = SirLLM(model, sink=2, window=5, key_tokens=3, max_step=4, page_size=4, dtype=torch.float32)
    ids = torch.randint(0, TINY.vocab_size, (1, 100))
    sizes = []
    for _ in sir.stream(ids, 3):
        sizes.append(sir.memory_bytes())
        assert sir.n <= 10
    assert sizes == [sizes[0]] * len(sizes)
    assert sir.seen == 100 and sir.kept_positions[0, -1].item() == 99


def test_scores_decay_with_age():
    model = tiny_model(14)
    sir = SirLLM(model, sink=1, window=2, key_tokens=2, decay=0.5, max_step=4, dtype=torch.float32)
    ids = torch.randint(0, TINY.vocab_size, (1, 12))
    logits = torch.cat([lg for _, lg in sir.stream(ids, 3)], 1)
    ent = reference_entropy(logits, ids)[0]
    pos = sir.kept_positions[0]
    want = ent[pos] * 0.5 ** (11 - pos).double()
    torch.testing.assert_close(sir.scores[0], want)


def test_token_entropy_across_steps():
    logits = torch.randn(2, 5, 11)
    ids = torch.randint(0, 11, (2, 5))
    whole = token_entropy(logits, ids)
    split = torch.cat([token_entropy(logits[:, :2], ids[:, :2]), token_entropy(logits[:, 2:], ids[:, 2:], logits[:, 1])], 1)
    torch.testing.assert_close(whole, split)
    torch.testing.assert_close(whole.double(), reference_entropy(logits, ids))


def test_bad_arguments():
    model = tiny_model(0)
    with pytest.raises(ValueError, match="decay"):
        SirLLM(model, decay=0.0)
    with pytest.raises(ValueError, match="max_step"):
        SirLLM(model, max_step=0)
    sir = SirLLM(model, sink=1, window=2, key_tokens=1, max_step=3, dtype=torch.float32)
    with pytest.raises(ValueError, match="SirLLM.step: ids must be"):
        sir.step(torch.zeros(1, 4, dtype=torch.int64))



def test_smollm2_keeps_the_highest_entropy_tokens(smollm2_model):
    """Real weights: the key tokens SirLLM keeps are the top tokens by SmolLM2's own token entropy
    (a few chunked steps; the StreamingLLM equivalence is covered on tiny models above)."""
    model, tok = smollm2_model
    ids = torch.tensor([tok.encode("The secret code is 7319. The weather is nice and the sky is blue today.")])
    S, sink, window = ids.shape[1], 2, 6
    sir = SirLLM(model, sink=sink, window=window, key_tokens=4, max_step=8)
    logits = torch.cat([lg for _, lg in sir.stream(ids, 8)], 1)
    want = reference_kept(reference_entropy(logits, ids)[0], S, sink=sink, window=window, key_tokens=4, decay=1.0)
    assert sir.kept_positions[0].tolist() == want
    assert len(want) == sink + window + 4 < S
