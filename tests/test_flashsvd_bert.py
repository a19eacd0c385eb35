"""FlashSVD on BERT (flashstream.models.flashsvd.bert): dense == transformers' BertModel on the same
weights (all-MiniLM-L6-v2, and a small random config), the tokenizer == transformers' pure-Python
BertTokenizer, unfused SVD == dense with the truncated weights, fused == unfused, padding
invariance, peak-memory measurement, errors and the CLI."""

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from flashstream.data import minilm
from flashstream.models.flashsvd import BertConfig, BertEncoder, SVDRanks, mean_pool
from flashstream.lowrank import truncated_svd
from flashstream.models.flashsvd.peak_memory import peak_activation_bytes

needs_minilm = pytest.mark.skipif(not minilm.minilm_available(), reason=f"needs '{minilm.MINILM_INSTALL}', "
                                  "safetensors and tokenizers")
needs_transformers = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                        reason="needs transformers (the independent cross-check)")

SENTENCES = [  # Pride and Prejudice, chapter 1 (varied lengths, so the batch is padded)
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife.",
    "Mr. Bennet replied that he had not.",
    "\"My dear Mr. Bennet,\" said his lady to him one day, \"have you heard that Netherfield Park is let at last?\"",
    "Is that his design in settling here?",
]
TINY = BertConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=160, max_position_embeddings=40)


@pytest.fixture(scope="module")
def one_thread():
    # MKL's threaded SVD spins badly when the cores are shared; one thread is steadier here.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def minilm_model():
    return BertEncoder.from_pretrained()


@pytest.fixture(scope="module")
def batch():
    return minilm.WordPieceTokenizer()(SENTENCES)


def _random_batch(cfg, B=3, S=17, seed=1):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, cfg.vocab_size, (B, S), generator=gen)
    lengths = torch.tensor(([S, S // 2, 1] * B)[:B])
    mask = torch.arange(S)[None] < lengths[:, None]
    return ids.masked_fill(~mask, cfg.pad_token_id), mask


def _hf_bert(cfg: BertConfig):
    import transformers
    hf_cfg = transformers.BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings, type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.layer_norm_eps, hidden_act=cfg.hidden_act, pad_token_id=cfg.pad_token_id,
        attn_implementation="eager")
    return transformers.BertModel(hf_cfg, add_pooling_layer=False).eval()


def _reference_mean_pool(h, attention_mask):
    # sentence-transformers' Pooling(mean), written out independently.
    m = attention_mask.unsqueeze(-1).float()
    return (h * m).sum(1) / torch.clamp(m.sum(1), min=1e-9)


# ---- dense == transformers ------------------------------------------------------------------------

@needs_transformers
def test_dense_equals_transformers_random_weights():
    hf = _hf_bert(TINY)
    ours = BertEncoder(TINY).eval()
    ours.load_hf_state_dict(hf.state_dict())
    ids, mask = _random_batch(TINY)
    types = torch.randint(0, 2, ids.shape)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask.long(), token_type_ids=types).last_hidden_state
        got = ours.hidden(ids, mask, types)
    torch.testing.assert_close(got[mask], ref[mask], rtol=1e-5, atol=1e-5)


@needs_minilm
@needs_transformers
def test_dense_minilm_equals_transformers(minilm_model, batch):
    import transformers
    hf = transformers.BertModel.from_pretrained(str(minilm.minilm_dir()), attn_implementation="eager",
                                                add_pooling_layer=False).eval()
    ids, mask = batch
    assert not mask.all(), "the batch must contain padding"
    with torch.no_grad():
        h_ref = hf(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        h = minilm_model.hidden(ids, mask)
        e = minilm_model.embed(ids, mask)
    torch.testing.assert_close(h[mask], h_ref[mask], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(e, F.normalize(_reference_mean_pool(h_ref, mask.long()), dim=-1), rtol=1e-4, atol=1e-6)


@needs_minilm
@needs_transformers
def test_tokenizer_equals_transformers_python_bert_tokenizer(batch):
    import transformers
    ref = transformers.BertTokenizer(str(minilm.minilm_dir() / "vocab.txt"), do_lower_case=True)
    ids, mask = batch
    for i, text in enumerate(SENTENCES):
        assert ids[i][mask[i]].tolist() == ref(text)["input_ids"]
    assert (ids[~mask] == 0).all()


def test_hf_name_mapping_covers_every_parameter():
    from flashstream.models.flashsvd.bert import hf_to_ours
    hf_names = ["embeddings.word_embeddings.weight", "encoder.layer.3.attention.self.query.bias",
                "encoder.layer.0.output.LayerNorm.weight", "encoder.layer.1.intermediate.dense.weight",
                "bert.encoder.layer.2.attention.output.dense.weight"]
    assert [hf_to_ours(n) for n in hf_names] == ["embeddings.word.weight", "layers.3.q.bias", "layers.0.ffn_norm.weight",
                                                 "layers.1.ffn_in.weight", "layers.2.attn_out.weight"]
    assert hf_to_ours("pooler.dense.weight") is None


# ---- unfused SVD ------------------------------------------------------------------------------------

def test_compress_from_the_svd_cache_equals_a_fresh_truncation(one_thread):
    # compress(svd=model.svd()) slices full-rank factors; that must be the rank-r truncation itself.
    dense = BertEncoder.random(TINY, seed=4)
    ranks = SVDRanks(attn=5, attn_out=9, ffn=13)
    cached, fresh = dense.compress(ranks, svd=dense.svd()), dense.compress(ranks)
    for name, tensor in fresh.state_dict().items():
        torch.testing.assert_close(cached.state_dict()[name], tensor, rtol=1e-6, atol=1e-6, msg=name)
    a, b, _ = truncated_svd(dense.layers[1].ffn_in.weight, 13)
    torch.testing.assert_close(fresh.layers[1].ffn_in.A, a)
    torch.testing.assert_close(fresh.layers[1].ffn_in.B, b)


def test_unfused_equals_dense_with_truncated_weights(one_thread):
    dense = BertEncoder.random(TINY, seed=3)
    ranks = SVDRanks(attn=12, attn_out=20, ffn=30)
    low = dense.compress(ranks)
    assert low.mode == "unfused" and low.num_parameters() < dense.num_parameters()
    # Reference: the dense model with each weight replaced by its rank-r reconstruction.
    ref = BertEncoder.random(TINY, seed=3)
    with torch.no_grad():
        for layer in ref.layers:
            for name, r in (("q", 12), ("k", 12), ("v", 12), ("attn_out", 20), ("ffn_in", 30), ("ffn_out", 30)):
                lin = getattr(layer, name)
                u, s, vh = torch.linalg.svd(lin.weight.double(), full_matrices=False)
                lin.weight.copy_((u[:, :r] * s[:r]) @ vh[:r])
    ids, mask = _random_batch(TINY)
    with torch.no_grad():
        torch.testing.assert_close(low.hidden(ids, mask)[mask], ref.hidden(ids, mask)[mask], rtol=1e-4, atol=1e-4)
        # At full rank the factorisation is exact: unfused == dense.
        full = dense.compress(SVDRanks(64, 64, 64), svd=dense.svd())
        torch.testing.assert_close(full.hidden(ids, mask)[mask], dense.hidden(ids, mask)[mask], rtol=1e-4, atol=1e-4)


@needs_minilm
def test_minilm_cosine_grows_with_rank(minilm_model, batch, one_thread):
    ids, mask = batch
    svd = minilm_model.svd()
    with torch.no_grad():
        e = minilm_model.embed(ids, mask)
        cos = [F.cosine_similarity(minilm_model.compress(SVDRanks.uniform(r), svd=svd).embed(ids, mask), e).mean().item()
               for r in (64, 192, 384)]
    assert cos[0] < cos[1] < cos[2] and cos[2] > 1 - 1e-4


@pytest.mark.parametrize("mode", ["dense", "unfused", "fused"])
def test_padding_does_not_change_embeddings(mode, one_thread):
    dense = BertEncoder.random(TINY, seed=5)
    model = dense if mode == "dense" else dense.compress(SVDRanks.uniform(16), mode=mode)
    ids, mask = _random_batch(TINY, B=3, S=11)
    with torch.no_grad():
        batched = model.embed(ids, mask)
        for i in range(3):
            n = int(mask[i].sum())
            alone = model.embed(ids[i:i + 1, :n], mask[i:i + 1, :n])
            torch.testing.assert_close(batched[i:i + 1], alone, rtol=1e-5, atol=1e-5)


def test_mean_pool_ignores_padding():
    h = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    torch.testing.assert_close(mean_pool(h, mask), torch.stack([h[0, :2].mean(0), h[1].mean(0)]))


# ---- fused == unfused -------------------------------------------------------------------------------

TOLS = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float16: dict(rtol=2e-2, atol=2e-2),
        torch.bfloat16: dict(rtol=5e-2, atol=5e-2)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fused_equals_unfused(device, dtype, one_thread):
    dense = BertEncoder.random(TINY, seed=7)
    low = dense.compress(SVDRanks(attn=12, attn_out=20, ffn=24)).to(device=device, dtype=dtype)
    ids, mask = (t.to(device) for t in _random_batch(TINY))
    with torch.no_grad():
        unfused = low.hidden(ids, mask)
        low.mode = "fused"
        fused = low.hidden(ids, mask)
    torch.testing.assert_close(fused[mask].float(), unfused[mask].float(), **TOLS[dtype])


@needs_minilm
def test_fused_equals_unfused_minilm(minilm_model, batch, one_thread):
    ids, mask = batch
    low = minilm_model.compress(SVDRanks(attn=96, attn_out=128, ffn=192))
    with torch.no_grad():
        unfused = low.embed(ids, mask)
        low.mode = "fused"
        fused = low.embed(ids, mask)
    torch.testing.assert_close(fused, unfused, rtol=1e-4, atol=1e-5)


def test_fused_encoder_compiles_fullgraph(one_thread):
    low = BertEncoder.random(TINY, seed=9).compress(SVDRanks.uniform(16), mode="fused")
    ids, mask = _random_batch(TINY)
    with torch.no_grad():
        eager = low.embed(ids, mask)
        compiled = torch.compile(low.embed, fullgraph=True, backend="aot_eager")(ids, mask)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


def test_fused_peak_activation_is_below_unfused(one_thread):
    # Not a timing: the profiler's allocation bytes are deterministic. The unfused FFN holds
    # [tokens, d_ff] twice (pre-activation and GELU), the fused one never.
    cfg = BertConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=512, max_position_embeddings=64)
    low = BertEncoder.random(cfg, seed=11).compress(SVDRanks.uniform(16))
    ids, mask = _random_batch(cfg, B=4, S=64)
    with torch.no_grad():
        unfused, _ = peak_activation_bytes(lambda: low.embed(ids, mask), "cpu")
        low.mode = "fused"
        fused, _ = peak_activation_bytes(lambda: low.embed(ids, mask), "cpu")
    assert fused < unfused / 3, (fused, unfused)


# ---- errors ----------------------------------------------------------------------------------------

def test_errors_name_the_argument():
    dense = BertEncoder.random(TINY)
    ids, mask = _random_batch(TINY)
    with pytest.raises(ValueError, match="ffn rank must be an int in \\[1, 64\\]"):
        dense.compress(SVDRanks(attn=8, attn_out=8, ffn=65))
    with pytest.raises(ValueError, match="mask must be bool"):
        dense.hidden(ids, mask.long())
    with pytest.raises(ValueError, match="ids must be int64"):
        dense.hidden(ids.int(), mask)
    with pytest.raises(ValueError, match="cannot run mode='unfused'"):
        dense.mode = "unfused"
    with pytest.raises(ValueError, match="mode must be one of"):
        dense.mode = "flash"
    with pytest.raises(ValueError, match="exceeds max_position_embeddings"):
        dense.hidden(torch.zeros(1, 41, dtype=torch.int64), torch.ones(1, 41, dtype=torch.bool))
    with pytest.raises(ValueError, match="already low-rank"):
        dense.compress(SVDRanks.uniform(8)).compress(SVDRanks.uniform(4))


# ---- peak memory --------------------------------------------------------------------------------------

def test_cpu_peak_memory_counts_live_tensors():
    n = 1 << 20

    def two_live_then_one():
        a = torch.ones(n, dtype=torch.uint8)
        b = a + 1  # a and b live together: 2n
        del a
        return b * 2  # b and the result: 2n, never 3n

    peak, out = peak_activation_bytes(two_live_then_one, "cpu")
    # + a few bytes: the scalar operands ATen wraps as tensors
    assert 2 * n <= peak < 2 * n + 1024 and out.sum().item() == 4 * n


# ---- CLI -----------------------------------------------------------------------------------------------

@needs_minilm
def test_cli_reports_cosine_and_memory_per_rank(capsys, one_thread):
    from flashstream.models.flashsvd import sweep
    assert sweep.main(["--ranks", "96,384", "--sentences", "6", "--seq-len", "48", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["dense"], ["unfused"], ["fused"])]
    assert [r[0] for r in rows if r[0] != "fused"] == ["dense", "unfused", "unfused"]
    cos = {(r[0], r[1]): float(r[2]) for r in rows}
    assert cos[("unfused", "384")] > 0.9999 and cos[("unfused", "96")] < cos[("unfused", "384")]
