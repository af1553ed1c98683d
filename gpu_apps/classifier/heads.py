"""Label lists and head specifications of NVIDIA's prompt-task-and-complexity-classifier.

The facts come from the model card and the ``config.json`` published with
``nvidia/prompt-task-and-complexity-classifier``:

* ``target_sizes``: eight linear heads, in this order: task_type (12), creativity_scope (3),
  reasoning (2), contextual_knowledge (2), number_of_few_shots (6), domain_knowledge (4),
  no_label_reason (1), constraint_ct (2).
* ``task_type_map``: the head's 12 outputs in alphabetical order. The card lists 11 task
  types. The checkpoint adds a 12th class, ``"Unknown"``, at index 11.
* ``weights_map`` / ``divisor_map``: a head's score is ``sum(softmax(logits) * weights) / divisor``.
* The overall complexity uses the card's weights: 0.35 creativity + 0.25 reasoning +
  0.15 constraints + 0.15 domain knowledge + 0.05 contextual knowledge + 0.05 few shots.

:class:`ClassifierSpec` can also be read from such a ``config.json`` (:meth:`ClassifierSpec.from_config`),
so a checkpoint that ships other maps is post-processed with its own values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: The 11 task types in the order the model card lists them (for documentation and clients).
CARD_TASK_TYPES: tuple[str, ...] = (
    "Open QA", "Closed QA", "Summarization", "Text Generation", "Code Generation", "Chatbot",
    "Classification", "Rewrite", "Brainstorming", "Extraction", "Other",
)

#: The task-type head's outputs in index order (``task_type_map`` of the checkpoint's config.json).
TASK_TYPES: tuple[str, ...] = (
    "Brainstorming", "Chatbot", "Classification", "Closed QA", "Code Generation", "Extraction",
    "Open QA", "Other", "Rewrite", "Summarization", "Text Generation", "Unknown",
)

#: Label used for ``task_type_2`` when the second task type's rounded probability is below 0.1.
NO_SECOND_TASK = "NA"
#: Cut-off on the second task type's probability (after rounding to 3 decimals).
SECOND_TASK_THRESHOLD = 0.1

#: Weights of the overall ``prompt_complexity_score`` (model card).
COMPLEXITY_WEIGHTS: dict[str, float] = {
    "creativity_scope": 0.35,
    "reasoning": 0.25,
    "constraint_ct": 0.15,
    "domain_knowledge": 0.15,
    "contextual_knowledge": 0.05,
    "number_of_few_shots": 0.05,
}

#: Keys of one prompt's result, in the order of the checkpoint config's ``targets``.
OUTPUT_KEYS: tuple[str, ...] = (
    "task_type_1", "task_type_2", "task_type_prob", "creativity_scope", "reasoning",
    "contextual_knowledge", "number_of_few_shots", "domain_knowledge", "no_label_reason",
    "constraint_ct", "prompt_complexity_score",
)

#: Names of the eight heads, in the checkpoint's order (``head_0`` ... ``head_7``).
HEAD_NAMES: tuple[str, ...] = (
    "task_type", "creativity_scope", "reasoning", "contextual_knowledge",
    "number_of_few_shots", "domain_knowledge", "no_label_reason", "constraint_ct",
)


@dataclass(frozen=True)
class HeadSpec:
    """One linear head. ``weights`` is ``None`` for the task-type head, which is not a weighted score."""

    name: str
    num_outputs: int
    weights: tuple[float, ...] | None = None
    divisor: float = 1.0

    def __post_init__(self) -> None:
        if self.num_outputs < 1:
            raise ValueError(f"head {self.name!r}: num_outputs must be >= 1")
        if self.weights is not None and len(self.weights) != self.num_outputs:
            raise ValueError(f"head {self.name!r}: {len(self.weights)} weights for "
                             f"{self.num_outputs} outputs")
        if self.divisor == 0:
            raise ValueError(f"head {self.name!r}: divisor must not be 0")


@dataclass(frozen=True)
class ClassifierSpec:
    """Heads and labels of the classifier: all that post-processing needs besides the logits."""

    task_types: tuple[str, ...]
    heads: tuple[HeadSpec, ...]

    def __post_init__(self) -> None:
        names = tuple(h.name for h in self.heads)
        if names != HEAD_NAMES:
            raise ValueError(f"expected heads {HEAD_NAMES}, got {names}")
        if self.heads[0].num_outputs != len(self.task_types):
            raise ValueError(f"task_type head has {self.heads[0].num_outputs} outputs "
                             f"but {len(self.task_types)} labels")
        if len(self.task_types) < 2:
            raise ValueError("need at least two task types (top-2 is reported)")
        if any(h.weights is None for h in self.heads[1:]):
            raise ValueError("every head but task_type needs weights")

    @property
    def target_sizes(self) -> dict[str, int]:
        """``{head name: number of outputs}`` in head order."""
        return {h.name: h.num_outputs for h in self.heads}

    def head(self, name: str) -> HeadSpec:
        """The head called ``name``."""
        for h in self.heads:
            if h.name == name:
                return h
        raise KeyError(name)

    def to_config(self) -> dict[str, Any]:
        """The ``target_sizes`` / ``task_type_map`` / ``weights_map`` / ``divisor_map`` of a config.json."""
        scored = self.heads[1:]
        return {
            "target_sizes": self.target_sizes,
            "task_type_map": {str(i): label for i, label in enumerate(self.task_types)},
            "weights_map": {h.name: list(h.weights or ()) for h in scored},
            "divisor_map": {h.name: h.divisor for h in scored},
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ClassifierSpec:
        """Read the spec from a checkpoint's config.json; falls back to the card's values for missing maps."""
        sizes = config.get("target_sizes") or DEFAULT_SPEC.target_sizes
        type_map = config.get("task_type_map") or {str(i): t for i, t in enumerate(DEFAULT_SPEC.task_types)}
        weights = config.get("weights_map") or DEFAULT_SPEC.to_config()["weights_map"]
        divisors = config.get("divisor_map") or DEFAULT_SPEC.to_config()["divisor_map"]
        try:
            n_types = int(sizes["task_type"])
            task_types = tuple(str(type_map[str(i)]) for i in range(n_types))
            heads = [HeadSpec("task_type", n_types)]
            for name in HEAD_NAMES[1:]:
                heads.append(HeadSpec(name, int(sizes[name]), tuple(float(w) for w in weights[name]),
                                      float(divisors.get(name, 1.0))))
        except KeyError as exc:
            msg = f"classifier config lacks {exc} (target_sizes, task_type_map, weights_map)"
            raise ValueError(msg) from None
        return cls(task_types=task_types, heads=tuple(heads))


#: The published checkpoint's heads (config.json of nvidia/prompt-task-and-complexity-classifier).
DEFAULT_SPEC = ClassifierSpec(
    task_types=TASK_TYPES,
    heads=(
        HeadSpec("task_type", 12),
        HeadSpec("creativity_scope", 3, (2.0, 1.0, 0.0), 2.0),
        HeadSpec("reasoning", 2, (0.0, 1.0), 1.0),
        HeadSpec("contextual_knowledge", 2, (0.0, 1.0), 1.0),
        HeadSpec("number_of_few_shots", 6, (0.0, 1.0, 2.0, 3.0, 4.0, 5.0), 1.0),
        HeadSpec("domain_knowledge", 4, (3.0, 1.0, 2.0, 0.0), 3.0),
        HeadSpec("no_label_reason", 1, (0.0,), 1.0),
        HeadSpec("constraint_ct", 2, (1.0, 0.0), 1.0),
    ),
)
