"""Linear: one contrastive linear map per modality (STRUCTURE's baseline recipe)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from alignbench.methods.base import register_method
from alignbench.methods.global_head import GlobalHeadMethod, HeadConfig, linear_head
from alignbench.search_space import FloatRange


@dataclass
class LinearConfig(HeadConfig):
    """METHODS.md: Linear(d, 512) + bias per modality, shared trainer, InfoNCE τ = 0.05."""


@register_method("linear", aliases=("linear-map",))
class Linear(GlobalHeadMethod):
    """Contrastive Linear(d, 512) per modality on global features (Merullo et al. idea, STRUCTURE recipe)."""

    version = 1  # bump when this method's numbers change (alignbench.identity: old results go stale)

    Config = LinearConfig
    search_space = {"lr": FloatRange(1e-4, 1e-1, log=True), "weight_decay": FloatRange(1e-6, 1e-1, log=True)}
    test_overrides = {"max_epochs": 60, "patience": 10, "batch_size": 256, "lr": 3e-3}

    def build_heads(self, d_image: int, d_text: int) -> tuple[nn.Module, nn.Module]:
        return linear_head(d_image, self.config.dim), linear_head(d_text, self.config.dim)
