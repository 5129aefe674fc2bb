"""ADE20K SceneParsing (ADEChallengeData2016): 150 classes, label 0 = "other" (ignored)."""
from __future__ import annotations

import os

import numpy as np

from alignbench.datasets import classnames as names
from alignbench.datasets._bases import ListedSegmentation, Masked, check_masks, file_image_list
from alignbench.datasets._layout import dataset_dir, find_subdir, list_images, require_dir
from alignbench.errors import DataError
from alignbench.registry import register_dataset

LAYOUT = """\
  ADEChallengeData2016/  (or ade20k/ holding it)
    images/training/*.jpg       annotations/training/*.png
    images/validation/*.jpg     annotations/validation/*.png   (grayscale: 0 = other/ignored, 1-150 = classes)"""

FOLDERS = {"train": "training", "val": "validation"}


@register_dataset("ade20k", aliases=("ade", "ade20k-150", "ade150"))
class ADE20K(ListedSegmentation):
    """ADE20K SceneParsing: 150 classes (stored 1-150 → ids 0-149), 0 ignored; 20,210 train / 2,000 val."""

    splits = ("train", "val")
    split_aliases = {"test": "val", "training": "train", "validation": "val"}
    ignore_index = 255
    background_index = None

    def __init__(self, root: str | os.PathLike | None = None, **options):
        super().__init__(root, **options)
        top = dataset_dir(self, ("ADEChallengeData2016", "ade20k", "ADE20K"), LAYOUT)
        self.dir = find_subdir(top, ("images", "ADEChallengeData2016/images"), "ade20k images", LAYOUT).parent

    @property
    def classnames(self) -> list[str]:
        return list(names.ADE20K)

    def decode_mask(self, raw: np.ndarray) -> np.ndarray:
        m = raw.astype(np.int64) - 1  # 0 ("other") → -1 → ignore
        m[(m < 0) | (m >= 150)] = self.ignore_index
        return m

    def _list(self, split: str) -> Masked:
        folder = FOLDERS[split]
        images = list_images(self.dir / "images" / folder, f"ade20k {split} images")
        if not images:
            raise DataError(f"ade20k {split}: no images in {str(self.dir / 'images' / folder)!r}")
        mask_dir = require_dir(self.dir / "annotations" / folder, f"ade20k {split} masks", LAYOUT)
        masks = [mask_dir / f"{p.stem}.png" for p in images]
        check_masks(masks, f"ade20k {split}")
        return Masked(file_image_list(images, self.dir, extra=f"ade20k/{split}"), masks)
