"""``hf:<repo or folder>``: transformers vision, text and dual (CLIP-like) models."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from alignbench.encoders.hub_base import _LazyImageEncoder, _layer_norm_params
from alignbench.encoders.base import ImageEncoder, TextEncoder, reject_options
from alignbench.encoders.hf_text import HFTextEncoder, quiet_hf_loading
from alignbench.errors import ConfigError
from alignbench.registry import register_encoder_family

log = logging.getLogger(__name__)


def hf_config(repo: str) -> dict[str, Any]:
    """The model config as a dict: a local folder's config.json is read without transformers."""
    path = Path(repo) / "config.json"
    if path.is_file():
        return json.loads(path.read_text())
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(repo).to_dict()
    except OSError as exc:
        raise ConfigError(f"cannot load the config of hf:{repo} ({exc}); check the repo id or the folder") from exc


def hf_modality(repo: str) -> str:
    """'image', 'text' or 'both' (dual encoders such as CLIP/SigLIP), from the config alone."""
    cfg = hf_config(repo)
    if "vision_config" in cfg and "text_config" in cfg:
        return "both"
    if "vision_config" in cfg or str(cfg.get("model_type", "")).endswith("vision_model"):
        return "image"
    if "num_channels" in cfg or ("image_size" in cfg and "patch_size" in cfg):
        return "image"
    return "text"


class HFImageTransform:
    """Picklable wrapper: the repo's own image processor, PIL → (3, R, R) tensor."""

    def __init__(self, processor: Any):
        self.processor = processor

    def __call__(self, image: Any):
        img = image.convert("RGB") if getattr(image, "mode", "RGB") != "RGB" else image
        return self.processor(images=img, return_tensors="pt")["pixel_values"][0]

    def describe(self) -> dict[str, Any]:
        d = self.processor.to_dict()
        return {k: v for k, v in sorted(d.items()) if not k.startswith("_")}


class HFVisionEncoder(_LazyImageEncoder):
    """A transformers vision model: tokens = hidden_states[layer+1]; pooled = the model's global output.

    Pooled: for dual encoders (CLIP-like) the projected image embedding (the
    joint space); for token models the final-normed first token
    (``last_hidden_state[:, 0]``; no prefix → mean); for CNNs ``pooler_output``.
    """

    modality = "image"

    def __init__(self, repo: str, *, layer: int | None = None, dtype: str = "fp32", device: str = "cpu", **options: Any):
        super().__init__(layer=layer, dtype=dtype, device=device)
        reject_options(f"hf:{repo}", options)
        self.repo = str(repo)
        _ = self.layer

    @property
    def registry_name(self) -> str:  # type: ignore[override]
        return f"hf:{self.repo}"

    def _load(self) -> None:
        from PIL import Image
        from transformers import AutoImageProcessor, AutoModel

        with quiet_hf_loading():
            full = AutoModel.from_pretrained(self.repo)
            processor = AutoImageProcessor.from_pretrained(self.repo)
        self._full = full.eval().requires_grad_(False).to(self.device)
        self._tower = getattr(self._full, "vision_model", None) if hf_modality(self.repo) == "both" else None
        self._projection = getattr(self._full, "visual_projection", None) if self._tower is not None else None
        self._model = self._full
        self._transform = HFImageTransform(processor)
        res = int(self._transform(Image.new("RGB", (64, 64))).shape[-1])
        cfg = hf_config(self.repo)
        cfg = cfg.get("vision_config", cfg)
        patch = cfg.get("patch_size")
        patch = patch[0] if isinstance(patch, (list, tuple)) else patch
        self._layout = {"resolution": res, "patch_grid": (res // patch, res // patch) if patch else None}
        self._probe()

    def _run(self, pixels: Any, layer: int | None) -> tuple[Any, list[Any], int]:
        net = self._tower if self._tower is not None else self._full
        out = net(pixel_values=pixels, output_hidden_states=True, return_dict=True)
        hidden = list(out.hidden_states[1:])
        last = out.last_hidden_state
        grid = self._layout.get("patch_grid")
        n_prefix = int(hidden[-1].shape[1] - grid[0] * grid[1]) if (hidden[-1].ndim == 3 and grid) else 0
        if self._tower is not None:
            pooled = out.pooler_output
            if self._projection is not None:
                pooled = self._projection(pooled)
        elif last.ndim == 3:
            pooled = last[:, 0] if n_prefix > 0 else last.mean(1)
        else:
            pooled = out.pooler_output.flatten(1)
        return pooled, hidden if layer is None else [hidden[layer]], n_prefix

    def final_norm(self) -> tuple[np.ndarray, np.ndarray, float] | None:
        _ = self.model
        if self._projection is not None or self.n_prefix == 0:
            return None  # the pooled space is not "final norm of a token"
        net = self._tower if self._tower is not None else self._full
        for name in ("layernorm", "post_layernorm", "norm"):
            params = _layer_norm_params(getattr(net, name, None))
            if params is not None:
                return params
        return None

    def fingerprint(self) -> dict[str, Any]:
        _ = self.model
        return {
            "encoder": f"hf:{self.repo}",
            "weights_sha256": self.weights_sha256(),
            "layer": self.layer,
            "tokens": "hidden_states[layer+1] (before the final norm)",
            "pooling": "projected embedding" if self._projection is not None else "model global output",
            "preprocess": self.transform.describe(),
            "resolution": self.resolution,
            "dtype": self.dtype,
            "backend": "torch",
        }


class HFHubTextEncoder(HFTextEncoder):
    """``hf:`` text models: mean pooling, or for dual encoders (CLIP-like) the projected text embedding."""

    def __init__(self, repo: str, **kwargs: Any):
        self._dual = hf_modality(str(repo)) == "both"
        self.registry_name = f"hf:{repo}"  # type: ignore[misc]
        super().__init__(repo, **kwargs)
        if self._dual and self._full_config.get("projection_dim"):
            self._dim = int(self._full_config["projection_dim"])

    @property
    def model(self):
        if self._model is None:
            super().model  # noqa: B018 - loads
            if self._dual:
                self._text = self._model.text_model
                self._projection = getattr(self._model, "text_projection", None)
        return self._model

    def _forward(self, batch: dict) -> tuple[Any, Any]:
        if not self._dual:
            return super()._forward(batch)
        _ = self.model
        batch = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
        out = self._text(**batch, output_hidden_states=True, return_dict=True)
        pooled = out.pooler_output if self._projection is None else self._projection(out.pooler_output)
        return out.hidden_states, pooled

    def fingerprint(self) -> dict[str, Any]:
        fp = super().fingerprint()
        if self._dual:
            fp["pooling"] = "projected text embedding (dual encoder)"
        return fp


@register_encoder_family("hf")
def hf_encoder(repo: str, *, modality: str | None = None, **kwargs: Any) -> ImageEncoder | TextEncoder:
    """Any transformers model by repo id or local folder; vision or text is read from its config."""
    found = hf_modality(repo)
    if modality not in (None, "image", "text"):
        raise ConfigError(f"modality must be 'image' or 'text', got {modality!r}")
    if found == "both" and modality is None:
        raise ConfigError(f"hf:{repo} is a dual (image+text) encoder: say which tower with modality='image'|'text'")
    if found != "both" and modality not in (None, found):
        article = "an" if found == "image" else "a"
        raise ConfigError(f"hf:{repo} is {article} {found} model, not a {modality} model")
    side = modality or found
    return HFVisionEncoder(repo, **kwargs) if side == "image" else HFHubTextEncoder(repo, **kwargs)


hf_encoder.modality_for = hf_modality  # type: ignore[attr-defined]
