"""Synthetic passkey-retrieval text (the data DuoAttention's head identification trains on): a
number hidden at some depth of repetitive filler, asked for at the end. Built from token pieces,
so every sample of a batch has the same length and the answer sits at a known place."""

from __future__ import annotations

import random

import torch

__all__ = ["passkey_batch"]

FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
INTRO = "There is an important pass key hidden in a lot of irrelevant text. Find it and remember it."


def passkey_batch(encode, batch_size: int, fillers: int, *, digits: int = 5, seed: int = 0,
                  bos: int | None = None) -> tuple[torch.Tensor, slice]:
    """``(ids [B, S], answer)``: ``encode(str) -> list[int]``; ``fillers`` filler paragraphs per
    sample, the key inserted after a random number of them. ``answer`` is the slice of positions
    whose *next* token is an answer digit (where a model must retrieve the key)."""
    rng = random.Random(seed)
    filler, intro = encode(FILLER), encode(INTRO)
    question = encode(" What is the pass key? The pass key is")
    rows, answer_len = [], None
    for _ in range(batch_size):
        key = "".join(rng.choice("0123456789") for _ in range(digits))
        needle = encode(f" The pass key is {key}. Remember it. {key} is the pass key.")
        answer = encode(f" {key}")
        depth = rng.randint(0, fillers)
        row = ([bos] if bos is not None else []) + intro + filler * depth + needle + filler * (fillers - depth)
        rows.append(row + question + answer)
        answer_len = len(answer)
    length = len(rows[0])
    if any(len(r) != length for r in rows):
        raise ValueError("passkey_batch: keys of this length tokenize to different lengths; use another encode")
    return torch.tensor(rows), slice(length - answer_len - 1, length - 1)
