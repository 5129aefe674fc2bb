"""``timm:<model>``: any timm image model (ViT or CNN), pretrained from the hub or random (tests)."""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from alignbench.encoders.hub_base import _LazyImageEncoder, _layer_norm_params
from alignbench.errors import ConfigError
from alignbench.registry import register_encoder, register_encoder_family

log = logging.getLogger(__name__)


@register_encoder_family("timm")
class TimmEncoder(_LazyImageEncoder):
    """Any timm image model (ViT or CNN); tokens via forward_intermediates, pooled = forward_head(pre_logits)."""

    modality = "image"

    def __init__(
        self,
        model_name: str,
        *,
        layer: int | None = None,
        dtype: str = "fp32",
        device: str = "cpu",
        pretrained: bool = True,
        resolution: int | None = None,
        resize: str = "crop",
        **model_kwargs: Any,
    ):
        from alignbench.encoders.transforms import RESIZE_MODES

        super().__init__(layer=layer, dtype=dtype, device=device)
        if resize not in RESIZE_MODES:
            raise ConfigError(f"resize {resize!r} not supported; choose one of {', '.join(RESIZE_MODES)}")
        self.resize = resize  # squash: the whole image to the input (dense tasks), via timm's crop_mode
        self.model_name = model_name
        self.pretrained = bool(pretrained)
        self._resolution_arg = resolution
        self.model_kwargs = model_kwargs
        self._data_config: dict[str, Any] = {}
        _ = self.layer  # loads and validates

    @property
    def registry_name(self) -> str:  # type: ignore[override]
        return f"timm:{self.model_name}"

    def _load(self) -> None:
        import timm
        import torch

        kwargs = dict(self.model_kwargs)
        if self._resolution_arg:
            kwargs["img_size"] = int(self._resolution_arg)
        try:
            if self.pretrained:
                model = timm.create_model(self.model_name, pretrained=True, num_classes=0, **kwargs)
            else:
                with torch.random.fork_rng():  # reproducible random weights (tests)
                    torch.manual_seed(0)
                    model = timm.create_model(self.model_name, pretrained=False, num_classes=0, **kwargs)
        except RuntimeError as exc:
            if "Unknown model" in str(exc):
                raise ConfigError(f"timm has no model {self.model_name!r} (see timm.list_models())") from exc
            raise
        self._model = model.eval().requires_grad_(False).to(self.device)
        self._is_vit = hasattr(model, "num_prefix_tokens") and hasattr(model, "blocks")
        cfg = timm.data.resolve_data_config({}, model=model)
        if self._resolution_arg:  # the pretrained config names its own size (DINOv2: 518); the input follows img_size
            cfg = {**cfg, "input_size": (3, int(self._resolution_arg), int(self._resolution_arg))}
        if self.resize == "squash":  # no crop: every pixel of the image lands in a patch
            cfg = {**cfg, "crop_pct": 1.0, "crop_mode": "squash"}
        self._data_config = cfg
        self._transform = timm.data.create_transform(**cfg, is_training=False)
        res = int(cfg["input_size"][-1])
        patch_grid = tuple(model.patch_embed.grid_size) if self._is_vit and hasattr(model, "patch_embed") else None
        self._layout = {"resolution": res, "patch_grid": patch_grid}
        self._probe()

    def _run(self, pixels: Any, layer: int | None) -> tuple[Any, list[Any], int]:
        m = self._model
        if not hasattr(m, "forward_intermediates"):
            feats = m.forward_features(pixels)
            n_prefix = getattr(m, "num_prefix_tokens", 0) if feats.ndim == 3 else 0
            return m.forward_head(feats, pre_logits=True), [feats], n_prefix
        n = len(m.blocks) if self._is_vit else len(m.feature_info)
        indices = list(range(n)) if layer is None else [layer]
        if self._is_vit:
            final, inter = m.forward_intermediates(
                pixels, indices=indices, return_prefix_tokens=True, norm=False, output_fmt="NLC"
            )
            import torch

            outs = [torch.cat([prefix, patches], 1) if prefix is not None else patches for patches, prefix in inter]
            n_prefix = int(m.num_prefix_tokens)
        else:
            final, outs = m.forward_intermediates(pixels, indices=indices, output_fmt="NCHW")
            n_prefix = 0
        return m.forward_head(final, pre_logits=True), list(outs), n_prefix

    def final_norm(self) -> tuple[np.ndarray, np.ndarray, float] | None:
        m = self.model
        if not self._is_vit:
            return None
        fc_norm = getattr(m, "fc_norm", None)
        return _layer_norm_params(fc_norm) or _layer_norm_params(getattr(m, "norm", None))

    def fingerprint(self) -> dict[str, Any]:
        _ = self.model
        return {
            "encoder": f"timm:{self.model_name}",
            "weights_sha256": self.weights_sha256(),
            "pretrained": self.pretrained,
            "model_kwargs": {k: repr(v) for k, v in sorted(self.model_kwargs.items())},
            "layer": self.layer,
            "tokens": "prefix+patches before the final norm" if self._is_vit else "stage feature map",
            "pooling": "timm forward_head(pre_logits=True)",
            "preprocess": {k: list(v) if isinstance(v, tuple) else v for k, v in self._data_config.items()},
            "resolution": self.resolution,
            "dtype": self.dtype,
            "backend": "torch",
        }


@register_encoder("dinov2-l14-timm", aliases=("dinov2-vitl14-224",))
class DinoV2L14Timm(TimmEncoder):
    """DINOv2 ViT-L/14 (timm, LVD-142M weights) at 224 px: 257 tokens x 1024, the PAL paper's image encoder.

    Why a name of its own: ``timm:vit_large_patch14_dinov2.lvd142m`` runs at timm's
    518 px (1370 tokens, 5.3x the token cache); a sweep cannot pass ``resolution``.
    """

    def __init__(self, **kw: Any):
        kw.setdefault("resolution", 224)
        super().__init__("vit_large_patch14_dinov2.lvd142m", **kw)
