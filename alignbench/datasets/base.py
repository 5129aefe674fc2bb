"""Dataset abstractions: what the encoder loop and the tasks need from data.

Three kinds, one per task family.  Every dataset reads from a data root
(``--data-root`` / ``ALIGNBENCH_DATA``) and raises :class:`DataError` naming
the files it expected when the layout is missing or wrong.  Images are served
lazily (``ImageList``) so the encoder loop can decode in parallel workers.
"""
from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import numpy as np

from alignbench.errors import DataError

ENV_DATA_ROOT = "ALIGNBENCH_DATA"


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: explicit argument, else $ALIGNBENCH_DATA, else ./data."""
    r = Path(root or os.environ.get(ENV_DATA_ROOT) or "data").expanduser()
    if not r.is_dir():
        raise DataError(
            f"data root {str(r)!r} does not exist; pass --data-root or set {ENV_DATA_ROOT} "
            "(the project's Makefile points it at ../shared/datasets)"
        )
    return r


def require(path: Path, what: str) -> Path:
    """Return ``path`` or raise a DataError saying which file/folder was expected."""
    if not path.exists():
        raise DataError(f"{what}: expected {str(path)!r}, which does not exist")
    return path


class ImageList(Sequence):
    """A lazy, picklable list of images: ``ids`` plus a loader returning RGB PIL images.

    ``loader(i)`` must be a top-level/picklable callable (DataLoader workers).
    ``fingerprint`` identifies the content cheaply (ids + file sizes) for the
    feature-cache key.
    """

    def __init__(self, ids: Sequence[str], loader: Callable[[int], "object"], fingerprint: str):
        self.ids = list(ids)
        self.loader = loader
        self.fingerprint = fingerprint

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            raise TypeError("ImageList does not slice; index one image at a time")
        return self.loader(i)


class FileImageLoader:
    """Picklable loader for image files; names the file when it is unreadable."""

    def __init__(self, paths: Sequence[str | Path]):
        self.paths = [str(p) for p in paths]

    def __call__(self, i: int):
        from PIL import Image, UnidentifiedImageError

        p = self.paths[i]
        try:
            im = Image.open(p)
            im.load()
            if im.mode == "RGB" and im.fp is None:  # decoded, file closed by Pillow: no copy needed
                return im
            with im:
                return im.convert("RGB")
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"cannot read image {p!r}: {exc}") from exc


class ArrayImageLoader:
    """Picklable loader for in-memory uint8 arrays (CIFAR batches, IDX, STL-10)."""

    def __init__(self, array: np.ndarray):
        self.array = array  # (N, H, W) or (N, H, W, 3) uint8

    def __call__(self, i: int):
        from PIL import Image

        a = self.array[i]
        return Image.fromarray(a).convert("RGB")


def files_fingerprint(paths: Sequence[str | Path], extra: str = "") -> str:
    """Hash of relative names and sizes: changes when files are added, removed or rewritten."""
    h = hashlib.sha256(extra.encode())
    for p in paths:
        p = Path(p)
        try:
            size = p.stat().st_size
        except OSError:
            size = -1
        h.update(f"{p.name}:{size};".encode())
    return h.hexdigest()[:16]


def array_fingerprint(a: np.ndarray, extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    h.update(str(a.shape).encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


class Dataset(ABC):
    """Common base: a name, the splits it has, and the data root it reads."""

    kind: ClassVar[str] = ""  # "captions" | "classification" | "segmentation"
    registry_name: ClassVar[str] = ""
    splits: ClassVar[tuple[str, ...]] = ("test",)
    # Other names accepted for a split, e.g. {"val": "dev"} (Flickr8k) or
    # {"test": "val"} where the test annotations are private (ImageNet, VOC, ADE20K).
    split_aliases: ClassVar[dict[str, str]] = {}

    def __init__(self, root: str | os.PathLike | None = None, **options):
        self.root = data_root(root)
        self.options = options

    def check_split(self, split: str) -> str:
        """Return the canonical split name (resolving ``split_aliases``) or raise DataError."""
        split = self.split_aliases.get(split, split)
        if split not in self.splits:
            raise DataError(f"dataset {self.registry_name!r} has no split {split!r} (it has {', '.join(self.splits)})")
        return split

    @abstractmethod
    def images(self, split: str) -> ImageList:
        """The split's images, in a fixed order."""


class CaptionDataset(Dataset):
    """Paired image–caption data (Flickr8k, Flickr30k, COCO)."""

    kind = "captions"

    @abstractmethod
    def captions(self, split: str) -> list[str]:
        """All captions of the split, grouped by image in image order."""

    @abstractmethod
    def caption_image_index(self, split: str) -> np.ndarray:
        """(n_captions,) index into ``images(split)`` of each caption's image."""


class NamedClassesDataset(Dataset):
    """Images whose classes have names, and so zero-shot prompts (classification and segmentation)."""

    @property
    @abstractmethod
    def classnames(self) -> list[str]: ...

    @property
    def templates(self) -> list[str]:
        """CLIP prompt templates for this dataset (``alignbench.datasets.templates``)."""
        from alignbench.datasets.templates import templates_for

        return templates_for(self.registry_name)


class ClassificationDataset(NamedClassesDataset):
    """Labelled images with class names and CLIP prompt templates."""

    kind = "classification"

    @abstractmethod
    def labels(self, split: str) -> np.ndarray: ...


class SegmentationDataset(NamedClassesDataset):
    """Images with dense masks; ``ignore_index`` is excluded from the metrics."""

    kind = "segmentation"
    ignore_index: ClassVar[int] = 255
    background_index: ClassVar[int | None] = None  # class id of "background", if the dataset has one
    #: ClearCLIP's background threshold under ``protocol=slide`` (alignbench.seg_protocol); None: no threshold
    slide_threshold: ClassVar[float | None] = None

    @abstractmethod
    def mask(self, split: str, i: int) -> np.ndarray:
        """(H, W) int64 class ids of image i, ``ignore_index`` where unlabelled."""


@dataclass(frozen=True)
class SplitRef:
    """A dataset split as the feature store keys it."""

    dataset: str
    split: str
