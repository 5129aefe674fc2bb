"""Datasets a user declares in a card instead of code: captions files, class folders, image + mask folders.

Why here and not in each loader: a researcher's own data must be named like a
built-in (``--train mypairs:train``) without editing the package, and fail the
same way the built-ins do — one :class:`DataError` naming the file and line.
The card (``alignbench.datasets.cards``) is parsed into a :class:`Card`;
:class:`FileCaptions`, :class:`FileClassification` or
:class:`~alignbench.datasets.card_segmentation.FileSegmentation` serves it.  Image fingerprints hash the files' bytes
and their paths *relative to the card*, so the feature-cache key follows the
content: moving the folder keeps the cache, editing an image invalidates it.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence


from alignbench.datasets._bases import Captioned, Labelled, ListedCaptions, ListedClassification, folder_listing
from alignbench.datasets._layout import SplitCache, digest, list_images, read_lines, readable, subfolders
from alignbench.datasets.base import FileImageLoader, ImageList
from alignbench.errors import DataError, MalformedDataError

KINDS = ("captions", "classification", "segmentation")
ONE_SPLIT = "all"  # the split of a dataset whose card declares none


@dataclass(frozen=True)
class Card:
    """One dataset declared in a card file, every path already absolute."""

    name: str
    kind: str
    file: Path  # the card itself (named in errors)
    base: Path  # the card's folder: relative paths and image ids start here
    splits: tuple[str, ...]
    split_files: dict[str, Path] = field(default_factory=dict)  # captions: split → list of image paths
    captions: Path | None = None
    columns: dict[str, str] = field(default_factory=dict)  # image / caption / split column names
    images: Path | None = None
    masks: Path | None = None
    classes: Path | None = None
    templates: Path | None = None
    ignore_index: int = 255
    background: str | None = None
    description: str = ""


# -- content fingerprints -----------------------------------------------------------
_HASHES: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """xxh3-128 of a file's bytes, memoised per (path, size, mtime) within the process."""
    import xxhash

    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = xxhash.xxh3_128()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def content_image_list(paths: Sequence[Path], base: Path, extra: str = "") -> ImageList:
    """ImageList whose fingerprint hashes relative ids and file bytes (not where the folder lives)."""
    ids = [p.relative_to(base).as_posix() for p in paths]
    fp = digest(extra, ids, [file_digest(p) for p in paths])
    return ImageList(ids, FileImageLoader(paths), fp)


class CardDataset:
    """What the three card-backed kinds share: the card, its folder, and no data-root requirement."""

    card: ClassVar[Card]

    def _setup(self, options: dict) -> None:
        self.root = self.card.base  # paths are relative to the card, whatever --data-root says
        self.options = options
        self.dir = self.card.base
        self._cache = SplitCache()

    def _templates(self) -> list[str]:
        """Templates from the card's file (each with ``{}``), else CLIP's 80 ImageNet templates."""
        from alignbench.datasets.templates import IMAGENET

        if self.card.templates is None:
            return list(IMAGENET)
        lines = read_lines(self.card.templates, f"dataset {self.card.name!r} templates")
        for n, t in enumerate(lines, 1):
            if t.count("{}") != 1:
                raise MalformedDataError(f"{self.card.templates} line {n}: template {t!r} must contain '{{}}' exactly once "
                                "(where the class name goes)")
        if not lines:
            raise DataError(f"{self.card.templates}: no templates (one per line, e.g. 'a photo of a {{}}.')")
        return lines

    def _class_list(self, found: Sequence[str] | None) -> tuple[list[str], list[str]]:
        """(folder/id names in label order, readable names) from the classes file or the folders found.

        A classes-file line is ``folder`` or ``folder: readable name``.
        """
        if self.card.classes is None:
            if found is None:
                raise DataError(f"{self.card.file}: dataset {self.card.name!r} needs 'classes:' (a file with one "
                                "class name per line, line i = class id i)")
            return list(found), [readable(f) for f in found]
        folders, names = [], []
        for n, line in enumerate(read_lines(self.card.classes, f"dataset {self.card.name!r} classes"), 1):
            folder, sep, name = line.partition(":")
            folder, name = folder.strip(), (name.strip() if sep else readable(folder.strip()))
            if folder in folders:
                raise MalformedDataError(f"{self.card.classes} line {n}: class {folder!r} is listed twice")
            folders.append(folder)
            names.append(name or folder)
        if not folders:
            raise DataError(f"{self.card.classes}: no classes listed")
        return folders, names


# -- captions -------------------------------------------------------------------------
@dataclass
class _Row:
    image: str
    captions: list[str]
    split: str | None
    line: int


class FileCaptions(CardDataset, ListedCaptions):
    """Image–caption pairs from a CSV / TSV / JSONL file (several rows or a caption list per image)."""

    def __init__(self, root: str | os.PathLike | None = None, **options):
        self._setup(options)

    def _all(self) -> dict[str, tuple[list[str], list[list[str]]]]:
        return self._cache.get("all", self._read)

    def _read(self) -> dict[str, tuple[list[str], list[list[str]]]]:
        """Every split: (image paths, the captions of each image)."""
        card = self.card
        cols = {"image": "image", "caption": "caption", "split": "split", **card.columns}
        by_image: dict[str, _Row] = {}
        for row in _rows(card.captions, cols, split_wanted=bool(card.splits) and not card.split_files
                         and card.splits != (ONE_SPLIT,)):
            seen = by_image.get(row.image)
            if seen is None:
                by_image[row.image] = row
                continue
            if row.split != seen.split:
                raise MalformedDataError(f"{card.captions} line {row.line}: image {row.image!r} is in split {row.split!r} "
                                f"here but in split {seen.split!r} on line {seen.line}")
            seen.captions += row.captions
        missing = [(r.line, r.image) for r in by_image.values() if not (card.images / r.image).is_file()]
        if missing:
            shown = "; ".join(f"line {ln}: {str(card.images / im)!r}" for ln, im in missing[:3])
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise DataError(f"{card.captions}: missing image file(s) — {shown}{more}")
        members = self._split_members(by_image)
        out = {}
        for split in card.splits:
            names = members[split]
            if not names:
                raise DataError(f"dataset {card.name!r}: split {split!r} is empty (declared in {card.file})")
            out[split] = (names, [by_image[name].captions for name in names])
        return out

    def _split_members(self, by_image: dict[str, _Row]) -> dict[str, list[str]]:
        card = self.card
        if not card.split_files:
            members: dict[str, list[str]] = {s: [] for s in card.splits}
            for name, row in by_image.items():
                split = row.split or ONE_SPLIT
                if split not in members:
                    raise MalformedDataError(f"{card.captions} line {row.line}: split {split!r} is not one of the card's "
                                    f"splits ({', '.join(card.splits)}; {card.file})")
                members[split].append(name)
            return members
        members, owner_of = {}, {}
        for split, path in card.split_files.items():
            members[split] = []
            for n, name in enumerate(read_lines(path, f"dataset {card.name!r} split {split!r}"), 1):
                if name not in by_image:
                    raise MalformedDataError(f"{path} line {n}: image {name!r} has no caption in {card.captions}")
                if name in owner_of:
                    raise MalformedDataError(f"{path} line {n}: image {name!r} is also in split {owner_of[name]!r}")
                owner_of[name] = split
                members[split].append(name)
        return members

    def _list(self, split: str) -> Captioned:
        names, per_image = self._all()[split]
        return Captioned(content_image_list([self.card.images / n for n in names], self.card.images), per_image)


def _rows(path: Path, cols: dict[str, str], *, split_wanted: bool) -> Iterator[_Row]:
    """Rows of a captions file (CSV/TSV with a header, or JSONL); each problem names the file and line."""
    if not path.is_file():
        raise DataError(f"captions file {str(path)!r} does not exist")
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        yield from _jsonl_rows(path, cols, split_wanted)
        return
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        header = [h.strip() for h in reader.fieldnames or []]
        reader.fieldnames = header
        for what in ("image", "caption"):
            if cols[what] not in header:
                raise MalformedDataError(f"{path} line 1: no column {cols[what]!r} (columns: {', '.join(header) or 'none'}); "
                                f"name it in the card with columns: {{{what}: <column>}}")
        has_split = cols["split"] in header
        if has_split and not split_wanted:
            raise DataError(f"{path} has a {cols['split']!r} column: list its values in the card "
                            "(splits: [train, test]) to use it")
        if split_wanted and not has_split:
            raise MalformedDataError(f"{path} line 1: no column {cols['split']!r} for the card's splits "
                            f"(columns: {', '.join(header)})")
        for rec in reader:
            line = reader.line_num
            if None in rec:
                raise MalformedDataError(f"{path} line {line}: more fields than the header's {len(header)} "
                                "(quote captions that contain the delimiter)")
            yield _row(path, line, rec.get(cols["image"]), rec.get(cols["caption"]),
                       rec.get(cols["split"]) if has_split else None, split_wanted)


def _jsonl_rows(path: Path, cols: dict[str, str], split_wanted: bool) -> Iterator[_Row]:
    with open(path, encoding="utf-8-sig") as f:
        for line, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as exc:
                raise MalformedDataError(f"{path} line {line}: not valid JSON ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise MalformedDataError(f"{path} line {line}: expected a JSON object, found {type(rec).__name__}")
            caps = rec.get(cols["caption"], rec.get(cols["caption"] + "s"))
            for what, value in (("image", rec.get(cols["image"])), ("caption", caps)):
                if value is None:
                    raise MalformedDataError(f"{path} line {line}: no {cols[what]!r} field (fields: {', '.join(rec) or 'none'})")
            if split_wanted and cols["split"] not in rec:
                raise MalformedDataError(f"{path} line {line}: no {cols['split']!r} field for the card's splits")
            if not split_wanted and cols["split"] in rec:
                raise MalformedDataError(f"{path} line {line} has a {cols['split']!r} field: list the split names in the "
                                "card (splits: [train, test]) to use it")
            yield _row(path, line, rec[cols["image"]], caps, rec.get(cols["split"]), split_wanted)


def _row(path: Path, line: int, image: Any, caption: Any, split: Any, split_wanted: bool) -> _Row:
    image = str(image or "").strip()
    if not image:
        raise MalformedDataError(f"{path} line {line}: empty image path")
    caps = caption if isinstance(caption, list) else [caption]
    caps = [str(c if c is not None else "").strip() for c in caps]
    if not caps or not all(caps):
        raise MalformedDataError(f"{path} line {line}: empty caption for image {image!r}")
    split = str(split).strip() if split is not None else None
    if split_wanted and not split:
        raise MalformedDataError(f"{path} line {line}: empty split for image {image!r}")
    return _Row(image, caps, split, line)


# -- classification -------------------------------------------------------------------
class FileClassification(CardDataset, ListedClassification):
    """Class folders ``<images>/[<split>/]<class>/<image>``; names from the folders or a classes file."""

    def __init__(self, root: str | os.PathLike | None = None, **options):
        self._setup(options)

    def _split_dir(self, split: str) -> Path:
        return self.card.images if self.card.splits == (ONE_SPLIT,) else self.card.images / split

    def _classes(self) -> tuple[list[str], list[str]]:
        def make():
            found = None
            if self.card.classes is None:
                found = sorted({c for s in self.card.splits if self._split_dir(s).is_dir()
                                for c in subfolders(self._split_dir(s))})
            return self._class_list(found)

        return self._cache.get("classes", make)

    @property
    def classnames(self) -> list[str]:
        return list(self._classes()[1])

    @property
    def templates(self) -> list[str]:
        return self._templates()

    def _list(self, split: str) -> Labelled:
        split_dir = self._split_dir(split)
        if not split_dir.is_dir():
            raise DataError(f"dataset {self.card.name!r}: split {split!r} expects the folder {str(split_dir)!r}, "
                            f"which does not exist ({self.card.file})")
        for c in subfolders(split_dir):
            if not list_images(split_dir / c, f"{self.card.name} class {c!r}"):
                raise DataError(f"dataset {self.card.name!r}: class folder {str(split_dir / c)!r} has no images")
        paths, labels, _ = folder_listing(split_dir, self._classes()[0], f"dataset {self.card.name!r}")
        images = content_image_list(paths, self.card.images, extra=digest(split, labels))
        return Labelled(images, labels)
