"""``.npy`` files written in place, row by row, hashed as they are written.

Why: token features do not fit in memory, so batches go straight into a
preallocated file with ``pwrite`` (pages never pile up in this process), and a
file written front to back also hashes its bytes on their way out, so the
finished entry's whole-file checksum needs no second read of gigabytes.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from alignbench.store.checksums import new_hasher

HEADER = 128  # fixed .npy header size: lets a ragged file grow and get its final shape at the end


def npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    d = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    text = repr(d).encode("latin1")
    pad = HEADER - 10 - len(text) - 1
    if pad < 0:
        raise ValueError(f"shape {shape} does not fit a {HEADER}-byte .npy header")
    return b"\x93NUMPY\x01\x00" + (HEADER - 10).to_bytes(2, "little") + text + b" " * pad + b"\n"


def npy_bytes(dtype: Any, shape: tuple[int, ...]) -> int:
    """Size on disk of a file this module writes."""
    return HEADER + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


class NpyWriter:
    """A ``.npy`` file written by rows with ``pwrite`` (fixed rows) or appended (ragged).

    A fixed-shape file written front to back in one go keeps a running hash of its
    bytes (:attr:`digest`); any other write order (a resumed encode) drops it and the
    file is hashed by reading it back.
    """

    def __init__(self, path: Path, dtype: Any, shape: tuple[int, ...], *, resume_rows: int | None = None):
        self.path, self.dtype, self.shape = path, np.dtype(dtype), tuple(shape)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._hash: Any = None  # running hash of bytes [0, _hashed_to), while writes arrive in order
        self._hashed_to = 0
        if resume_rows is None:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            header = npy_header(self.dtype, self.shape)
            _pwrite_all(self.fd, header, 0)
            os.ftruncate(self.fd, HEADER + self.shape[0] * self.row_bytes)
            self.rows = 0
            if self.shape[0]:  # a ragged file's header changes at the end: no running hash
                self._hash, self._hashed_to = new_hasher(), HEADER
                self._hash.update(header)
        else:  # ragged files resume at their checkpointed length
            self.fd = os.open(path, os.O_RDWR)
            self.rows = resume_rows
            if self.shape[0] == 0:
                os.ftruncate(self.fd, HEADER + resume_rows * self.row_bytes)

    def write(self, row: int, arr: np.ndarray) -> None:
        buf = memoryview(np.ascontiguousarray(arr, dtype=self.dtype)).cast("B")
        off = HEADER + row * self.row_bytes
        if self._hash is not None:
            if off == self._hashed_to:
                self._hash.update(buf)
                self._hashed_to += len(buf)
            else:
                self._hash = None
        _pwrite_all(self.fd, buf, off)
        if _START_WRITEBACK is not None:  # the disk writes while we compute, so the final fsync is short
            _START_WRITEBACK(self.fd, off, len(buf))

    @property
    def digest(self) -> str | None:
        """The whole file's checksum if every byte was hashed on its way out, else None."""
        if self._hash is None or self._hashed_to != HEADER + self.shape[0] * self.row_bytes:
            return None
        return self._hash.hexdigest()

    def append(self, arr: np.ndarray) -> None:
        self.write(self.rows, arr)
        self.rows += len(arr)

    def finish_ragged(self) -> None:
        """Give a grown file its final shape."""
        self.shape = (self.rows, *self.shape[1:])
        _pwrite_all(self.fd, npy_header(self.dtype, self.shape), 0)
        os.ftruncate(self.fd, HEADER + self.rows * self.row_bytes)

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _pwrite_all(fd: int, buf: Any, off: int) -> None:
    buf = memoryview(buf)
    while len(buf):
        n = os.pwrite(fd, buf, off)
        buf, off = buf[n:], off + n


def _start_writeback_linux(fd: int, offset: int, length: int) -> None:
    """Queue the pages just written for writeback now instead of at the final fsync.

    On Linux ``POSIX_FADV_DONTNEED`` starts asynchronous writeback of dirty pages (and
    drops only pages that are already clean, so nothing just written leaves the cache).
    """
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


_START_WRITEBACK = _start_writeback_linux if sys.platform.startswith("linux") and hasattr(os, "posix_fadvise") else None
