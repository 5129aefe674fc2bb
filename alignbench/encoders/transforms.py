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

    @property
    def shape(self) -> tuple[int, int, int]:
        """C×H×W of every output (both resize modes end at ``resolution``²)."""
        return (3, self.resolution, self.resolution)

    def __call__(self, image: Any):
        """PIL image → normalised float32 C×H×W tensor."""
        return self.normalise(self.pixels(image))

    def pixels(self, image: Any):
        """PIL image → resized/cropped uint8 C×H×W tensor (what decode workers ship: 4× less than float)."""
        import torch

        return torch.from_numpy(np.ascontiguousarray(self._fitted(image).transpose(2, 0, 1)))

    def into(self, image: Any, out: np.ndarray) -> None:
        """Write the normalised C×H×W float32 of ``image`` into ``out`` (a slot of a reused batch buffer).

        The same two float32 operations as :meth:`normalise`, so the numbers are identical;
        decode threads call it, so no uint8 batch and no fresh float batch is ever allocated.
        """
        mean, std = self._constants()
        np.subtract(self._fitted(image).transpose(2, 0, 1), mean, out=out, dtype=np.float32)
        np.divide(out, std, out=out)

    def normalise(self, pixels: Any):
        """uint8 (…, 3, H, W) tensor → float32 ``(x − mean) / std`` on the tensor's own device.

        The same two IEEE float32 operations everywhere, so the same bits on a GPU as here.
        On the CPU single-threaded numpy on purpose: it runs beside the model, whose threads own the cores.
        """
        import torch

        mean, std = self._constants()
        if pixels.device.type != "cpu":
            x = pixels.to(torch.float32)
            return x.sub_(torch.from_numpy(mean).to(x.device)).div_(torch.from_numpy(std).to(x.device))
        u8 = pixels.numpy()
        x = np.empty(u8.shape, dtype=np.float32)
        np.subtract(u8, mean, out=x, dtype=np.float32)
        np.divide(x, std, out=x)
        return torch.from_numpy(x)

    def _constants(self) -> tuple[np.ndarray, np.ndarray]:
        return (np.asarray(self.mean, np.float32).reshape(3, 1, 1), np.asarray(self.std, np.float32).reshape(3, 1, 1))

    def _fitted(self, image: Any) -> np.ndarray:
        """PIL image → resized, centre-cropped H×W×3 uint8 array (the crop is a view, not a copy)."""
        from PIL import Image

        img = image.convert("RGB") if getattr(image, "mode", "RGB") != "RGB" else image
        r = self.resolution
        w, h = img.size
        if self.resize == "squash":
            if (w, h) != (r, r):
                img = img.resize((r, r), Image.BICUBIC)
            return np.asarray(img, dtype=np.uint8)
        if min(w, h) != r:
            s = r / min(w, h)
            img = img.resize((max(r, round(w * s)), max(r, round(h * s))), Image.BICUBIC)
        w, h = img.size
        left, top = (w - r) // 2, (h - r) // 2
        return np.asarray(img, dtype=np.uint8)[top : top + r, left : left + r]

    def describe(self) -> dict[str, Any]:
        """What goes into an encoder fingerprint."""
        return {"kind": "pil-bicubic", **asdict(self)}


class SplitTorchvision:
    """A torchvision ``Compose`` of PIL steps ending in ``ToTensor`` + ``Normalize``, cut in two.

    Why: timm's evaluation transform (Resize, CenterCrop, ToTensor, Normalize) run whole
    in a decode worker ships float32 (4x the bytes of uint8) and spends the worker's time
    on two float passes.  Cut, the workers run the PIL steps and ship uint8 (:meth:`pixels`);
    the main process (or the GPU) maps whole batches through a 3x256 table (:meth:`normalise`).
    The table is the tail's own output on a 0..255 ramp, and the tail is an elementwise
    function of (channel, value), so every pixel gets exactly the float the whole
    transform would give it, on any device (a gather, no arithmetic).
    """

    def __init__(self, head: list[Any], tail: list[Any]):
        self.head, self.tail = head, tail
        self._table = None
        self._tables: dict[str, Any] = {}

    @classmethod
    def of(cls, transform: Any) -> "SplitTorchvision | None":
        """The split of ``transform``, or None when it is not PIL steps + ToTensor + Normalize."""
        from torchvision import transforms as T

        steps = list(transform.transforms) if type(transform) is T.Compose else []
        if len(steps) < 2 or not _is_to_tensor(steps[-2]) or type(steps[-1]) is not T.Normalize:
            return None
        if not all(type(s) in (T.Resize, T.CenterCrop) for s in steps[:-2]):
            return None
        return cls(steps[:-2], steps[-2:])

    def __call__(self, image: Any):
        """PIL image → the whole transform's float32 C×H×W tensor."""
        return self.normalise(self.pixels(image))

    def pixels(self, image: Any):
        """PIL image → the head's uint8 C×H×W tensor (what decode workers ship)."""
        import torch

        img = image.convert("RGB") if getattr(image, "mode", "RGB") != "RGB" else image
        for step in self.head:
            img = step(img)
        return torch.from_numpy(np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)))

    def normalise(self, pixels: Any):
        """uint8 (…, 3, H, W) tensor → float32 on the same device, by table lookup.

        On the CPU one numpy gather per channel (single-threaded: it runs beside the model).
        """
        import torch

        if pixels.device.type == "cpu":
            table, u8 = self.table().view(3, 256).numpy(), pixels.numpy()
            out = np.empty(u8.shape, np.float32)
            for c in range(3):
                out[..., c, :, :] = table[c][u8[..., c, :, :]]
            return torch.from_numpy(out)
        key = str(pixels.device)
        if key not in self._tables:
            self._tables[key] = self.table().to(pixels.device)
        channel = torch.arange(3, device=pixels.device).view(3, 1, 1) * 256
        return torch.take(self._tables[key], pixels.to(torch.int64) + channel)

    def table(self):
        """(3·256,) float32: entry ``256·c + v`` is the tail's output for value ``v`` in channel ``c``."""
        from PIL import Image

        if self._table is None:
            ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)  # 1×256 RGB
            out = Image.fromarray(ramp, "RGB")
            for step in self.tail:
                out = step(out)
            self._table = out.reshape(3, 256).contiguous().flatten()
        return self._table

    def __getstate__(self) -> dict[str, Any]:  # workers need only the head
        return {"head": self.head, "tail": self.tail, "_table": None, "_tables": {}}


def _is_to_tensor(step: Any) -> bool:
    """torchvision's ToTensor or timm's MaybeToTensor (the same ``to_tensor`` on PIL images)."""
    from torchvision import transforms as T

    kind = type(step)
    return kind is T.ToTensor or (kind.__name__ == "MaybeToTensor" and kind.__module__.startswith("timm."))
