"""Family C (low-rank / FlashSVD): a BERT encoder with dense, unfused-SVD and fused-SVD paths."""

from .bert import BertConfig, BertEncoder, SVDRanks, mean_pool

__all__ = ["BertConfig", "BertEncoder", "SVDRanks", "mean_pool"]
