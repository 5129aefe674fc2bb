"""Fashion-MNIST from its IDX files (gzip or raw), as distributed by Zalando."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from alignbench.datasets import classnames as names
from alignbench.datasets._bases import Labelled, ListedClassification
from alignbench.datasets._layout import dataset_dir, digest
from alignbench.datasets.base import ArrayImageLoader, ImageList, files_fingerprint
from alignbench.errors import DataError
from alignbench.registry import register_dataset

LAYOUT = """\
  fashion-mnist/
    t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz     (test; .gz optional)
    train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz    (train)"""

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension


def read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX array of unsigned bytes; a wrong magic number or size names the file."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read IDX file {str(path)!r}: {exc}") from exc
    if len(raw) < 4:
        raise DataError(f"IDX file {str(path)!r} is truncated ({len(raw)} bytes)")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(f"wrong IDX magic number 0x{found:08x} in {str(path)!r} (expected 0x{magic:08x}: "
                        f"{'images, uint8, 3-d' if magic == IDX_IMAGES_MAGIC else 'labels, uint8, 1-d'})")
    ndim = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim)]
    start = 4 + 4 * ndim
    if len(raw) - start != int(np.prod(dims)):
        raise DataError(f"IDX file {str(path)!r} holds {len(raw) - start} bytes of data but its header says {dims}")
    return np.frombuffer(raw, dtype=np.uint8, offset=start).reshape(dims)


@register_dataset("fashion-mnist", aliases=("fashion_mnist", "fashionmnist", "fmnist"))
class FashionMNIST(ListedClassification):
    """Fashion-MNIST: 28×28 grayscale clothing, 10 classes, 60k train / 10k test."""

    splits = ("train", "test")
    prefixes = {"train": "train", "test": "t10k"}

    def __init__(self, root: str | os.PathLike | None = None, **options):
        super().__init__(root, **options)
        base = dataset_dir(self, ("fashion-mnist", "fashion_mnist", "FashionMNIST"), LAYOUT)
        self.dir = base / "raw" if not any(base.glob("t10k-*")) and (base / "raw").is_dir() else base  # torchvision keeps raw/

    @property
    def classnames(self) -> list[str]:
        return list(names.FASHION_MNIST)

    def _file(self, stem: str) -> Path:
        for name in (f"{stem}.gz", stem):
            if (self.dir / name).is_file():
                return self.dir / name
        raise DataError(f"fashion-mnist: expected {str(self.dir / (stem + '.gz'))!r} (or without .gz), "
                        f"which does not exist. Expected layout:\n{LAYOUT}")

    def _list(self, split: str) -> Labelled:
        prefix = self.prefixes[split]
        fimg, flab = self._file(f"{prefix}-images-idx3-ubyte"), self._file(f"{prefix}-labels-idx1-ubyte")
        images = read_idx(fimg, IDX_IMAGES_MAGIC)
        labels = read_idx(flab, IDX_LABELS_MAGIC).astype(np.int64)
        if len(images) != len(labels):
            raise DataError(f"fashion-mnist {split}: {str(fimg)!r} has {len(images)} images but {str(flab)!r} has {len(labels)} labels")
        if labels.size and labels.max() >= 10:
            raise DataError(f"fashion-mnist {split}: label {labels.max()} in {str(flab)!r} is not one of the 10 classes")
        ids = [f"{split}/{i:05d}" for i in range(len(images))]
        fp = files_fingerprint([fimg, flab], extra=digest("fashion-mnist", split))
        return Labelled(ImageList(ids, ArrayImageLoader(images), fp), labels)
