"""Classification datasets stored as class folders: Caltech-101, EuroSAT, DTD, ImageNet val.

Each lists ``<folder>/<class>/<image>`` sorted by (class, file name) and maps
folder names to the canonical label order and readable prompt names.
Caltech-101 and EuroSAT ship without an official split; they get a fixed
per-class random split (``seeded_split``, seed 0) that never changes between
runs, plus ``all`` for the whole set.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import numpy as np

from alignbench.datasets import classnames as names
from alignbench.datasets._bases import Labelled, ListedClassification, file_image_list, folder_listing
from alignbench.datasets._layout import (
    dataset_dir,
    find_subdir,
    read_lines,
    require_dir,
    seeded_split,
    subfolders,
)
from alignbench.errors import DataError
from alignbench.registry import register_dataset


class SeededSplitFolders(ListedClassification):
    """ImageFolder data without an official split: ``all``, and a seeded per-class ``train``/``test``.

    Options ``seed`` (default 0) and either ``train_per_class`` or
    ``train_fraction`` (defaults set per dataset).
    """

    splits = ("train", "test", "all")
    dir_names: ClassVar[tuple[str, ...]] = ()
    image_subdirs: ClassVar[tuple[str, ...]] = ()
    folder_names: ClassVar[list[str]] = []
    readable_names: ClassVar[list[str]] = []
    layout: ClassVar[str] = ""
    train_per_class: ClassVar[int | None] = None
    train_fraction: ClassVar[float | None] = None
    skip_folders: ClassVar[tuple[str, ...]] = ()

    def __init__(self, root: str | os.PathLike | None = None, **options):
        super().__init__(root, **options)
        self.dir = dataset_dir(self, self.dir_names, self.layout)
        self.image_dir = find_subdir(self.dir, self.image_subdirs, f"{self.registry_name} images", self.layout)

    @property
    def classnames(self) -> list[str]:
        return list(self.readable_names)

    def _all(self) -> tuple[list[Path], np.ndarray]:
        def make():
            paths, labels, _ = folder_listing(self.image_dir, self.folder_names, self.registry_name, self.skip_folders)
            return paths, labels

        return self._cache.get("all-files", make)

    def _list(self, split: str) -> Labelled:
        paths, labels = self._all()
        if split != "all":
            per_class = self.options.get("train_per_class", None if "train_fraction" in self.options else self.train_per_class)
            fraction = None if per_class is not None else float(self.options.get("train_fraction", self.train_fraction))
            train, test = seeded_split(labels, n_train_per_class=None if per_class is None else int(per_class),
                                       train_fraction=fraction, seed=int(self.options.get("seed", 0)))
            keep = train if split == "train" else test
            paths, labels = [paths[i] for i in keep], labels[keep]
        # the fingerprint hashes the listed ids and labels, so it follows the seed and split sizes
        return Labelled(file_image_list(paths, self.image_dir, labels, extra=f"{self.registry_name}/{split}"), labels)


@register_dataset("caltech101", aliases=("caltech-101",))
class Caltech101(SeededSplitFolders):
    """Caltech-101: 101 object classes (BACKGROUND_Google dropped); seeded 30-per-class train split.

    No official split exists: ``train`` takes 30 random images per class
    (seed 0, the usual protocol), ``test`` the rest, ``all`` everything.
    """

    dir_names = ("caltech101", "caltech-101", "Caltech101")
    image_subdirs = ("101_ObjectCategories", "caltech101/101_ObjectCategories", "caltech-101/101_ObjectCategories")
    folder_names = names.CALTECH101_FOLDERS
    readable_names = names.CALTECH101
    train_per_class = 30
    skip_folders = ("BACKGROUND_Google",)  # clutter images, not a class
    layout = """\
  caltech101/
    101_ObjectCategories/<class>/image_0001.jpg   (BACKGROUND_Google is ignored)"""


@register_dataset("eurosat", aliases=("eurosat-rgb",))
class EuroSAT(SeededSplitFolders):
    """EuroSAT RGB: 27k 64×64 Sentinel-2 tiles, 10 land-use classes; seeded 80/20 split.

    No official split exists: ``train`` is a random 80% of each class
    (seed 0), ``test`` the other 20%, ``all`` everything (CLIP_benchmark
    evaluates on all).
    """

    dir_names = ("eurosat", "EuroSAT", "2750")
    image_subdirs = ("2750", "EuroSAT", "EuroSAT_RGB", "eurosat/2750", "")
    folder_names = names.EUROSAT_FOLDERS
    readable_names = names.EUROSAT
    train_fraction = 0.8
    layout = """\
  eurosat/
    2750/<class>/<class>_<n>.jpg     (or EuroSAT/<class>/, EuroSAT_RGB/<class>/)
    classes: AnnualCrop Forest HerbaceousVegetation Highway Industrial Pasture
             PermanentCrop Residential River SeaLake"""


DTD_LAYOUT = """\
  dtd/
    images/<class>/<class>_<n>.jpg      (47 texture classes)
    labels/train1.txt val1.txt test1.txt … (…10.txt)   lines like "banded/banded_0002.jpg\""""


@register_dataset("dtd", aliases=("describable-textures",))
class DTD(ListedClassification):
    """Describable Textures: 47 classes, official split 1 of 10 (option ``partition``)."""

    splits = ("train", "val", "test")

    def __init__(self, root: str | os.PathLike | None = None, **options):
        super().__init__(root, **options)
        top = dataset_dir(self, ("dtd", "DTD"), DTD_LAYOUT)
        self.dir = top / "dtd" if not (top / "images").is_dir() and (top / "dtd" / "images").is_dir() else top
        self.image_dir = require_dir(self.dir / "images", "dtd images", DTD_LAYOUT)
        self.partition = int(options.get("partition", 1))

    @property
    def classnames(self) -> list[str]:
        found = subfolders(self.image_dir)
        return list(names.DTD) if not found or set(found) <= set(names.DTD) else found

    def _list(self, split: str) -> Labelled:
        listing = self.dir / "labels" / f"{split}{self.partition}.txt"
        rels = read_lines(listing, f"dtd split {split!r} (partition {self.partition})")
        index = {c: i for i, c in enumerate(self.classnames)}
        rels = sorted(rels, key=lambda r: (index.get(r.split("/")[0], -1), r))
        labels = []
        for r in rels:
            c = r.split("/")[0]
            if c not in index:
                raise DataError(f"dtd: {str(listing)!r} lists {r!r}, whose class {c!r} is not a folder of {str(self.image_dir)!r}")
            labels.append(index[c])
        y = np.asarray(labels, dtype=np.int64)
        paths = [self.image_dir / r for r in rels]
        return Labelled(file_image_list(paths, self.image_dir, y, extra=f"dtd/{split}{self.partition}"), y)


IMAGENET_LAYOUT = """\
  imagenet/
    val/<wnid>/*.JPEG      (50 images for each of the 1,000 classes, e.g. val/n01440764/)
    train/<wnid>/*.JPEG    (optional)"""


@register_dataset("imagenet", aliases=("imagenet1k", "imagenet-1k", "ilsvrc2012"))
class ImageNet(ListedClassification):
    """ImageNet-1k validation set in class folders (``val/<wnid>/``), CLIP's readable names."""

    # the test labels are not public: val is the evaluation split (last, where tasks look for a default)
    splits = ("train", "val")
    split_aliases = {"test": "val"}

    def __init__(self, root: str | os.PathLike | None = None, **options):
        super().__init__(root, **options)
        self.dir = dataset_dir(self, ("imagenet", "ImageNet", "imagenet-1k", "ILSVRC2012"), IMAGENET_LAYOUT)

    @property
    def classnames(self) -> list[str]:
        from alignbench.datasets.imagenet_classes import CLASSNAMES

        return list(CLASSNAMES)

    def _list(self, split: str) -> Labelled:
        from alignbench.datasets.imagenet_classes import WNIDS

        split_dir = require_dir(self.dir / split, f"imagenet {split}", IMAGENET_LAYOUT)
        paths, labels, _ = folder_listing(split_dir, WNIDS, f"imagenet {split}")
        return Labelled(file_image_list(paths, self.dir, labels, extra=f"imagenet/{split}"), labels)
