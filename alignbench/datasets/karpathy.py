"""Caption datasets in Karpathy's split format (``dataset_<name>.json``): Flickr30k here, COCO in coco.py.

The Karpathy json lists ``images[]`` with ``filename`` (and ``filepath`` for
COCO), ``split`` in train/restval/val/test and ``sentences[].raw``.  These
are the splits that retrieval papers report on (COCO 5k test, Flickr30k 1k).
"""
from __future__ import annotations

import json
import os
from abc import abstractmethod
from pathlib import Path


from alignbench.datasets._bases import Captioned, ListedCaptions, file_image_list
from alignbench.datasets._layout import dataset_dir, require_file
from alignbench.errors import DataError
from alignbench.registry import register_dataset


class PairedCaptions(ListedCaptions):
    """Caption dataset listed as (image paths, captions grouped by image); shared by COCO and Flickr30k.

    Option ``captions_per_image=K`` keeps the first K captions of each image
    (some COCO images have 6–7); default keeps all.
    """

    splits = ("train", "val", "test")

    @abstractmethod
    def _files(self, split: str) -> tuple[list[Path], Path, list[list[str]]]:
        """(image paths, folder the ids are relative to, captions of each image)."""

    def _list(self, split: str) -> Captioned:
        paths, base, per_image = self._files(split)
        k = self.options.get("captions_per_image")
        images = file_image_list(paths, base, extra=f"{self.registry_name}/{split}/{self.variant()}")
        return Captioned(images, [caps[: int(k)] if k else caps for caps in per_image])

    def variant(self) -> str:
        return ""


def load_json(path: Path, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(f"malformed {what} {str(path)!r}: {exc}") from exc


def karpathy_images(path: Path) -> list[tuple[str, str, str, list[str]]]:
    """(split, filepath, filename, raw captions) of every image, in file order."""
    data = load_json(path, "Karpathy split file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"malformed Karpathy split file {str(path)!r}: expected a json object with a list 'images'")
    out = []
    for n, img in enumerate(data["images"]):
        try:
            caps = [s["raw"].strip() for s in img["sentences"]]
            out.append((img["split"], img.get("filepath", ""), img["filename"], caps))
        except (KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"malformed Karpathy split file {str(path)!r}: images[{n}] lacks {exc} "
                            "(each image needs 'filename', 'split' and 'sentences[].raw')") from exc
    return out


FLICKR30K_LAYOUT = """\
  flickr30k/
    dataset_flickr30k.json      Karpathy split (images[].filename, split, sentences[].raw)
    flickr30k-images/<id>.jpg"""


@register_dataset("flickr30k", aliases=("f30k",))
class Flickr30k(PairedCaptions):
    """Flickr30k with Karpathy's 29k/1k/1k split, 5 captions per image."""

    def __init__(self, root: str | os.PathLike | None = None, **options):
        super().__init__(root, **options)
        self.dir = dataset_dir(self, ("flickr30k", "Flickr30k"), FLICKR30K_LAYOUT)
        self.json = require_file(self.dir / "dataset_flickr30k.json", "flickr30k Karpathy split", FLICKR30K_LAYOUT)

    def _files(self, split):
        image_dir = self.dir / "flickr30k-images"
        if not image_dir.is_dir():
            image_dir = self.dir / "images"
        if not image_dir.is_dir():
            raise DataError(f"flickr30k: expected the image folder {str(self.dir / 'flickr30k-images')!r}. "
                            f"Expected layout:\n{FLICKR30K_LAYOUT}")
        items = [it for it in self._cache.get("json", lambda: karpathy_images(self.json)) if it[0] == split]
        return [image_dir / fn for _, _, fn, _ in items], image_dir, [caps for *_, caps in items]
