"""QuantumLogitsProcessor: quantum-steered sampling that leaves the model's token distribution unbiased.

Per step and sequence, with p = softmax(warped logits) and influence alpha (the profile):

1. one QRNG uniform u (4 bytes, ``uint32 / 2**32``) picks the *quantum token* q by inverse-CDF sampling
   from p, so q is an exact draw from p (no bias toward any token id);
2. only the logit of q is raised by ``delta = softplus(logit(alpha) - log p_q)``, so that the sampler's
   ``softmax`` gives exactly ``p' = (1 - alpha) * p + alpha * delta_q``.

Averaged over u, ``E[p'] = p``: the emitted token is distributed exactly as under the model, while alpha sets
how much of each choice the quantum draw decides. alpha = 0 returns the scores untouched. See docs/qgpt.md.

Because generate() applies its temperature/top-p warpers *after* custom processors, this processor applies
them itself (same HF warpers) and the caller must run generate() with temperature=1, top_p=1, top_k=0.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np
import torch
from transformers import LogitsProcessor, TemperatureLogitsWarper, TopPLogitsWarper

from gpu_apps.qgpt.profiles import QuantumProfile, get_profile

BYTES_PER_UNIFORM = 4
_UINT32_SCALE = 2.0 ** -32


class EntropySource(Protocol):
    """What the processor needs from a pool: ``take(n) -> (bytes, source_label)``."""

    def take(self, n: int) -> tuple[bytes, str]: ...


def bytes_to_uniforms(data: bytes) -> np.ndarray:
    """Little-endian uint32 words -> float64 uniforms in [0, 1) (resolution 2**-32), in one vectorised op."""
    return np.frombuffer(data, dtype="<u4").astype(np.float64) * _UINT32_SCALE


class QuantumLogitsProcessor(LogitsProcessor):
    """A transformers LogitsProcessor mixing a QRNG-drawn token into each step's distribution.

    Diagnostics (cumulative since construction or ``reset``): ``total_entropy_consumed`` (bytes taken from
    the pool), ``modifications_applied`` (logit rows changed), ``average_logit_diff`` (mean over changed rows
    of the mean absolute change of the logits vector), ``entropy_source`` (``qrng``, ``os_csprng``,
    ``mixed``, or ``none``).
    """

    def __init__(self, pool: EntropySource, profile: str | QuantumProfile = "medium", *,
                 temperature: float = 1.0, top_p: float = 1.0) -> None:
        self.pool = pool
        self.profile = get_profile(profile)
        self.alpha = self.profile.influence
        self._logit_alpha = math.log(self.alpha) - math.log1p(-self.alpha) if self.alpha > 0 else -math.inf
        if temperature <= 0:
            raise ValueError("temperature must be > 0 (use greedy decoding without this processor for 0)")
        self._warpers: list[LogitsProcessor] = []
        if temperature != 1.0:
            self._warpers.append(TemperatureLogitsWarper(temperature))
        if top_p < 1.0:
            self._warpers.append(TopPLogitsWarper(top_p=top_p))
        self.temperature, self.top_p = temperature, top_p
        self.reset()

    def reset(self) -> None:
        """Zero the diagnostics."""
        self.total_entropy_consumed = 0
        self.modifications_applied = 0
        self.bytes_by_source: dict[str, int] = {}
        self._diff_sum: torch.Tensor | float = 0.0  # stays on the device; read only in diagnostics()
        self._boost_sum: torch.Tensor | float = 0.0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for warper in self._warpers:
            scores = warper(input_ids, scores)
        if self.alpha == 0.0:
            return scores
        batch, vocab = scores.shape
        u = self._uniforms(batch, scores.device)
        logp = torch.log_softmax(scores.float(), dim=-1)
        cdf = logp.exp().double().cumsum_(dim=-1)
        target = (u * cdf[:, -1]).unsqueeze(1)  # u scaled by the total: rounding cannot run past the CDF
        q = torch.searchsorted(cdf, target, right=True).clamp_(max=vocab - 1)  # first id with cdf > u*total
        boost = torch.nn.functional.softplus(self._logit_alpha - logp.gather(1, q))  # log(1 + a/((1-a) p_q))
        out = scores.clone()
        out.scatter_add_(1, q, boost.to(out.dtype))
        self.modifications_applied += batch
        self._diff_sum = self._diff_sum + boost.sum() / vocab
        self._boost_sum = self._boost_sum + boost.sum()
        return out  # type: ignore[return-value]

    def _uniforms(self, batch: int, device: torch.device) -> torch.Tensor:
        n = batch * BYTES_PER_UNIFORM
        data, source = self.pool.take(n)
        if len(data) != n:
            raise RuntimeError(f"entropy pool returned {len(data)} bytes, expected {n}")
        self.total_entropy_consumed += n
        self.bytes_by_source[source] = self.bytes_by_source.get(source, 0) + n
        return torch.from_numpy(bytes_to_uniforms(data)).to(device)

    @property
    def entropy_source(self) -> str:
        """The source of all entropy consumed: one label, ``mixed``, or ``none`` when nothing was consumed."""
        sources = [s for s, n in self.bytes_by_source.items() if n]
        return sources[0] if len(sources) == 1 else ("mixed" if sources else "none")

    @property
    def average_logit_diff(self) -> float:
        """Mean absolute change of the logits vector, averaged over the modified rows (0.0 if none)."""
        if not self.modifications_applied:
            return 0.0
        return float(self._diff_sum) / self.modifications_applied

    @property
    def average_boost(self) -> float:
        """Mean logit increase of the quantum token (the one changed entry per row)."""
        if not self.modifications_applied:
            return 0.0
        return float(self._boost_sum) / self.modifications_applied

    def diagnostics(self) -> dict[str, Any]:
        """The seed's ``quantum_diagnostics`` plus ``entropy_source``."""
        return {
            "total_entropy_consumed": self.total_entropy_consumed,
            "modifications_applied": self.modifications_applied,
            "average_logit_diff": self.average_logit_diff,
            "entropy_source": self.entropy_source,
        }
