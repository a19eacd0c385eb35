"""End-to-end SmolLM2 streaming: flashstream (LlamaDecoder over SinkCache) against transformers'
LlamaForCausalLM from the same GGUF with a StreamingLLM cache (``streaming_llm_hf.py``:
``torch.cat`` eviction + re-rotation, as mit-han-lab/streaming-llm).

    python bench/bench_llm.py [--device cpu|cuda] [--threads N] [--sink 4] [--window 1020]
                              [--prefill 4096] [--chunk 256] [--decode 128]

Both stream Pride and Prejudice (r-cran-janeaustenr) with 4 sinks + a window (S + W = 1024 by
default), fp32: a chunked prefill of ``--prefill`` tokens (chunks of ``--chunk``), then
``--decode`` steps of one token each (the cache full, steady state; the next text token is fed,
which costs what greedy decoding costs). Each contender runs in its own process, so that
``peak_rss_extra_bytes`` is that process's peak resident memory while streaming above its
resident memory after loading (Linux ``clear_refs``); on CUDA ``peak_cuda_bytes`` is
``torch.cuda.max_memory_allocated``. Before timing, the peer's logits are checked against
flashstream's over one-token steps past the window (same semantics at T = 1).
Results: bench/results/llm-<device-tag>.json, each record with the load average after it. On a
shared 2-core machine, two intra-op threads per process oversubscribe the cores and the numbers
swing with the neighbours' load (llm-cpu-2c.json); --threads 1 (llm-cpu-1c.json) is steadier.
fp32 decode is bound by reading the 540 MB of weights per token, for both contenders. A third
process, ``gemm_floor``, runs only the model's matrix products on the same chunks (the same torch
GEMMs both contenders call): peer time / its time bounds the speedup any fp32 implementation can
reach here (``speedup_bound_*``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

GOALS = {"cpu": 2.0, "cuda": 5.0}  # the speedup goals over the peer


def _status(key: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _text_ids(tok, n):
    from flashstream.data.austen import austen_text
    ids = tok.encode(austen_text("prideprejudice")[: 8 * n + 1024], add_bos=True)
    if len(ids) < n:
        raise SystemExit(f"bench_llm: the text has only {len(ids)} tokens, {n} needed")
    return torch.tensor([ids[:n]])


def _check_peer(ours, hf, ids, sink, window) -> float:
    from flashstream.models.llm import StreamingLLM
    from streaming_llm_hf import enable_streaming_llm
    enable_streaming_llm(hf, sink, window)
    ref = StreamingLLM(ours, sink=sink, window=window, device=ids.device)
    worst = 0.0
    with torch.no_grad():
        for t in range(ids.shape[1]):
            a = hf(ids[:, t:t + 1], use_cache=False).logits
            worst = max(worst, (a - ref.step(ids[:, t:t + 1])).abs().max().item())
    return worst


def _gemm_floor_step(model):
    """Only the model's matrix products (q, k, v, o, gate, up, down per layer, then the tied
    vocabulary projection) on the chunk's shapes, with the same torch GEMMs both contenders call:
    a lower bound on any fp32 implementation's time, so peer time / this time bounds the speedup
    that attention and cache work alone can buy."""
    import torch.nn.functional as F
    hidden = model.config.hidden_size
    mats = [[m.weight for m in (b.attn.q_proj, b.attn.k_proj, b.attn.v_proj, b.attn.o_proj, b.mlp.gate_proj,
                                b.mlp.up_proj, b.mlp.down_proj)] for b in model.layers]
    vocab = model.embed.weight

    @torch.no_grad()
    def step(ids):
        x = torch.randn(ids.shape[0], ids.shape[1], hidden, device=ids.device)
        for q, k, v, o, g, u, d in mats:
            F.linear(x, q), F.linear(x, k), F.linear(x, v)
            x = F.linear(x, o)
            x = F.linear(F.linear(x, g) * F.linear(x, u), d)
        return F.linear(x, vocab)
    return step


def worker(args) -> dict:
    from flashstream.data import smollm2
    from flashstream.models.llm import LlamaDecoder, StreamingLLM

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    ours, tok = LlamaDecoder.from_gguf()
    ours = ours.to(dev)
    ids = _text_ids(tok, args.prefill + args.decode).to(dev)
    rec = {"contender": args.worker}
    if args.worker == "flashstream":
        runner = StreamingLLM(ours, sink=args.sink, window=args.window, device=dev)
        step = runner.step
    elif args.worker == "gemm_floor":
        step = _gemm_floor_step(ours)
    else:
        from transformers import AutoModelForCausalLM

        from streaming_llm_hf import enable_streaming_llm
        path = smollm2.smollm2_gguf_path()
        hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                  dtype=torch.float32).eval().to(dev)
        rec["check_max_abs_logit_diff"] = _check_peer(ours, hf, ids[:, :96], 4, 32)
        del ours
        state = enable_streaming_llm(hf, args.sink, args.window)

        @torch.no_grad()
        def step(x):
            return hf(x, use_cache=False).logits
        state.reset()
    import gc
    gc.collect()
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    rec["peak_rss_tracked"] = _reset_peak_rss()
    base = _status("VmRSS")
    with torch.no_grad():
        step(ids[:, :8])  # warm-up (first-call costs), then restart the stream
    if args.worker == "flashstream":
        runner.reset()
    elif args.worker == "transformers":
        state.reset()
    _sync(dev)
    start = time.perf_counter()
    with torch.no_grad():
        for s in range(0, args.prefill, args.chunk):
            step(ids[:, s:min(s + args.chunk, args.prefill)])
        _sync(dev)
        mid = time.perf_counter()
        for t in range(args.prefill, args.prefill + args.decode):
            step(ids[:, t:t + 1])
        _sync(dev)
    end = time.perf_counter()
    rec["prefill_tokens_per_s"] = args.prefill / (mid - start)
    rec["decode_tokens_per_s"] = args.decode / (end - mid)
    rec["peak_rss_extra_bytes"] = _status("VmHWM") - base if rec["peak_rss_tracked"] else None
    if dev == "cuda":
        rec["peak_cuda_bytes"] = torch.cuda.max_memory_allocated() - base_cuda
    return rec


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--sink", type=int, default=4)
    p.add_argument("--window", type=int, default=1020)
    p.add_argument("--prefill", type=int, default=4096)
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--decode", type=int, default=128)
    p.add_argument("--worker", choices=["flashstream", "transformers", "gemm_floor"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.chunk > args.window:
        p.error("--chunk must be <= --window (the peer's eviction makes room for one chunk)")
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    records = []
    forwarded = [a for a in (argv if argv is not None else sys.argv[1:])]
    for name in ("flashstream", "transformers", "gemm_floor"):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, *forwarded, "--worker", name], capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            return out.returncode
        rec = json.loads(out.stdout.strip().splitlines()[-1])
        rec.update(device=args.device, sink=args.sink, window=args.window, prefill=args.prefill, chunk=args.chunk,
                   decode=args.decode, wall_s=time.perf_counter() - t0, loadavg=list(__import__("os").getloadavg()))
        records.append(rec)
    fs, hf, floor = records
    for key in ("prefill_tokens_per_s", "decode_tokens_per_s"):
        fs["speedup_" + key.split("_")[0]] = fs[key] / hf[key]
        # the most any implementation running these GEMMs could gain over the peer
        fs["speedup_bound_" + key.split("_")[0]] = floor[key] / hf[key]
    fs["goal_speedup"] = GOALS[args.device]
    print(harness.fmt_table(records, [("contender", "contender", "s"), ("prefill_tokens_per_s", "prefill tok/s", ".1f"),
                                      ("decode_tokens_per_s", "decode tok/s", ".1f"),
                                      ("peak_rss_extra_bytes", "peak RSS extra B", ",d"),
                                      ("check_max_abs_logit_diff", "peer check", ".1e")]))
    print(f"speedup: prefill {fs['speedup_prefill']:.2f}x, decode {fs['speedup_decode']:.2f}x "
          f"(goal {GOALS[args.device]}x); bound from the GEMMs alone: prefill {fs['speedup_bound_prefill']:.2f}x, "
          f"decode {fs['speedup_bound_decode']:.2f}x")
    print(f"written: {harness.write_results('llm', records, device=args.device)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
