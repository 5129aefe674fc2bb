"""The trainer's settings (what every trained method's config inherits) and how they differ from the reference.

Kept apart from the loop in alignbench.training so a method's config can be read, checked and hashed
without the loop's machinery.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from alignbench.errors import ConfigError


@dataclass
class TrainerSettings:
    """The shared trainer's hyperparameters.

    Trained methods' configs inherit them (changing a default where METHODS.md
    says so), so every trained method takes the same names and the same checks.
    """

    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 4096
    max_epochs: int = 200
    patience: int = 10
    grad_clip: float = 1.0
    warmup_steps: int = 0
    min_lr: float = 0.0
    # The reference picks the lr with an LR range test on every fit; ``lr`` is then only the
    # fallback.  Giving ``lr=…`` as an override turns the test off (MethodConfig.update).
    lr_range_test: bool = True
    val_every: int = 1
    temperature: float = 0.05
    dtype: str = "fp32"  # auto | fp32 | bf16 (autocast; auto = bf16 where it is native: alignbench.devices)
    # cosine: warm-up then one cosine to min_lr over max_epochs (the default here).  reference: the
    # reference's CosineAnnealingLR, T_max = 50·max(⌊N/4096⌋, 1) steps, per batch, cyclic past T_max.
    schedule: str = "cosine"
    # global: one norm over all parameters (the default here); per_tensor: each tensor clipped alone (reference).
    clip_mode: str = "global"

    def train_config(self) -> "TrainConfig":
        """These settings as the trainer's config (a TrainConfig gives an equal copy, betas included)."""
        return TrainConfig(**{f.name: getattr(self, f.name) for f in fields(TrainConfig) if hasattr(self, f.name)})


@dataclass
class TrainConfig(TrainerSettings):
    """Optimiser / schedule / stopping settings of the shared trainer."""

    betas: tuple[float, float] = (0.9, 0.95)

    def check(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_epochs < 1:
            raise ConfigError(f"max_epochs must be >= 1, got {self.max_epochs}")
        if self.patience < 1:
            raise ConfigError(f"patience must be >= 1, got {self.patience}")
        if self.val_every < 1:
            raise ConfigError(f"val_every must be >= 1, got {self.val_every}")
        if self.warmup_steps < 0 or self.min_lr < 0 or self.weight_decay < 0:
            raise ConfigError("warmup_steps, min_lr and weight_decay must be >= 0")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        from alignbench.devices import MATMUL_DTYPES

        if self.dtype not in MATMUL_DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(MATMUL_DTYPES)}, got {self.dtype!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.clip_mode not in CLIP_MODES:
            raise ConfigError(f"clip_mode must be one of {', '.join(CLIP_MODES)}, got {self.clip_mode!r}")


REFERENCE_BATCH = 4096  # the reference's batch: min(N, 4096); its schedule's T_max and the range test use it
SCHEDULES = ("cosine", "reference")
CLIP_MODES = ("global", "per_tensor")
# The reference trainer's settings where the defaults here differ (CPU budget); trainer_deviations names them.
REFERENCE_TRAINER = {"lr_range_test": True, "schedule": "reference", "clip_mode": "per_tensor",
                     "max_epochs": 1000, "patience": 200}


def trainer_deviations(settings: TrainerSettings) -> list[str]:
    """How ``settings`` differ from the reference trainer (recorded in every trained result)."""
    out = []
    for name, ref in REFERENCE_TRAINER.items():
        value = getattr(settings, name)
        if value != ref:
            hint = " (fixed lr; the reference runs an LR range test per fit)" if name == "lr_range_test" else ""
            out.append(f"trainer {name}={value!r} (reference {ref!r}){hint}")
    return out
