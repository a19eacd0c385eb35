"""Plain-PyTorch fp64 reference of the VideoLLM-online / VideoLLM-MoD decoder, written from the
equations: per MoD layer, score every token, keep the top ``ceil(capacity * n)`` vision tokens of
each frame (ties to the lower index) and every text token, run the block on the kept tokens
alone (causal attention among them, rotary at their ORIGINAL stream positions), add the delta
back; dense layers run on every token. Dense full-sequence attention, no cache, shares no code
with flashstream (only ``rotate`` from the Llama reference)."""

import math

import torch

from references.llama import rms, rotate


def keep(capacity, n):
    return min(max(math.ceil(capacity * n - 1e-9 * n), 0), n)


def route(scores, frame_ids, routable, capacity):
    """Kept indices (ascending) of one row: all non-routable tokens, top-k of each frame."""
    kept = [i for i in range(len(scores)) if not routable[i]]
    for f in sorted({int(frame_ids[i]) for i in range(len(scores)) if routable[i]}):
        members = [i for i in range(len(scores)) if routable[i] and int(frame_ids[i]) == f]
        members.sort(key=lambda i: (-float(scores[i]), i))
        kept += members[:keep(capacity, len(members))]
    return sorted(kept)


def block_delta(p, pre, cfg, x, pos):
    """The residual delta attn + mlp of one Llama block on tokens x [S, H] at positions pos [S]."""
    S = x.shape[0]
    Hq, Hkv, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    h = rms(x, p[pre + "input_norm.weight"], cfg.rms_eps)
    q = rotate((h @ p[pre + "attn.q_proj.weight"].T).view(S, Hq, D).transpose(0, 1), pos, cfg.rope_theta)
    k = rotate((h @ p[pre + "attn.k_proj.weight"].T).view(S, Hkv, D).transpose(0, 1), pos, cfg.rope_theta)
    v = (h @ p[pre + "attn.v_proj.weight"].T).view(S, Hkv, D).transpose(0, 1)
    k, v = k.repeat_interleave(Hq // Hkv, 0), v.repeat_interleave(Hq // Hkv, 0)
    logits = q @ k.transpose(1, 2) / D ** 0.5
    logits = logits.masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1), float("-inf"))
    attn = (torch.softmax(logits, -1) @ v).transpose(0, 1).reshape(S, Hq * D) @ p[pre + "attn.o_proj.weight"].T
    h2 = rms(x + attn, p[pre + "post_attn_norm.weight"], cfg.rms_eps)
    gate = torch.nn.functional.silu(h2 @ p[pre + "mlp.gate_proj.weight"].T)
    return attn + (gate * (h2 @ p[pre + "mlp.up_proj.weight"].T)) @ p[pre + "mlp.down_proj.weight"].T


def reference_logits(llm, embeds, frame_ids, routable, *, mod_layers=(), routers=None, capacity=1.0,
                     weighted=False):
    """Logits [B, S, V] (fp64) of the embedded sequence; ``routers[layer]`` is (weight [1, H], bias [1])."""
    cfg = llm.config
    p = {k: v.detach().to(torch.float64) for k, v in llm.state_dict().items()}
    x = embeds.detach().to(torch.float64).clone()
    B, S, _ = x.shape
    for layer in range(cfg.num_layers):
        pre = f"layers.{layer}."
        for b in range(B):
            if layer in mod_layers:
                w, bias = (t.detach().to(torch.float64) for t in routers[layer])
                scores = (x[b] @ w.T + bias)[:, 0]
                kept = route(scores, frame_ids[b], routable[b], capacity)
                idx = torch.tensor(kept)
                gain = torch.where(routable[b][idx], torch.sigmoid(scores[idx]), 1.0) if weighted else 1.0
                x[b, idx] = x[b, idx] + (gain * block_delta(p, pre, cfg, x[b, idx], idx).T).T
            else:
                x[b] = x[b] + block_delta(p, pre, cfg, x[b], torch.arange(S))
    return rms(x, p["norm.weight"], cfg.rms_eps) @ p["embed.weight"].T
