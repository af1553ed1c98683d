"""Serving API for the character-level GPT: load a checkpoint, stream sampled text.

:class:`CharGPTEngine` is stateless between calls apart from the read-only model,
so one instance can serve concurrent requests from several threads.  Every call
draws its random numbers from its own ``torch.Generator``; the same
``(prompt, seed, temperature, top_p, max_new_tokens)`` always gives the same text.
"""

from __future__ import annotations

import copy
import secrets
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import torch

from .model import CharGPT, GPTConfig, KVCache
from .tokenizer import CharTokenizer

LogitsHook = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DEFAULT_CHECKPOINT: Path = Path(__file__).resolve().parent / "weights" / "chargpt.pt"

#: Prompt used when the caller sends an empty one.
EMPTY_PROMPT = "\n"
# temperatures below this sample greedily: logits / 1e-131 overflow float32 (softmax of inf is NaN), and any
# temperature this small puts all the probability on the argmax anyway
GREEDY_BELOW = 1e-4


class CharGPTEngine:
    """Text generation over a :class:`CharGPT` model (one character = one token)."""

    name = "chargpt"

    def __init__(self, model: CharGPT, tokenizer: CharTokenizer, *, device: str = "cpu",
                 meta: dict[str, Any] | None = None, checkpoint: Path | None = None) -> None:
        if model.config.vocab_size != tokenizer.vocab_size:
            raise ValueError(f"model vocab {model.config.vocab_size} != tokenizer vocab {tokenizer.vocab_size}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.meta: dict[str, Any] = dict(meta or {})
        self.checkpoint = checkpoint
        block = model.config.block_size
        #: Tokens kept when the KV cache is full and the window is re-prefilled.
        self.refill_len = max(1, block - block // 4)

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "cpu") -> CharGPTEngine:
        """Load a checkpoint written by :mod:`gpu_apps.chargpt.train` (default: the shipped one)."""
        ckpt_path = Path(path) if path is not None else DEFAULT_CHECKPOINT
        payload = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        config = GPTConfig(**payload["config"])
        model = CharGPT(config)
        state = {k: v.float() for k, v in payload["state_dict"].items()}
        state.setdefault("lm_head.weight", state["tok_emb.weight"])  # tied; stored once
        model.load_state_dict(state)
        tokenizer = CharTokenizer.from_dict(payload["tokenizer"])
        return cls(model, tokenizer, device=device, meta=payload.get("meta"), checkpoint=ckpt_path)

    @classmethod
    def from_model(cls, model: CharGPT, tokenizer: CharTokenizer, device: str = "cpu") -> CharGPTEngine:
        """Wrap an in-memory model (e.g. a tiny randomly initialised one in tests)."""
        return cls(model, tokenizer, device=device)

    # ------------------------------------------------------------------ public API
    def count_tokens(self, text: str) -> int:
        """Number of tokens in *text* (characters are tokens)."""
        return len(text)

    def info(self) -> dict[str, Any]:
        """Describe the model and, when loaded from disk, the checkpoint's training facts."""
        cfg = self.model.config
        return {
            "name": self.name,
            "params": self.model.num_params(),
            "vocab_size": cfg.vocab_size,
            "block_size": cfg.block_size,
            "n_layer": cfg.n_layer,
            "n_head": cfg.n_head,
            "n_embd": cfg.n_embd,
            "device": str(self.device),
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "meta": copy.deepcopy(self.meta),
        }

    def generate(self, prompt: str, max_new_tokens: int, *, temperature: float = 1.0, top_p: float = 1.0,
                 seed: int | None = None, stop: list[str] | None = None,
                 logits_processor: LogitsHook | None = None) -> Generator[str, None, str]:
        """Stream up to *max_new_tokens* characters continuing *prompt*.

        Yields text pieces.  The generator's return value (``StopIteration.value``)
        is the finish reason: ``"stop"`` when a *stop* string was produced (it and
        anything after it are not emitted) or ``"length"`` otherwise.

        Args:
            prompt: text to continue; only its last ``block_size`` characters are
                used, unknown characters map to the tokenizer's fallback, and an
                empty prompt starts from ``"\\n"``.
            max_new_tokens: maximum number of characters to sample (0 allowed).
            temperature: softmax temperature; ``0`` (or anything below ``GREEDY_BELOW``) means greedy argmax.
            top_p: nucleus sampling mass in ``(0, 1]``.
            seed: per-call RNG seed; ``None`` picks a random one.
            stop: strings that end generation when they appear in the output.
            logits_processor: a transformers-style ``(input_ids, scores) -> scores`` hook applied to each
                step's logits (shape ``(1, vocab)``) before sampling, e.g. qgpt's quantum processor. It owns
                temperature and top-p then: sampling uses the processed logits as they are.
        """
        self._validate(max_new_tokens, temperature, top_p)
        if temperature < GREEDY_BELOW:
            temperature = 0.0  # dividing the logits by less overflows float32: the answer is the argmax anyway
        if logits_processor is not None and temperature > 0:
            temperature, top_p = 1.0, 1.0  # the processor applied the request's own values
        stops = [s for s in (stop or []) if s]
        gen = torch.Generator().manual_seed(seed if seed is not None else secrets.randbits(63))
        return self._stream(prompt, max_new_tokens, temperature, top_p, gen, stops, logits_processor)

    def generate_text(self, prompt: str, max_new_tokens: int, **kwargs: Any) -> tuple[str, str]:
        """Run :meth:`generate` to completion; return ``(text, finish_reason)``."""
        stream = self.generate(prompt, max_new_tokens, **kwargs)
        pieces: list[str] = []
        while True:
            try:
                pieces.append(next(stream))
            except StopIteration as done:
                return "".join(pieces), done.value

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _validate(max_new_tokens: int, temperature: float, top_p: float) -> None:
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if not temperature >= 0.0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")

    def _stream(self, prompt: str, max_new_tokens: int, temperature: float, top_p: float,
                gen: torch.Generator, stops: Sequence[str],
                hook: LogitsHook | None = None) -> Generator[str, None, str]:
        """Sampling loop with incremental (KV-cached) decoding and stop-string hold-back."""
        block = self.model.config.block_size
        window = self.tokenizer.encode(prompt or EMPTY_PROMPT)[-block:]
        cache, logits = self._prefill(window)
        pending = ""  # generated text not yet emitted because it may start a stop string
        for step in range(max_new_tokens):
            if hook is not None and temperature > 0:
                logits = hook(torch.tensor([window], dtype=torch.long), logits[None, :])[0]
            token = self._sample(logits, temperature, top_p, gen)
            pending += self.tokenizer.decode([token])
            if stops:
                cut = _find_stop(pending, stops)
                if cut is not None:
                    if cut:
                        yield pending[:cut]
                    return "stop"
                safe = len(pending) - _partial_stop_len(pending, stops)
                if safe:
                    yield pending[:safe]
                    pending = pending[safe:]
            else:
                yield pending
                pending = ""
            if step + 1 == max_new_tokens:
                break
            window.append(token)
            if cache.length >= block:
                window = window[-self.refill_len:]
                cache, logits = self._prefill(window)
            else:
                logits = self._decode(token, cache)
        if pending:
            yield pending
        return "length"

    @torch.inference_mode()
    def _prefill(self, tokens: list[int]) -> tuple[KVCache, torch.Tensor]:
        """Run *tokens* through a fresh cache; return it and the next-token logits."""
        cache = self.model.new_cache()
        idx = torch.tensor([tokens], dtype=torch.long, device=self.device)
        logits = self.model(idx, kv_cache=cache, start_pos=0)
        return cache, logits[0, -1].float().cpu()

    @torch.inference_mode()
    def _decode(self, token: int, cache: KVCache) -> torch.Tensor:
        """Append one token to *cache*; return the next-token logits."""
        idx = torch.tensor([[token]], dtype=torch.long, device=self.device)
        logits = self.model(idx, kv_cache=cache, start_pos=cache.length)
        return logits[0, -1].float().cpu()

    @staticmethod
    @torch.inference_mode()
    def _sample(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> int:
        """Pick the next token id: greedy at temperature 0, else temperature + nucleus sampling."""
        if temperature < GREEDY_BELOW:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / temperature, dim=-1)
        if top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            # Keep the smallest prefix whose mass reaches top_p (always at least one token).
            keep = (torch.cumsum(sorted_probs, dim=-1) - sorted_probs) < top_p
            keep[0] = True
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
        return int(torch.multinomial(probs, 1, generator=gen))


def _find_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index of the earliest stop-string occurrence in *text*, or ``None``."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _partial_stop_len(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of *text* that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best
