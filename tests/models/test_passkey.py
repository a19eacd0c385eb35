"""Passkey data for DuoAttention's identification: equal lengths, the key inside, the answer slice
pointing at the positions that predict the key's digits."""

import pytest

from flashstream.models.llm.passkey import passkey_batch


def chars(text):
    return [ord(c) for c in text]


def test_batch_layout_with_a_character_tokenizer():
    ids, answer = passkey_batch(chars, 3, 4, digits=5, seed=2, bos=1)
    assert ids.shape[0] == 3 and (ids[:, 0] == 1).all()
    for row in ids.tolist():
        text = "".join(map(chr, row[1:]))
        key = text[-5:]
        assert key.isdigit() and f"The pass key is {key}." in text
        assert text.endswith(f"The pass key is {key}")
        # answer positions predict ' ' then the digits (the last digit has no successor position)
        assert "".join(chr(row[p + 1]) for p in range(answer.start, answer.stop)) == " " + key
    assert len({"".join(map(chr, r[-5:])) for r in ids.tolist()}) == 3  # different keys


def test_depth_varies_and_lengths_agree():
    ids, _ = passkey_batch(chars, 8, 6, seed=0)
    starts = {"".join(map(chr, r)).index("The pass key is") for r in ids.tolist()}
    assert len(starts) > 1


def test_unequal_tokenization_is_an_error():
    def by_digit_sum(text):  # tokenizes keys to lengths that depend on the digits
        return [0] * (len(text) + sum(int(c) for c in text if c.isdigit()))
    with pytest.raises(ValueError, match="different lengths"):
        passkey_batch(by_digit_sum, 6, 2, seed=0)
