"""Plain-PyTorch fp64 reference of the Llama decoder, written from the equations: per query, the
visible keys under sink + window, rotary (rotate-half) at absolute or cache-rank positions, dense
softmax attention. Slow and simple on purpose: it shares no code with flashstream."""

import torch


def rotate(x, pos, theta):
    # x [..., D], pos [...] (broadcast over D): GPT-NeoX rotate-half rotary.
    D = x.shape[-1]
    inv = theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = pos.to(torch.float64)[..., None] * inv
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def visible(i, sink, window):
    """Stream indices a query at index i sees (causal mask)."""
    if window is None:
        return list(range(i + 1))
    return list(range(min(sink, i + 1))) + list(range(max(sink, i - window + 1), i + 1))


def rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def reference_logits(model, ids, *, sink=0, window=None, positions="absolute", full_heads=None):
    """Logits [B, S, V] in fp64 for the whole sequence ``ids`` [B, S]. ``full_heads`` (bool
    [layers, Hkv]) marks kv heads that see every past token whatever the window."""
    cfg = model.config
    p = {k: v.detach().to(torch.float64) for k, v in model.state_dict().items()}
    B, S = ids.shape
    Hq, Hkv, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    x = p["embed.weight"][ids]
    for layer in range(cfg.num_layers):
        pre = f"layers.{layer}."
        h = rms(x, p[pre + "input_norm.weight"], cfg.rms_eps)
        q = (h @ p[pre + "attn.q_proj.weight"].T).view(B, S, Hq, D)
        k = (h @ p[pre + "attn.k_proj.weight"].T).view(B, S, Hkv, D)
        v = (h @ p[pre + "attn.v_proj.weight"].T).view(B, S, Hkv, D)
        out = torch.zeros(B, S, Hq, D, dtype=torch.float64)
        for hq in range(Hq):
            hk = hq // (Hq // Hkv)
            full = full_heads is not None and bool(full_heads[layer, hk])
            for i in range(S):
                vis = visible(i, sink, None if full else window)
                if positions == "absolute":
                    kpos, qpos = torch.tensor(vis), torch.tensor(i)
                else:  # cache: ranks among the visible keys
                    kpos, qpos = torch.arange(len(vis)), torch.tensor(len(vis) - 1)
                qi = rotate(q[:, i, hq], qpos, cfg.rope_theta)  # [B, D]
                kv = rotate(k[:, vis, hk], kpos, cfg.rope_theta)  # [B, n, D]
                att = torch.softmax(torch.einsum("bd,bnd->bn", qi, kv) / D ** 0.5, -1)
                out[:, i, hq] = torch.einsum("bn,bnd->bd", att, v[:, vis, hk])
        x = x + out.reshape(B, S, Hq * D) @ p[pre + "attn.o_proj.weight"].T
        h = rms(x, p[pre + "post_attn_norm.weight"], cfg.rms_eps)
        gate = torch.nn.functional.silu(h @ p[pre + "mlp.gate_proj.weight"].T)
        x = x + (gate * (h @ p[pre + "mlp.up_proj.weight"].T)) @ p[pre + "mlp.down_proj.weight"].T
    x = rms(x, p["norm.weight"], cfg.rms_eps)
    return x @ p["embed.weight"].T
