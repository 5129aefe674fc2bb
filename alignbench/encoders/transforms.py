"""Picklable image preprocessing (PIL → normalised C×H×W float tensor).

Why a small class instead of a torchvision ``Compose``: data-loader workers
pickle it, the feature cache keys on its ``describe()``, and the two
normalisations in use (ImageNet mean/std on 0–1 pixels, TF-style
``(x−127)/128`` on 0–255 pixels) are both "subtract, divide" on 0–255 values.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from alignbench.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("crop", "squash")


@dataclass(frozen=True)
class ImageTransform:
    """Resize + normalise.

    ``resize="crop"``: shorter side to ``resolution`` (bicubic, antialiased as
    PIL does), then a centre crop — the usual evaluation transform (crop_pct 1).
    ``resize="squash"``: the whole image to ``resolution``×``resolution``
    (aspect ratio not kept) so every pixel has a patch — for dense tasks.
    ``mean``/``std`` are in 0–255 pixel units.
    """

    resolution: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = "crop"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ConfigError(f"resize {self.resize!r} not supported; choose one of {', '.join(RESIZE_MODES)}")
        if self.resolution <= 0:
            raise ConfigError(f"resolution must be positive, got {self.resolution}")

    @classmethod
    def imagenet(cls, resolution: int, resize: str = "crop") -> "ImageTransform":
        return cls(resolution, tuple(m * 255 for m in IMAGENET_MEAN), tuple(s * 255 for s in IMAGENET_STD), resize)

    @classmethod
    def tf_style(cls, resolution: int, resize: str = "crop") -> "ImageTransform":
        """EfficientNet-Lite's ``(x − 127) / 128`` on 0–255 pixels."""
        return cls(resolution, (127.0, 127.0, 127.0), (128.0, 128.0, 128.0), resize)

    def __call__(self, image: Any):
        """PIL image → normalised float32 C×H×W tensor."""
        return self.normalise(self.pixels(image))

    def pixels(self, image: Any):
        """PIL image → resized/cropped uint8 C×H×W tensor (what decode workers ship: 4× less than float)."""
        import torch
        from PIL import Image

        img = image.convert("RGB") if getattr(image, "mode", "RGB") != "RGB" else image
        r = self.resolution
        w, h = img.size
        if self.resize == "squash":
            if (w, h) != (r, r):
                img = img.resize((r, r), Image.BICUBIC)
        else:
            if min(w, h) != r:
                s = r / min(w, h)
                img = img.resize((max(r, round(w * s)), max(r, round(h * s))), Image.BICUBIC)
            w, h = img.size
            left, top = (w - r) // 2, (h - r) // 2
            if (w, h) != (r, r):
                img = img.crop((left, top, left + r, top + r))
        return torch.from_numpy(np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)))

    def normalise(self, pixels: Any):
        """uint8 (…, 3, H, W) tensor → float32 ``(x − mean) / std``, one vectorised pass per batch.

        Single-threaded numpy on purpose: it runs beside the model, whose threads own the cores.
        """
        import torch

        u8 = pixels.numpy()
        x = np.empty(u8.shape, dtype=np.float32)
        np.subtract(u8, np.asarray(self.mean, np.float32).reshape(3, 1, 1), out=x, dtype=np.float32)
        np.divide(x, np.asarray(self.std, np.float32).reshape(3, 1, 1), out=x)
        return torch.from_numpy(x)

    def describe(self) -> dict[str, Any]:
        """What goes into an encoder fingerprint."""
        return {"kind": "pil-bicubic", **asdict(self)}
