"""Sink / window attention reference, in fp64, written from the issue's semantics (not from the
kernels' index math): gather each query's visible keys, rotate them at the positions of the mode,
softmax. Slow (a Python loop over queries) and obvious on purpose.
"""

from __future__ import annotations

import torch


def visible_tokens(i: int, n: int, T: int, *, sink: int, window: int | None, mask: str, chunk: int | None,
                   full: bool) -> list[int]:
    """Stream indices query ``i`` sees, in stream order, for a step of T tokens after n."""
    if mask == "causal":
        if full or window is None:
            return list(range(i + 1))
        sinks = set(range(min(sink, i + 1)))
        recent = set(range(max(sink, i - window + 1), i + 1))
        return sorted(sinks | recent)
    c0 = n + ((i - n) // chunk) * chunk
    c1 = min(c0 + chunk, n + T)
    if full or window is None:
        return list(range(c1))
    sinks = {p for p in range(sink) if p < c1}
    before = set(range(max(0, c0 - window), c0))
    return sorted(sinks | before | set(range(c0, c1)))


def rope(x: torch.Tensor, pos: torch.Tensor, theta: float, style: str) -> torch.Tensor:
    """x [..., D] rotated at integer positions pos (broadcast over x[..., 0]), fp64."""
    D = x.shape[-1]
    half = D // 2
    inv = theta ** (-2.0 * torch.arange(half, dtype=torch.float64) / D)
    ang = pos.to(torch.float64)[..., None] * inv
    c, s = torch.cos(ang), torch.sin(ang)
    if style == "half":
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).flatten(-2)


def _attend(qv, keys, vals, qpos, kpos, *, positions, theta, style, scale, softcap, sink_logit):
    """One query vector [D] over keys/vals [L, D] -> (out [D], lse)."""
    if positions != "none":
        qv = rope(qv, torch.tensor(qpos), theta, style)
        keys = rope(keys, torch.tensor(kpos), theta, style)
    logits = (keys @ qv) * scale
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    if sink_logit is not None:
        logits = torch.cat([logits, torch.tensor([float(sink_logit)], dtype=torch.float64)])
    lse = torch.logsumexp(logits, 0)
    p = torch.exp(logits - lse)[: len(vals)]
    return p @ vals, lse


def reference_step(q, k_all, v_all, n: int, *, sink: int, window: int | None, positions: str = "cache",
                   rope_theta: float = 10000.0, rope_style: str = "half", mask: str = "causal",
                   chunk: int | None = None, full_heads=None, scale: float | None = None,
                   softcap: float | None = None, sink_logits=None, sink_override_k=None, sink_override_v=None):
    """Attention of q [B, T, Hq, D] (stream indices n..n+T-1) over k_all, v_all [B, >= n+T, Hkv, D]
    (every token of the stream; only the visible ones are read). sink_override_*: [B, sink, Hkv, D]
    values that replace tokens [0, sink) (EMA sinks). Returns (out [B,T,Hq,D] fp64, lse [B,T,Hq] fp64)."""
    q, k_all, v_all = q.double().cpu(), k_all.double().cpu(), v_all.double().cpu()
    B, T, Hq, D = q.shape
    Hkv = k_all.shape[2]
    G = Hq // Hkv
    scale = D ** -0.5 if scale is None else scale
    if mask == "chunk" and chunk is None:
        chunk = T
    out = torch.zeros(B, T, Hq, D, dtype=torch.float64)
    lse = torch.zeros(B, T, Hq, dtype=torch.float64)
    for b in range(B):
        for h in range(Hkv):
            full = bool(full_heads[h]) if full_heads is not None else False
            keys_bh, vals_bh = k_all[b, :, h].clone(), v_all[b, :, h].clone()
            if sink_override_k is not None:
                m = min(sink, keys_bh.shape[0])
                keys_bh[:m] = sink_override_k[b, :m, h].double()
                vals_bh[:m] = sink_override_v[b, :m, h].double()
            for t in range(T):
                i = n + t
                vis = visible_tokens(i, n, T, sink=sink, window=window, mask=mask, chunk=chunk, full=full)
                if positions == "cache":
                    kpos, qpos = list(range(len(vis))), vis.index(i)
                else:
                    kpos, qpos = vis, i
                for g in range(G):
                    hq = h * G + g
                    sl = None if sink_logits is None else float(sink_logits[hq])
                    o, l = _attend(q[b, t, hq], keys_bh[vis], vals_bh[vis], qpos, kpos, positions=positions,
                                   theta=rope_theta, style=rope_style, scale=scale, softcap=softcap, sink_logit=sl)
                    out[b, t, hq], lse[b, t, hq] = o, l
    return out, lse


def sink_attention_reference(q, k, v, *, sink, window, positions="cache", rope_theta=10000.0, rope_style="half",
                             mask="causal", chunk_size=None, full_heads=None, scale=None, softcap=None,
                             sink_logits=None):
    """The offline function: the whole sequence as one step from an empty stream."""
    return reference_step(q, k, v, 0, sink=sink, window=window, positions=positions, rope_theta=rope_theta,
                          rope_style=rope_style, mask=mask, chunk=chunk_size, full_heads=full_heads, scale=scale,
                          softcap=softcap, sink_logits=sink_logits)


def streaming_reference(q, k, v, chunks: list[int], *, sink, window, ema_alpha=None, mask="causal", **kw):
    """Feeds [B, S, ...] through steps of the given sizes with the cache semantics, EMA sinks
    included (fp64 state). Returns out [B, S, Hq, D] fp64."""
    q, k, v = q.double(), k.double(), v.double()
    B, S = q.shape[:2]
    sk = k[:, :sink].clone()
    sv = v[:, :sink].clone()
    outs, n = [], 0
    for T in chunks:
        o, _ = reference_step(q[:, n:n + T], k, v, n, sink=sink, window=window, mask=mask,
                              chunk=T if mask == "chunk" else None, sink_override_k=sk, sink_override_v=sv, **kw)
        outs.append(o)
        # sink slots get their raw tokens as they arrive
        for p in range(n, min(sink, n + T)):
            sk[:, p], sv[:, p] = k[:, p], v[:, p]
        if ema_alpha is not None and window is not None and sink > 0:
            full_heads = kw.get("full_heads")
            for p in range(max(sink, n - window), n + T - window):  # tokens leaving the window, in order
                s = p % sink
                for h in range(k.shape[2]):
                    if full_heads is not None and bool(full_heads[h]):
                        continue
                    sk[:, s, h] = ema_alpha * sk[:, s, h] + (1 - ema_alpha) * k[:, p, h]
                    sv[:, s, h] = ema_alpha * sv[:, s, h] + (1 - ema_alpha) * v[:, p, h]
        n += T
    assert n == S
    return torch.cat(outs, dim=1)
