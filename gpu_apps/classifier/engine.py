"""``ClassifierEngine``: tokenizer + :class:`PromptClassifier` + device/dtype, with length-bucketed batching.

``classify(prompts)`` works like this:

1. Tokenize every prompt once, without padding, truncated to ``max_length`` (512, the card's limit).
2. Sort the prompts by token length, longest first, and cut the sorted list into batches of at
   most ``batch_size`` prompts. When ``max_batch_tokens`` is set, a batch also stops before
   ``rows x longest`` would exceed it.
3. Pad each batch only to its own longest prompt (rounded up to ``pad_to_multiple_of``), not to
   512. The attention mask hides the padding. DeBERTa's relative positions ignore absolute
   positions, and mean pooling skips masked tokens. So padding changes no score beyond float
   noise; the tests check this.
4. Run under ``torch.inference_mode`` and keep the logits on the device until the end. Then
   copy them to the CPU once, put them back in input order and post-process
   (:mod:`.postprocess`).

The engine works on any device. By default it runs bf16 on CUDA and float32 on CPU; the heads
and pooling are always float32. A lock serialises calls, so one engine can serve a threaded web
server.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .model import PromptClassifier
from .postprocess import postprocess

DEFAULT_MODEL_NAME = "nvidia/prompt-task-and-complexity-classifier"


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def gpu_label(device: torch.device) -> str:
    """Short accelerator name for ``/health`` ("T4", "H100 80GB HBM3"), or "cpu"."""
    if device.type != "cuda":
        return device.type
    name = torch.cuda.get_device_name(device)
    for prefix in ("NVIDIA ", "Tesla "):
        name = name.removeprefix(prefix)
    return name


def plan_batches(lengths: list[int], batch_size: int, max_batch_tokens: int | None = None) -> list[list[int]]:
    """Group prompt indices into batches of similar length (longest first), see the module docstring."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        too_many_tokens = max_batch_tokens is not None and (len(current) + 1) * longest > max_batch_tokens
        if current and (len(current) >= batch_size or too_many_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


class ClassifierEngine:
    """Batched prompt classification. See the module docstring for how batching works."""

    def __init__(self, model: PromptClassifier, tokenizer: PreTrainedTokenizerBase, *,
                 device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                 model_name: str = DEFAULT_MODEL_NAME, prompt_prefix: str = "",
                 pad_to_multiple_of: int | None = 8, max_batch_tokens: int | None = None) -> None:
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.model = model.to(self.device).eval()
        self.model.set_backbone_dtype(self.dtype)
        self.tokenizer = tokenizer
        self.model_name = model_name
        #: Text put before every prompt. The card's example sends "Prompt: ...";
        #: the seed service sent raw prompts.
        self.prompt_prefix = prompt_prefix
        self.pad_to_multiple_of = pad_to_multiple_of
        self.max_batch_tokens = max_batch_tokens
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else 0
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained_dir(cls, path: str | Path, **kwargs: Any) -> ClassifierEngine:
        """Load model and tokenizer from a local checkpoint directory (no network)."""
        root = Path(path)
        model = PromptClassifier.from_pretrained_dir(root)
        tokenizer = AutoTokenizer.from_pretrained(str(root), local_files_only=True)
        if "model_name" not in kwargs:
            from .model import read_config

            kwargs["model_name"] = str(read_config(root).get("model_name") or DEFAULT_MODEL_NAME)
        return cls(model, tokenizer, **kwargs)

    # ------------------------------------------------------------------ inference
    def tokenize(self, prompts: list[str], max_length: int = 512) -> list[list[int]]:
        """Token ids per prompt (special tokens added, truncated, unpadded)."""
        texts = [self.prompt_prefix + p for p in prompts]
        enc = self.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=max_length,
                             padding=False, return_attention_mask=False, return_token_type_ids=False)
        return [list(ids) for ids in enc["input_ids"]]

    def _pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            width = -(-width // m) * m
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.as_tensor(row, dtype=torch.long)
            mask[r, : len(row)] = 1
        if self.device.type == "cuda":
            ids, mask = ids.pin_memory(), mask.pin_memory()
        return ids.to(self.device, non_blocking=True), mask.to(self.device, non_blocking=True)

    def logits(self, prompts: list[str], batch_size: int = 256, max_length: int = 512) -> list[torch.Tensor]:
        """Per-head float32 CPU logits, rows in input order."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise TypeError("prompts must be a list of strings")
        n_heads = len(self.model.spec.heads)
        if not prompts:
            return [torch.zeros((0, h.num_outputs)) for h in self.model.spec.heads]
        tokens = self.tokenize(list(prompts), max_length)
        batches = plan_batches([len(t) for t in tokens], batch_size, self.max_batch_tokens)
        outputs: list[list[torch.Tensor]] = [[] for _ in range(n_heads)]
        with self._lock, torch.inference_mode():
            for batch in batches:
                ids, mask = self._pad([tokens[i] for i in batch])
                for k, out in enumerate(self.model(ids, mask)):
                    outputs[k].append(out)
            merged = [torch.cat(o).float().cpu() for o in outputs]
        order = torch.tensor([i for batch in batches for i in batch], dtype=torch.long)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order))
        return [m[inverse] for m in merged]

    def classify(self, prompts: list[str], batch_size: int = 256,
                 max_length: int = 512) -> list[dict[str, Any]]:
        """The model card's result dict for every prompt, in input order (``[]`` for no prompts)."""
        return postprocess(self.logits(prompts, batch_size, max_length), self.model.spec)

    # ------------------------------------------------------------------ description
    def info(self) -> dict[str, Any]:
        """Model, device and batching settings (for logs and diagnostics)."""
        backbone = self.model.backbone.config
        return {
            "model": self.model_name,
            "device": str(self.device),
            "gpu": gpu_label(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "hidden_size": int(backbone.hidden_size),
            "layers": int(backbone.num_hidden_layers),
            "heads": {h.name: h.num_outputs for h in self.model.spec.heads},
            "task_types": list(self.model.spec.task_types),
            "prompt_prefix": self.prompt_prefix,
            "pad_to_multiple_of": self.pad_to_multiple_of,
            "max_batch_tokens": self.max_batch_tokens,
        }
