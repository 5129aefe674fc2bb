"""CamVid street scenes in the SegNet layout (``test/``, ``testannot/``, split lists)."""
from __future__ import annotations

import os
from pathlib import Path

from alignbench.datasets import classnames as names
from alignbench.datasets._bases import ListedSegmentation, Masked, check_masks, file_image_list
from alignbench.datasets._layout import dataset_dir, list_images, read_lines, readable, require_dir
from alignbench.errors import DataError
from alignbench.registry import register_dataset

LAYOUT = """\
  camvid/
    test/<id>.jpg|png        testannot/<id>.png   (grayscale ids 0-10, 11 = void)
    test.txt                 one id per line (optional; SegNet-style "…/test/<id>.png …" lines work too)
    classes.txt              the 11 class names in id order (optional)
    train/ trainannot/ train.txt, val/ valannot/ val.txt   (optional)"""


@register_dataset("camvid")
class CamVid(ListedSegmentation):
    """CamVid: 480×360 driving scenes, 11 classes (void = 11 ignored), SegNet split 367/101/233."""

    splits = ("train", "val", "test")
    ignore_index = 11
    background_index = None

    def __init__(self, root: str | os.PathLike | None = None, **options):
        super().__init__(root, **options)
        self.dir = dataset_dir(self, ("camvid", "CamVid"), LAYOUT)

    @property
    def classnames(self) -> list[str]:
        f = self.dir / "classes.txt"
        return [readable(n) for n in read_lines(f, "camvid classes")] if f.is_file() else list(names.CAMVID)

    def _list(self, split: str) -> Masked:
        image_dir = require_dir(self.dir / split, f"camvid {split} images", LAYOUT)
        mask_dir = require_dir(self.dir / f"{split}annot", f"camvid {split} masks", LAYOUT)
        by_stem = {p.stem: p for p in list_images(image_dir, f"camvid {split}")}
        listing = self.dir / f"{split}.txt"
        if listing.is_file():
            ids = [Path(line.split()[0]).stem for line in read_lines(listing, f"camvid {split} list")]
            missing = [i for i in ids if i not in by_stem]
            if missing:
                raise DataError(f"camvid: {str(listing)!r} lists {len(missing)} image(s) missing from "
                                f"{str(image_dir)!r}, e.g. {str(image_dir / missing[0])!r}.jpg")
        else:
            ids = sorted(by_stem)
        if not ids:
            raise DataError(f"camvid {split}: no images in {str(image_dir)!r}")
        masks = [mask_dir / f"{i}.png" for i in ids]
        check_masks(masks, f"camvid {split}")
        return Masked(file_image_list([by_stem[i] for i in ids], self.dir, extra=f"camvid/{split}"), masks)
