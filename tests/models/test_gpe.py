"""Group position encoding: incremental interleaved decoding (any read / write schedule, any
chunking) equals one batch forward with group position IDs and the streaming mask."""

import random

import pytest
import torch

from flashstream.models.llm import GroupPositionStream
from flashstream.models.llm.gpe import group_position_ids, rotate_half
from references.gpe import gpe_reference_logits
from references.llama import rotate
from test_llama import TINY, tiny_model


def random_schedule(rng, S_src, S_tgt):
    """Interleaved (is_target, length) chunks covering S_src source and S_tgt target tokens."""
    out, s, t = [], 0, 0
    while s < S_src or t < S_tgt:
        target = t < S_tgt and (s == S_src or rng.random() < 0.5)
        left = (S_tgt - t) if target else (S_src - s)
        n = min(rng.choice([1, 1, 2, 3, 5]), left)
        out.append((target, n))
        t, s = (t + n, s) if target else (t, s + n)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_interleaved_streaming_equals_batch_with_group_ids_and_mask(seed):
    rng = random.Random(seed)
    model = tiny_model(seed)
    B, S_src, S_tgt = 2, 17, 13
    offset = rng.choice([0, 5, 40])
    src = torch.randint(0, TINY.vocab_size, (B, S_src))
    tgt = torch.randint(0, TINY.vocab_size, (B, S_tgt))
    gpe = GroupPositionStream(model, batch_size=B, max_tokens=S_src + S_tgt, target_offset=offset,
                              page_size=rng.choice([1, 4, 16]), dtype=torch.float32)
    ids, is_target, logits = [], [], []
    s = t = 0
    for target, n in random_schedule(rng, S_src, S_tgt):
        if target:
            chunk, t = tgt[:, t:t + n], t + n
            logits.append(gpe.write(chunk))
        else:
            chunk, s = src[:, s:s + n], s + n
            logits.append(gpe.read(chunk))
        ids.append(chunk)
        is_target += [target] * n
    want = gpe_reference_logits(model, torch.cat(ids, 1), torch.tensor(is_target), target_offset=offset)
    torch.testing.assert_close(torch.cat(logits, 1).double(), want, rtol=1e-4, atol=1e-4)


def test_source_is_not_affected_by_targets():
    """The batch view of the source: its logits ignore target tokens written before it, so a source
    read in pieces between writes equals the source read alone."""
    model = tiny_model(7)
    src, tgt = torch.randint(0, TINY.vocab_size, (1, 8)), torch.randint(0, TINY.vocab_size, (1, 4))
    a = GroupPositionStream(model, max_tokens=12, dtype=torch.float32)
    pieces = [a.read(src[:, :3])]
    a.write(tgt[:, :2])
    pieces.append(a.read(src[:, 3:6]))
    a.write(tgt[:, 2:])
    pieces.append(a.read(src[:, 6:]))
    b = GroupPositionStream(model, max_tokens=12, dtype=torch.float32)
    torch.testing.assert_close(torch.cat(pieces, 1), b.read(src), rtol=1e-5, atol=1e-5)
    assert (a.sources_read, a.targets_written) == (8, 4)


def test_wait_k_greedy_matches_the_batch_reference():
    model = tiny_model(8)
    B, S, k, new = 2, 9, 3, 7
    src = torch.randint(0, TINY.vocab_size, (B, S))
    bos = torch.full((B, 1), 5)
    out = GroupPositionStream(model, batch_size=B, max_tokens=S + new + 1, dtype=torch.float32).wait_k(src, bos, k, new)
    # Rebuild the interleaving: k sources, bos; then per emitted token: one source (while left), the token.
    ids, is_target, read = [src[:, :k], bos], [False] * k + [True], k
    for i in range(new - 1):
        if read < S:
            ids.append(src[:, read:read + 1]); is_target.append(False); read += 1
        ids.append(out[:, i:i + 1]); is_target.append(True)
    ref = gpe_reference_logits(model, torch.cat(ids, 1), torch.tensor(is_target))
    pred = ref[:, torch.tensor(is_target)].argmax(-1)
    assert torch.equal(pred, out)


def test_group_position_ids_and_rotary():
    is_target = torch.tensor([False, False, True, False, True, True, False])
    assert group_position_ids(is_target).tolist() == [0, 1, 0, 2, 1, 2, 3]
    assert group_position_ids(is_target, 10).tolist() == [0, 1, 10, 2, 11, 12, 3]
    x, pos = torch.randn(2, 7, 3, 16), torch.tensor([0, 1, 10, 2, 11, 12, 100000])
    want = rotate(x.double().transpose(1, 2), pos, 1e4).transpose(1, 2)
    torch.testing.assert_close(rotate_half(x, pos, 1e4).double(), want, rtol=1e-5, atol=1e-5)


def test_capacity_and_arguments():
    model = tiny_model(0)
    with pytest.raises(ValueError, match="target_offset"):
        GroupPositionStream(model, target_offset=-1)
    gpe = GroupPositionStream(model, max_tokens=4, dtype=torch.float32)
    gpe.read(torch.zeros(1, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="exceed max_tokens"):
        gpe.write(torch.zeros(1, 2, dtype=torch.int64))
    assert gpe.targets_written == 0 and int(gpe.joint.lengths[0]) == 3
