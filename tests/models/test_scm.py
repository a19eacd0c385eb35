"""Streaming content monitor: a score at t never depends on later tokens; streamed scores (any
chunking, any cache policy) equal one forward; the stop index is the first crossing of tau."""

import random

import pytest
import torch

from flashstream.models.llm import StreamingContentMonitor
from test_llama import TINY, tiny_model


def tiny_monitor(seed=0):
    scm = StreamingContentMonitor(tiny_model(seed)).eval()
    with torch.no_grad():
        for head in (scm.token_head, scm.response_head):
            head.weight.normal_(0, 0.3)
            head.bias.zero_()
    return scm


def full_scores(scm, prompt, response, **cache_kw):
    """(p_tok, p_resp) of the response in one forward after the prompt."""
    cache = scm.new_cache(prompt.shape[0], max_tokens=prompt.shape[1] + response.shape[1], **cache_kw)
    with torch.no_grad():
        scm.backbone.hidden(prompt, cache)
        return scm(response, cache)


def random_chunks(rng, S):
    out = []
    while sum(out) < S:
        out.append(min(rng.choice([1, 1, 2, 3, 5, 8, 13]), S - sum(out)))
    return out


def test_score_at_t_is_unchanged_by_later_tokens():
    scm = tiny_monitor(1)
    prompt, response = torch.randint(0, TINY.vocab_size, (2, 5)), torch.randint(0, TINY.vocab_size, (2, 24))
    tok, resp = full_scores(scm, prompt, response)
    for t in (0, 3, 11, 23):
        tok_t, resp_t = full_scores(scm, prompt, response[:, :t + 1])
        torch.testing.assert_close(tok_t, tok[:, :t + 1], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(resp_t, resp[:, :t + 1], rtol=1e-5, atol=1e-6)
    # and a different future gives the same past
    other = torch.cat([response[:, :10], torch.randint(0, TINY.vocab_size, (2, 14))], 1)
    _, resp_o = full_scores(scm, prompt, other)
    torch.testing.assert_close(resp_o[:, :10], resp[:, :10], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(resp_o[:, 10:], resp[:, 10:])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("policy", [dict(), dict(sink=2, window=6)])
def test_streamed_scores_equal_the_full_forward(seed, policy):
    rng = random.Random(seed)
    scm = tiny_monitor(seed)
    prompt, response = torch.randint(0, TINY.vocab_size, (2, 7)), torch.randint(0, TINY.vocab_size, (2, 40))
    want_tok, want_resp = full_scores(scm, prompt, response, **policy)
    session = scm.stream(2, tau=2.0, max_tokens=47, **policy)  # tau > 1: never stops
    session.prompt(prompt)
    n = 0
    for T in random_chunks(rng, 40):
        session.step(response[:, n:n + T])
        n += T
    torch.testing.assert_close(session.token_scores, want_tok, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(session.response_scores, want_resp, rtol=1e-5, atol=1e-6)
    assert session.stop_index.tolist() == [-1, -1]


@pytest.mark.parametrize("score", ["response", "token"])
@pytest.mark.parametrize("chunk", [1, 4, 9])
def test_stop_index_is_the_first_crossing(score, chunk):
    scm = tiny_monitor(5)
    B, S = 3, 30
    prompt, response = torch.randint(0, TINY.vocab_size, (B, 4)), torch.randint(0, TINY.vocab_size, (B, S))
    tok, resp = full_scores(scm, prompt, response)
    s = resp if score == "response" else tok
    tau = float(s.quantile(0.8))
    want = []
    for b in range(B):
        over = [t for t in range(S) if s[b, t] > tau]
        want.append(over[0] if over else -1)
    session = scm.stream(B, tau=tau, score=score, max_tokens=4 + S)
    session.prompt(prompt)
    got = session.run(response, chunk=chunk)
    assert got.tolist() == want
    # it read no further than the chunk where the last stream stopped
    last = max(want) if min(want) >= 0 else S - 1
    assert session.response_tokens == min(S, (last // chunk + 1) * chunk)
    assert session.stopped.tolist() == [w >= 0 for w in want]


def test_never_crossing_reads_everything():
    scm = tiny_monitor(6)
    response = torch.randint(0, TINY.vocab_size, (1, 12))
    session = scm.stream(1, tau=1.0, max_tokens=12)
    assert session.run(response, chunk=5).tolist() == [-1]
    assert session.response_tokens == 12


def test_bad_arguments():
    scm = tiny_monitor(0)
    with pytest.raises(ValueError, match="score must be"):
        scm.stream(1, score="mean")
    session = scm.stream(1, max_tokens=8)
    session.step(torch.zeros(1, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="prompt first"):
        session.prompt(torch.zeros(1, 2, dtype=torch.int64))
