"""Character-level tokenizer: one token per character of a fixed vocabulary."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

#: Preferred replacement characters for out-of-vocabulary input, in order.
_FALLBACK_CANDIDATES: tuple[str, ...] = ("?", " ")


class CharTokenizer:
    """Maps characters to integer ids and back.

    The vocabulary is the sorted set of characters seen in the training corpus.
    Characters outside it are encoded as :attr:`fallback` (``"?"`` when the corpus
    contains it), so arbitrary user input never raises.
    """

    def __init__(self, chars: Sequence[str], fallback: str | None = None) -> None:
        if not chars:
            raise ValueError("vocabulary must not be empty")
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError("vocabulary must be distinct single characters")
        self.chars: tuple[str, ...] = tuple(chars)
        self._stoi: dict[str, int] = {c: i for i, c in enumerate(self.chars)}
        if fallback is None:
            fallback = next((c for c in _FALLBACK_CANDIDATES if c in self._stoi), self.chars[0])
        if fallback not in self._stoi:
            raise ValueError(f"fallback {fallback!r} is not in the vocabulary")
        self.fallback: str = fallback
        self.fallback_id: int = self._stoi[fallback]

    @classmethod
    def from_text(cls, text: Iterable[str]) -> CharTokenizer:
        """Build a tokenizer whose vocabulary is the sorted distinct characters of *text*."""
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        """Number of distinct tokens."""
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        """Encode *text*; unknown characters become :attr:`fallback_id`."""
        stoi, fb = self._stoi, self.fallback_id
        return [stoi.get(ch, fb) for ch in text]

    def decode(self, ids: Iterable[int]) -> str:
        """Decode token ids back to text."""
        chars = self.chars
        return "".join(chars[i] for i in ids)

    def to_dict(self) -> dict[str, Any]:
        """Serialise to a plain dict (safe for ``torch.load(weights_only=True)``)."""
        return {"type": "char", "chars": "".join(self.chars), "fallback": self.fallback}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CharTokenizer:
        """Inverse of :meth:`to_dict`."""
        if data.get("type", "char") != "char":
            raise ValueError(f"unsupported tokenizer type {data.get('type')!r}")
        return cls(list(data["chars"]), fallback=data.get("fallback"))

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, fallback={self.fallback!r})"
