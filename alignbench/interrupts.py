"""Ctrl-C and SIGTERM as exceptions that never land inside a write.

Why: Python raises a signal's exception at whichever bytecode runs next.  Raised
inside a SQLite commit (optuna's study file) it leaves the connection's lock held,
so the trial's own FAIL write then waits out the 120-s busy timeout and the
process outlives SLURM's grace period; raised inside ``torch.save``'s zip writer it
is replaced by the writer's own "unexpected pos" error, so an interrupt reads as a
crash (exit 1, and a run recorded as failed).  Writes that must finish once begun
run under ``shielded()``: a signal arriving there is held and raised as the block
ends, a fraction of a second later.  A second signal while one is held is raised at
once, so a write that hangs can still be interrupted.
"""
from __future__ import annotations

import contextlib
import functools
import signal
import threading
from typing import Any, Callable, Iterator, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is, so it ends as an interrupt does (what finished is kept)."""


EXCEPTION_OF_SIGNAL: dict[int, type[KeyboardInterrupt]] = {signal.SIGINT: KeyboardInterrupt,
                                                           signal.SIGTERM: Terminated}
# Where a signal still has this handler, the command may take it over (a host application's own is left alone).
_DEFAULT_HANDLER = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}

_main = threading.local()  # signal handlers run in the main thread; only its shield depth counts


def _depth() -> int:
    return getattr(_main, "depth", 0)


def _held() -> KeyboardInterrupt | None:
    return getattr(_main, "held", None)


def _handle(signum: int, frame: object) -> None:
    exc = EXCEPTION_OF_SIGNAL[signum]()
    if _depth() and _held() is None:
        _main.held = exc  # raised as the outermost shielded block ends
        return
    _main.held = None
    raise exc


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Hold Ctrl-C / SIGTERM until the block ends (see the module docstring); nests; a no-op off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _main.depth = _depth() + 1
    try:
        yield
    finally:
        _main.depth -= 1
        if _main.depth == 0 and _held() is not None:
            exc, _main.held = _held(), None
            raise exc


def shield(fn: F) -> F:
    """``fn`` run under ``shielded()``."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with shielded():
            return fn(*args, **kwargs)
    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """SIGTERM (kill, a SLURM time limit or preemption, a session's end) ends the command as Ctrl-C does, and
    both are held out of ``shielded()`` writes.

    Why: killed by the default SIGTERM action, a tune leaves its trial RUNNING until the heartbeat's grace
    period ends, and nothing says what happened; as an interrupt the trial is failed and re-queued at once, a
    fit keeps its checkpoint, and the exit says so.  Only signals that still have their default handler, and
    only in the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    taken = {s: signal.getsignal(s) for s, default in _DEFAULT_HANDLER.items() if signal.getsignal(s) is default}
    for s in taken:
        signal.signal(s, _handle)
    try:
        yield
    finally:
        for s, previous in taken.items():
            signal.signal(s, previous)
        _main.held = None
