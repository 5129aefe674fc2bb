"""PAL's settings (METHODS.md defaults, the trainer's and the speed knobs) and their checks.

Why a module: methods/pal.py is the method (anchors, CAP profiles, fit, embedding, state); the
settings a user types and the preflight checks stand on their own.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from alignbench.errors import ConfigError
from alignbench.methods.base import MethodConfig
from alignbench.training import TrainConfig, TrainerSettings

POOLS = ("cap", "mean", "cls")
CENTER = ("none", "image", "text", "both")
COMPILE_CHOICES = ("auto", "on", "off", "inductor")


@dataclass
class PALConfig(MethodConfig, TrainerSettings):
    """PAL hyperparameters (METHODS.md defaults) plus trainer and speed settings.

    ``pool``: cap (faithful) | mean (mean over tokens) | cls (global feature
    only).  ``dtype`` is the dtype of the token–anchor matmuls (bf16 pays off
    only on hardware with fast bf16 matmuls).  ``compile`` (auto | on | off | inductor)
    fuses CAP's elementwise steps with torch.compile and, on the CPU, runs its two
    exponential passes in C++ (alignbench.cap_native; ``inductor``: torch.compile
    only); it falls back to eager ops if compiling fails; ``auto`` compiles only when
    the CAP work is large enough to repay the one-off compile time.
    ``val_max_pairs`` caps the validation pairs used for early stopping.  ``chunk_elems`` bounds the similarities computed at once.

    ``center`` (none | image | text | both; not in METHODS.md, so recorded as a
    deviation): subtract the mean training token of that modality before the
    cosines.  Why: dinov2-s14's pre-norm tokens carry two outlier channels
    (|v| ≈ 17–19 vs a median of 1.5) shared by every token, so tokens of
    unrelated images have cosine ≈ 0.54 (0.01 after centring) and all CAP
    profiles look alike.  The means are part of the fitted state.
    """

    K: int = 512
    tau_p: float = 0.03
    pool: str = "cap"
    val_max_pairs: int = 1000
    chunk_elems: int = 1 << 22
    compile: str = "auto"
    center: str = "none"
    dtype: str = "auto"  # the token–anchor matmuls: auto = bf16 where native (AMX, AVX-512 bf16, GPU), else fp32

    def __post_init__(self) -> None:
        if isinstance(self.compile, bool):  # compile=True/False from Python
            self.compile = "on" if self.compile else "off"

    def check(self) -> None:
        if self.K < 1:
            raise ConfigError(f"PAL needs K >= 1 anchors, got K={self.K}")
        if not (math.isfinite(self.tau_p) and self.tau_p > 0):
            raise ConfigError(f"tau_p must be > 0, got {self.tau_p}")
        if self.pool not in POOLS:
            raise ConfigError(f"pool must be one of {', '.join(POOLS)}, got {self.pool!r}")
        if self.val_max_pairs < 2:
            raise ConfigError(f"val_max_pairs must be >= 2, got {self.val_max_pairs}")
        if self.center not in CENTER:
            raise ConfigError(f"center must be one of {', '.join(CENTER)}, got {self.center!r}")
        if self.center != "none" and self.pool == "cls":
            raise ConfigError("center shifts tokens; pool=cls uses the global feature only (use center=none)")
        from alignbench.devices import MATMUL_DTYPES

        if self.dtype not in MATMUL_DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(MATMUL_DTYPES)}, got {self.dtype!r}")
        if self.compile not in COMPILE_CHOICES:
            raise ConfigError(f"compile must be one of {', '.join(COMPILE_CHOICES)}, got {self.compile!r}")
        if self.chunk_elems < 1:
            raise ConfigError(f"chunk_elems must be >= 1, got {self.chunk_elems}")
        self.train_config().check()

    def train_config(self) -> TrainConfig:
        # bf16 is applied inside CAP; the B×B InfoNCE stays fp32
        return dataclasses.replace(super().train_config(), dtype="fp32")


__all__ = ["CENTER", "POOLS", "PALConfig"]
