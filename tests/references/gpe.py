"""Batch forward of an interleaved source / target sequence with group position IDs and the
streaming mask, in fp64, from the equations (dense masked attention; shares no code with
flashstream): query i sees key j <= i unless i is a source token and j a target token."""

import torch

from references.llama import rms, rotate


def gpe_reference_logits(model, ids, is_target, *, target_offset=0):
    """ids [B, S], is_target bool [S] -> logits [B, S, V] (fp64)."""
    cfg = model.config
    p = {k: v.detach().to(torch.float64) for k, v in model.state_dict().items()}
    B, S = ids.shape
    Hq, Hkv, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    pos = torch.empty(S, dtype=torch.int64)
    ns = nt = 0
    for i in range(S):
        if is_target[i]:
            pos[i], nt = target_offset + nt, nt + 1
        else:
            pos[i], ns = ns, ns + 1
    i, j = torch.arange(S)[:, None], torch.arange(S)[None, :]
    allowed = (j <= i) & (is_target[:, None] | ~is_target[None, :])
    x = p["embed.weight"][ids]
    for layer in range(cfg.num_layers):
        pre = f"layers.{layer}."
        h = rms(x, p[pre + "input_norm.weight"], cfg.rms_eps)
        q = rotate((h @ p[pre + "attn.q_proj.weight"].T).view(B, S, Hq, D).transpose(1, 2), pos, cfg.rope_theta)
        k = rotate((h @ p[pre + "attn.k_proj.weight"].T).view(B, S, Hkv, D).transpose(1, 2), pos, cfg.rope_theta)
        v = (h @ p[pre + "attn.v_proj.weight"].T).view(B, S, Hkv, D).transpose(1, 2)
        k, v = k.repeat_interleave(Hq // Hkv, 1), v.repeat_interleave(Hq // Hkv, 1)
        att = (q @ k.transpose(-1, -2)) / D ** 0.5
        att = torch.softmax(att.masked_fill(~allowed, float("-inf")), -1)
        out = (att @ v).transpose(1, 2).reshape(B, S, Hq * D)
        x = x + out @ p[pre + "attn.o_proj.weight"].T
        h = rms(x, p[pre + "post_attn_norm.weight"], cfg.rms_eps)
        gate = torch.nn.functional.silu(h @ p[pre + "mlp.gate_proj.weight"].T)
        x = x + (gate * (h @ p[pre + "mlp.up_proj.weight"].T)) @ p[pre + "mlp.down_proj.weight"].T
    x = rms(x, p["norm.weight"], cfg.rms_eps)
    return x @ p["embed.weight"].T
