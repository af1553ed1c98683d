"""Classifier throughput: the model card's recipe against Gatehouse's engine, on one device.

    python bench/gpu_classifier.py                  # DeBERTa-v3-base size, random weights (needs a GPU)
    python bench/gpu_classifier.py --small --n 512  # a CPU smoke run at tiny size

Builds the classifier at DeBERTa-v3-base size from its config (random weights: throughput does not depend on
the values) and a tokenizer trained offline, makes a realistic mix of prompt lengths (log-normal, 8–512
tokens, median ~60), and measures in one run:

  1. the card's recipe: every prompt padded to 512 tokens, batches of 256, fp32;
  2. Gatehouse's engine: prompts sorted by length, each batch padded to its own longest prompt, bf16 backbone
     on CUDA (fp32 pooling and heads), batches of 256;
  3. agreement: the engine's scores against an unbatched fp32 reference on a sample (max |difference|).
"""

from __future__ import annotations

import argparse
import pathlib
import random
import statistics
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run as a script
from gpu_apps.classifier.engine import ClassifierEngine
from gpu_apps.classifier.model import DEBERTA_V3_BASE, PromptClassifier
from gpu_apps.classifier.postprocess import postprocess
from gpu_apps.classifier.tiny import TINY_CORPUS, tiny_backbone_config, train_tokenizer


def prompts_mix(n: int, tokenizer: object, seed: int = 0) -> list[str]:
    """Prompts whose token counts follow a log-normal mix between 8 and 512 tokens."""
    rng = random.Random(seed)
    words = " ".join(TINY_CORPUS).split()
    per_word = len(tokenizer(" ".join(words))["input_ids"]) / len(words)  # type: ignore[operator]
    out = []
    for _ in range(n):
        target = min(500, max(8, rng.lognormvariate(4.1, 0.8)))  # tokens; median ~60
        out.append(" ".join(rng.choice(words) for _ in range(max(1, int(target / per_word)))))
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def card_recipe(model: PromptClassifier, tokenizer: object, prompts: list[str], device: torch.device,
                batch: int) -> float:
    """prompts/s with every prompt padded to 512 (the model card's example code), fp32."""
    model = model.to(device).float().eval()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(prompts), batch):
            enc = tokenizer(prompts[i:i + batch], padding="max_length", truncation=True, max_length=512,  # type: ignore[operator]
                            return_tensors="pt")
            model(enc["input_ids"].to(device), enc["attention_mask"].to(device))
    sync(device)
    return len(prompts) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=8192, help="prompts (default 8192)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--small", action="store_true", help="tiny model (CPU smoke run)")
    p.add_argument("--check", type=int, default=64, help="prompts compared with the fp32 reference")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    tokenizer = train_tokenizer()
    cfg = tiny_backbone_config(len(tokenizer)) if args.small else {**DEBERTA_V3_BASE, "vocab_size": 128_100}
    model = PromptClassifier.from_config(cfg)
    prompts = prompts_mix(args.n, tokenizer)
    lengths = [len(t) for t in tokenizer(prompts, truncation=True, max_length=512)["input_ids"]]
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}); "
          f"{args.n} prompts, tokens p50 {statistics.median(lengths):.0f}, max {max(lengths)}", file=sys.stderr)

    card_recipe(model, tokenizer, prompts[: args.batch], device, args.batch)  # warm-up
    card = card_recipe(model, tokenizer, prompts, device, args.batch)

    engine = ClassifierEngine(model, tokenizer, device=device)
    engine.classify(prompts[: args.batch], batch_size=args.batch)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    engine.classify(prompts, batch_size=args.batch)
    sync(device)
    ours = args.n / (time.perf_counter() - t0)

    sample = prompts[: args.check]
    batched = engine.classify(sample, batch_size=args.batch)
    ref_engine = ClassifierEngine(model, tokenizer, device=device, dtype=torch.float32)
    reference = [postprocess(list(ref_engine.logits([s], batch_size=1)))[0] for s in sample]
    worst = max(abs(float(a[k]) - float(b[k])) for a, b in zip(batched, reference, strict=True) for k in a
                if isinstance(a[k], float))
    print(f"| measure | result |\n|---|---|\n"
          f"| card recipe (pad 512, fp32, batch {args.batch}) | {card:,.1f} prompts/s |\n"
          f"| Gatehouse engine ({engine.dtype}, length-bucketed, batch {args.batch}) | {ours:,.1f} prompts/s |\n"
          f"| speed-up | {ours / card:.1f}× |\n"
          f"| max abs score difference vs unbatched fp32 ({args.check} prompts) | {worst:.5f} |")


if __name__ == "__main__":
    main()
