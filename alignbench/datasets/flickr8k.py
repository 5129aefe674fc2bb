"""Flickr8k captions in the layout of the project's shared copy (CSV captions, split lists)."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from alignbench.datasets._layout import SplitCache, dataset_dir, read_lines, require_dir, require_file
from alignbench.datasets._bases import file_image_list
from alignbench.datasets.base import CaptionDataset, ImageList
from alignbench.errors import DataError, MalformedDataError
from alignbench.registry import register_dataset

LAYOUT = """\
  flickr8k/
    images/<name>.jpg
    captions.txt          CSV with header "image,caption", one row per caption
    splits/train.txt      one image file name per line (also dev.txt, test.txt)"""


@register_dataset("flickr8k", aliases=("flickr8k-captions",))
class Flickr8k(CaptionDataset):
    """Flickr8k: 8,091 images, 5 captions each, official 6k/1k/1k split."""

    splits = ("train", "dev", "test")
    split_aliases = {"val": "dev"}

    def __init__(self, root: str | os.PathLike | None = None, **options):
        super().__init__(root, **options)
        self.dir = dataset_dir(self, "flickr8k", LAYOUT)
        self._cache = SplitCache()

    # -- listing ---------------------------------------------------------------
    def _all_captions(self) -> dict[str, list[str]]:
        return self._cache.get("captions", lambda: read_captions_csv(self.dir / "captions.txt"))

    def _split(self, split: str) -> tuple[ImageList, list[str], np.ndarray]:
        split = self.check_split(split)
        return self._cache.get(split, lambda: self._list(split))

    def _list(self, split: str):
        names = read_lines(self.dir / "splits" / f"{split}.txt", f"flickr8k split {split!r}")
        by_image = self._all_captions()
        image_dir = require_dir(self.dir / "images", "flickr8k images", LAYOUT)
        captions: list[str] = []
        owner: list[int] = []
        for i, name in enumerate(names):
            caps = by_image.get(name)
            if not caps:
                raise DataError(f"image {name!r} of split file {str(self.dir / 'splits' / f'{split}.txt')!r} "
                                f"has no caption in {str(self.dir / 'captions.txt')!r}")
            captions += caps
            owner += [i] * len(caps)
        images = file_image_list([image_dir / n for n in names], image_dir, extra=f"flickr8k/{split}")
        return images, captions, np.asarray(owner, dtype=np.int64)

    # -- API -------------------------------------------------------------------
    def images(self, split: str) -> ImageList:
        return self._split(split)[0]

    def captions(self, split: str) -> list[str]:
        return list(self._split(split)[1])

    def caption_image_index(self, split: str) -> np.ndarray:
        return self._split(split)[2].copy()


def read_captions_csv(path: Path) -> dict[str, list[str]]:
    """``image,caption`` CSV → {image: [captions in file order]}; a bad header or row names the file."""
    require_file(path, "flickr8k captions", LAYOUT)
    out: dict[str, list[str]] = {}
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip().lower() for h in header[:2]] != ["image", "caption"]:
            raise MalformedDataError(f"malformed captions file {str(path)!r}: first line must be the header "
                            f"'image,caption', found {','.join(header or [])!r}")
        start = reader.line_num + 1
        try:
            for row in reader:
                if row and any("\n" in field or "\r" in field for field in row):
                    raise MalformedDataError(
                        f"malformed captions file {str(path)!r}: line {start} (image {row[0].strip()!r}) opens a "
                        f"quote that is not closed on that line, so its caption swallows lines {start}-"
                        f"{reader.line_num}; close or remove that quote")
                _add_row(out, row, path, reader.line_num)
                start = reader.line_num + 1
        except csv.Error as exc:
            raise MalformedDataError(f"malformed captions file {str(path)!r}: line {start}: {exc}") from None
    return out


def _add_row(out: dict[str, list[str]], row: list[str], path: Path, line: int) -> None:
    if not row:
        return
    if len(row) < 2 or not row[0].strip() or not row[1].strip():
        raise MalformedDataError(f"malformed captions file {str(path)!r}: line {line} "
                        f"needs an image name and a caption, found {','.join(row)!r}")
    # a caption containing commas may arrive unquoted: keep the rest of the row
    out.setdefault(row[0].strip(), []).append(",".join(row[1:]).strip())
