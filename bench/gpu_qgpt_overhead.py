"""Per-token cost of qgpt's quantum logits processor inside generation.

    python bench/gpu_qgpt_overhead.py                  # GPT-2-small size, random weights (run on a GPU)
    python bench/gpu_qgpt_overhead.py --small --tokens 64

A causal LM built from a config (GPT-2 small: 12 layers, 768 wide, vocabulary 50,257; random weights — the
cost of sampling does not depend on them) generates ``--tokens`` tokens at batch 1, several rounds each,
interleaved, for:

  * plain sampling (no processor) — the baseline;
  * the quantum processor, ``strict`` (returns the scores untouched) and ``chaos`` (draws entropy every step)
    with an entropy pool filled beforehand, as in production;
  * a naive processor that builds a one-hot tensor over the vocabulary every step (for scale).

Reports the median time per token and the overhead against the baseline.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LogitsProcessor, LogitsProcessorList

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run as a script
from gpu_apps.qgpt.entropy import EntropyPool
from gpu_apps.qgpt.processor import QuantumLogitsProcessor


class NaiveOneHot(LogitsProcessor):
    """The obvious implementation, for scale: a fresh one-hot over the vocabulary every step."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        u = torch.rand(scores.shape[0], device=scores.device)
        probs = torch.softmax(scores, dim=-1)
        q = torch.searchsorted(torch.cumsum(probs, dim=-1), u[:, None]).clamp_max(scores.shape[-1] - 1)
        one_hot = torch.nn.functional.one_hot(q[:, 0], scores.shape[-1]).to(scores.dtype)
        return scores + one_hot * 2.0


def per_token_ms(model: GPT2LMHeadModel, tokens: int, processors: list[LogitsProcessor], device: torch.device) -> float:
    ids = torch.tensor([[1, 2, 3, 4]], device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.inference_mode():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, min_new_tokens=tokens,
                       do_sample=True, temperature=1.0, top_p=1.0, top_k=0, pad_token_id=0,
                       logits_processor=LogitsProcessorList(processors))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1000 / tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--small", action="store_true", help="a tiny model (CPU smoke run)")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=50_257) if args.small else GPT2Config()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg).to(device).eval()
    if device.type == "cuda":
        model = model.to(torch.bfloat16)
    pool = EntropyPool(None, high_water=64 << 20)
    need = 4 * args.tokens * (args.rounds + 1) * 2
    pool.deposit(os.urandom(need))  # prefetched, as the background refill keeps it in production
    variants = {
        "plain sampling": list,
        "quantum, strict": lambda: [QuantumLogitsProcessor(pool, "strict")],
        "quantum, chaos": lambda: [QuantumLogitsProcessor(pool, "chaos")],
        "naive one-hot": lambda: [NaiveOneHot()],
    }
    for make in variants.values():  # warm-up
        per_token_ms(model, 8, make(), device)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, make in variants.items():
            times[name].append(per_token_ms(model, args.tokens, make(), device))
    base = statistics.median(times["plain sampling"])
    print(f"device {device}; model {cfg.n_layer} layers × {cfg.n_embd}, vocabulary {cfg.vocab_size}; "
          f"{args.tokens} tokens × {args.rounds} rounds; bytes served by source: {pool.stats()['bytes_served']}")
    print("| sampling | ms per token (median) | overhead |\n|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.3f} | {100 * (med - base) / base:+.1f} % |")


if __name__ == "__main__":
    main()
