"""FuseMix (Vouitsis et al., CVPR 2024): residual MLP heads + latent mixup + learnable temperature.

Mixup happens in the frozen-feature (input) space, with ONE λ ~ Beta(α, α) per
batch and ONE partner permutation shared by both modalities, so the mixed
image and the mixed text stay a positive pair.  ``latent_mixup`` is a separate
function so a fidelity test can check exactly that.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from alignbench.errors import ConfigError
from alignbench.features import Pairs
from alignbench.methods.base import register_method
from alignbench.methods.global_head import GlobalHeadMethod, HeadConfig
from alignbench.search_space import FloatRange, IntRange
from alignbench.training import TrainConfig, info_nce


def latent_mixup(
    x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator, alpha: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, float, np.ndarray]:
    """Mix both modalities of a batch with the same λ and the same partners.

    Returns (x_mix, y_mix, λ, perm) with x_mix = λ·x + (1−λ)·x[perm] and
    y_mix = λ·y + (1−λ)·y[perm].
    """
    lam = float(rng.beta(alpha, alpha))
    perm = rng.permutation(len(x))
    p = torch.from_numpy(perm).to(x.device)
    return lam * x + (1 - lam) * x[p], lam * y + (1 - lam) * y[p], lam, perm


class ResidualBlock(nn.Module):
    """x + Linear(GELU(Dropout(Linear(LN(x))))), hidden width = expansion·d (METHODS.md order)."""

    def __init__(self, d: int, expansion: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, expansion * d)
        self.drop = nn.Dropout(dropout)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(expansion * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.drop(self.fc1(self.norm(x)))))


def fusemix_head(d_in: int, d_out: int, n_blocks: int, expansion: int, dropout: float) -> nn.Module:
    """n residual blocks at the input width, then LN and Linear(→ d_out)."""
    blocks = [ResidualBlock(d_in, expansion, dropout) for _ in range(n_blocks)]
    return nn.Sequential(*blocks, nn.LayerNorm(d_in), nn.Linear(d_in, d_out))


class LearnableTemperature(nn.Module):
    """τ = exp(log_tau) clamped to [tau_min, tau_max] (gradient stops at the bounds)."""

    def __init__(self, init: float, tau_min: float, tau_max: float):
        super().__init__()
        self.log_tau = nn.Parameter(torch.tensor(math.log(init)))
        self.tau_min, self.tau_max = tau_min, tau_max

    def forward(self) -> torch.Tensor:
        return self.log_tau.exp().clamp(self.tau_min, self.tau_max)


@dataclass
class FuseMixConfig(HeadConfig):
    """METHODS.md: 4 blocks, expansion 4, dropout 0.6, τ init 0.07 ∈ [0.001, 0.5], AdamW 1e-3 / wd 0.1."""

    weight_decay: float = 0.1
    min_lr: float = 1e-6
    n_blocks: int = 4
    expansion: int = 4
    dropout: float = 0.6
    mix_alpha: float = 1.0
    temperature: float = 0.07  # initial value of the learnable temperature
    tau_min: float = 0.001
    tau_max: float = 0.5
    warmup_epochs: int = 5  # linear lr warm-up length, in epochs (scale-free across budgets)

    def check(self) -> None:
        super().check()
        if self.n_blocks < 0 or self.expansion < 1:
            raise ConfigError("n_blocks must be >= 0 and expansion >= 1")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.mix_alpha > 0:
            raise ConfigError(f"mix_alpha must be > 0, got {self.mix_alpha}")
        if not 0 < self.tau_min <= self.temperature <= self.tau_max:
            raise ConfigError("need 0 < tau_min <= temperature <= tau_max")


@register_method("fusemix")
class FuseMix(GlobalHeadMethod):
    """FuseMix: residual MLP heads with shared-λ latent mixup and a learnable temperature."""

    version = 1  # bump when this method's numbers change (alignbench.identity: old results go stale)

    Config = FuseMixConfig
    inherent_deviations = (
        "validation loss = InfoNCE without mixup at the current learnable temperature",
        "early stopping on the validation loss (FuseMix trains for a fixed schedule)",
    )
    search_space = {"n_blocks": IntRange(0, 4), "dropout": FloatRange(0.0, 0.7), "lr": FloatRange(1e-4, 1e-2, log=True)}
    test_overrides = {"max_epochs": 40, "patience": 10, "batch_size": 256, "n_blocks": 1, "expansion": 2,
                      "dropout": 0.1}

    def build_heads(self, d_image: int, d_text: int) -> tuple[nn.Module, nn.Module]:
        c = self.config
        self.tau = LearnableTemperature(c.temperature, c.tau_min, c.tau_max)
        return (
            fusemix_head(d_image, c.dim, c.n_blocks, c.expansion, c.dropout),
            fusemix_head(d_text, c.dim, c.n_blocks, c.expansion, c.dropout),
        )

    def extra_modules(self) -> dict[str, nn.Module]:
        tau = getattr(self, "tau", None)
        return {"tau": tau} if tau is not None else {}

    def temperature(self) -> torch.Tensor:
        return self.tau()

    def param_groups(self) -> list[dict]:
        # Temperature, norms and biases take no weight decay (CLIP practice).
        decay, no_decay = [], []
        for m in (self.image_head, self.text_head):
            for p in m.parameters():
                (decay if p.ndim >= 2 else no_decay).append(p)
        no_decay.append(self.tau.log_tau)
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]

    def train_config(self, n_train: int) -> TrainConfig:
        cfg = self.config.train_config()
        steps_per_epoch = math.ceil(n_train / min(cfg.batch_size, n_train))
        cfg.warmup_steps = self.config.warmup_epochs * steps_per_epoch
        return cfg

    def fit(self, train: Pairs, val: Pairs | None = None, *, seed: int = 0) -> None:
        self._mix_rng = np.random.default_rng([seed, 1])
        super().fit(train, val, seed=seed)
        self.fit_info["temperature"] = float(self.tau().detach())

    def training_rngs(self) -> list[np.random.Generator]:
        return [self._mix_rng]

    def batch_loss(self, x: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        xm, ym, _, _ = latent_mixup(x, y, self._mix_rng, self.config.mix_alpha)
        return info_nce(self.image_head(xm), self.text_head(ym), self.temperature())
