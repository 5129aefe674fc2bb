"""COCO captions: the Karpathy split (retrieval's 5k test) or the official 2014/2017 train/val."""
from __future__ import annotations

import os
from pathlib import Path

from alignbench.datasets._layout import dataset_dir, find_file
from alignbench.datasets.karpathy import PairedCaptions, karpathy_images, load_json
from alignbench.errors import ConfigError, DataError
from alignbench.registry import register_dataset

LAYOUT = """\
  coco/
    annotations/captions_train2017.json, captions_val2017.json   (and/or the 2014 ones)
    train2017/*.jpg  val2017/*.jpg                               (and/or train2014/ val2014/)
    dataset_coco.json      Karpathy split (optional; may also sit in annotations/)"""

KARPATHY_FILE = "dataset_coco.json"
VERSIONS = ("auto", "karpathy", "2014", "2017")


@register_dataset("coco", aliases=("mscoco", "coco-captions"))
class Coco(PairedCaptions):
    """COCO captions; Karpathy split (train+restval / val / 5k test) when dataset_coco.json exists.

    Option ``version``: ``karpathy`` (splits train = train+restval, val,
    test), ``2014`` or ``2017`` (official splits train and val; no public test
    captions), or ``auto`` (default: Karpathy if its json is present, else
    2017, else 2014).  Images are ordered as in the Karpathy json, or by file
    name for the official annotations; captions keep annotation-id order.
    """

    def __init__(self, root: str | os.PathLike | None = None, **options):
        super().__init__(root, **options)
        self.dir = dataset_dir(self, ("coco", "COCO", "mscoco"), LAYOUT)
        version = str(options.get("version", "auto"))
        if version not in VERSIONS:
            raise ConfigError(f"coco: version must be one of {', '.join(VERSIONS)}, not {version!r}")
        self.karpathy_json = find_file(self.dir, (KARPATHY_FILE, f"annotations/{KARPATHY_FILE}", f"karpathy/{KARPATHY_FILE}"))
        if version == "auto":
            if self.karpathy_json is not None:
                version = "karpathy"
            elif (self.dir / "annotations" / "captions_val2017.json").is_file():
                version = "2017"
            elif (self.dir / "annotations" / "captions_val2014.json").is_file():
                version = "2014"
            else:
                raise DataError(
                    f"coco: found neither {str(self.dir / KARPATHY_FILE)!r} nor "
                    f"{str(self.dir / 'annotations' / 'captions_val2017.json')!r} (or the 2014 ones). "
                    f"Expected layout:\n{LAYOUT}"
                )
        if version == "karpathy" and self.karpathy_json is None:
            raise DataError(f"coco: version=karpathy needs {str(self.dir / KARPATHY_FILE)!r}, which does not exist. "
                            f"Expected layout:\n{LAYOUT}")
        self.version = version

    def variant(self) -> str:
        return self.version

    def _image_dir(self, folder: str) -> Path:
        for base in (self.dir, self.dir / "images"):
            if (base / folder).is_dir():
                return base / folder
        raise DataError(f"coco: expected the image folder {str(self.dir / folder)!r}, which does not exist. "
                        f"Expected layout:\n{LAYOUT}")

    def _files(self, split):
        if self.version == "karpathy":
            return self._list_karpathy(split)
        return self._list_official(split)

    def _list_karpathy(self, split):
        wanted = ("train", "restval") if split == "train" else (split,)
        items = [it for it in self._cache.get("json", lambda: karpathy_images(self.karpathy_json)) if it[0] in wanted]
        dirs: dict[str, Path] = {}
        paths = []
        for _, filepath, filename, _ in items:
            if filepath not in dirs:
                dirs[filepath] = self._image_dir(filepath) if filepath else self.dir
            paths.append(dirs[filepath] / filename)
        return paths, self.dir, [caps for *_, caps in items]

    def _list_official(self, split):
        if split == "test":
            raise DataError(f"coco {self.version} has no public test captions; use split 'val', "
                            f"or version=karpathy (needs {str(self.dir / KARPATHY_FILE)!r}) for the 5k test split")
        name = f"{split}{self.version}"
        ann = self.dir / "annotations" / f"captions_{name}.json"
        if not ann.is_file():
            raise DataError(f"coco: expected the annotation file {str(ann)!r}, which does not exist. "
                            f"Expected layout:\n{LAYOUT}")
        data = load_json(ann, "COCO captions file")
        try:
            files = {img["id"]: img["file_name"] for img in data["images"]}
            by_image: dict[int, list[tuple[int, str]]] = {}
            for a in data["annotations"]:
                by_image.setdefault(a["image_id"], []).append((a.get("id", 0), a["caption"].strip()))
        except (KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"malformed COCO captions file {str(ann)!r}: missing {exc} "
                            "(expected images[].id/file_name and annotations[].image_id/caption)") from exc
        unknown = set(by_image) - set(files)
        if unknown:
            raise DataError(f"malformed COCO captions file {str(ann)!r}: captions for unknown image id(s) {sorted(unknown)[:3]}")
        image_dir = self._image_dir(name)
        ids = sorted((i for i in files if i in by_image), key=lambda i: files[i])  # images with captions, by file name
        return ([image_dir / files[i] for i in ids], self.dir,
                [[c for _, c in sorted(by_image[i])] for i in ids])
