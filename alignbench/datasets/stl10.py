"""STL-10 from the official binary files (``stl10_binary/``), read through a memory map."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from alignbench.datasets import classnames as names
from alignbench.datasets._bases import Labelled, ListedClassification
from alignbench.datasets._layout import dataset_dir, digest, read_lines, require_file
from alignbench.datasets.base import ImageList, files_fingerprint
from alignbench.errors import DataError
from alignbench.registry import register_dataset

LAYOUT = """\
  stl10/
    stl10_binary/test_X.bin  test_y.bin  train_X.bin  train_y.bin  class_names.txt"""

SIDE = 96
PIXELS = 3 * SIDE * SIDE


class Stl10ImageLoader:
    """Picklable loader: opens the ``*_X.bin`` memory map lazily in each worker (never pickles pixels).

    The binary stores each image channel-first and column-major, hence the
    ``(3, 96, 96)`` reshape followed by a (W, H) → (H, W) transpose.
    """

    def __init__(self, path: str | Path, n: int):
        self.path, self.n = str(path), n
        self._mm: np.ndarray | None = None

    def __getstate__(self):
        return {"path": self.path, "n": self.n, "_mm": None}

    def __call__(self, i: int):
        from PIL import Image

        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="r", shape=(self.n, 3, SIDE, SIDE))
        a = np.asarray(self._mm[i]).transpose(2, 1, 0)  # (3, W, H) → (H, W, 3)
        return Image.fromarray(np.ascontiguousarray(a), "RGB")


@register_dataset("stl10", aliases=("stl-10",))
class Stl10(ListedClassification):
    """STL-10: 96×96 colour images, 10 classes, 5k train / 8k test (binary format)."""

    splits = ("train", "test")

    def __init__(self, root: str | os.PathLike | None = None, **options):
        super().__init__(root, **options)
        base = dataset_dir(self, ("stl10", "STL10", "stl10_binary"), LAYOUT)
        self.dir = base / "stl10_binary" if (base / "stl10_binary").is_dir() else base

    @property
    def classnames(self) -> list[str]:
        f = self.dir / "class_names.txt"
        found = read_lines(f, "stl10 class names") if f.is_file() else []
        return found if len(found) == 10 else list(names.STL10)

    def _list(self, split: str) -> Labelled:
        fx = require_file(self.dir / f"{split}_X.bin", f"stl10 {split} images", LAYOUT)
        fy = require_file(self.dir / f"{split}_y.bin", f"stl10 {split} labels", LAYOUT)
        size = fx.stat().st_size
        if size % PIXELS:
            raise DataError(f"stl10: {str(fx)!r} has {size} bytes, not a multiple of one 96×96×3 image ({PIXELS})")
        n = size // PIXELS
        labels = np.fromfile(fy, dtype=np.uint8).astype(np.int64) - 1  # stored 1..10
        if len(labels) != n:
            raise DataError(f"stl10 {split}: {str(fx)!r} holds {n} images but {str(fy)!r} has {len(labels)} labels")
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise DataError(f"stl10 {split}: labels in {str(fy)!r} must be 1..10")
        ids = [f"{split}/{i:05d}" for i in range(n)]
        fp = files_fingerprint([fx, fy], extra=digest("stl10", split))
        return Labelled(ImageList(ids, Stl10ImageLoader(fx, n), fp), labels)
