"""QuantumGenerator: a Hugging Face causal LM + tokenizer sampled through the QuantumLogitsProcessor.

``generate`` returns the seed's ``/generate`` response body; ``stream`` yields text pieces as they are decoded
and exposes the same body once finished. One generation runs at a time per generator (a lock), since the
global torch RNG is seeded per request and the model shares one device.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessorList,
    PreTrainedModel,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from gpu_apps.qgpt.entropy import EntropyPool
from gpu_apps.qgpt.processor import EntropySource, QuantumLogitsProcessor
from gpu_apps.qgpt.profiles import get_profile

GREEDY_BELOW = 1e-4  # temperatures below this sample greedily (dividing logits by 1e-131 overflows)


@dataclass(frozen=True, slots=True)
class _Request:
    """One generation's parameters."""

    prompt: str
    max_new_tokens: int
    quantum_profile: str
    temperature: float
    top_p: float
    seed: int | None


class _CancelCriteria(StoppingCriteria):
    """Stops generation once ``event`` is set (a client went away)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor,
                 **kwargs: Any) -> torch.BoolTensor:
        stop = self.event.is_set()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class TokenStream:
    """Iterator of decoded text pieces; ``response`` holds the full /generate body after the last piece."""

    def __init__(self, streamer: TextIteratorStreamer, thread: threading.Thread, cancel: threading.Event,
                 holder: dict[str, Any]) -> None:
        self._streamer, self._thread, self._cancel, self._holder = streamer, thread, cancel, holder
        self.response: dict[str, Any] | None = None

    def __iter__(self) -> Iterator[str]:
        try:
            for piece in self._streamer:
                if piece:
                    yield piece
        finally:
            self._thread.join()
        if "error" in self._holder:
            raise self._holder["error"]
        self.response = self._holder.get("response")

    def cancel(self) -> None:
        """Ask the generation to stop at the next step."""
        self._cancel.set()


class QuantumGenerator:
    """Wraps ``model`` and ``tokenizer``; quantum entropy comes from ``pool``."""

    def __init__(self, model: PreTrainedModel, tokenizer: Any, pool: EntropySource, *,
                 model_name: str | None = None, use_chat_template: bool = False) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.pool = pool
        self.model_name = model_name or str(getattr(model.config, "name_or_path", "") or type(model).__name__)
        self.use_chat_template = use_chat_template and getattr(tokenizer, "chat_template", None) is not None
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained_dir(cls, path: str | Path, device: str = "cuda", dtype: str | torch.dtype = "auto", *,
                            pool: EntropySource | None = None, model_name: str | None = None,
                            use_chat_template: bool | None = None) -> QuantumGenerator:
        """Load a saved causal LM (e.g. openai/gpt-oss-120b) and its tokenizer from ``path``.

        ``device="cuda"`` places the weights with ``device_map="auto"`` (gpt-oss ships MXFP4 weights, which
        transformers keeps quantized on Hopper when the ``kernels``/triton packages are present); ``"cpu"``
        loads on the CPU. ``dtype`` is ``"auto"``, a name such as ``"bfloat16"``, or a torch dtype. Without
        ``pool`` entropy comes from the OS CSPRNG only. The chat template is used when the tokenizer has one,
        unless ``use_chat_template`` says otherwise.
        """
        resolved = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        kwargs: dict[str, Any] = {"dtype": resolved}
        if device.startswith("cuda"):
            kwargs["device_map"] = "auto" if device == "cuda" else device
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
        if not device.startswith("cuda"):
            model = model.to(device)
        chat = getattr(tokenizer, "chat_template", None) is not None if use_chat_template is None \
            else use_chat_template
        return cls(model, tokenizer, pool or EntropyPool(None), model_name=model_name, use_chat_template=chat)

    @property
    def device(self) -> torch.device:
        """Where inputs go (the embedding's device under device_map)."""
        return self.model.get_input_embeddings().weight.device

    def _encode(self, prompt: str) -> dict[str, torch.Tensor]:
        if self.use_chat_template:
            enc = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                     add_generation_prompt=True, return_tensors="pt",
                                                     return_dict=True)
        else:
            enc = self.tokenizer(prompt, return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    def _prepare(self, req: _Request,
                 extra: dict[str, Any]) -> tuple[dict[str, Any], QuantumLogitsProcessor | None]:
        if req.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if req.temperature < 0 or not 0 < req.top_p <= 1:
            raise ValueError("need temperature >= 0 and 0 < top_p <= 1")
        get_profile(req.quantum_profile)
        tok = self.tokenizer
        pad = tok.eos_token_id if tok.pad_token_id is None else tok.pad_token_id
        # Warpers are applied inside the processor, so generate() itself must not rescale or truncate.
        kwargs: dict[str, Any] = dict(self._encode(req.prompt), max_new_tokens=req.max_new_tokens,
                                      pad_token_id=pad, temperature=1.0, top_p=1.0, top_k=0, min_p=None,
                                      typical_p=1.0, **extra)
        processor = None
        if req.temperature < GREEDY_BELOW:  # greedy: a point mass leaves quantum entropy nothing to steer
            kwargs["do_sample"] = False
        else:
            processor = QuantumLogitsProcessor(self.pool, req.quantum_profile, temperature=req.temperature,
                                               top_p=req.top_p)
            kwargs.update(do_sample=True, logits_processor=LogitsProcessorList([processor]))
        if req.seed is not None:
            torch.manual_seed(req.seed)
        return kwargs, processor

    def _run(self, req: _Request, extra: dict[str, Any]) -> dict[str, Any]:
        """Generate under the lock; return the seed's /generate response body."""
        with self._lock:
            started = time.perf_counter()
            kwargs, processor = self._prepare(req, extra)
            with torch.inference_mode():
                out = self.model.generate(**kwargs)
            new = out[0, kwargs["input_ids"].shape[1]:]
            diagnostics = processor.diagnostics() if processor is not None else {
                "total_entropy_consumed": 0, "modifications_applied": 0, "average_logit_diff": 0.0,
                "entropy_source": "none"}
            return {"generated_text": self.tokenizer.decode(new, skip_special_tokens=True),
                    "tokens_generated": int(new.numel()),
                    "quantum_profile": get_profile(req.quantum_profile).name,
                    "quantum_diagnostics": diagnostics,
                    "generation_time": round(time.perf_counter() - started, 4),
                    "model": self.model_name, "temperature": req.temperature}

    def generate(self, prompt: str, max_new_tokens: int = 512, quantum_profile: str = "medium",
                 temperature: float = 0.8, top_p: float = 1.0, seed: int | None = None) -> dict[str, Any]:
        """Generate a completion; return the seed's /generate response body."""
        return self._run(_Request(prompt, max_new_tokens, quantum_profile, temperature, top_p, seed), {})

    def stream(self, prompt: str, max_new_tokens: int = 512, quantum_profile: str = "medium",
               temperature: float = 0.8, top_p: float = 1.0, seed: int | None = None,
               timeout_s: float | None = 300.0) -> TokenStream:
        """Start a generation in a thread; iterate the returned TokenStream for text pieces."""
        req = _Request(prompt, max_new_tokens, quantum_profile, temperature, top_p, seed)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True,
                                        timeout=timeout_s)
        cancel, holder = threading.Event(), {}
        extra = {"streamer": streamer, "stopping_criteria": StoppingCriteriaList([_CancelCriteria(cancel)])}

        def work() -> None:
            try:
                holder["response"] = self._run(req, extra)
            except Exception as e:  # noqa: BLE001 - not swallowed: TokenStream re-raises it to the consumer
                holder["error"] = e
                streamer.end()

        thread = threading.Thread(target=work, name="qgpt-generate", daemon=True)
        thread.start()
        return TokenStream(streamer, thread, cancel, holder)
