"""Train the character-level GPT on the standard-library docstring corpus.

Example::

    python -m gpu_apps.chargpt.train --out gpu_apps/chargpt/weights/chargpt.pt \\
        --max-steps 1700 --minutes 8.25

The learning-rate schedule (linear warmup, then cosine decay to ``--min-lr``) is
driven by ``progress = max(step / max_steps, elapsed / time_budget)``, so a run
always finishes its decay even when the wall-clock budget binds first.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .corpus import build_corpus
from .model import CharGPT, GPTConfig
from .tokenizer import CharTokenizer

DEFAULT_OUT = Path(__file__).resolve().parent / "weights" / "chargpt.pt"
console = Console(stderr=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse command-line options."""
    p = argparse.ArgumentParser(prog="python -m gpu_apps.chargpt.train", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="checkpoint path to write")
    p.add_argument("--minutes", type=float, default=8.25, help="wall-clock budget for the optimisation loop")
    p.add_argument("--max-steps", type=int, default=1700, help="optimizer steps (schedule length)")
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=256)
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--min-lr", type=float, default=1e-4, help="final learning rate")
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--eval-interval", type=int, default=250, help="steps between validation estimates")
    p.add_argument("--eval-batches", type=int, default=8, help="batches per periodic validation estimate")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="disable bfloat16 autocast on CPU")
    p.add_argument("--modules", nargs="*", default=None, help="restrict the corpus to these stdlib modules")
    return p.parse_args(argv)


def lr_at(progress: float, step: int, args: argparse.Namespace) -> float:
    """Linear warmup over ``warmup_steps``, then cosine decay from ``lr`` to ``min_lr``."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    warm = args.warmup_steps / max(args.max_steps, 1)
    frac = min(max((progress - warm) / max(1.0 - warm, 1e-9), 0.0), 1.0)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1.0 + math.cos(math.pi * frac))


def get_batch(data: torch.Tensor, block: int, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``batch`` random windows of ``block`` inputs and their next-char targets."""
    ix = torch.randint(len(data) - block - 1, (batch,), generator=gen)
    x = torch.stack([data[i : i + block] for i in ix.tolist()]).long()
    y = torch.stack([data[i + 1 : i + 1 + block] for i in ix.tolist()]).long()
    return x, y


def _autocast(enabled: bool) -> contextlib.AbstractContextManager[Any]:
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


@torch.no_grad()
def estimate_loss(model: CharGPT, data: torch.Tensor, args: argparse.Namespace, batches: int) -> float:
    """Mean loss over ``batches`` random batches drawn with a fixed seed (comparable across calls)."""
    model.eval()
    gen = torch.Generator().manual_seed(args.seed + 1)
    losses = []
    for _ in range(batches):
        x, y = get_batch(data, args.block_size, args.batch_size, gen)
        with _autocast(args.bf16):
            losses.append(model.loss(x, y).item())
    model.train()
    return sum(losses) / len(losses)


@torch.no_grad()
def full_loss(model: CharGPT, data: torch.Tensor, args: argparse.Namespace) -> float:
    """Exact mean loss over all of ``data``, cut into non-overlapping ``block_size`` windows."""
    model.eval()
    block, n = args.block_size, (len(data) - 1) // args.block_size
    x_all = data[: n * block].long().view(n, block)
    y_all = data[1 : n * block + 1].long().view(n, block)
    total = 0.0
    for i in range(0, n, 32):
        with _autocast(args.bf16):
            total += model.loss(x_all[i : i + 32], y_all[i : i + 32]).item() * len(x_all[i : i + 32])
    model.train()
    return total / n


def make_optimizer(model: CharGPT, args: argparse.Namespace) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices/embeddings only (not LayerNorm parameters)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.99))


def save_checkpoint(path: Path, model: CharGPT, tokenizer: CharTokenizer, meta: dict[str, Any]) -> None:
    """Write config, tokenizer, fp16 weights and metadata atomically to *path*."""
    state = {k: v.detach().to(torch.float16).clone() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    payload = {"config": asdict(model.config), "tokenizer": tokenizer.to_dict(), "state_dict": state, "meta": meta}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run training end to end and write the checkpoint; return its metadata."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    text, corpus_meta = build_corpus(args.modules)
    tokenizer = CharTokenizer.from_text(text)
    data = torch.tensor(tokenizer.encode(text), dtype=torch.uint8)
    split = int(0.9 * len(data))
    train_data, val_data = data[:split], data[split:]
    console.print(f"corpus: {corpus_meta.to_dict()}  vocab={tokenizer.vocab_size}")

    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                       n_head=args.n_head, n_embd=args.n_embd, dropout=args.dropout)
    model = CharGPT(config)
    optimizer = make_optimizer(model, args)
    console.print(f"model: {model.num_params():,} parameters, config={asdict(config)}")

    gen = torch.Generator().manual_seed(args.seed)
    budget_s, step, train_loss_ema, val_loss = args.minutes * 60.0, 0, float("nan"), float("nan")
    columns = (TextColumn("[bold]step {task.completed}/{task.total}"), BarColumn(), TextColumn("{task.fields[stats]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    start = time.monotonic()
    with Progress(*columns, console=console, refresh_per_second=2) as progress:
        task = progress.add_task("train", total=args.max_steps, stats="")
        while True:
            elapsed = time.monotonic() - start
            prog = max(step / args.max_steps, elapsed / budget_s)
            if prog >= 1.0:
                break
            lr = lr_at(prog, step, args)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = get_batch(train_data, args.block_size, args.batch_size, gen)
            with _autocast(args.bf16):
                loss = model.loss(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
            step += 1
            value = loss.item()
            train_loss_ema = value if step == 1 else 0.95 * train_loss_ema + 0.05 * value
            if step % args.eval_interval == 0:
                val_loss = estimate_loss(model, val_data, args, args.eval_batches)
                progress.console.print(f"step {step}: train~{train_loss_ema:.4f} val~{val_loss:.4f} lr={lr:.2e}")
            tok_s = step * args.batch_size * args.block_size / max(time.monotonic() - start, 1e-9)
            progress.update(task, completed=step, stats=f"loss {train_loss_ema:.3f} val {val_loss:.3f} "
                                                         f"lr {lr:.1e} {tok_s:,.0f} tok/s")
    train_seconds = time.monotonic() - start

    console.print("final evaluation over the full validation split ...")
    final_val = full_loss(model, val_data, args)
    final_train = estimate_loss(model, train_data, args, max(args.eval_batches, 32))
    meta: dict[str, Any] = {
        "corpus": corpus_meta.to_dict(),
        "params": model.num_params(),
        "steps": step,
        "tokens_seen": step * args.batch_size * args.block_size,
        "train_seconds": round(train_seconds, 1),
        "val_loss": round(final_val, 4),
        "train_loss": round(final_train, 4),
        "hparams": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "torch_version": str(torch.__version__),
        "machine": f"{platform.machine()} x{torch.get_num_threads()} threads",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    save_checkpoint(args.out, model, tokenizer, meta)
    size_mb = args.out.stat().st_size / 1e6
    console.print(f"saved {args.out} ({size_mb:.2f} MB): steps={step} time={train_seconds:.0f}s "
                  f"train_loss={final_train:.4f} val_loss={final_val:.4f}")
    return meta


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    train(parse_args(argv))


if __name__ == "__main__":
    main()
