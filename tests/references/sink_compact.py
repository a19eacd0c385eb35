"""sink_cache_compact reference: read every slot through the page table into a dense
[B, Hkv, capacity, D] view, gather the kept slots, write them back to slots [0, n). Plain PyTorch."""

from __future__ import annotations

import torch


def slot_rows(page_table: torch.Tensor, page_size: int) -> torch.Tensor:
    """Flat pool row of every slot: int64 [B, Hkv, pages_per_head * page_size]."""
    rows = page_table.long()[..., None] * page_size + torch.arange(page_size, device=page_table.device)
    return rows.flatten(-2)


def sink_cache_compact_reference(k_pool, v_pool, page_table, lengths, keep):
    """Returns new (k_pool, v_pool, lengths); the inputs are left alone."""
    P, ps, D = k_pool.shape
    rows = slot_rows(page_table, ps)
    n = keep.shape[-1]
    outs = []
    for pool in (k_pool, v_pool):
        flat = pool.reshape(P * ps, D)
        dense = flat[rows]                                            # [B, Hkv, cap, D]
        kept = torch.gather(dense, 2, keep.long()[..., None].expand(-1, -1, -1, D))
        new = flat.clone()
        new[rows[..., :n].reshape(-1)] = kept.reshape(-1, D)
        outs.append(new.view(P, ps, D))
    return outs[0], outs[1], torch.full_like(lengths, n)
