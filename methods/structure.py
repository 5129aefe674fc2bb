"""STRUCTURE (Gröger, Wen, Le, Brbić, NeurIPS 2025): a contrastive head + a structure-preserving regulariser.

Loss = InfoNCE + λ_t · ½[R_S(x, f(x)) + R_S(y, g(y))], λ_t warmed up linearly
to λ over the first ``lambda_warmup_steps`` steps (METHODS.md), or over
``lambda_warmup_epochs`` epochs or a ``lambda_warmup_fraction`` of the maximum
schedule.  Why the options: at batch 4096 a 1k budget takes one step per epoch,
so 1,000 warm-up steps outlast early stopping and λ never acts.  R_S compares the
neighbourhood structure of a batch before and after the head: both sides are
L2-normalised and mean-centred within the batch (the authors' order), row
softmax of the pairwise similarities / τ, Jensen–Shannon divergence between the
two transition matrices, summed over levels l = 1..L (P^l = l-step walks).
The paper's second ingredient, layer selection, is
``alignbench.layer_selection``; it acts on which features are cached, not here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from alignbench.errors import ConfigError
from alignbench.features import Pairs
from alignbench.methods.base import register_method
from alignbench.methods.global_head import GlobalHeadMethod, HeadConfig, linear_head, mlp_head
from alignbench.search_space import FloatRange, IntRange
from alignbench.training import info_nce


def transition_matrix(u: torch.Tensor, temperature: float) -> torch.Tensor:
    """Row-softmax of the batch's pairwise similarities of normalised, centred features."""
    u = nn.functional.normalize(u.float(), dim=-1)
    u = u - u.mean(0, keepdim=True)
    return torch.softmax(u @ u.T / temperature, dim=-1)


def js_divergence(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Jensen–Shannon divergence ½[KL(p‖m) + KL(q‖m)], m = ½(p+q), rows are distributions; mean over rows."""
    m = 0.5 * (p + q)
    log_m = (m + eps).log()
    kl_pm = (p * ((p + eps).log() - log_m)).sum(-1)
    kl_qm = (q * ((q + eps).log() - log_m)).sum(-1)
    return (0.5 * (kl_pm + kl_qm)).mean()


def structure_regulariser(original: torch.Tensor, aligned: torch.Tensor, *, levels: int = 1,
                          temperature: float = 0.05) -> torch.Tensor:
    """R_S(u, v) = Σ_{l=1..L} JS(P_u^l, P_v^l); 0 when the batch geometry is preserved."""
    p, q = transition_matrix(original, temperature), transition_matrix(aligned, temperature)
    total = p.new_zeros(())
    pl, ql = p, q
    for level in range(1, levels + 1):
        if level > 1:
            pl, ql = pl @ p, ql @ q
        total = total + js_divergence(pl, ql)
    return total


@dataclass
class StructureConfig(HeadConfig):
    """METHODS.md: Linear head, λ = 10 warmed up over 1000 steps, L = 1 level, τ = 0.05."""

    head: str = "linear"  # linear | mlp
    mlp_layers: int = 2
    lam: float = 10.0
    lambda_warmup_steps: int = 1000
    lambda_warmup_epochs: float | None = None  # warm-up counted in epochs instead (replaces the steps)
    lambda_warmup_fraction: float | None = None  # … or as a fraction of max_epochs' steps
    levels: int = 1
    structure_temperature: float = 0.05
    # Early-stopping criterion.  infonce: the validation InfoNCE, as METHODS.md's shared trainer says.
    # total: InfoNCE + λ·R_S at the full λ — measured on dinov2-s14+minilm-l6 it stopped at epoch 3
    # (R_S dominates the sum) and retrieved at 2.4 R@1 vs 12.1 for the same head without R_S.
    early_stop_on: str = "infonce"

    def check(self) -> None:
        super().check()
        if self.early_stop_on not in ("infonce", "total"):
            raise ConfigError(f"early_stop_on must be 'infonce' or 'total', got {self.early_stop_on!r}")
        if self.head not in ("linear", "mlp"):
            raise ConfigError(f"head must be 'linear' or 'mlp', got {self.head!r}")
        if self.levels < 1 or self.lam < 0 or self.lambda_warmup_steps < 0 or self.mlp_layers < 1:
            raise ConfigError("need levels >= 1, lam >= 0, lambda_warmup_steps >= 0, mlp_layers >= 1")
        if not self.structure_temperature > 0:
            raise ConfigError("structure_temperature must be > 0")
        if self.lambda_warmup_epochs is not None and self.lambda_warmup_fraction is not None:
            raise ConfigError("give lambda_warmup_epochs or lambda_warmup_fraction, not both")
        if self.lambda_warmup_epochs is not None and not self.lambda_warmup_epochs >= 0:
            raise ConfigError(f"lambda_warmup_epochs must be >= 0, got {self.lambda_warmup_epochs}")
        if self.lambda_warmup_fraction is not None and not 0 <= self.lambda_warmup_fraction <= 1:
            raise ConfigError(f"lambda_warmup_fraction must be in [0, 1], got {self.lambda_warmup_fraction}")

    def warmup_steps_for(self, n_train: int) -> int:
        """λ's warm-up length in optimiser steps for a fit on ``n_train`` pairs."""
        steps_per_epoch = math.ceil(n_train / min(self.batch_size, n_train))
        if self.lambda_warmup_epochs is not None:
            return round(self.lambda_warmup_epochs * steps_per_epoch)
        if self.lambda_warmup_fraction is not None:
            return round(self.lambda_warmup_fraction * self.max_epochs * steps_per_epoch)
        return self.lambda_warmup_steps


@register_method("structure")
class Structure(GlobalHeadMethod):
    """STRUCTURE: contrastive Linear (or MLP) head + neighbourhood-structure regulariser (JS of batch softmax)."""

    version = 1  # bump when this method's numbers change (alignbench.identity: old results go stale)

    Config = StructureConfig
    search_space = {"lam": FloatRange(0.1, 30.0, log=True), "lambda_warmup_epochs": IntRange(0, 50),
                    "levels": IntRange(1, 3)}
    test_overrides = {"max_epochs": 60, "patience": 10, "batch_size": 256, "lr": 3e-3, "lambda_warmup_steps": 20}

    def build_heads(self, d_image: int, d_text: int) -> tuple[nn.Module, nn.Module]:
        c = self.config
        if c.head == "mlp":
            return mlp_head(d_image, c.dim, c.mlp_layers), mlp_head(d_text, c.dim, c.mlp_layers)
        return linear_head(d_image, c.dim), linear_head(d_text, c.dim)

    _warmup_steps: int | None = None  # set by fit from the config and the budget

    def lambda_at(self, step: int) -> float:
        c = self.config
        warm = c.lambda_warmup_steps if self._warmup_steps is None else self._warmup_steps
        if warm == 0:
            return c.lam
        return c.lam * min(1.0, step / warm)

    def fit(self, train: Pairs, val: Pairs | None = None, *, seed: int = 0) -> None:
        """The head's fit, then what λ reached: λ acts only if warm-up ends before early stopping."""
        self._warmup_steps = self.config.warmup_steps_for(max(len(train), 1))
        super().fit(train, val, seed=seed)
        info = self.fit_info
        best_step = info.get("best_epoch", 0) * info.get("steps_per_epoch", 0)
        info.update(lambda_warmup_steps_used=self._warmup_steps, lambda_at_end=self.lambda_at(info.get("steps", 0)),
                    lambda_at_best_epoch=self.lambda_at(best_step))

    def loss(self, x: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
        """InfoNCE(f(x), g(y)) + lam · ½[R_S(x, f(x)) + R_S(y, g(y))]."""
        fx, gy = self.image_head(x), self.text_head(y)
        loss = info_nce(fx, gy, self.temperature())
        if lam > 0:
            kw = {"levels": self.config.levels, "temperature": self.config.structure_temperature}
            reg = 0.5 * (structure_regulariser(x, fx, **kw) + structure_regulariser(y, gy, **kw))
            loss = loss + lam * reg
        return loss

    def batch_loss(self, x: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        return self.loss(x, y, self.lambda_at(step))

    def val_batch_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss(x, y, self.config.lam if self.config.early_stop_on == "total" else 0.0)
