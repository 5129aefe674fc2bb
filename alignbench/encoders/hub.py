"""Hub encoder families: ``timm:<model>``, ``hf:<repo or folder>``, ``st:<repo or folder>``.

Users have the hub; this machine does not.  So each family takes the same
path for a hub id and for a local folder (``hf:/path/to/saved``), and timm
takes ``pretrained=False``: the tests run tiny random models through exactly
the code that loads real ones.

Conventions shared with the built-ins (see base.py): ``layer`` is a 0-based
block/stage index, default last; image tokens are the chosen block's output
(prefix tokens first, then patches row-major), taken before any final norm;
the global feature is the model's own pooled output.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np

from alignbench.encoders.base import EncodedImages, EncodedTexts, ImageEncoder, TextEncoder
from alignbench.encoders.hf_text import HFTextEncoder, quiet_hf_loading
from alignbench.encoders.weights import state_dict_sha256
from alignbench.errors import ConfigError
from alignbench.registry import register_encoder_family

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

    def _load(self) -> None:  # sets self._model and self._layout
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


# -- timm ------------------------------------------------------------------------
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
        **model_kwargs: Any,
    ):
        super().__init__(layer=layer, dtype=dtype, device=device)
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

    @property
    def transform(self) -> Callable[[Any], Any]:
        _ = self.model
        return self._transform

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


# -- transformers ------------------------------------------------------------------
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
        if options:
            raise ConfigError(f"unknown option(s) for hf:{repo}: {', '.join(sorted(options))}")
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

    @property
    def transform(self) -> Callable[[Any], Any]:
        _ = self.model
        return self._transform

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


# -- sentence-transformers ------------------------------------------------------------
@register_encoder_family("st")
class SentenceTransformerEncoder(TextEncoder):
    """Any sentence-transformers model; pooled = its own encode() output (pooling, dense, normalise as configured)."""

    modality = "text"

    def __init__(self, repo: str, *, layer: int | None = None, dtype: str = "fp32", device: str = "cpu", **options: Any):
        super().__init__(layer=layer, dtype=dtype, device=device)
        if options:
            raise ConfigError(f"unknown option(s) for st:{repo}: {', '.join(sorted(options))}")
        self.repo = str(repo)
        self._st = None
        self._hash: str | None = None
        _ = self.layer

    @property
    def registry_name(self) -> str:  # type: ignore[override]
        return f"st:{self.repo}"

    @property
    def model(self):
        if self._st is None:
            from sentence_transformers import SentenceTransformer

            with quiet_hf_loading():
                st = SentenceTransformer(self.repo, device=self.device)
            self._st = st.eval()
            self.max_length = int(st.max_seq_length or TextEncoder.max_length)
        return self._st

    @property
    def _auto_model(self):
        return self.model[0].auto_model

    @property
    def num_layers(self) -> int:
        return int(self._auto_model.config.num_hidden_layers)

    @property
    def dim(self) -> int:
        st = self.model
        get = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
        return int(get())

    @property
    def token_dim(self) -> int:
        return int(self._auto_model.config.hidden_size)

    def fingerprint(self) -> dict[str, Any]:
        if self._hash is None:
            self._hash = state_dict_sha256(self.model)
        return {
            "encoder": f"st:{self.repo}",
            "weights_sha256": self._hash,
            "modules": [type(m).__name__ for m in self.model],
            "layer": self.layer,
            "tokens": "hidden_states[layer+1], special tokens kept, padding masked",
            "pooling": "sentence-transformers pipeline output",
            "max_length": self.max_length,
            "dtype": self.dtype,
            "backend": "torch",
        }

    def encode(self, texts: list[str], *, tokens: bool = True) -> EncodedTexts:
        import torch

        st = self.model
        prep = getattr(st, "preprocess", None) or st.tokenize
        feats = prep(list(texts))
        feats = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in feats.items()}
        cfg = self._auto_model.config
        was = cfg.output_hidden_states
        cfg.output_hidden_states = True
        try:
            with torch.inference_mode(), self.autocast():
                out = st(feats)
        finally:
            cfg.output_hidden_states = was
        mask = out["attention_mask"].bool()
        tok = None
        if tokens:
            tok = out["all_layer_embeddings"][self.layer + 1].float() * mask.unsqueeze(-1)
        return EncodedTexts(pooled=out["sentence_embedding"].float(), tokens=tok, mask=mask if tokens else None)
