"""From the eight heads' logits to the model card's per-prompt results (pure functions, CPU).

The numerics follow the card's ``CustomModel.compute_results`` / ``process_logits`` step by step,
so results match it digit for digit:

1. **Task type**: top-2 indices of the logits, their softmax probabilities rounded to 3 decimals
   (Python ``round``). ``task_type_2`` becomes ``"NA"`` when its rounded probability is < 0.1.
   ``task_type_prob`` is the first one's rounded probability.
2. **Other heads**: ``score = sum(softmax(logits) * weights) / divisor``. The softmax is float32
   (the card's dtype) and the weighted sum is float64 (numpy promotion). The score is rounded to 4
   decimals with numpy's rounding, which is what ``round()`` does on a ``numpy.float64``.
   ``number_of_few_shots`` becomes ``0`` when it is below 0.05.
3. **prompt_complexity_score** = ``round(0.35*creativity + 0.25*reasoning + 0.15*constraint +
   0.15*domain + 0.05*contextual + 0.05*few_shots, 5)``, computed from the rounded head scores
   in that order, again with numpy's rounding. The card's worked example needs numpy's rounding:
   the exact sum is 0.278225, numpy gives 0.27822 and Python's ``round`` gives 0.27823.

Logits may be bf16/fp16 (GPU inference). They are cast to float32 first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .heads import (
    COMPLEXITY_WEIGHTS,
    DEFAULT_SPEC,
    NO_SECOND_TASK,
    OUTPUT_KEYS,
    SECOND_TASK_THRESHOLD,
    ClassifierSpec,
)

ArrayLike = torch.Tensor | np.ndarray | Sequence[Sequence[float]]

#: Decimals of the head scores and of the overall complexity (model card).
SCORE_DECIMALS = 4
COMPLEXITY_DECIMALS = 5
TASK_PROB_DECIMALS = 3
#: ``number_of_few_shots`` below this value is reported as 0 (model card).
FEW_SHOTS_FLOOR = 0.05


def _as_float32(x: ArrayLike) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float64))
    t = t.to("cpu", torch.float32)
    if t.dim() != 2:
        raise ValueError(f"head logits must be 2-D (prompts x outputs), got shape {tuple(t.shape)}")
    return t


def task_types(logits: ArrayLike,
               spec: ClassifierSpec = DEFAULT_SPEC) -> tuple[list[str], list[str], list[float]]:
    """``(task_type_1, task_type_2, task_type_prob)`` for a batch of task-type logits."""
    t = _as_float32(logits)
    top2 = torch.topk(t, k=2, dim=1).indices
    probs = torch.softmax(t, dim=1).gather(1, top2).tolist()
    first: list[str] = []
    second: list[str] = []
    prob: list[float] = []
    for (i, j), (p1, p2) in zip(top2.tolist(), probs, strict=True):
        p1r, p2r = round(p1, TASK_PROB_DECIMALS), round(p2, TASK_PROB_DECIMALS)
        first.append(spec.task_types[i])
        second.append(spec.task_types[j] if p2r >= SECOND_TASK_THRESHOLD else NO_SECOND_TASK)
        prob.append(p1r)
    return first, second, prob


def head_scores(logits: ArrayLike, weights: Sequence[float], divisor: float,
                decimals: int = SCORE_DECIMALS) -> np.ndarray:
    """Rounded ``sum(softmax(logits) * weights) / divisor`` per prompt (float64 array)."""
    probs = torch.softmax(_as_float32(logits), dim=1).numpy()  # float32, as in the card
    w = np.asarray(weights, dtype=np.float64)
    if probs.shape[1] != w.shape[0]:
        raise ValueError(f"{probs.shape[1]} logits per prompt but {w.shape[0]} weights")
    weighted = np.sum(probs * w, axis=1) / divisor  # float32 * float64 -> float64
    return np.round(weighted, decimals)


def complexity(scores: dict[str, np.ndarray]) -> np.ndarray:
    """The card's overall score from the rounded head scores (float64 array, 5 decimals)."""
    total: np.ndarray | None = None
    for name, weight in COMPLEXITY_WEIGHTS.items():  # card's order: left-to-right sum
        term = weight * scores[name]
        total = term if total is None else total + term
    assert total is not None
    return np.round(total, COMPLEXITY_DECIMALS)


def postprocess(logits: Sequence[ArrayLike], spec: ClassifierSpec = DEFAULT_SPEC) -> list[dict[str, Any]]:
    """Per-prompt result dicts (keys in :data:`OUTPUT_KEYS` order) from the eight heads' logits.

    ``logits[k]`` holds head ``k``'s logits for every prompt, shape ``(n_prompts, outputs_k)``.
    """
    if len(logits) != len(spec.heads):
        raise ValueError(f"expected logits of {len(spec.heads)} heads, got {len(logits)}")
    n = int(_as_float32(logits[0]).shape[0])
    for head, x in zip(spec.heads, logits, strict=True):
        shape = tuple(_as_float32(x).shape)
        if shape != (n, head.num_outputs):
            raise ValueError(f"head {head.name!r}: expected logits of shape {(n, head.num_outputs)}, "
                             f"got {shape}")
    if n == 0:
        return []
    first, second, prob = task_types(logits[0], spec)
    scores: dict[str, np.ndarray] = {}
    for head, x in zip(spec.heads[1:], logits[1:], strict=True):
        assert head.weights is not None
        s = head_scores(x, head.weights, head.divisor)
        if head.name == "number_of_few_shots":
            s = np.where(s >= FEW_SHOTS_FLOOR, s, 0.0)
        scores[head.name] = s
    overall = complexity(scores)
    results: list[dict[str, Any]] = []
    for i in range(n):
        row: dict[str, Any] = {"task_type_1": first[i], "task_type_2": second[i], "task_type_prob": prob[i]}
        for name, s in scores.items():
            value = float(s[i])
            row[name] = 0 if name == "number_of_few_shots" and value == 0.0 else value
        row["prompt_complexity_score"] = float(overall[i])
        results.append({key: row[key] for key in OUTPUT_KEYS})
    return results


def to_columns(results: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """The card's batch layout: ``{key: [value per prompt]}`` for every key of :data:`OUTPUT_KEYS`."""
    return {key: [r[key] for r in results] for key in OUTPUT_KEYS}
