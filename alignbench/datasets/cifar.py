"""CIFAR-10 and CIFAR-100: the official python pickles, or ImageFolder ``<split>/<class>/*``.

The pickles (``cifar-10-batches-py/``, ``cifar-100-python/``) hold the exact
pixels; an ImageFolder copy (as in the project's shared ``cifar10/test/``)
is re-encoded.  When both exist the pickles win (option ``format=folder`` or
``format=python`` to choose).
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np

from alignbench.datasets import classnames as names
from alignbench.datasets._bases import Labelled, ListedClassification, file_image_list, folder_listing
from alignbench.datasets._layout import dataset_dir, digest, readable, require_file
from alignbench.datasets.base import ArrayImageLoader, ImageList, files_fingerprint
from alignbench.errors import ConfigError, DataError
from alignbench.registry import register_dataset


def unpickle(path: Path) -> dict:
    """A CIFAR python batch (pickled with Python 2; ``latin1`` gives str keys)."""
    require_file(path, "CIFAR batch")
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataError(f"cannot read CIFAR batch {str(path)!r}: {exc}") from exc
    if not isinstance(d, dict):
        raise DataError(f"malformed CIFAR batch {str(path)!r}: expected a pickled dict")
    return d


class CifarBase(ListedClassification):
    splits = ("train", "test")
    folder_names: ClassVar[list[str]] = []
    python_dir: ClassVar[str] = ""
    batch_files: ClassVar[dict[str, tuple[str, ...]]] = {}
    label_key: ClassVar[str] = "labels"
    layout: ClassVar[str] = ""

    def __init__(self, root: str | os.PathLike | None = None, **options):
        super().__init__(root, **options)
        self.dir = dataset_dir(self, self.default_dirs(), self.layout)
        fmt = options.get("format", "auto")
        if fmt not in ("auto", "python", "folder"):
            raise ConfigError(f"{self.registry_name}: format must be auto, python or folder, not {fmt!r}")
        py = self.dir / self.python_dir
        if not py.is_dir() and ((self.dir / "batches.meta").is_file() or (self.dir / "meta").is_file()):
            py = self.dir  # path= points at the pickle folder itself
        self.python = py if fmt == "python" or (fmt == "auto" and py.is_dir()) else None

    @classmethod
    def default_dirs(cls) -> Sequence[str]:
        return (cls.registry_name, cls.python_dir)  # torchvision keeps the pickles at <root>/cifar-10-batches-py

    @property
    def classnames(self) -> list[str]:
        return [readable(n) for n in self.folder_names]

    def _list(self, split: str) -> Labelled:
        if self.python is not None:
            return self._list_python(split)
        split_dir = self.dir / split
        if not split_dir.is_dir():
            raise DataError(
                f"{self.registry_name} split {split!r}: expected {str(split_dir)!r} (ImageFolder) or "
                f"{str(self.dir / self.python_dir)!r} (python batches), neither exists. Expected layout:\n{self.layout}"
            )
        paths, labels, _ = folder_listing(split_dir, self.folder_names, f"{self.registry_name} {split}")
        return Labelled(file_image_list(paths, self.dir, labels, extra=f"{self.registry_name}/{split}"), labels)

    def _list_python(self, split: str) -> Labelled:
        files = [self.python / f for f in self.batch_files[split]]
        data, labels = [], []
        for f in files:
            d = unpickle(f)
            try:
                data.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels.append(np.asarray(d[self.label_key], dtype=np.int64))
            except (KeyError, ValueError) as exc:
                raise DataError(f"malformed CIFAR batch {str(f)!r}: {exc!r} (expected 'data' (N, 3072) and {self.label_key!r})") from exc
        array = np.ascontiguousarray(np.concatenate(data).transpose(0, 2, 3, 1))  # (N, 32, 32, 3)
        y = np.concatenate(labels)
        if len(y) != len(array):
            raise DataError(f"malformed CIFAR batches in {str(self.python)!r}: {len(array)} images but {len(y)} labels")
        ids = [f"{split}/{i:05d}" for i in range(len(array))]
        fp = files_fingerprint(files, extra=digest(self.registry_name, split, "python"))
        return Labelled(ImageList(ids, ArrayImageLoader(array), fp), y)


@register_dataset("cifar10", aliases=("cifar-10",))
class Cifar10(CifarBase):
    """CIFAR-10: 10 classes, 32×32; python batches or ImageFolder (shared copy: test only)."""

    folder_names = names.CIFAR10
    python_dir = "cifar-10-batches-py"
    batch_files = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
    label_key = "labels"
    layout = """\
  cifar10/
    test/<class>/*.jpg  train/<class>/*.jpg        (ImageFolder; classes airplane … truck)
  or
    cifar-10-batches-py/data_batch_1 … data_batch_5, test_batch, batches.meta"""


@register_dataset("cifar100", aliases=("cifar-100",))
class Cifar100(CifarBase):
    """CIFAR-100: 100 fine classes, 32×32; python pickles (or ImageFolder)."""

    folder_names = names.CIFAR100
    python_dir = "cifar-100-python"
    batch_files = {"train": ("train",), "test": ("test",)}
    label_key = "fine_labels"
    layout = """\
  cifar100/
    cifar-100-python/train, test, meta      (the official python pickles)
  or
    test/<class>/*.png  train/<class>/*.png  (ImageFolder with the fine label names)"""
