"""Splits guarded: training and validation images are never evaluated, checked on image identity.

Why on identity and not on names: ``--val flickr8k:test`` with a Flickr8k test
evaluation is caught by names, but the same images reached through another
dataset name (an alias, a second loader over the same folder, a copy of the
files) are not.  So every image gets a content fingerprint — xxh3-64 of the
file's bytes for file-backed datasets, of the pixel array for in-memory ones
(CIFAR batches, IDX files), of the decoded pixels otherwise — and training,
validation and every evaluated split must share none.  Checked before any
encoding or fitting.  (A re-encoded copy — the same picture saved as PNG
instead of JPEG — has other bytes and is not caught.)

Fingerprints of a split are cached under the feature store root
(``.image-ids/``), keyed by the split's listing fingerprint (names + sizes), so
a split is hashed once: later checks cost a listing and an ``np.load``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from alignbench.errors import AlignbenchError

log = logging.getLogger(__name__)

CACHE_DIR = ".image-ids"
FORMAT = 2  # 2: file splits keyed by path, size and mtime (1 missed files rewritten in place)


class SplitOverlapError(AlignbenchError):
    """Training or validation images that are also evaluated (or training ∩ validation)."""


def _hash_bytes(b: bytes | memoryview) -> int:
    import xxhash

    return xxhash.xxh3_64_intdigest(b)


def _compute(images: Any) -> np.ndarray:
    from alignbench.datasets.base import ArrayImageLoader, FileImageLoader

    loader = images.loader
    out = np.empty(len(images), dtype=np.uint64)
    if isinstance(loader, FileImageLoader):
        for i, p in enumerate(loader.paths):
            with open(p, "rb") as f:
                out[i] = _hash_bytes(f.read())
    elif isinstance(loader, ArrayImageLoader):
        arr = loader.array
        for i in range(len(images)):
            out[i] = _hash_bytes(np.ascontiguousarray(arr[i]).data)
    else:  # an unknown loader: the decoded pixels themselves
        for i in range(len(images)):
            im = images[i]
            out[i] = _hash_bytes(np.asarray(im).tobytes() + str(im.size).encode())
    return out


def _listing_stamp(images: Any) -> str | None:
    """What the cached fingerprints of a split are valid for.

    For files: every path with its size AND modification time, so a file
    rewritten in place (same name, same size — solid-colour test images, an
    edited photo) is hashed again instead of answering with its old content.
    Otherwise the split's own listing fingerprint.
    """
    from alignbench.datasets.base import FileImageLoader

    loader = images.loader
    if isinstance(loader, FileImageLoader):
        import xxhash

        h = xxhash.xxh3_64()
        try:
            for p in loader.paths:
                st = os.stat(p)
                h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:  # a missing file: no cache; hashing names it
            return None
        return h.hexdigest()
    return getattr(images, "fingerprint", None) or None


def image_fingerprints(dataset: Any, split: str, cache_root: str | os.PathLike | None = None) -> np.ndarray:
    """(N,) uint64 content fingerprint of each image of ``dataset``'s ``split`` (cached under ``cache_root``)."""
    images = dataset.images(split)
    name = getattr(dataset, "registry_name", "") or type(dataset).__name__
    path = None
    stamp = _listing_stamp(images)
    if cache_root is not None and stamp:
        path = Path(cache_root) / CACHE_DIR / f"{name}-{split}-{stamp}-v{FORMAT}.npy"
        try:
            cached = np.load(path)
            if cached.shape == (len(images),):
                return cached
        except (OSError, ValueError):
            pass
    out = _compute(images)
    if path is not None:
        try:
            from alignbench.atomic import write_bytes_atomic
            import io

            buf = io.BytesIO()
            np.save(buf, out)
            write_bytes_atomic(path, buf.getvalue())
        except OSError as exc:  # a read-only cache only costs the hashing next time
            log.debug("cannot cache image fingerprints at %s: %s", path, exc)
    return out


def _overlap(a_fp: np.ndarray, b_fp: np.ndarray) -> np.ndarray:
    """Indices into ``a`` of images whose fingerprint is also in ``b``."""
    return np.nonzero(np.isin(a_fp, b_fp))[0]


def check_disjoint(run: Any, source: Any) -> None:
    """Refuse ``run`` (a ResolvedRun) if its training or validation images meet an evaluated split or each other.

    ``source`` is the run's FeatureSource (datasets + the store root for the fingerprint cache).
    Raises SplitOverlapError with one line: which splits, how many images, examples.
    """
    root = getattr(getattr(source, "store", None), "root", None)
    memo: dict[tuple[str, str], np.ndarray] = {}

    def fps(ref: tuple[str, str]) -> np.ndarray:
        if ref not in memo:
            memo[ref] = image_fingerprints(source.dataset(ref[0]), ref[1], root)
        return memo[ref]

    fitted = [("training", (run.train.dataset, run.train.split))]
    if run.val is not None:
        fitted.append(("validation", (run.val.dataset, run.val.split)))
    checks = [(role, ref, "evaluated", (ev.dataset, ev.split)) for role, ref in fitted for ev in run.evals]
    if run.val is not None:
        checks.append(("training", fitted[0][1], "validation", fitted[1][1]))
    seen = set()
    for role, ref, other_role, other in checks:
        if (ref, other) in seen:
            continue
        seen.add((ref, other))
        hits = _overlap(fps(ref), fps(other))
        if len(hits):
            ids = source.dataset(ref[0]).images(ref[1]).ids
            other_ids = source.dataset(other[0]).images(other[1]).ids
            where = {int(v): j for j, v in enumerate(fps(other))}
            ex = ", ".join(f"{ids[i]}" + ("" if ids[i] == other_ids[where[int(fps(ref)[i])]] else
                                          f" = {other[0]}:{other_ids[where[int(fps(ref)[i])]]}") for i in hits[:3])
            flag = "--train" if role == "training" else "--val"
            raise SplitOverlapError(
                f"{flag} {ref[0]}:{ref[1]} shares {len(hits)} of its {len(ids)} images with the {other_role} split "
                f"{other[0]}:{other[1]} (e.g. {ex}{', …' if len(hits) > 3 else ''}); "
                f"{role} data must be disjoint from what is {'evaluated' if other_role == 'evaluated' else 'used for validation'}")


__all__ = ["SplitOverlapError", "check_disjoint", "image_fingerprints"]
