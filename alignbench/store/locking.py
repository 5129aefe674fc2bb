"""Locking, resumable progress and disk space for entries being written.

Why: the cache is shared by processes and cluster jobs.  One writer per
entry holds a file lock (others wait and reuse its result); an encode keeps
its rows in a temporary folder beside the entry with a ``progress.json``
checkpoint, so a killed encode resumes where it stopped; and a full disk is
one clear error naming the folder and the space needed, with the partial
entry removed so it does not keep holding that space.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

from alignbench.errors import DiskFullError

log = logging.getLogger(__name__)

DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # EFBIG: a file-size limit (ulimit -f)
SPACE_MARGIN = 16 << 20  # keep this much free beyond an entry's estimate (metadata, other writers)


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically and durably (the project's one atomic writer)."""
    from alignbench.atomic import write_json_atomic

    write_json_atomic(path, obj, indent=1, sort_keys=True)


@contextlib.contextmanager
def entry_lock(path: Path, what: str) -> Iterator[None]:
    """Exclusive lock for writing the entry at ``path`` (held by one process at a time)."""
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path.parent / f".{path.name}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("another process is encoding %s; waiting for it", what)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def temp_folder(path: Path) -> Path:
    """Where an entry is written before it is renamed into place."""
    return path.parent / f".tmp-{path.name}"


def start_or_resume(tmp: Path, key: dict) -> dict:
    """The saved progress of an interrupted encode of ``key`` in ``tmp``, or a fresh one."""
    state = None
    if tmp.exists():
        try:
            state = json.loads((tmp / "progress.json").read_text())
            if state.get("key") != key:
                state = None
        except (OSError, ValueError):
            state = None
        if state is None:
            log.info("removing the unusable partial encode %s", tmp)
            shutil.rmtree(tmp)
    if state is None:
        tmp.mkdir(parents=True)
        state = {"key": key, "done": 0, "token_rows": 0}
    return state


def save_progress(tmp: Path, state: dict) -> None:
    write_json(tmp / "progress.json", state)


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def free_bytes(folder: Path) -> int | None:
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def size_text(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


def disk_full_error(folder: Path, what: str, needed: int | None) -> DiskFullError:
    free = free_bytes(folder)
    need = f"needs about {size_text(needed)}" if needed else "needs more space"
    have = f", {size_text(free)} free" if free is not None else ""
    return DiskFullError(f"not enough disk space in {folder} to cache {what}: it {need}{have}; free some space "
                         "or point --cache (ALIGNBENCH_CACHE) at a bigger disk (the partial entry was removed)")


def ensure_space(folder: Path, what: str, needed: int) -> None:
    """Refuse to start writing ``needed`` more bytes into ``folder`` when the disk cannot hold them."""
    free = free_bytes(folder)
    if free is not None and needed + SPACE_MARGIN > free:
        raise disk_full_error(folder, what, needed)
