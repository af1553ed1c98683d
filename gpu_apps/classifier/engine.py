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

import re
import threading
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .model import PromptClassifier
from .postprocess import postprocess

DEFAULT_MODEL_NAME = "nvidia/prompt-task-and-complexity-classifier"
#: What a hub download fetches: config, weights and tokenizer files (not README/.gitattributes).
HUB_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt"]
TOKENIZER_FILES = ("tokenizer.json", "spm.model", "tokenizer_config.json")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")  # org/name


class ModelUnavailable(Exception):
    """The checkpoint cannot be loaded on this machine: not a directory, not in the Hugging Face cache and the
    hub not reachable, or files missing. The message names the checkpoint and says how to provide it."""

    def __init__(self, checkpoint: str, reason: str) -> None:
        self.checkpoint = checkpoint
        self.reason = reason
        hub_id = checkpoint if _HUB_ID.fullmatch(checkpoint) else DEFAULT_MODEL_NAME
        super().__init__(
            f"The classifier checkpoint `{checkpoint}` is not available: {reason}. To provide it, either set "
            "`litellm_params.checkpoint: /path/to/dir` to a local directory holding config.json, model.safetensors "
            "(or pytorch_model.bin) and the tokenizer files (tokenizer.json or spm.model, tokenizer_config.json); "
            f"or pre-fill the Hugging Face cache on a machine with network (`huggingface-cli download {hub_id}`, "
            "`hf download` in newer versions) and copy it here or point HF_HOME at it; or let this worker reach "
            "huggingface.co (HF_HUB_OFFLINE unset).")


def _hub_errors() -> tuple[type[BaseException], ...]:
    """What a hub look-up raises when the model cannot be had: huggingface_hub's errors (OSError subclasses:
    LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, ...), a bad repo id, and the HTTP client's
    own connection errors (httpx in huggingface_hub >= 1, requests before)."""
    errors: list[type[BaseException]] = [OSError, TimeoutError]
    try:
        from huggingface_hub.errors import HFValidationError

        errors.append(HFValidationError)
    except ImportError:  # pragma: no cover - very old huggingface_hub
        pass
    for module in ("httpx2", "httpx", "requests"):
        try:
            mod = __import__(module)
        except ImportError:
            continue
        err = getattr(mod, "HTTPError", None) if module != "requests" else getattr(mod, "RequestException", None)
        if isinstance(err, type) and issubclass(err, BaseException):
            errors.append(err)
    return tuple(errors)


def _hub_reason(err: BaseException) -> str:
    """Why the hub look-up failed, in one line."""
    from huggingface_hub import constants

    cache = constants.HF_HUB_CACHE
    name = type(err).__name__
    if name == "GatedRepoError":
        return "the Hugging Face hub refused access (a gated repository: accept its license and set HF_TOKEN)"
    if name == "RepositoryNotFoundError":
        return "the Hugging Face hub has no such repository (or it needs a token: set HF_TOKEN)"
    if name == "HFValidationError":
        return "it is not a valid Hugging Face model id"
    if constants.HF_HUB_OFFLINE or name == "OfflineModeIsEnabled":
        return f"it is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set"
    cause = err.__cause__ or err.__context__
    detail = f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}" if cause else name
    return f"it is not in the Hugging Face cache ({cache}) and the hub could not be reached ({detail.strip()})"


def resolve_checkpoint(checkpoint: str | Path, *, timeout: float | None = None,
                       revision: str | None = None) -> Path:
    """The local directory for ``checkpoint``: the directory itself, or for a Hugging Face model id
    (``org/name``) its snapshot in the Hugging Face cache, downloaded first when the cache lacks it (only the
    files in :data:`HUB_ALLOW_PATTERNS`). With ``HF_HUB_OFFLINE=1`` only the cache is used. ``timeout`` bounds
    each hub request (huggingface_hub's ``etag_timeout``); the download itself is bounded by the caller.
    Raises :class:`ModelUnavailable`."""
    name = str(checkpoint)
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if not _HUB_ID.fullmatch(name):
        raise ModelUnavailable(name, f"{path} is not a directory")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - it comes with transformers
        raise ModelUnavailable(name, "huggingface_hub is not installed, so a hub id cannot be resolved") from e
    etag_timeout = 10.0 if timeout is None else max(1.0, min(10.0, timeout))
    try:
        folder = snapshot_download(name, revision=revision, allow_patterns=HUB_ALLOW_PATTERNS,
                                   etag_timeout=etag_timeout)
    except _hub_errors() as e:
        raise ModelUnavailable(name, _hub_reason(e)) from e
    return Path(str(folder))


def missing_files(root: Path) -> list[str]:
    """The checkpoint files ``root`` lacks (empty when it looks loadable)."""
    from .model import WEIGHT_FILES

    wanted = [("config.json",), WEIGHT_FILES, TOKENIZER_FILES]
    return [" or ".join(names) for names in wanted if not any((root / n).is_file() for n in names)]


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

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, *, timeout: float | None = None,
                        **kwargs: Any) -> ClassifierEngine:
        """Load from a local checkpoint directory or a Hugging Face model id such as
        ``nvidia/prompt-task-and-complexity-classifier`` (Hugging Face cache first, then the hub; see
        :func:`resolve_checkpoint`). Raises :class:`ModelUnavailable` when the files cannot be had."""
        name = str(checkpoint)
        root = resolve_checkpoint(name, timeout=timeout)
        missing = missing_files(root)
        if missing:
            raise ModelUnavailable(name, f"{root} lacks {', '.join(missing)}")
        if "model_name" not in kwargs and _HUB_ID.fullmatch(name) and not Path(name).expanduser().is_dir():
            from .model import read_config

            kwargs["model_name"] = str(read_config(root).get("model_name") or name)
        try:
            return cls.from_pretrained_dir(root, **kwargs)
        except OSError as e:  # a file that is there but unreadable, or a tokenizer transformers cannot load
            raise ModelUnavailable(name, f"{root} could not be loaded ({type(e).__name__}: "
                                         f"{str(e).splitlines()[0] if str(e) else ''})") from e

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
