"""Atomic file writes: a reader sees the old file or the whole new one, never a part.

Why one module: results, the feature cache's metadata, the sweep ledger and the
weights cache all write small files that other processes read concurrently, and
a ``kill -9`` or a power cut must not leave a half-written one.  Each write goes
to a unique temporary file in the same folder (same file system, so the rename
is atomic), is flushed and fsynced, ``os.replace``d onto the target, and then
the folder itself is fsynced so the rename survives a crash.  Temporary names
start with a dot and end in ``.tmp`` so directory scans can skip them.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from alignbench.interrupts import shield

_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # what open() would give; mkstemp's 0600 would hide shared files
TEMP_SUFFIX = ".tmp"


def temp_path_beside(path: str | os.PathLike, mode: int = FILE_MODE) -> Path:
    """A fresh, empty temporary file in ``path``'s folder, to be ``os.replace``d onto ``path``.

    For writers that produce the file themselves (``torch.save``, ONNX export);
    the caller removes it on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    os.chmod(tmp, mode)
    return Path(tmp)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside ``path`` durable (a no-op where folders cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@shield  # begun, a write ends: an interrupt is raised after it (alignbench.interrupts)
def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, mode: int = FILE_MODE) -> Path:
    """Write ``data`` to ``path`` atomically and durably; on any error the old file is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def write_text_atomic(path: str | os.PathLike, text: str, *, mode: int = FILE_MODE) -> Path:
    """``write_bytes_atomic`` for UTF-8 text."""
    return write_bytes_atomic(path, text.encode("utf-8"), mode=mode)


def write_json_atomic(
    path: str | os.PathLike, obj: Any, *, indent: int | None = 2, sort_keys: bool = False, mode: int = FILE_MODE
) -> Path:
    """Write ``obj`` as strict JSON (NaN/inf raise ``ValueError``; unknown types via ``str``).

    The object is serialised completely before the file is touched, so a value
    that cannot be written leaves the old file in place and no temporary behind."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=str, allow_nan=False) + "\n"
    return write_text_atomic(path, text, mode=mode)
