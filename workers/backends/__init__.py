"""Backends, one module each, behind the interface in :mod:`workers.backends.base`; ``Backends``
(:mod:`workers.backends.registry`) builds them from the config's ``model_list``."""

from workers.backends.base import (
    Answer,
    Backend,
    BackendError,
    Chunk,
    Classifies,
    Completions,
    Embeds,
    Generates,
    WholeAnswer,
    unsupported,
)
from workers.backends.registry import Backends, Resources

__all__ = ["Answer", "Backend", "BackendError", "Backends", "Chunk", "Classifies", "Completions", "Embeds",
           "Generates", "Resources", "WholeAnswer", "unsupported"]
