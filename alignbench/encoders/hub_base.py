"""What the hub image families share: a model (and its token layout) known only after loading."""
from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np

from alignbench.encoders.base import EncodedImages, ImageEncoder
from alignbench.encoders.weights import state_dict_sha256
from alignbench.errors import ConfigError

log = logging.getLogger(__name__)


def _layer_norm_params(module: Any) -> tuple[np.ndarray, np.ndarray, float] | None:
    import torch

    if isinstance(module, torch.nn.LayerNorm) and module.weight is not None:
        bias = module.bias if module.bias is not None else torch.zeros_like(module.weight)
        return (
            module.weight.detach().float().cpu().numpy().copy(),
            bias.detach().float().cpu().numpy().copy(),
            float(module.eps),
        )
    return None


class _LazyImageEncoder(ImageEncoder):
    """Hub image encoders: the model (and its token layout) is only known after loading."""

    def __init__(self, *, layer: int | None = None, dtype: str = "fp32", device: str = "cpu"):
        super().__init__(layer=layer, dtype=dtype, device=device)
        self._model = None
        self._layout: dict[str, Any] = {}
        self._hash: str | None = None
        self._transform: Callable[[Any], Any] | None = None

    def _load(self) -> None:  # sets self._model, self._layout and self._transform
        raise NotImplementedError

    @property
    def model(self):
        if self._model is None:
            self._load()
        return self._model

    def _get(self, key: str) -> Any:
        _ = self.model
        return self._layout[key]

    @property
    def num_layers(self) -> int:
        return self._get("num_layers")

    @property
    def dim(self) -> int:
        return self._get("dim")

    @property
    def token_dim(self) -> int:
        return self._get("token_dims")[self.layer]

    @property
    def resolution(self) -> int:
        return self._get("resolution")

    @property
    def grid(self) -> tuple[int, int]:
        return self._get("grids")[self.layer]

    @property
    def n_prefix(self) -> int:
        return self._get("n_prefix")

    @property
    def transform(self) -> Callable[[Any], Any]:
        _ = self.model  # _load sets it
        return self._transform

    def weights_sha256(self) -> str:
        if self._hash is None:
            self._hash = state_dict_sha256(self.model)
        return self._hash

    def _probe(self) -> None:
        """One forward on a blank image to learn every layer's token layout."""
        import torch

        r = self._layout["resolution"]
        with torch.inference_mode():
            pooled, per_layer, n_prefix = self._run(torch.zeros(1, 3, r, r, device=self.device), None)
        self._layout.update(
            num_layers=len(per_layer),
            dim=int(pooled.shape[-1]),
            token_dims=[int(t.shape[1] if t.ndim == 4 else t.shape[-1]) for t in per_layer],
            grids=[g for _, g in (self._as_tokens(t, n_prefix) for t in per_layer)],
            n_prefix=n_prefix,
        )

    def _as_tokens(self, t: Any, n_prefix: int) -> tuple[Any, tuple[int, int]]:
        """(B, T, d) tokens and the patch grid from a layer output (NCHW maps or NLC sequences)."""
        if t.ndim == 4:
            _, _, h, w = t.shape
            return t.flatten(2).transpose(1, 2), (int(h), int(w))
        n = int(t.shape[1]) - n_prefix
        gh, gw = self._layout.get("patch_grid") or (int(round(n**0.5)), int(round(n**0.5)))
        if gh * gw != n:
            raise ConfigError(f"cannot lay {n} patch tokens on a grid; pass resolution= explicitly")
        return t, (gh, gw)

    def _run(self, pixels: Any, layer: int | None) -> tuple[Any, list[Any], int]:
        """(pooled, [outputs of every layer] or [the one asked for], n_prefix)."""
        raise NotImplementedError

    def encode(self, pixels: Any, *, tokens: bool = True) -> EncodedImages:
        import torch

        _ = self.model
        layer = self.layer
        with torch.inference_mode(), self.autocast():
            pooled, outs, n_prefix = self._run(pixels.to(self.device, torch.float32), layer)
        tok = self._as_tokens(outs[0], n_prefix)[0].float() if tokens else None
        return EncodedImages(pooled=pooled.float(), tokens=tok)
