"""A segmentation dataset declared in a card: images and same-stem mask PNGs, sizes checked against each other.

The card machinery (:class:`~alignbench.datasets.from_files.Card`, content
fingerprints) is shared with the captions and classification kinds in
:mod:`alignbench.datasets.from_files`; the masks' bytes are part of the split's
fingerprint, so editing a mask invalidates the cached features too.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from alignbench.datasets._bases import ListedSegmentation, Masked
from alignbench.datasets._layout import digest, list_images
from alignbench.datasets.from_files import ONE_SPLIT, CardDataset, content_image_list, file_digest
from alignbench.errors import DataError


class FileSegmentation(CardDataset, ListedSegmentation):
    """Images and same-stem mask PNGs (``<images>/[<split>/]x.jpg`` ↔ ``<masks>/[<split>/]x.png``)."""

    def __init__(self, root: str | os.PathLike | None = None, **options):
        self._setup(options)

    @property
    def classnames(self) -> list[str]:
        return list(self._cache.get("classes", lambda: self._class_list(None))[1])

    @property
    def templates(self) -> list[str]:
        return self._templates()

    def _folder(self, top: Path, split: str) -> Path:
        return top if self.card.splits == (ONE_SPLIT,) else top / split

    def _list(self, split: str) -> Masked:
        img_dir, mask_dir = self._folder(self.card.images, split), self._folder(self.card.masks, split)
        paths = list_images(img_dir, f"dataset {self.card.name!r} split {split!r} images")
        if not paths:
            raise DataError(f"dataset {self.card.name!r}: split {split!r} is empty (no images in {str(img_dir)!r})")
        masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() == ".png"} if mask_dir.is_dir() else {}
        missing = [p.name for p in paths if p.stem not in masks]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise DataError(f"dataset {self.card.name!r}: no mask <stem>.png in {str(mask_dir)!r} for "
                            f"{', '.join(repr(m) for m in missing[:3])}{more}")
        mask_paths = [masks[p.stem] for p in paths]
        images = content_image_list(paths, self.card.images, extra=digest([file_digest(m) for m in mask_paths]))
        return Masked(images, mask_paths)

    @property
    def ignore_index(self) -> int:  # type: ignore[override]
        return self.card.ignore_index

    @property
    def background_index(self) -> int | None:  # type: ignore[override]
        bg = self.card.background
        if bg is None:
            return None
        names = self.classnames
        if bg in names:
            return names.index(bg)
        if str(bg).isdigit() and int(bg) < len(names):
            return int(bg)
        raise DataError(f"{self.card.file}: background {bg!r} is not one of the classes ({', '.join(names[:12])})")

    def mask(self, split: str, i: int) -> np.ndarray:
        """The decoded mask, after checking it has its image's size (a mismatch names both files)."""
        m = super().mask(split, i)
        self._check_size(split, i, m.shape)
        return m

    def _check_size(self, split: str, i: int, shape: tuple[int, ...]) -> None:
        from PIL import Image

        listed = self._listed(split)
        image_path = listed.images.loader.paths[i]
        with Image.open(image_path) as im:  # reads the header only
            w, h = im.size
        if tuple(shape) != (h, w):
            raise DataError(f"mask {str(listed.mask_paths[i])!r} is {shape[1]}×{shape[0]} but its image "
                            f"{image_path!r} is {w}×{h}")

    def check_files(self, split: str) -> str | None:
        """Every mask's size against its image's, from the PNG/JPEG headers (``alignbench data --check``)."""
        from PIL import Image

        listed = self._listed(self.check_split(split))
        for i, mp in enumerate(listed.mask_paths):
            with Image.open(mp) as m:
                shape = (m.size[1], m.size[0])
            try:
                self._check_size(split, i, shape)
            except DataError as exc:
                return str(exc)
        return None
