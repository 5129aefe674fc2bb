"""Encoder interface: a frozen model giving global AND token features per batch.

Every encoder (offline built-ins, hub families, tiny random test models)
exposes the same surface so the feature store and the encode loop never care
which one runs.  ``fingerprint()`` must change whenever the vectors would.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np

from alignbench.devices import is_cuda
from alignbench.errors import ConfigError

DTYPES = ("fp32", "bf16", "fp16")


@dataclass
class EncodedImages:
    """One batch: ``pooled`` (B, d) and ``tokens`` (B, T, d_tok) as torch tensors."""

    pooled: Any
    tokens: Any | None


@dataclass
class EncodedTexts:
    """One batch: ``pooled`` (B, d), padded ``tokens`` (B, L, d_tok) and ``mask`` (B, L) bool."""

    pooled: Any
    tokens: Any | None
    mask: Any | None


def reject_options(owner: str, options: dict[str, Any]) -> None:
    """The one error for keyword options an encoder does not take (a typo would otherwise pass silently)."""
    if options:
        raise ConfigError(f"unknown option(s) for {owner}: {', '.join(sorted(options))}")


class Encoder(ABC):
    """Shared options: ``layer`` (block index, default last; negative counts
    from the end), ``dtype`` (fp32|bf16|fp16), ``device``."""

    modality: ClassVar[str] = ""
    registry_name: ClassVar[str] = ""

    def __init__(self, *, layer: int | None = None, dtype: str = "fp32", device: str = "cpu", **options: Any):
        if dtype not in DTYPES:
            raise ConfigError(f"dtype {dtype!r} not supported; choose one of {', '.join(DTYPES)}")
        self.dtype = dtype
        self.device = device
        self.options = options
        self._layer_arg = layer

    # -- to implement ----------------------------------------------------------
    @property
    @abstractmethod
    def num_layers(self) -> int:
        """Number of selectable blocks/layers (layer ∈ [0, num_layers))."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Dimension of the global feature."""

    @property
    def token_dim(self) -> int:
        return self.dim

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """Everything that changes the vectors: weights hash, layer, pooling, preprocessing, dtype…"""

    # -- shared ----------------------------------------------------------------
    @property
    def layer(self) -> int:
        """The resolved (non-negative) layer index; validates the range."""
        n = self.num_layers
        layer = n - 1 if self._layer_arg is None else int(self._layer_arg)
        if layer < 0:
            layer += n
        if not 0 <= layer < n:
            raise ConfigError(
                f"layer {self._layer_arg} out of range for encoder {self.registry_name!r}, "
                f"which has {n} layers (valid: 0..{n - 1}, or -1..-{n})"
            )
        return layer

    def torch_dtype(self):
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.dtype]

    def autocast(self):
        """Mixed precision for ``dtype`` on ``device`` (no-op for fp32).

        Why autocast rather than casting the weights: LayerNorm, softmax and
        reductions stay in fp32, so bf16 features stay closest to fp32 ones.
        """
        import contextlib

        import torch

        if self.dtype == "fp32":
            return contextlib.nullcontext()
        kind = "cuda" if is_cuda(self.device) else "cpu"
        return torch.autocast(kind, dtype=self.torch_dtype())


class ImageEncoder(Encoder):
    """Image side: ``transform`` (PIL → C×H×W float tensor, picklable) and ``encode``."""

    modality = "image"

    @property
    @abstractmethod
    def resolution(self) -> int: ...

    @property
    @abstractmethod
    def grid(self) -> tuple[int, int]:
        """Patch grid (h, w) of the token map at ``resolution``."""

    @property
    def n_prefix(self) -> int:
        """Tokens before the patches (1 for a ViT's CLS, 0 for a CNN)."""
        return 0

    @property
    @abstractmethod
    def transform(self) -> Callable[[Any], Any]:
        """Picklable preprocessing PIL.Image → float tensor (3, R, R)."""

    @abstractmethod
    def encode(self, pixels: Any, *, tokens: bool = True) -> EncodedImages:
        """Encode a (B, 3, R, R) batch (already on ``device``)."""

    def final_norm(self) -> tuple[np.ndarray, np.ndarray, float] | None:
        """(weight, bias, eps) of the final LayerNorm if tokens are stored before it."""
        return None


class TextEncoder(Encoder):
    """Text side: ``encode`` takes raw strings (tokenisation is part of it)."""

    modality = "text"
    max_length: int = 128

    @abstractmethod
    def encode(self, texts: list[str], *, tokens: bool = True) -> EncodedTexts: ...
