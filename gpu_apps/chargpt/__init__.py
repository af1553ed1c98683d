"""Character-level GPT ("chargpt") trained on stdlib docstrings and served on CPU.

Public API: :class:`CharGPTEngine` (load a checkpoint, stream text) and
:data:`DEFAULT_CHECKPOINT` (the shipped ``weights/chargpt.pt``).
"""

from .engine import DEFAULT_CHECKPOINT, CharGPTEngine

__all__ = ["DEFAULT_CHECKPOINT", "CharGPTEngine"]
