"""Intermediate bases: list a split once, then serve images, captions, labels and masks from it.

Loaders only say how to *list* a split (``_list``); caching, split-name
checking and the mask decoding contract live here so they behave alike.
"""
from __future__ import annotations

import os
from abc import abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Generic, Sequence, TypeVar

import numpy as np

from alignbench.datasets._layout import SplitCache, checked_fingerprint, digest, list_images, subfolders
from alignbench.datasets.base import (CaptionDataset, ClassificationDataset, Dataset, FileImageLoader, ImageList,
                                      SegmentationDataset)
from alignbench.errors import DataError


@dataclass
class Labelled:
    """A listed classification split."""

    images: ImageList
    labels: np.ndarray  # (N,) int64


@dataclass
class Masked:
    """A listed segmentation split: images and the mask file of each."""

    images: ImageList
    mask_paths: list[Path] = field(default_factory=list)


@dataclass
class Captioned:
    """A listed caption split: images and the captions of each image, in image order."""

    images: ImageList
    captions: list[list[str]]

    @cached_property
    def flat(self) -> list[str]:
        """Every caption, grouped by image in image order."""
        return [c for caps in self.captions for c in caps]

    @cached_property
    def owner(self) -> np.ndarray:
        """(n_captions,) int64: the index of each caption's image."""
        counts = [len(caps) for caps in self.captions]
        return np.repeat(np.arange(len(counts), dtype=np.int64), counts)


Listing = TypeVar("Listing", Captioned, Labelled, Masked)


class ListedSplits(Dataset, Generic[Listing]):
    """A loader that lists each split once per instance: its one job is ``_list``."""

    def __init__(self, root: str | os.PathLike | None = None, **options):
        super().__init__(root, **options)
        self._cache = SplitCache()

    @abstractmethod
    def _list(self, split: str) -> Listing:
        """List ``split`` (already canonical)."""

    def _listed(self, split: str) -> Listing:
        split = self.check_split(split)
        # a tuple key: loaders memo their own files in the same cache under plain names ("classes", "all")
        return self._cache.get(("listed", split), lambda: self._list(split))

    def images(self, split: str) -> ImageList:
        return self._listed(split).images


class ListedCaptions(ListedSplits[Captioned], CaptionDataset):
    """Caption loader: the flat captions and caption → image index follow from the listing."""

    def captions(self, split: str) -> list[str]:
        return list(self._listed(split).flat)

    def caption_image_index(self, split: str) -> np.ndarray:
        return self._listed(split).owner.copy()


class ListedClassification(ListedSplits[Labelled], ClassificationDataset):
    """Classification loader: image ids, loader, fingerprint and labels from the listing."""

    def labels(self, split: str) -> np.ndarray:
        return self._listed(split).labels.copy()


class ListedSegmentation(ListedSplits[Masked], SegmentationDataset):
    """Segmentation loader: masks are read on demand."""

    def mask_paths(self, split: str) -> list[Path]:
        """The mask file of each image of ``split`` (same order as ``images``)."""
        return list(self._listed(split).mask_paths)

    def mask(self, split: str, i: int) -> np.ndarray:
        path = self._listed(split).mask_paths[i]
        return self.decode_mask(read_index_png(path))

    def decode_mask(self, raw: np.ndarray) -> np.ndarray:
        """Map the stored ids to class ids; values that are no class become ``ignore_index``."""
        n_classes = self._cache.get("n_classes", lambda: len(self.classnames))  # classnames may read a file
        m = raw.astype(np.int64)
        m[(m < 0) | (m >= n_classes)] = self.ignore_index
        return m


def read_index_png(path: Path) -> np.ndarray:
    """The stored label ids of a mask PNG: palette indices for "P" images, values for "L"/"I".

    A palette PNG must not be converted to RGB: its indices *are* the labels.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
                return np.asarray(im)
            mode = im.mode
    except FileNotFoundError as exc:
        raise DataError(f"missing mask file {str(path)!r}") from exc
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"cannot read mask {str(path)!r}: {exc}") from exc
    raise DataError(f"mask {str(path)!r} has mode {mode}; expected a palette ('P') or grayscale ('L') PNG of class ids")


def folder_listing(split_dir: Path, class_folders: Sequence[str] | None, what: str,
                   skip: Sequence[str] = ()) -> tuple[list[Path], np.ndarray, list[str]]:
    """ImageFolder listing: ``split_dir/<class>/<image>`` sorted by (class, file name).

    With ``class_folders`` (the canonical folders in label order) labels index
    that list and an unknown folder is an error; without it the folders found,
    sorted, are the classes; folders in ``skip`` are ignored.  Returns
    (paths, labels, class folders).
    """
    found = [f for f in subfolders(split_dir) if f not in skip]
    if not found:
        raise DataError(f"{what}: no class folders in {str(split_dir)!r} (expected {split_dir}/<class>/<image>)")
    classes = list(class_folders) if class_folders is not None else found
    index = {c: i for i, c in enumerate(classes)}
    unknown = [f for f in found if f not in index]
    if unknown:
        raise DataError(
            f"{what}: unexpected class folder(s) {', '.join(repr(u) for u in unknown[:5])} in {str(split_dir)!r} "
            f"(expected some of: {', '.join(classes[:12])}{', …' if len(classes) > 12 else ''})"
        )
    paths: list[Path] = []
    labels: list[int] = []
    for c in sorted(found, key=index.__getitem__):
        files = list_images(split_dir / c, what)
        paths += files
        labels += [index[c]] * len(files)
    if not paths:
        raise DataError(f"{what}: no images under {str(split_dir)!r}")
    return paths, np.asarray(labels, dtype=np.int64), classes


def file_image_list(paths: Sequence[Path], base: Path, labels: np.ndarray | None = None, extra: str = "") -> ImageList:
    """ImageList over files with ids relative to ``base``; fingerprint checks the files exist."""
    ids = [p.relative_to(base).as_posix() for p in paths]
    fp = checked_fingerprint(paths, extra=digest(extra, ids, labels if labels is not None else ""))
    return ImageList(ids, FileImageLoader(paths), fp)


def check_masks(mask_paths: Sequence[Path], what: str) -> None:
    """Raise naming the missing mask files (listing must not promise masks it cannot read)."""
    missing = [str(p) for p in mask_paths if not os.path.isfile(p)]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DataError(f"{what}: missing mask file(s) {', '.join(repr(m) for m in missing[:3])}{more}")
