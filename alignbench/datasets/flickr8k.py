"""Flickr8k captions in the layout of the project's shared copy (CSV captions, split lists)."""
from __future__ import annotations

import csv
import os
from pathlib import Path


from alignbench.datasets._bases import Captioned, ListedCaptions, file_image_list
from alignbench.datasets._layout import dataset_dir, read_lines, require_dir, require_file
from alignbench.errors import DataError, MalformedDataError
from alignbench.registry import register_dataset

LAYOUT = """\
  flickr8k/
    images/<name>.jpg
    captions.txt          CSV with header "image,caption", one row per caption
    splits/train.txt      one image file name per line (also dev.txt, test.txt)"""


@register_dataset("flickr8k", aliases=("flickr8k-captions",))
class Flickr8k(ListedCaptions):
    """Flickr8k: 8,091 images, 5 captions each, official 6k/1k/1k split."""

    splits = ("train", "dev", "test")
    split_aliases = {"val": "dev"}

    def __init__(self, root: str | os.PathLike | None = None, **options):
        super().__init__(root, **options)
        self.dir = dataset_dir(self, "flickr8k", LAYOUT)

    def _all_captions(self) -> dict[str, list[str]]:
        return self._cache.get("captions", lambda: read_captions_csv(self.dir / "captions.txt"))

    def _list(self, split: str) -> Captioned:
        names = read_lines(self.dir / "splits" / f"{split}.txt", f"flickr8k split {split!r}")
        by_image = self._all_captions()
        image_dir = require_dir(self.dir / "images", "flickr8k images", LAYOUT)
        for name in names:
            if not by_image.get(name):
                raise DataError(f"image {name!r} of split file {str(self.dir / 'splits' / f'{split}.txt')!r} "
                                f"has no caption in {str(self.dir / 'captions.txt')!r}")
        images = file_image_list([image_dir / n for n in names], image_dir, extra=f"flickr8k/{split}")
        return Captioned(images, [by_image[n] for n in names])


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
