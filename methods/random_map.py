"""random: the Linear method's shapes, untrained — the chance-level control.

Why: METHODS.md asks every table to show chance next to the methods; an
untrained map of the same shapes measures what the architecture alone gives
(e.g. segmentation with an untrained map scores far above 0 mIoU on CamVid).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from alignbench.features import Pairs
from alignbench.methods.base import check_pairs, register_method
from alignbench.methods.global_head import GlobalHeadMethod, HeadConfig, linear_head


@dataclass
class RandomConfig(HeadConfig):
    """Only ``dim`` matters; training fields are kept so Linear overrides also parse."""


@register_method("random", aliases=("untrained", "random-map"))
class RandomMap(GlobalHeadMethod):
    """The same method shapes, untrained: a seeded random Linear(d, 512) per modality (chance control)."""

    version = 1  # bump when this method's numbers change (alignbench.identity: old results go stale)

    Config = RandomConfig

    def build_heads(self, d_image: int, d_text: int) -> tuple[nn.Module, nn.Module]:
        return linear_head(d_image, self.config.dim), linear_head(d_text, self.config.dim)

    def fit(self, train: Pairs, val: Pairs | None = None, *, seed: int = 0) -> None:
        """Validate the inputs and draw the seeded initialisation; no training."""
        check_pairs(train, val)
        self._init(train.images.dim, train.texts.dim, seed)
        self._train_mode(False)
        self.fit_info = {"epochs": 0, "steps": 0, "n_train": len(train), "trained": False,
                         "deviations": ["untrained control: PyTorch default Linear init, seeded"]}
