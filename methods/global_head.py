"""Shared machinery of the global-feature contrastive heads (Linear, FuseMix, STRUCTURE, random).

Why a base: these methods differ only in the head modules and the batch loss;
fitting (shared trainer, early stopping on the validation InfoNCE), embedding,
input checks and persistence are the same, and keeping them in one place keeps
the methods comparable.  No method is registered here.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import nn

from alignbench.errors import ConfigError, FeatureError
from alignbench.features import ImageFeatures, Pairs, TextFeatures
from alignbench.training import REFERENCE_TRAINER, TrainConfig, TrainerSettings, info_nce, train_contrastive, trainer_deviations
from alignbench.methods.base import Method, MethodConfig, check_dim, check_pairs

log = logging.getLogger(__name__)

EMBED_CHUNK = 8192  # rows per forward when embedding (bounds memory for patch tokens)


@dataclass
class HeadConfig(MethodConfig, TrainerSettings):
    """Head width plus the shared trainer's hyperparameters (METHODS.md defaults)."""

    dim: int = 512
    # Small budgets give one step per epoch, and Adam's early overshoot makes the
    # validation loss rise for several epochs before it falls again: patience 10
    # stopped such runs after ~20 steps.  The reference uses 1000 epochs, patience 200.
    max_epochs: int = 1000
    patience: int = 50

    def check(self) -> None:
        if self.dim < 1:
            raise ConfigError(f"dim must be >= 1, got {self.dim}")
        self.train_config().check()


class GlobalHeadMethod(Method):
    """A pair of heads on global features trained with the shared contrastive trainer.

    Subclasses implement ``build_heads``; they may override ``batch_loss``
    (training loss of one batch), ``temperature`` and ``param_groups``.
    """

    level = "global"
    Config: ClassVar[type[MethodConfig]] = HeadConfig
    # Deviations from the reference recipe that hold whatever the config says.
    inherent_deviations: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: MethodConfig | None = None, **overrides: Any):
        super().__init__(config, **overrides)
        self.image_head: nn.Module | None = None
        self.text_head: nn.Module | None = None
        self.d_image: int | None = None
        self.d_text: int | None = None

    # -- hooks ----------------------------------------------------------------
    def build_heads(self, d_image: int, d_text: int) -> tuple[nn.Module, nn.Module]:
        raise NotImplementedError

    def extra_modules(self) -> dict[str, nn.Module]:
        """Other trainable modules saved in the state dict (e.g. a temperature)."""
        return {}

    def temperature(self) -> float | torch.Tensor:
        return self.config.temperature

    def image_inputs(self, f: ImageFeatures) -> torch.Tensor:
        """(N, a) rows the image head consumes; default the global feature (SAIL adds the mean patch)."""
        return f.global_tensor()

    def text_inputs(self, f: TextFeatures) -> torch.Tensor:
        """(N, a) rows the text head consumes; default the global feature."""
        return f.global_tensor()

    def batch_loss(self, x: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        return info_nce(self.image_head(x), self.text_head(y), self.temperature())

    def val_batch_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Early-stopping criterion of one validation batch (heads in eval mode): plain InfoNCE."""
        return info_nce(self.image_head(x), self.text_head(y), self.temperature())

    def param_groups(self) -> list[dict]:
        params = [p for m in self.modules().values() for p in m.parameters() if p.requires_grad]
        return [{"params": params}]

    # -- plumbing ---------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        mods = {"image": self.image_head, "text": self.text_head, **self.extra_modules()}
        return {k: m for k, m in mods.items() if m is not None}

    def _train_mode(self, on: bool) -> None:
        for m in self.modules().values():
            m.train(on)

    def _init(self, d_image: int, d_text: int, seed: int) -> None:
        self.d_image, self.d_text = int(d_image), int(d_text)
        torch.manual_seed(seed)
        self.image_head, self.text_head = self.build_heads(self.d_image, self.d_text)
        for m in self.modules().values():
            m.to(self.device)

    def deviations(self) -> list[str]:
        """Every difference from the faithful default config and the reference trainer, plus inherent ones."""
        default = type(self.config)()
        out = list(self.inherent_deviations) + trainer_deviations(self.config)
        for f in fields(self.config):
            v, d = getattr(self.config, f.name), getattr(default, f.name)
            if v != d and f.name not in REFERENCE_TRAINER:
                out.append(f"{f.name}={v!r} (faithful default {d!r})")
        return out

    def fit(self, train: Pairs, val: Pairs | None = None, *, seed: int = 0) -> None:
        check_pairs(train, val)
        x = self.image_inputs(train.image()).to(self.device)
        y = self.text_inputs(train.text()).to(self.device)
        self._init(x.shape[1], y.shape[1], seed)
        cfg = self.train_config(len(train))
        self._train_mode(True)

        def step_loss(idx: np.ndarray, step: int) -> torch.Tensor:
            i = torch.from_numpy(idx).to(self.device)
            return self.batch_loss(x[i], y[i], step)

        val_loss = None
        if val is not None and len(val) >= 2:  # InfoNCE needs at least two pairs
            val_loss = self.make_val_loss(val, cfg.batch_size)

        info = train_contrastive(
            self.param_groups(), step_loss, len(train), val_loss=val_loss, config=cfg, seed=seed,
            state=self._state_tensors, load_state=self._load_tensors, desc=self.registry_name or type(self).__name__,
            rngs=self.training_rngs(),
        )
        self._train_mode(False)
        self.fit_info = {**info, "n_train": len(train), "n_val": len(val) if val is not None else 0,
                         "deviations": self.deviations() + ([info["note"]] if "note" in info else [])}

    def train_config(self, n_train: int) -> TrainConfig:
        return self.config.train_config()

    def training_rngs(self) -> list[np.random.Generator]:
        """Random generators of the method's own that ``batch_loss`` draws from (saved in mid-fit checkpoints)."""
        return []

    def make_val_loss(self, val: Pairs, batch_size: int) -> Callable[[], float]:
        """The early-stopping criterion over ``val`` (inputs built once per fit): ``validation_loss``."""
        xv = self.image_inputs(val.image()).to(self.device)
        yv = self.text_inputs(val.text()).to(self.device)
        return lambda: self.validation_loss(xv, yv, batch_size)

    @torch.no_grad()
    def validation_loss(self, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
        """``val_batch_loss`` in eval mode, in fixed batches of the training batch size."""
        self._train_mode(False)
        try:
            total, n = 0.0, len(x)
            bs = min(batch_size, n)
            chunks = np.array_split(np.arange(n), max(1, -(-n // bs)))
            for c in chunks:
                if len(c) < 2:
                    continue
                i = torch.from_numpy(c).to(self.device)
                total += float(self.val_batch_loss(x[i], y[i])) * len(c)
            return total / n
        finally:
            self._train_mode(True)

    # -- embedding --------------------------------------------------------------
    @torch.no_grad()
    def _embed(self, head: nn.Module | None, f: ImageFeatures | TextFeatures, expected: int | None, side: str):
        if expected is None:
            check_dim(f, None, side)  # "not fitted yet"
        f.validate(f"{side} features")
        head.eval()
        x = self.image_inputs(f) if side == "image" else self.text_inputs(f)
        if x.shape[1] != expected:  # the head's input width (the feature dim unless a method adds inputs)
            raise FeatureError(f"{side} features give {x.shape[1]}-d inputs but the method was fitted on "
                               f"{expected}-d {side} inputs (same encoder and layer as at fit time?)")
        out = [head(x[i : i + EMBED_CHUNK].to(self.device)).float() for i in range(0, len(x), EMBED_CHUNK)]
        z = torch.cat(out) if out else torch.zeros(0, self.config.dim)
        return nn.functional.normalize(z, dim=-1).cpu()

    def embed_image(self, f: ImageFeatures) -> torch.Tensor:
        return self._embed(self.image_head, f, self.d_image, "image")

    def embed_text(self, f: TextFeatures) -> torch.Tensor:
        return self._embed(self.text_head, f, self.d_text, "text")

    # -- persistence --------------------------------------------------------------
    def _state_tensors(self) -> dict:
        return {k: m.state_dict() for k, m in self.modules().items()}

    def _load_tensors(self, s: dict) -> None:
        for k, m in self.modules().items():
            m.load_state_dict(s[k])

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"d_image": self.d_image, "d_text": self.d_text}
        for k, m in self.modules().items():
            for name, t in m.state_dict().items():
                out[f"{k}.{name}"] = t.detach().cpu().clone()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._init(int(state["d_image"]), int(state["d_text"]), seed=0)
        for k, m in self.modules().items():
            prefix = f"{k}."
            m.load_state_dict({n[len(prefix):]: v for n, v in state.items() if n.startswith(prefix)})
            m.eval()

    def to(self, device: str | torch.device) -> "GlobalHeadMethod":
        super().to(device)
        for m in self.modules().values():
            m.to(self.device)
        return self


def linear_head(d_in: int, d_out: int) -> nn.Module:
    """``Linear(d_in, d_out)`` with bias, PyTorch's default init."""
    return nn.Linear(d_in, d_out)


def mlp_head(d_in: int, d_out: int, n_layers: int = 2) -> nn.Module:
    """STRUCTURE's MLP option: Linear(d_in, d_out) then (ReLU, Linear(d_out, d_out)) × (n_layers − 1)."""
    layers: list[nn.Module] = [nn.Linear(d_in, d_out)]
    for _ in range(n_layers - 1):
        layers += [nn.ReLU(), nn.Linear(d_out, d_out)]
    return nn.Sequential(*layers)
