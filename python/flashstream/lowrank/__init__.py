"""Low-rank (SVD) compression of models: :class:`LowRankLinear` and :func:`svd_compress`.

``svd_compress(model, rank=...)`` replaces ``nn.Linear`` layers by their truncated SVD
(FlashSVD's "vanilla SVD" compression); the fused kernels then run the factors:
``LowRankLinear(fused=True)`` through :func:`flashstream.ops.lowrank_linear`, attention blocks
through :func:`flashstream.ops.lowrank_attention` (see the FlashSVD BERT model).
"""

from .linear import LowRankLinear, truncated_svd
from .svd_compress import rank_for_energy, svd_compress

__all__ = ["LowRankLinear", "truncated_svd", "svd_compress", "rank_for_energy"]
