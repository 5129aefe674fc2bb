"""Helpers every loader shares: find the folder, list files, fingerprint, split.

Why one module: all loaders must fail the same way (a :class:`DataError` that
names the exact path they expected and the layout they want) and list files
the same way (sorted, never decoded at listing time), so that feature-cache
keys stay stable from one run to the next.  No registrations live here.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from alignbench.datasets.base import Dataset, files_fingerprint
from alignbench.errors import DataError

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"})


def dataset_name(ds: Dataset | type) -> str:
    cls = ds if isinstance(ds, type) else type(ds)
    return cls.registry_name or cls.__name__


def dataset_dir(ds: Dataset, defaults: str | Sequence[str], layout: str) -> Path:
    """The dataset's folder: option ``path=`` (relative to the data root or absolute), else the first default that exists.

    ``layout`` is shown in the error so that a user can see what to put where.
    """
    opt = ds.options.get("path")
    names = [opt] if opt else ([defaults] if isinstance(defaults, str) else list(defaults))
    tried: list[Path] = []
    for name in names:
        p = Path(os.fspath(name)).expanduser()
        p = p if p.is_absolute() else ds.root / p
        if p.is_dir():
            return p
        tried.append(p)
    where = " or ".join(repr(str(t)) for t in tried)
    raise DataError(
        f"dataset {dataset_name(ds)!r}: expected its folder at {where}, which does not exist "
        f"(pass path=<folder under the data root> if it lives elsewhere). Expected layout:\n{layout}"
    )


def find_subdir(base: Path, candidates: Sequence[str], what: str, layout: str = "") -> Path:
    """The first of ``base/candidate`` that is a folder (``""`` means ``base`` itself)."""
    for c in candidates:
        p = base / c if c else base
        if p.is_dir():
            return p
    tried = " or ".join(repr(str(base / c if c else base)) for c in candidates)
    msg = f"{what}: expected a folder at {tried}, none of which exists"
    raise DataError(msg + (f". Expected layout:\n{layout}" if layout else ""))


def find_file(base: Path, candidates: Sequence[str]) -> Path | None:
    """The first of ``base/candidate`` that is a file, or None."""
    for c in candidates:
        p = base / c
        if p.is_file():
            return p
    return None


def require_file(path: Path, what: str, layout: str = "") -> Path:
    if not path.is_file():
        msg = f"{what}: expected the file {str(path)!r}, which does not exist"
        raise DataError(msg + (f". Expected layout:\n{layout}" if layout else ""))
    return path


def require_dir(path: Path, what: str, layout: str = "") -> Path:
    if not path.is_dir():
        msg = f"{what}: expected the folder {str(path)!r}, which does not exist"
        raise DataError(msg + (f". Expected layout:\n{layout}" if layout else ""))
    return path


def read_lines(path: Path, what: str) -> list[str]:
    """Non-empty, stripped lines of a text file (split lists, class lists)."""
    require_file(path, what)
    with open(path, encoding="utf-8-sig") as f:
        return [ln.strip() for ln in f if ln.strip()]


def is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")


def list_images(folder: Path, what: str) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (no decoding)."""
    require_dir(folder, what)
    with os.scandir(folder) as it:
        paths = [Path(e.path) for e in it if e.is_file() and is_image(Path(e.name))]
    return sorted(paths, key=lambda p: p.name)


def subfolders(folder: Path) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def checked_fingerprint(paths: Sequence[Path], extra: str = "") -> str:
    """``files_fingerprint`` after checking that every file exists (names the missing ones).

    ``extra`` should carry what the bare file names miss (relative paths,
    labels): it is hashed so the key changes when images move between classes.
    """
    missing = [str(p) for p in paths if not os.path.isfile(p)]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DataError(f"missing image file(s): {', '.join(repr(m) for m in missing[:3])}{more}")
    return files_fingerprint(paths, extra=extra)


def digest(*parts: Any) -> str:
    """Short hash of reprs/arrays, used as the ``extra`` of fingerprints."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(np.ascontiguousarray(part).tobytes())
        elif isinstance(part, (list, tuple)):
            h.update("\n".join(map(str, part)).encode())
        else:
            h.update(str(part).encode())
        h.update(b"\x00")
    return h.hexdigest()[:16]


def seeded_split(labels: np.ndarray, *, n_train_per_class: int | None = None,
                 train_fraction: float | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed per-class random train/test split for datasets that ship without one.

    Within each class the (already sorted) items are permuted with
    ``numpy.random.default_rng(seed)``; the first ``n_train_per_class`` (or
    ``round(train_fraction * n)``) go to train, the rest to test.  Returns
    sorted index arrays, so the order inside a split stays the listing order.
    """
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        k = n_train_per_class if n_train_per_class is not None else int(round(train_fraction * len(idx)))
        k = min(k, len(idx))
        train.append(idx[:k])
        test.append(idx[k:])
    cat = lambda parts: np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)  # noqa: E731
    return cat(train), cat(test)


def readable(name: str) -> str:
    """Folder or file-style class name → prompt text ("_background_" → "background")."""
    return " ".join(name.replace("_", " ").split())


class SplitCache:
    """Per-instance memo of a split's listing (listing is cheap, but not free)."""

    def __init__(self) -> None:
        self._d: dict[Any, Any] = {}

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        if key not in self._d:
            self._d[key] = make()
        return self._d[key]
