"""Reads of rows from memory-mapped feature arrays that do not stay in the process's memory.

Why: a page of a memory-mapped file that the process has read stays mapped
into it, and counts in its resident set (RSS), until the kernel needs the
memory back, although it is only page cache.  A fit that streams every
image's tokens from the memmap each epoch (PAL on a 16 GB ViT-S token cache
of COCO) would grow to the size of the whole file.  :func:`take_rows` copies
the rows out, as plain fancy indexing does, then unmaps the pages it read
(``madvise(MADV_DONTNEED)``): the data stay in the page cache for the next
read, the process holds only its copy.  The values are those of
``array[rows]``, bit for bit.

Only shared mappings are released (numpy modes ``r``, ``r+``, ``w+``): there
the file holds every byte, so a released page is read back unchanged.  A
copy-on-write mapping (mode ``c``) may hold private changes, and an array
in memory has nothing to release; both are simply indexed.
"""
from __future__ import annotations

import mmap

import numpy as np

#: numpy memmap modes whose pages are shared with the file (safe to drop from the mapping).
SHARED_MODES = ("r", "r+", "w+")


def _shared_mapping(array: np.ndarray) -> mmap.mmap | None:
    """The shared ``mmap`` behind ``array`` (a numpy memmap or a view of one), else None."""
    a = array
    while isinstance(a, np.ndarray):
        m = getattr(a, "_mmap", None)
        if isinstance(m, mmap.mmap) and not m.closed:
            return m if getattr(a, "mode", None) in SHARED_MODES else None
        a = a.base
    return None


def release(array: np.ndarray, start: int, stop: int) -> bool:
    """Unmap the pages of rows ``start:stop`` (first axis) of a memory-mapped ``array``; the file keeps them.

    Returns whether anything was released (False for arrays in memory and copy-on-write maps).
    """
    m = _shared_mapping(array)
    if m is None or stop <= start or array.ndim == 0 or any(s < 0 for s in array.strides):
        return False
    base = np.frombuffer(m, dtype=np.uint8).ctypes.data  # address of the mapping's first byte
    first = array.__array_interface__["data"][0] - base + start * array.strides[0]
    row_extent = sum((n - 1) * s for n, s in zip(array.shape[1:], array.strides[1:])) + array.itemsize
    end = first + (stop - 1 - start) * array.strides[0] + row_extent
    lo = first - first % mmap.PAGESIZE  # page-aligned start; the kernel rounds the length up
    hi = min(len(m), end)
    if lo < 0 or hi <= lo:
        return False
    m.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
    return True


def take_rows(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``array[rows]`` (first axis) as a C-contiguous copy in memory; a memmap's pages read are unmapped.

    ``rows`` sorted ascending read a memmap fastest; any order is correct.
    """
    rows = np.asarray(rows, dtype=np.int64)
    out = np.ascontiguousarray(array[rows])
    if len(rows):
        release(array, int(rows.min()), int(rows.max()) + 1)
    return out


__all__ = ["SHARED_MODES", "release", "take_rows"]
