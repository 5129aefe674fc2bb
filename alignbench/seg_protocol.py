"""Segmentation evaluation protocols, typed: PAL's whole-image forward (default) and ClearCLIP/SAIL's sliding window.

Why a module: the two protocols give numbers that do not compare
(METHODS.md, evaluation conventions), so the protocol is resolved once from
the evaluation's text (``segmentation:voc:protocol=slide``) into a
:class:`SegProtocol`, checked before any data is read, recorded in the result
and made part of the evaluation's key (a report column of its own).

``whole`` (default, METHODS.md): the whole image squashed to the encoder's
input, one forward, patch scores upsampled bilinearly to the mask, argmax.

``slide`` (the official ClearCLIP ``clearclip_segmentor.py`` + ``configs/``,
and SAIL's ``evaluation/seg_eval.py``, which copies it): resize keeping the
aspect ratio so the short side is 448 (long side at most 2048: mmseg's
``Resize(scale=(2048, 448), keep_ratio=True)``); 448×448 windows every 224
pixels, the last window of a row/column flush with the border; each window's
patch scores upsampled bilinearly to the window and summed into a canvas,
divided by how many windows cover each pixel; the canvas upsampled
bilinearly to the mask; scores × ``logit_scale`` (50), softmax over classes,
argmax; with a ``threshold`` (VOC21 0.5, Context60 0.15; none elsewhere)
pixels whose largest class probability (background's included) is below it
become background.  One deviation, recorded: each window is encoded at the
encoder's own input resolution (the encoders here run at a fixed size;
ClearCLIP encodes the 448 window at 448 with interpolated position
embeddings).  SAIL scales by its learnt logit scale instead of 50.

numpy only at module level: preflight and ``report`` import this.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from alignbench.errors import ConfigError, DataError

PROTOCOLS = ("whole", "slide")


@dataclass(frozen=True)
class CropGrid:
    """Where the sliding windows of an image lie: resize so the short side is ``short_side``, windows of ``crop``
    every ``stride`` pixels (mmseg's ``slide_inference`` placement)."""

    short_side: int = 448
    crop: int = 448
    stride: int = 224
    max_long: int = 2048  # mmseg's scale=(2048, 448): the long side never exceeds this

    def __post_init__(self) -> None:
        for name in ("short_side", "crop", "stride", "max_long"):
            if getattr(self, name) < 1:
                raise ConfigError(f"segmentation {name.replace('_', '-')} must be a positive number of pixels, "
                                  f"got {getattr(self, name)}")
        if self.crop > self.short_side:
            raise ConfigError(f"segmentation crop {self.crop} is larger than the short side {self.short_side} "
                              "the image is resized to; no window would fit: use crop ≤ short")
        if self.stride > self.crop:
            raise ConfigError(f"segmentation stride {self.stride} is larger than the crop {self.crop}: "
                              "pixels between windows would never be scored; use stride ≤ crop")

    def resized(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) after mmseg's keep-ratio rescale: factor min(max_long / long side, short_side / short side)."""
        scale = min(self.max_long / max(height, width), self.short_side / min(height, width))
        return int(height * scale + 0.5), int(width * scale + 0.5)

    def boxes(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """(y1, y2, x1, x2) of each window over a (height, width) image, row-major.

        mmseg: ``grids = max(size - crop + stride - 1, 0) // stride + 1``; window k
        starts at k·stride, ends at min(start + crop, size) and then starts at
        max(end - crop, 0), so the last window is flush with the border and a
        side shorter than the crop gets one window of its own size.
        """
        out = []
        for y in range(max(height - self.crop + self.stride - 1, 0) // self.stride + 1):
            for x in range(max(width - self.crop + self.stride - 1, 0) // self.stride + 1):
                y2, x2 = min(y * self.stride + self.crop, height), min(x * self.stride + self.crop, width)
                out.append((max(y2 - self.crop, 0), y2, max(x2 - self.crop, 0), x2))
        return out

    @property
    def tag(self) -> str:
        """Folder-safe name of the crop set in the feature cache."""
        return f"crops{self.short_side}-{self.crop}-{self.stride}" + (
            f"-L{self.max_long}" if self.max_long != CropGrid.max_long else "")

    def of(self, dataset: Any) -> Any:
        """``dataset``'s images cut into these windows (a dataset view the feature store encodes)."""
        from alignbench.datasets.crops import CroppedDataset

        return CroppedDataset(dataset, self)

    def to_dict(self) -> dict[str, int]:
        return {"short_side": self.short_side, "crop": self.crop, "stride": self.stride, "max_long": self.max_long}


#: the option names users type → the CropGrid / SegProtocol field each sets
OPTIONS: dict[str, str] = {"protocol": "name", "short": "short_side", "crop": "crop", "stride": "stride",
                           "logit_scale": "logit_scale", "threshold": "threshold"}
SLIDE_ONLY = ("short", "crop", "stride", "logit_scale", "threshold")


@dataclass(frozen=True)
class SegProtocol:
    """One segmentation protocol, resolved.  ``threshold`` None: no background threshold.

    ``threshold_given``: the user typed a threshold (``none`` included); otherwise
    :meth:`for_dataset` fills in the dataset's ``slide_threshold``.
    """

    name: str = "whole"
    grid: CropGrid | None = None
    logit_scale: float = 50.0
    threshold: float | None = None
    threshold_given: bool = field(default=False, compare=False)

    DEFAULT_LOGIT_SCALE: ClassVar[float] = 50.0

    @property
    def is_default(self) -> bool:
        return self.name == "whole"

    @classmethod
    def parse(cls, options: dict[str, str]) -> "SegProtocol":
        """From ``{option: text}`` (``protocol=slide:crop=336``); ConfigError with one line on any bad value."""
        for key in options:
            if key not in OPTIONS:
                close = difflib.get_close_matches(key, list(OPTIONS), n=2, cutoff=0.5)
                hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
                raise ConfigError(f"segmentation has no option {key!r}{hint} (options: {', '.join(OPTIONS)})")
        name = options.get("protocol", "whole").strip().lower()
        if name not in PROTOCOLS:
            close = difflib.get_close_matches(name, PROTOCOLS, n=1, cutoff=0.4)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown segmentation protocol {name!r}{hint} (protocols: {', '.join(PROTOCOLS)})")
        if name == "whole":
            extra = [k for k in SLIDE_ONLY if k in options]
            if extra:
                raise ConfigError(f"segmentation option {extra[0]!r} applies to protocol=slide only "
                                  "(the default protocol=whole has no windows, scale or threshold)")
            return cls()
        base = CropGrid()
        grid = CropGrid(_int(options, "short", base.short_side), _int(options, "crop", base.crop),
                        _int(options, "stride", base.stride))
        scale = _float(options, "logit_scale", cls.DEFAULT_LOGIT_SCALE)
        if not scale > 0:
            raise ConfigError(f"segmentation logit_scale must be positive, got {options['logit_scale']}")
        given = "threshold" in options
        threshold = None
        if given and options["threshold"].strip().lower() not in ("none", "off"):
            threshold = _float(options, "threshold", 0.0)
            if not 0.0 <= threshold <= 1.0:
                raise ConfigError(f"segmentation threshold {options['threshold']} is not a probability in [0, 1] "
                                  "(or 'none' for no background threshold)")
        return cls("slide", grid, scale, threshold, given)

    def for_dataset(self, dataset: Any) -> "SegProtocol":
        """The protocol on ``dataset`` (class or object): its default threshold filled in, checked against its
        background class."""
        if self.name != "slide":
            return self
        bg = getattr(dataset, "background_index", None)
        known = not isinstance(bg, property)  # a dataset card's background is known once the card is read
        out = self if self.threshold_given else replace(
            self, threshold=getattr(dataset, "slide_threshold", None) if known and bg is not None else None,
            threshold_given=True)
        if out.threshold is not None and known and bg is None:
            name = getattr(dataset, "registry_name", "") or type(dataset).__name__
            raise ConfigError(f"segmentation threshold: {name} has no background class, so pixels under the "
                              "threshold would have no class to go to; drop threshold= (or use a dataset "
                              "with one, e.g. voc or pascal-context-60)")
        return out

    @property
    def tag(self) -> str:
        """The suffix of the evaluation key (``segmentation/voc:val@slide,threshold=0.5``); '' for ``whole``."""
        if self.name == "whole":
            return ""
        base, parts = CropGrid(), []
        for opt in ("short", "crop", "stride"):
            attr = OPTIONS[opt]
            if getattr(self.grid, attr) != getattr(base, attr):
                parts.append(f"{opt}={getattr(self.grid, attr)}")
        if self.logit_scale != self.DEFAULT_LOGIT_SCALE:
            parts.append(f"logit_scale={self.logit_scale:g}")
        if self.threshold is not None:
            parts.append(f"threshold={self.threshold:g}")
        return ",".join([self.name, *parts])

    def options_text(self) -> str:
        """The options as typed back (``protocol=slide:crop=448:…``), every value explicit."""
        if self.name == "whole":
            return ""
        g = self.grid
        thd = "none" if self.threshold is None else f"{self.threshold:g}"
        return (f"protocol=slide:short={g.short_side}:crop={g.crop}:stride={g.stride}:"
                f"logit_scale={self.logit_scale:g}:threshold={thd}")

    def to_dict(self) -> dict[str, Any]:
        """What the result records (``evals[].protocol``)."""
        if self.name == "whole":
            return {"name": "whole"}
        return {"name": "slide", **self.grid.to_dict(), "logit_scale": self.logit_scale, "threshold": self.threshold,
                "window_encoded_at": "the encoder's input resolution"}


def _int(options: dict[str, str], key: str, default: int) -> int:
    if key not in options:
        return default
    try:
        return int(options[key])
    except ValueError:
        raise ConfigError(f"segmentation {key} must be a whole number of pixels, got {options[key]!r}") from None


def _float(options: dict[str, str], key: str, default: float) -> float:
    if key not in options:
        return default
    try:
        v = float(options[key])
    except ValueError:
        raise ConfigError(f"segmentation {key} must be a number, got {options[key]!r}") from None
    if not math.isfinite(v):
        raise ConfigError(f"segmentation {key} must be finite, got {options[key]!r}")
    return v


# -- the sliding-window arithmetic (torch imported by the callers' tensors) ---------------------
def stitch(window_scores: Any, boxes: list[tuple[int, int, int, int]], size: tuple[int, int]) -> Any:
    """(H, W, C) mean of the windows' scores: each (C, h, w) score grid upsampled bilinearly to its window
    (``align_corners=False``), summed into the canvas and divided by the number of windows over each pixel."""
    import torch

    from alignbench.tasks.segmentation import upsample

    n_cls = window_scores[0].shape[0]
    canvas = torch.zeros(size[0], size[1], n_cls)
    count = torch.zeros(size[0], size[1], 1)
    for scores, (y1, y2, x1, x2) in zip(window_scores, boxes):
        canvas[y1:y2, x1:x2] += upsample(scores, (y2 - y1, x2 - x1))
        count[y1:y2, x1:x2] += 1
    if float(count.min()) == 0:  # CropGrid refuses stride > crop, so this is a bug, not bad input
        raise DataError(f"{int((count == 0).sum())} pixels of a {size[0]}×{size[1]} image lie in no window")
    return canvas.div_(count)


def upsample_canvas(canvas: Any, size: tuple[int, int]) -> Any:
    """(H', W', C) → (H, W, C) bilinear (``align_corners=False``), read in place as a channels-last batch of one
    (no copy of the canvas)."""
    import torch.nn.functional as F

    x = canvas.permute(2, 0, 1)[None]  # (1, C, H', W') with channels-last strides
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)


def predict(scores: Any, protocol: SegProtocol, background_index: int | None) -> np.ndarray:
    """(H, W, C) scores → (H, W) class ids under ``protocol`` (argmax; slide: softmax(scale·s), threshold).

    The softmax keeps the argmax, so it is computed only for a threshold, and
    then as its largest value alone: 1 / Σ_c exp(scale·(s_c − max_c s)).
    """
    top, pred = scores.max(-1)
    pred = pred.numpy()
    if protocol.name == "slide" and protocol.threshold is not None:
        if background_index is None:
            raise DataError("a background threshold needs a dataset with a background class")
        scaled = scores.sub(top[..., None]).mul_(protocol.logit_scale).exp_()
        prob = scaled.sum(-1).reciprocal_()
        pred[(prob < protocol.threshold).numpy()] = background_index
    return pred


__all__ = ["CropGrid", "OPTIONS", "PROTOCOLS", "SegProtocol", "predict", "stitch", "upsample_canvas"]
