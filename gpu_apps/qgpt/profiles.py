"""The five quantum profiles of the qgpt seed and their influence values.

The influence ``alpha`` is the probability mass that the quantum-drawn token receives on top of the model's
own distribution at every sampling step (see ``docs/qgpt.md``): ``p' = (1 - alpha) * p + alpha * delta_q``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

DEFAULT_PROFILE = "medium"


class UnknownProfileError(ValueError):
    """Raised for a ``quantum_profile`` name that is not one of the five profiles."""

    def __init__(self, name: object) -> None:
        super().__init__(f"unknown quantum_profile {name!r}; expected one of: {', '.join(PROFILES)}")
        self.name = name


@dataclass(frozen=True, slots=True)
class QuantumProfile:
    """A named influence level; ``influence`` is alpha in [0, 1)."""

    name: str
    influence: float
    description: str

    def __post_init__(self) -> None:
        if not 0.0 <= self.influence < 1.0:
            raise ValueError(f"influence must be in [0, 1), got {self.influence}")

    @property
    def is_control(self) -> bool:
        """True for the control profile, whose logits are never touched."""
        return self.influence == 0.0


PROFILES: Mapping[str, QuantumProfile] = MappingProxyType(
    {
        p.name: p
        for p in (
            QuantumProfile("strict", 0.0, "No quantum modification (control)"),
            QuantumProfile("light", 0.1, "10% quantum influence on logits"),
            QuantumProfile("medium", 0.3, "30% quantum influence (balanced)"),
            QuantumProfile("spicy", 0.5, "50% quantum influence (strong)"),
            QuantumProfile("chaos", 0.8, "80% quantum influence (maximum)"),
        )
    }
)


def get_profile(name: str | QuantumProfile) -> QuantumProfile:
    """Return the profile called ``name`` (case and outer spaces ignored); raise UnknownProfileError."""
    if isinstance(name, QuantumProfile):
        return name
    if not isinstance(name, str):
        raise UnknownProfileError(name)
    profile = PROFILES.get(name.strip().lower())
    if profile is None:
        raise UnknownProfileError(name)
    return profile


def profile_names() -> tuple[str, ...]:
    """The valid profile names, weakest first."""
    return tuple(PROFILES)
