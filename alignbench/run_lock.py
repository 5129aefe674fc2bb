"""One process at a time per fit in a results folder: parallel ``alignbench run`` commands split the work.

Why: two processes given the same runs (two shells over the same seeds, a SLURM job
re-queued while its first instance still runs, a second GPU worker) would fit the
same model twice and write the same fit checkpoint from both sides.  The lock is
keyed by ``fit_id`` (runs that differ only in their evaluations share one fit, and
its checkpoint and stored state), lives beside the results as a hidden
``.<fit_id>.lock`` file, and is held only while that fit's run executes.  The
lock file stays after release (removing it would race with a waiter).
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


@contextlib.contextmanager
def holding_fit(results_dir: str | os.PathLike, fit_id: str, *, wait: bool) -> Iterator[bool]:
    """Hold fit ``fit_id``'s lock inside the block; yields whether another process held it first.

    ``wait=False`` raises RunBusy at once when it is held; ``wait=True`` blocks
    until the other process ends its run (or dies: the OS frees its lock).
    """
    from filelock import FileLock, Timeout

    path = lock_path(results_dir, fit_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    waited = False
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if not wait:
            raise RunBusy(fit_id, path) from None
        log.info("another process is running fit %s; waiting for it (lock %s)", fit_id, path)
        lock.acquire()
        waited = True
    try:
        yield waited
    finally:
        lock.release()
