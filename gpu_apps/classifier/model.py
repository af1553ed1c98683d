"""``PromptClassifier``: DeBERTa-v3 backbone, masked mean pooling and eight linear heads.

The parameter names match the checkpoint that ``PyTorchModelHubMixin`` wrote for
``nvidia/prompt-task-and-complexity-classifier``: ``backbone.*`` for the encoder and
``head_{k}.fc.{weight,bias}`` for the heads. So ``model.safetensors`` from that repository loads
directly with :meth:`PromptClassifier.from_pretrained_dir`, without ``huggingface_hub`` or network access.

A checkpoint directory holds:

* ``config.json``: the classifier config (``target_sizes``, ``task_type_map``, ``weights_map``,
  ``divisor_map``, ``base_model``), as published. The backbone's architecture comes from the
  first of these that exists: a ``backbone_config`` dict in that file (written by
  :mod:`gpu_apps.classifier.tiny`), ``backbone/config.json``, or the built-in DeBERTa-v3-base
  preset when ``base_model`` is ``microsoft/DeBERTa-v3-base``.
* ``model.safetensors`` or ``pytorch_model.bin``.
* the tokenizer files, which :class:`gpu_apps.classifier.engine.ClassifierEngine` loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, DebertaV2Config, PretrainedConfig

from .heads import DEFAULT_SPEC, ClassifierSpec

#: ``microsoft/deberta-v3-base``'s architecture (its config.json), so the published checkpoint
#: loads without fetching the base model.
DEBERTA_V3_BASE: dict[str, Any] = {
    "model_type": "deberta-v2", "vocab_size": 128100, "hidden_size": 768, "num_hidden_layers": 12,
    "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512,
    "type_vocab_size": 0, "initializer_range": 0.02, "layer_norm_eps": 1e-7, "relative_attention": True,
    "max_relative_positions": -1, "position_buckets": 256, "norm_rel_ebd": "layer_norm",
    "share_att_key": True, "pos_att_type": ["p2c", "c2p"], "position_biased_input": False, "pad_token_id": 0,
}
BASE_MODEL_ID = "microsoft/DeBERTa-v3-base"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class MulticlassHead(nn.Module):
    """A single linear layer (kept as ``.fc`` so the checkpoint's key names apply)."""

    def __init__(self, input_size: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(input_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for pooled features ``x``."""
        return self.fc(x)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the unmasked token states, in float32 (the card's float mask promotes it too)."""
    mask = attention_mask.unsqueeze(-1).to(torch.float32)
    summed = (hidden.to(torch.float32) * mask).sum(dim=1)
    return summed / mask.sum(dim=1).clamp(min=1e-9)


class PromptClassifier(nn.Module):
    """Backbone + mean pooling + one :class:`MulticlassHead` per head of ``spec``.

    ``forward`` returns the list of per-head logits (float32). :mod:`.postprocess` turns them into results.
    The heads stay float32 when the backbone runs in bf16 (see :meth:`set_backbone_dtype`).
    """

    def __init__(self, backbone_config: PretrainedConfig, spec: ClassifierSpec = DEFAULT_SPEC) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = AutoModel.from_config(backbone_config)
        hidden = int(backbone_config.hidden_size)
        for k, head in enumerate(spec.heads):
            self.add_module(f"head_{k}", MulticlassHead(hidden, head.num_outputs))

    @property
    def heads(self) -> list[MulticlassHead]:
        """The heads in checkpoint order (``head_0`` ... ``head_7``)."""
        return [getattr(self, f"head_{k}") for k in range(len(self.spec.heads))]

    @classmethod
    def from_config(cls, backbone_config: PretrainedConfig | dict[str, Any],
                    spec: ClassifierSpec = DEFAULT_SPEC) -> PromptClassifier:
        """A randomly initialised classifier for a backbone config (object or dict)."""
        if isinstance(backbone_config, dict):
            fields = {k: v for k, v in backbone_config.items() if k != "model_type"}
            backbone_config = DebertaV2Config(**fields)
        return cls(backbone_config, spec)

    def set_backbone_dtype(self, dtype: torch.dtype) -> PromptClassifier:
        """Cast the encoder only; pooling and heads stay float32 for accurate scores."""
        self.backbone.to(dtype)
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        """Per-head logits, each of shape ``(batch, outputs)``, float32."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = mean_pool(hidden, attention_mask)
        return [head(pooled) for head in self.heads]

    # ------------------------------------------------------------------ persistence
    def classifier_config(self, base_model: str = BASE_MODEL_ID) -> dict[str, Any]:
        """The config.json this model saves: the published classifier keys plus ``backbone_config``."""
        backbone = self.backbone.config.to_dict()
        keep = set(DEBERTA_V3_BASE) | {"model_type"}
        return {"base_model": base_model, **self.spec.to_config(),
                "backbone_config": {k: v for k, v in backbone.items() if k in keep}}

    def save_pretrained_dir(self, path: str | Path, base_model: str = BASE_MODEL_ID,
                            extra_config: dict[str, Any] | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``path`` (created if needed)."""
        from safetensors.torch import save_file

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        config = {**self.classifier_config(base_model), **(extra_config or {})}
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(out / "model.safetensors"))
        return out

    @classmethod
    def from_pretrained_dir(cls, path: str | Path) -> PromptClassifier:
        """Load a checkpoint directory (see the module docstring). Always on CPU, float32, eval mode."""
        root = Path(path)
        config = read_config(root)
        model = cls.from_config(backbone_config_for(root, config), ClassifierSpec.from_config(config))
        load_weights(model, root)
        return model.eval()


def read_config(root: Path) -> dict[str, Any]:
    """The directory's ``config.json`` as a dict."""
    cfg_path = root / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found: not a classifier checkpoint directory")
    return dict(json.loads(cfg_path.read_text(encoding="utf-8")))


def backbone_config_for(root: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The backbone architecture for a checkpoint directory, see the module docstring."""
    if isinstance(config.get("backbone_config"), dict):
        return dict(config["backbone_config"])
    sub = root / "backbone" / "config.json"
    if sub.is_file():
        return dict(json.loads(sub.read_text(encoding="utf-8")))
    base = str(config.get("base_model") or "")
    if base.lower() == BASE_MODEL_ID.lower():
        return dict(DEBERTA_V3_BASE)
    raise ValueError(f"{root}: no backbone_config, no backbone/config.json and unknown base_model {base!r}")


def load_weights(model: PromptClassifier, root: Path) -> None:
    """Load ``model.safetensors`` (or ``pytorch_model.bin``) strictly, apart from position-id buffers."""
    for name in WEIGHT_FILES:
        file = root / name
        if file.is_file():
            break
    else:
        raise FileNotFoundError(f"{root}: none of {', '.join(WEIGHT_FILES)}")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(file), device="cpu")
    else:
        state = torch.load(file, map_location="cpu", weights_only=True)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    unexpected = [k for k in result.unexpected_keys if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"{file}: checkpoint does not match the model; missing {missing[:8]}, "
                         f"unexpected {unexpected[:8]}")
