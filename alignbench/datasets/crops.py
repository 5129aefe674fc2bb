"""The sliding windows of a segmentation dataset as a dataset of their own (segmentation ``protocol=slide``).

Why a view: the feature store encodes a dataset's ``images(split)``; giving it
the windows as images (one row per window, every image's windows in a row,
row-major) caches them under their own key (the base split's content and the
:class:`~alignbench.seg_protocol.CropGrid`) like any other image set, so each
method evaluated with the same windows reads them instead of encoding them.
:meth:`CroppedDataset.layout` says which rows belong to which image and where.
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from alignbench.datasets.base import ImageList
from alignbench.seg_protocol import CropGrid


@dataclass(frozen=True)
class CropLayout:
    """Where each window lies: ``sizes[i]`` = image i's (H, W) after the resize; ``boxes[i]`` its windows'
    (y1, y2, x1, x2) in the resized image; ``starts[i]`` the feature row of its first window."""

    sizes: list[tuple[int, int]]
    boxes: list[list[tuple[int, int, int, int]]]
    starts: np.ndarray

    def __len__(self) -> int:
        return len(self.sizes)

    @property
    def n_windows(self) -> int:
        return int(self.starts[-1]) if len(self.starts) else 0

    def rows(self, i: int) -> np.ndarray:
        """Feature rows of image i's windows."""
        return np.arange(self.starts[i], self.starts[i + 1])


def image_sizes(images: ImageList) -> list[tuple[int, int]]:
    """(height, width) of every image: from the file header when the list is over files, else by decoding."""
    paths = getattr(images.loader, "paths", None)
    out = []
    if paths is not None:
        from PIL import Image

        for p in paths:
            with Image.open(p) as im:
                out.append((im.height, im.width))
        return out
    for i in range(len(images)):
        im = images[i]
        out.append((im.height, im.width))
    return out


def layout_of(sizes: list[tuple[int, int]], grid: CropGrid) -> CropLayout:
    """The windows of images of these (height, width)."""
    resized = [grid.resized(h, w) for h, w in sizes]
    boxes = [grid.boxes(h, w) for h, w in resized]
    starts = np.concatenate([[0], np.cumsum([len(b) for b in boxes])]).astype(np.int64)
    return CropLayout(resized, boxes, starts)


class WindowLoader:
    """Picklable loader of window k: image ``owner[k]`` resized (bilinear) to its layout size, then cut.

    The last resized image is kept (one slot, per process), so an image's windows,
    read in a row, decode and resize it once.
    """

    def __init__(self, base: Any, owner: np.ndarray, sizes: list[tuple[int, int]], boxes: list[tuple]):
        self.base, self.owner, self.sizes, self.boxes = base, owner, sizes, boxes
        self._last: tuple[int, Any] | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        d = dict(self.__dict__)
        d["_last"], d["_lock"] = None, None
        return d

    def __setstate__(self, d: dict) -> None:
        self.__dict__.update(d)
        self._lock = threading.Lock()

    def __call__(self, k: int):
        from PIL import Image

        i = int(self.owner[k])
        with self._lock:
            last = self._last
        if last is None or last[0] != i:
            h, w = self.sizes[i]
            im = self.base(i)
            resized = im if im.size == (w, h) else im.resize((w, h), Image.BILINEAR)
            last = (i, resized)
            with self._lock:
                self._last = last
        y1, y2, x1, x2 = self.boxes[k]
        return last[1].crop((x1, y1, x2, y2))


class CroppedDataset:
    """``dataset``'s images cut into ``grid``'s windows; the rest (masks, classes) is read from ``dataset``."""

    kind = "segmentation-windows"

    def __init__(self, dataset: Any, grid: CropGrid):
        self.dataset, self.grid = dataset, grid
        base = getattr(dataset, "registry_name", "") or type(dataset).__name__.lower()
        self.registry_name = f"{base}.{grid.tag}"  # the cache folder's name: <dataset>.crops448-448-224-<split>-…
        self.options = {**(getattr(dataset, "options", {}) or {}), "windows": grid.to_dict()}
        self._layouts: dict[str, CropLayout] = {}

    def check_split(self, split: str) -> str:
        return self.dataset.check_split(split)

    def layout(self, split: str) -> CropLayout:
        """The windows of ``split`` (image headers are read once per split)."""
        split = self.check_split(split)
        if split not in self._layouts:
            self._layouts[split] = layout_of(image_sizes(self.dataset.images(split)), self.grid)
        return self._layouts[split]

    def images(self, split: str) -> ImageList:
        base = self.dataset.images(split)
        lay = self.layout(split)
        owner = np.repeat(np.arange(len(lay)), np.diff(lay.starts))
        flat = [b for boxes in lay.boxes for b in boxes]
        ids = [f"{base.ids[i]}#{y1},{x1},{y2},{x2}" for i, (y1, y2, x1, x2) in zip(owner, flat)]
        fp = hashlib.sha256(f"{base.fingerprint}|{self.grid.tag}|{lay.sizes}".encode()).hexdigest()[:32]
        return ImageList(ids, WindowLoader(base.loader, owner, lay.sizes, flat), fp)


__all__ = ["CropLayout", "CroppedDataset", "WindowLoader", "image_sizes", "layout_of"]
