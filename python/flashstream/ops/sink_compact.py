"""Token-granular retention for the paged sink KV cache (K1): ``sink_cache_compact``.

For a cache whose slot is the token's rank (``SinkCache(window=None)`` or full heads), keeping an
arbitrary subset of tokens is a compaction: the kept slots of each (stream, kv head), in stream
order, move to the front and ``lengths`` becomes their count. With ``positions="cache"`` the
attention kernels then rotate the kept keys at ranks ``0..n`` and the next token at ``n``: exactly
StreamingLLM-style cache positions over any retained set (SirLLM's key tokens), with no change to
the attention kernels and no re-rotation (keys are stored before rotary).

The move is in place and fused for k and v; kept slots strictly ascending make it safe (slot
``keep[j] >= j`` is read before anything overwrites it).
"""

from __future__ import annotations

import torch

__all__ = ["sink_cache_compact"]

_INDEX_DTYPES = (torch.int32, torch.int64)


def sink_cache_compact(k_pool: torch.Tensor, v_pool: torch.Tensor, page_table: torch.Tensor, lengths: torch.Tensor,
                       keep: torch.Tensor) -> None:
    """Keeps slots ``keep[b, h, :]`` of each (stream b, kv head h), moved to slots ``[0, n)`` in order;
    sets ``lengths[:] = n``. In place.

    Args:
        k_pool, v_pool: ``[pages, page_size, D]`` float32/float16/bfloat16, one layer's pools.
        page_table: int32 ``[B, Hkv, pages_per_head]``; lengths: int64 ``[B]`` (slots in use).
        keep: int32 or int64 ``[B, Hkv, n]``, strictly ascending, each in ``[0, lengths[b])``. Every
            head of a stream keeps ``n`` slots (they may be different slots).

    On CPU every index is checked before anything moves (a bad call raises and changes nothing). On
    CUDA the indices are not checked (no host sync); an out-of-range index is skipped, never
    written through, but unsorted or out-of-range ``keep`` leaves the slots unspecified.
    """
    torch.ops.flashstream.sink_cache_compact.default(k_pool, v_pool, page_table, lengths, keep)


@torch.library.register_fake("flashstream::sink_cache_compact")
def _sink_cache_compact_fake(k_pool, v_pool, page_table, lengths, keep):
    op = "flashstream.sink_cache_compact"
    torch._check(k_pool.dim() == 3 and v_pool.shape == k_pool.shape,
                 lambda: f"{op}: k_pool, v_pool must be [pages, page_size, D] of one shape, got "
                         f"{list(k_pool.shape)} and {list(v_pool.shape)}")
    torch._check(page_table.dim() == 3, lambda: f"{op}: page_table must be [B, Hkv, pages_per_head], got {list(page_table.shape)}")
    torch._check(keep.dtype in _INDEX_DTYPES, lambda: f"{op}: keep must be int64 or int32, got {keep.dtype}")
    torch._check(keep.dim() == 3 and keep.shape[:2] == page_table.shape[:2],
                 lambda: f"{op}: keep must be [B, Hkv, n] = [{page_table.shape[0]}, {page_table.shape[1]}, n], "
                         f"got {list(keep.shape)}")
    torch._check(keep.shape[2] <= page_table.shape[2] * k_pool.shape[1],
                 lambda: f"{op}: keep holds more slots than the page table")
    return None
