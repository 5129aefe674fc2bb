"""MLP: STRUCTURE's low-rank residual head, as PAL's reference runs it.

Per modality ``z = P·x + α·W₂·Dropout(GELU(W₁·x))`` with P (dim×d) and W₁
(rank×d) orthogonally initialised, W₂ (dim×rank) zero-initialised, no biases,
and a learnable gate α = sigmoid(ℓ).  The reference starts the gate shut
(ℓ = −∞): then α = 0 and σ'(ℓ) = 0, so ℓ, W₁ and W₂ get exactly zero
gradient for the whole fit and the "MLP" trains as a bias-free linear map
with orthogonal init.  That stays the faithful default (``gate_init=0``);
``gate_init`` in (0, 1), e.g. 0.1, gives a head that really is an MLP.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from alignbench.errors import ConfigError
from alignbench.methods.base import register_method
from alignbench.methods.global_head import GlobalHeadMethod, HeadConfig
from alignbench.search_space import Choice, FloatRange


class LowRankResidualHead(nn.Module):
    """z = P·x + sigmoid(ℓ)·W₂·Dropout(GELU(W₁·x)); P, W₁ orthogonal, W₂ zero, no biases."""

    def __init__(self, d_in: int, d_out: int, rank: int, dropout: float, gate_init: float):
        super().__init__()
        self.proj = nn.Linear(d_in, d_out, bias=False)
        self.down = nn.Linear(d_in, rank, bias=False)
        self.up = nn.Linear(rank, d_out, bias=False)
        self.drop = nn.Dropout(dropout)
        nn.init.orthogonal_(self.proj.weight)
        nn.init.orthogonal_(self.down.weight)
        nn.init.zeros_(self.up.weight)
        # logit(0) = −inf: the gate is shut and receives no gradient (sigmoid'(−inf) = 0).
        logit = -math.inf if gate_init == 0 else math.log(gate_init / (1 - gate_init))
        self.gate_logit = nn.Parameter(torch.tensor(logit))

    def gate(self) -> torch.Tensor:
        return torch.sigmoid(self.gate_logit)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) + self.gate() * self.up(self.drop(nn.functional.gelu(self.down(x))))


@dataclass
class MLPConfig(HeadConfig):
    """METHODS.md: dim 512, rank 64, dropout 0.1 on the residual path, gate_init 0 (ℓ = −∞)."""

    rank: int = 64
    dropout: float = 0.1
    gate_init: float = 0.0

    def check(self) -> None:
        super().check()
        if self.rank < 1:
            raise ConfigError(f"rank must be >= 1, got {self.rank}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.gate_init < 1:
            raise ConfigError(f"gate_init must be in [0, 1) (0 = the reference's shut gate), got {self.gate_init}")


@register_method("mlp", aliases=("lowrank-mlp",))
class MLP(GlobalHeadMethod):
    """MLP: STRUCTURE's low-rank residual head; faithful gate_init=0 keeps the gate shut, so it trains as a bias-free linear map (gate_init=0.1: a real MLP)."""

    version = 1  # bump when this method's numbers change (alignbench.identity: old results go stale)

    Config = MLPConfig
    search_space = {"lr": FloatRange(1e-4, 1e-1, log=True), "weight_decay": FloatRange(1e-6, 1e-1, log=True),
                    "gate_init": Choice((0.0, 0.1))}
    test_overrides = {"max_epochs": 60, "patience": 10, "batch_size": 256, "lr": 3e-3}

    def build_heads(self, d_image: int, d_text: int) -> tuple[nn.Module, nn.Module]:
        c = self.config
        return (LowRankResidualHead(d_image, c.dim, c.rank, c.dropout, c.gate_init),
                LowRankResidualHead(d_text, c.dim, c.rank, c.dropout, c.gate_init))

    def fit(self, train, val=None, *, seed: int = 0) -> None:
        super().fit(train, val, seed=seed)
        gate = lambda head: float(head.gate().detach())  # noqa: E731
        self.fit_info["gates"] = {"image": gate(self.image_head), "text": gate(self.text_head)}
        if self.config.gate_init == 0:
            self.fit_info["notes"] = ["gate_init=0 (the reference's) keeps the residual gate shut: "
                                      "the head trained as a bias-free linear map"]
