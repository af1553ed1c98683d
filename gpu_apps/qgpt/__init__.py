"""qgpt: a causal LM (gpt-oss-120b in production) whose sampling steps are steered by quantum entropy.

Modules: ``profiles`` (the five quantum profiles), ``entropy`` (QRNG client, circuit breaker, entropy pool),
``processor`` (the logits processor), ``generator`` (HF model wrapper), ``api`` (FastAPI surface),
``tiny`` (a tiny offline model + tokenizer for tests). The mixing math is in ``docs/qgpt.md``.
"""

from typing import Any

from gpu_apps.qgpt.entropy import CircuitBreaker, EntropyPool, QrngClient, QrngError
from gpu_apps.qgpt.profiles import PROFILES, QuantumProfile, UnknownProfileError, get_profile


def __getattr__(name: str) -> Any:
    # the processor imports transformers (~0.5 s, tens of MB): load it only when someone uses it
    if name == "QuantumLogitsProcessor":
        from gpu_apps.qgpt.processor import QuantumLogitsProcessor

        return QuantumLogitsProcessor
    raise AttributeError(name)

__all__ = [
    "PROFILES",
    "CircuitBreaker",
    "EntropyPool",
    "QrngClient",
    "QrngError",
    "QuantumLogitsProcessor",
    "QuantumProfile",
    "UnknownProfileError",
    "get_profile",
]
