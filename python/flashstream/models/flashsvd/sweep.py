"""all-MiniLM-L6-v2 compressed by truncated SVD at several ranks: for each rank, the sentence
embeddings' cosine to the dense model's and the peak activation memory and time of the unfused
and fused paths, on real sentences from *Pride and Prejudice*.

    python -m flashstream.models.flashsvd.sweep --ranks 64,128,192,384
    flashstream flashsvd --ranks 64,128,192,384 [--ffn-rank 384] [--device cuda]

``--ranks`` sets one whole-matrix rank for every projection (Q, K, V, attention output, both FFN
matrices); ``--ffn-rank`` pins the FFN matrices' rank instead. Compression is truncation only,
without fine-tuning, so low ranks move the embeddings far (FlashSVD fine-tunes after compressing).
Peak memory: see :mod:`flashstream.models.flashsvd.peak_memory` (CUDA allocator peak; on CPU the
profiler's allocation events).
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

import torch
import torch.nn.functional as F

from .bert import BertEncoder, SVDRanks
from .peak_memory import peak_activation_bytes

__all__ = ["add_arguments", "run", "main", "austen_sentences"]


def austen_sentences(n: int, book: str = "prideprejudice") -> list[str]:
    """The first ``n`` sentences of a novel's text (from chapter 1 on; line breaks joined)."""
    from ...data.austen import austen_text

    text = austen_text(book)
    start = text.find("Chapter 1")
    body = " ".join(text[start if start >= 0 else 0:].split())
    body = re.sub(r"^Chapter 1\s*", "", body)
    # A sentence ends at . ! or ? (a closing quote may follow), but not after Mr./Mrs./Dr.
    end = r"(?:(?<=[.!?])|(?<=[.!?][\"']))(?<!Mr\.)(?<!Mrs\.)(?<!Dr\.)\s+(?=[\"'A-Z])"
    sentences = [s for s in re.split(end, body) if len(s.split()) >= 3]
    if len(sentences) < n:
        raise ValueError(f"flashstream flashsvd: the text has only {len(sentences)} sentences, {n} asked")
    return sentences[:n]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ranks", default="64,128,192,256,384",
                   help="comma-separated whole-matrix SVD ranks, one run each (default %(default)s)")
    p.add_argument("--ffn-rank", type=int, default=None, help="fixed rank of both FFN matrices (default: = rank)")
    p.add_argument("--sentences", type=int, default=64, help="batch of Austen sentences (default %(default)s)")
    p.add_argument("--seq-len", type=int, default=128, help="truncate each sentence to this many tokens")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--reps", type=int, default=3, help="timed calls per row; the median is printed")


def _measure(model, ids, mask, device, reps):
    peak, emb = peak_activation_bytes(lambda: model.embed(ids, mask), device)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        model.embed(ids, mask)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return emb, peak, statistics.median(times)


def run(args: argparse.Namespace) -> int:
    from ...data.minilm import WordPieceTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    ranks = [int(r) for r in args.ranks.split(",") if r]
    sentences = austen_sentences(args.sentences)
    ids, mask = WordPieceTokenizer()(sentences, max_length=args.seq_len)
    ids, mask = ids.to(device), mask.to(device)
    dense = BertEncoder.from_pretrained()
    svd = dense.svd()  # once; every rank slices it
    dense = dense.to(device=device, dtype=dtype)
    modes = ["unfused", "fused"]
    print(f"all-MiniLM-L6-v2, {len(sentences)} sentences of Pride and Prejudice, padded to {ids.shape[1]} tokens "
          f"({int(mask.sum())} real), {device} {args.dtype}"
          + (f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""))
    print(f"{'mode':<8} {'rank':>5} {'cos_mean':>9} {'cos_min':>8} {'params':>7} {'peak_MiB':>9} {'ms':>8}")
    with torch.no_grad():
        ref, peak, t = _measure(dense, ids, mask, device, args.reps)
        print(f"{'dense':<8} {'-':>5} {1.0:>9.5f} {1.0:>8.5f} {1.0:>7.3f} {peak / 2**20:>9.2f} {t * 1e3:>8.2f}")
        n_dense = dense.num_parameters()
        for r in ranks:
            low = dense.compress(SVDRanks.uniform(r, args.ffn_rank), svd=svd)
            for mode in modes:
                low.mode = mode
                emb, peak, t = _measure(low, ids, mask, device, args.reps)
                cos = F.cosine_similarity(emb.float(), ref.float(), dim=-1)
                print(f"{mode:<8} {r:>5} {cos.mean().item():>9.5f} {cos.min().item():>8.5f} "
                      f"{low.num_parameters() / n_dense:>7.3f} {peak / 2**20:>9.2f} {t * 1e3:>8.2f}")
    print("params: encoder-layer parameters relative to dense; peak_MiB: peak activation memory of one "
          "embed() call above weights and inputs; ms: median of --reps calls")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flashstream.models.flashsvd.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
