"""One process at a time per fit in a results folder: parallel ``alignbench run`` commands split the work.

Why: two processes given the same runs (two shells over the same seeds, a SLURM job
re-queued while its first instance still runs, a second GPU worker) would fit the
same model twice and write the same fit checkpoint from both sides.  The lock is
keyed by ``fit_id`` (runs that differ only in their evaluations share one fit, and
its checkpoint and stored state) and is an advisory ``flock`` on a hidden
``.<fit_id>.lock`` file beside the results, held only while that fit's run
executes; the OS frees it when its process dies.  The holder removes the file
before it lets go, so results folders keep no lock files; a process that was
waiting on the removed file sees that its file is no longer the one at the path
and locks afresh.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)


class RunBusy(Exception):
    """Another process is running this fit now (raised only when the caller asked not to wait)."""

    def __init__(self, fit_id: str, lock_path: Path):
        self.fit_id, self.lock_path = fit_id, lock_path
        super().__init__(f"another process is running fit {fit_id} (lock {lock_path})")


def lock_path(results_dir: str | os.PathLike, fit_id: str) -> Path:
    return Path(results_dir) / f".{fit_id}.lock"


def _lock_once(path: Path, blocking: bool) -> int | None:
    """An fd holding ``path``'s flock, None if it is held elsewhere (non-blocking) or the file was replaced."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        on_disk = None
    mine = os.fstat(fd)
    if on_disk is None or (on_disk.st_dev, on_disk.st_ino) != (mine.st_dev, mine.st_ino):
        os.close(fd)  # the holder before us removed it: lock the file now at the path
        return _lock_once(path, blocking)
    return fd


@contextlib.contextmanager
def holding_fit(results_dir: str | os.PathLike, fit_id: str, *, wait: bool) -> Iterator[bool]:
    """Hold fit ``fit_id``'s lock inside the block; yields whether another process held it first.

    ``wait=False`` raises RunBusy at once when it is held; ``wait=True`` blocks
    until the other process ends its run (or dies: the OS frees its lock).
    """
    path = lock_path(results_dir, fit_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, waited = _lock_once(path, blocking=False), False
    if fd is None:
        if not wait:
            raise RunBusy(fit_id, path)
        log.info("another process is running fit %s; waiting for it (lock %s)", fit_id, path)
        fd, waited = _lock_once(path, blocking=True), True
    try:
        yield waited
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # before letting go: whoever locks next locks a file that is at the path
        os.close(fd)
