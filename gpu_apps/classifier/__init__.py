"""NVIDIA prompt-task-and-complexity-classifier (seed 001): model, post-processing, engine, FastAPI app.

Public API:

* :class:`PromptClassifier`: DeBERTa-v3 backbone, mean pooling and eight linear heads
  (``from_config``, ``from_pretrained_dir``).
* :func:`postprocess` / :func:`to_columns`: the model card's post-processing of the heads' logits.
* :class:`ClassifierEngine`: tokenizer, model, device and dtype, with length-bucketed batching
  (``classify``, ``logits``, ``info``).
* :func:`create_app` / :func:`hs256_authorizer`: ``POST /classify`` and ``GET /health`` in the seed's formats.
* :data:`DEFAULT_SPEC`, :data:`TASK_TYPES`, :data:`CARD_TASK_TYPES`: head specs and labels.

:mod:`gpu_apps.classifier.tiny` builds a tiny offline checkpoint for tests and local runs.
"""

from .api import SERVICE_NAME, create_app, hs256_authorizer
from .engine import DEFAULT_MODEL_NAME, ClassifierEngine, plan_batches
from .heads import CARD_TASK_TYPES, DEFAULT_SPEC, OUTPUT_KEYS, TASK_TYPES, ClassifierSpec, HeadSpec
from .model import PromptClassifier
from .postprocess import postprocess, to_columns

__all__ = [
    "CARD_TASK_TYPES",
    "DEFAULT_MODEL_NAME",
    "DEFAULT_SPEC",
    "OUTPUT_KEYS",
    "SERVICE_NAME",
    "TASK_TYPES",
    "ClassifierEngine",
    "ClassifierSpec",
    "HeadSpec",
    "PromptClassifier",
    "create_app",
    "hs256_authorizer",
    "plan_batches",
    "postprocess",
    "to_columns",
]
