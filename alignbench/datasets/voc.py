"""PASCAL VOC 2012 segmentation, the shared voc-mini layout check, and Pascal Context (59 classes).

All three use the VOC devkit layout: ``JPEGImages/<id>.jpg``, one PNG mask
per id, and split lists of ids under ``ImageSets/``.  VOC masks are palette
PNGs whose *indices* are the class ids (255 = boundary/ignore).
"""
from __future__ import annotations

import os
from typing import ClassVar

import numpy as np

from alignbench.datasets import classnames as names
from alignbench.datasets._bases import ListedSegmentation, Masked, check_masks, file_image_list
from alignbench.datasets._layout import dataset_dir, find_subdir, read_lines, readable, require_dir
from alignbench.registry import register_dataset

VOC_LAYOUT = """\
  voc/  (or VOCdevkit/VOC2012/, or a folder holding VOCdevkit/VOC2012/)
    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png              palette PNG, index = class id 0-20, 255 = ignore
    ImageSets/Segmentation/train.txt val.txt  one id per line
    class_names.txt                         (optional) the 21 names, background first"""


class DevkitSegmentation(ListedSegmentation):
    """VOC-devkit-style data: ids from ``ImageSets/<sets>/<split>.txt``, masks in ``<mask_dir>/<id>.png``."""

    dir_names: ClassVar[tuple[str, ...]] = ()
    devkit_subdirs: ClassVar[tuple[str, ...]] = ("",)
    mask_dir: ClassVar[str] = "SegmentationClass"
    sets_dir: ClassVar[str] = "ImageSets/Segmentation"
    layout: ClassVar[str] = VOC_LAYOUT

    def __init__(self, root: str | os.PathLike | None = None, **options):
        super().__init__(root, **options)
        top = dataset_dir(self, self.dir_names, self.layout)
        candidates = [f"{s}/JPEGImages" if s else "JPEGImages" for s in self.devkit_subdirs]
        self.dir = find_subdir(top, candidates, f"{self.registry_name} images", self.layout).parent

    def _list(self, split: str) -> Masked:
        listing = self.dir / self.sets_dir / f"{split}.txt"
        ids = [line.split()[0] for line in read_lines(listing, f"{self.registry_name} split {split!r}")]
        image_dir = require_dir(self.dir / "JPEGImages", f"{self.registry_name} images", self.layout)
        mask_dir = require_dir(self.dir / self.mask_dir, f"{self.registry_name} masks", self.layout)
        masks = [mask_dir / f"{i}.png" for i in ids]
        check_masks(masks, f"{self.registry_name} {split}")
        images = file_image_list([image_dir / f"{i}.jpg" for i in ids], self.dir, extra=f"{self.registry_name}/{split}")
        return Masked(images, masks)


@register_dataset("voc", aliases=("voc2012", "pascal-voc", "voc12"))
class VOC(DevkitSegmentation):
    """PASCAL VOC 2012 segmentation: 20 objects + background (0), 255 ignored; train 1,464 / val 1,449."""

    splits = ("train", "trainval", "val")  # evaluation split last
    split_aliases = {"test": "val"}  # VOC test masks are not public
    ignore_index = 255
    background_index = 0
    slide_threshold = 0.5  # ClearCLIP configs/cfg_voc21.py prob_thd
    dir_names = ("voc", "VOCdevkit/VOC2012", "voc2012", "VOC2012", "VOCdevkit")
    devkit_subdirs = ("", "VOCdevkit/VOC2012", "VOC2012")

    @property
    def classnames(self) -> list[str]:
        f = self.dir / "class_names.txt"
        if not f.is_file():
            f = self.dir.parent / "class_names.txt"
        if not f.is_file():
            return list(names.VOC)
        return [VOC_READABLE.get(readable(n), readable(n)) for n in read_lines(f, "voc class names")]


# VOC's file-style names → the prompt names of ``classnames.VOC``
VOC_READABLE = {"diningtable": "dining table", "pottedplant": "potted plant", "tvmonitor": "tv monitor",
                "tv/monitor": "tv monitor"}


@register_dataset("voc-mini")
class VOCMini(VOC):
    """3 VOC 2011 images with hand-drawn masks: a layout check only, never a benchmark."""

    dir_names = ("voc-mini",)


PASCAL_CONTEXT_LAYOUT = """\
  pascal-context/  (or VOCdevkit/VOC2010/)
    JPEGImages/<id>.jpg
    SegmentationClassContext/<id>.png           ids 0 = background (ignored), 1-59 = the 59 classes
    ImageSets/SegmentationContext/train.txt val.txt
  (the layout mmsegmentation's pascal_context.py converter writes from trainval_merged.json)"""


@register_dataset("pascal-context", aliases=("pascal-context-59", "pcontext", "context59"))
class PascalContext(DevkitSegmentation):
    """Pascal Context, 59 classes (background ignored); train 4,996 / val 5,104."""

    splits = ("train", "val")
    split_aliases = {"test": "val"}
    ignore_index = 255
    background_index = None
    dir_names = ("pascal-context", "pascal_context", "VOCdevkit/VOC2010", "VOC2010")
    devkit_subdirs = ("", "VOCdevkit/VOC2010", "VOC2010")
    mask_dir = "SegmentationClassContext"
    sets_dir = "ImageSets/SegmentationContext"
    layout = PASCAL_CONTEXT_LAYOUT

    @property
    def classnames(self) -> list[str]:
        return list(names.PASCAL_CONTEXT59)

    def decode_mask(self, raw: np.ndarray) -> np.ndarray:
        m = raw.astype(np.int64) - 1  # 0 (background) → -1 → ignore
        m[(m < 0) | (m >= 59)] = self.ignore_index
        return m


@register_dataset("pascal-context-60", aliases=("context60", "pcontext60"))
class PascalContext60(PascalContext):
    """Pascal Context, 59 classes + background (0), the ClearCLIP/SAIL "Context60" protocol; same files as pascal-context."""

    background_index = 0
    slide_threshold = 0.15  # ClearCLIP configs/cfg_context60.py prob_thd

    @property
    def classnames(self) -> list[str]:
        return ["background", *names.PASCAL_CONTEXT59]

    def decode_mask(self, raw: np.ndarray) -> np.ndarray:
        m = raw.astype(np.int64)  # 0 = background is a class here (mmseg PascalContext60Dataset, reduce_zero_label off)
        m[(m < 0) | (m >= 60)] = self.ignore_index
        return m
