"""One switch for every progress bar: feature loading, encoding and training alike.

Why: ``--no-progress`` used to reach only the feature store, so a long fit still
drew its epoch bars.  The CLI sets the switch once for the whole command
(``progress_scope``); library code asks ``progress_enabled()`` and never reads
flags of its own.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator

#: Seconds between the INFO lines a long loop logs where no bar shows it (``Heartbeat``).
HEARTBEAT_S = 300.0

_OVERRIDE: ContextVar[bool | None] = ContextVar("alignbench_progress", default=None)


def progress_silenced() -> bool:
    """True inside a ``progress_scope(False)``: bars that have their own on/off rule still obey it."""
    return _OVERRIDE.get() is False


def progress_enabled() -> bool:
    """Bars on a TTY, unless a scope turned them off or ALIGNBENCH_PROGRESS says otherwise (0 off, 1 on)."""
    forced = _OVERRIDE.get()
    if forced is not None:
        return forced
    env = os.environ.get("ALIGNBENCH_PROGRESS")
    if env is not None:
        return env.strip().lower() not in ("0", "false", "no", "off", "")
    return sys.stderr.isatty()


@contextmanager
def progress_scope(enabled: bool | None) -> Iterator[None]:
    """Within the block every bar follows ``enabled`` (None keeps the default rule)."""
    token = _OVERRIDE.set(enabled)
    try:
        yield
    finally:
        _OVERRIDE.reset(token)


def format_eta(seconds: float) -> str:
    """'~42 s', '~7 min', '~2.3 h': an estimate, so no false precision."""
    if seconds < 90:
        return f"~{max(seconds, 0):.0f} s"
    if seconds < 90 * 60:
        return f"~{seconds / 60:.0f} min"
    return f"~{seconds / 3600:.1f} h"


class Heartbeat:
    """Where no bar shows (``--no-progress``, output to a file), an INFO line at most every ``HEARTBEAT_S``.

    Why: a fit of a large head runs for hours (its range test alone half an hour) and, without a
    bar, its log said nothing between "fitting" and the end.  ``message`` is built only when a
    line is due, so a loop may call this every step.
    """

    def __init__(self, logger: logging.Logger, interval_s: float | None = None) -> None:
        self._log = logger
        self._on = not progress_enabled()
        self._interval = HEARTBEAT_S if interval_s is None else interval_s
        self._last = time.monotonic()

    def __call__(self, message: Callable[[], str]) -> None:
        now = time.monotonic()
        if self._on and now - self._last >= self._interval:
            self._log.info("%s", message())
            self._last = now


__all__ = ["HEARTBEAT_S", "Heartbeat", "format_eta", "progress_enabled", "progress_scope", "progress_silenced"]
