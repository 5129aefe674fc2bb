"""CSA — Canonical Similarity Analysis (Li, Chinchali, Topcu, ICLR 2025).

Same closed-form CCA fit as ``cca``; the score is what differs: keep the first
``s`` canonical dimensions, L2-normalise each side, and weight the inner
product by the canonical correlations, ``Σ_k ρ_k x_k y_k``.  The ρ weighting
down-weights directions the training pairs barely agree on; with a degenerate
fit (all ρ ≈ 1) it is a no-op, which is why ε is chosen on validation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from alignbench.errors import ConfigError
from alignbench.features import ImageFeatures, TextFeatures
from alignbench.methods.base import MethodConfig, register_method
from alignbench.methods.cca import CanonicalMethod, CCAConfig
from alignbench.search_space import Choice, FloatRange


@dataclass
class CSAConfig(CCAConfig):
    """CCA settings plus ``s``: canonical dims kept (None → min(512, rank))."""

    s: int | None = None

    def check(self) -> None:
        super().check()
        if self.s is not None and self.s < 1:
            raise ConfigError(f"s must be >= 1 (or None for min(512, rank)), got {self.s}")


@register_method("csa")
class CSA(CanonicalMethod):
    """Canonical Similarity Analysis: CCA fit, ρ-weighted similarity of normalised projections."""

    version = 1  # bump when this method's numbers change (alignbench.identity: old results go stale)

    Config: ClassVar[type[MethodConfig]] = CSAConfig
    search_space: ClassVar[dict] = {"eps": FloatRange(1e-5, 10.0, log=True), "s": Choice((64, 128, 256, 512))}

    def _keep(self) -> int:
        assert self.cca is not None
        return min(self.config.s or 512, self.cca.dim)

    def embed_image(self, f: ImageFeatures) -> torch.Tensor:
        return torch.nn.functional.normalize(super().embed_image(f), dim=-1)

    def embed_text(self, f: TextFeatures) -> torch.Tensor:
        return torch.nn.functional.normalize(super().embed_text(f), dim=-1)

    def similarity(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Σ_k ρ_k a_k b_k over normalised projections (re-normalised here, so averaged class embeddings work)."""
        assert self.cca is not None
        rho = torch.as_tensor(self.cca.rho[: a.shape[-1]], dtype=torch.float32)
        a = torch.nn.functional.normalize(a.float(), dim=-1)
        b = torch.nn.functional.normalize(b.float(), dim=-1)
        return (a * rho) @ b.T
