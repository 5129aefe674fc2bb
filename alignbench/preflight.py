"""Checks every command's arguments before any data is read, encoded or fitted.

Why one place: a bad value found after an hour of encoding (a results folder
that is a file, ``--device tpu``, ``--seeds=-1``) wastes the hour, and the same
check written in each command drifts apart.  ``cli.main`` calls :func:`check`
for every command; the table :data:`COMMAND_CHECKS` says which argument of which
command gets which check.  The checks only parse or probe: each value is parsed
by its one parser (``parse_seeds``, ``parse_device``, ``MethodConfig.update``,
the dataset registry), and ``--device`` is replaced by its resolved
:class:`~alignbench.devices.DeviceChoice`.  Every failure is an
``AlignbenchError`` with one line, which the CLI prints and exits 2 on.
"""
from __future__ import annotations

import argparse
import difflib
import os
import tempfile
from pathlib import Path
from typing import Callable

from alignbench.errors import ConfigError


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _first_existing(path: Path) -> Path:
    """``path`` or its nearest existing ancestor."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe_write(folder: Path, flag: str) -> None:
    """Create and remove a file in ``folder``: the only test root's permissions cannot fool."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".alignbench-probe-"):
            pass
    except OSError as exc:
        raise ConfigError(f"{flag} {str(folder)!r}: cannot write there ({exc.strerror or exc}); "
                          "choose a writable folder") from None


def _not_under_a_file(path: Path, flag: str) -> Path:
    """The nearest existing ancestor of ``path``, which must be a folder."""
    base = _first_existing(path)
    if not base.is_dir():
        raise ConfigError(f"{flag} {str(path)!r}: {str(base)!r} is a file, so nothing can be created under it")
    return base


def writable_dir(path: str | os.PathLike, flag: str) -> Path:
    """A folder we can write into (created if missing): not a file, not under a file, not read-only."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{flag} {str(p)!r} is a file; it must be a folder")
    _not_under_a_file(p, flag)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{flag} {str(p)!r}: cannot create the folder ({exc.strerror or exc})") from None
    _probe_write(p, flag)
    return p


def folder_or_absent(path: str | os.PathLike, flag: str) -> Path:
    """A folder, or a path where one can be made later (not a file, not under a file)."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{flag} {str(p)!r} is a file; it must be a folder")
    _not_under_a_file(p, flag)
    return p


def existing_dir(path: str | os.PathLike, flag: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        what = "is a file" if p.exists() else "does not exist"
        raise ConfigError(f"{flag} {str(p)!r} {what}; it must be an existing folder")
    return p


def output_file(path: str | os.PathLike, flag: str) -> Path:
    """A file path we can write: not a folder, its folder creatable and writable."""
    p = Path(path).expanduser()
    if p.is_dir() or str(path).endswith(os.sep):
        raise ConfigError(f"{flag} {str(p)!r} is a folder; give a file path such as {str(p / 'table.md')!r}")
    base = _not_under_a_file(p.parent, flag)
    _probe_write(p.parent if p.parent.is_dir() else base, flag)
    return p


# -- argument checks: (args, dest) -> None; may replace the value by its parsed form ----------------------
def _results_writable(args: argparse.Namespace, dest: str) -> None:
    if getattr(args, "status", False) or getattr(args, "dry_run", False):  # `sweep --status` only reads
        return
    if getattr(args, dest) is None and getattr(args, "config", None):
        return  # a sweep file may name the folder; the launcher checks that one
    writable_dir(getattr(args, dest) or "results/runs", _flag(dest))


def _results_readable(args: argparse.Namespace, dest: str) -> None:
    folder_or_absent(getattr(args, dest) or "results/runs", _flag(dest))


def _tune_dir(args: argparse.Namespace, dest: str) -> None:
    if not getattr(args, "status", False):
        writable_dir(getattr(args, dest) or "results/tune", _flag(dest))


def _cache(args: argparse.Namespace, dest: str) -> None:
    from alignbench.store import default_root

    value = getattr(args, dest)
    flag = _flag(dest) if value else "$ALIGNBENCH_CACHE (the feature cache)"
    folder_or_absent(value or default_root(), flag)


def _cache_writable(args: argparse.Namespace, dest: str) -> None:
    from alignbench.store import default_root

    value = getattr(args, dest)
    if getattr(args, "list", False):
        return _cache(args, dest)
    writable_dir(value or default_root(), _flag(dest) if value else "$ALIGNBENCH_CACHE (the feature cache)")


def _data_root(args: argparse.Namespace, dest: str) -> None:
    if getattr(args, dest):
        existing_dir(getattr(args, dest), _flag(dest))


def _out_file(args: argparse.Namespace, dest: str) -> None:
    if getattr(args, dest):
        output_file(getattr(args, dest), _flag(dest))


def _plot_dir(args: argparse.Namespace, dest: str) -> None:
    wanted = getattr(args, "plot", not getattr(args, "no_plot", False))  # report: --plot; analyze: unless --no-plot
    if wanted or getattr(args, dest) != "results/figures":
        writable_dir(getattr(args, dest), _flag(dest))


def _device(args: argparse.Namespace, dest: str) -> None:
    from alignbench.devices import DeviceChoice, parse_device

    if not isinstance(getattr(args, dest), DeviceChoice):
        setattr(args, dest, parse_device(getattr(args, dest)))


def _device_text(args: argparse.Namespace, dest: str) -> None:
    """A sweep's device is resolved on each worker (its node's GPU): here only the spelling is checked."""
    from alignbench.devices import check_device_text

    if getattr(args, dest) is not None:
        setattr(args, dest, check_device_text(getattr(args, dest)))


def _seeds(args: argparse.Namespace, dest: str) -> None:
    from alignbench.config import parse_seeds

    value = getattr(args, dest)
    try:
        seeds = parse_seeds(value) if value is not None else None
    except ConfigError as exc:
        raise ConfigError(f"{_flag(dest)}: {exc}") from None
    if seeds == []:
        raise ConfigError(f"{_flag(dest)} {value!r} names no seed: use e.g. 0 or 0-4")


def _methods(args: argparse.Namespace, dest: str) -> None:
    """Every method name and option value, by the method's own config (one coercion: methods/base.py)."""
    value = getattr(args, dest)
    if not value:
        return
    from alignbench.config import parse_method_spec, split_methods, split_tuned
    from alignbench.registry import METHODS

    for text in split_methods(value):
        # ':tuned' (take the best trial of `alignbench tune`) is resolved by run itself, not an option here
        name, options = parse_method_spec(split_tuned(text)[0])
        try:
            METHODS.get(name).Config().update(options)
        except ConfigError as exc:
            raise ConfigError(f"{_flag(dest)} {text}: {exc}") from None


def _splits(args: argparse.Namespace, dest: str) -> None:
    """Each ``--splits`` name must be a split (or alias) of at least one of ``--datasets``."""
    from alignbench.config import split_list
    from alignbench.registry import DATASETS

    wanted = split_list(getattr(args, dest))
    if not wanted:
        return
    known: list[str] = []
    for name in split_list(getattr(args, "datasets", None)):
        cls = DATASETS.get(name)  # unknown dataset: UnknownNameError with "did you mean"
        known += [s for s in (*getattr(cls, "splits", ()), *getattr(cls, "split_aliases", {})) if s not in known]
    if not known:
        return
    for split in wanted:
        if split not in known:
            close = difflib.get_close_matches(split, known, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(f"{_flag(dest)}: unknown split {split!r}{hint} (splits of "
                              f"{getattr(args, 'datasets', '')}: {', '.join(known)})")


def _evals(args: argparse.Namespace, dest: str) -> None:
    """Each ``--evals`` entry: names, split and task options (``segmentation:voc:protocol=slide``), no torch."""
    value = getattr(args, dest)
    if not value:
        return
    from alignbench.config import split_list
    from alignbench.refs import EvalSpec

    for text in split_list(value):
        try:
            EvalSpec.parse(text).resolved()
        except ConfigError as exc:
            raise ConfigError(f"{_flag(dest)} {text}: {exc}") from None


Check = Callable[[argparse.Namespace, str], None]

#: command -> argument dest -> check.  Paths first (instant), method options last (they import torch).
COMMAND_CHECKS: dict[str, dict[str, Check]] = {
    "run": {"results": _results_writable, "cache": _cache, "data_root": _data_root, "seeds": _seeds,
            "device": _device, "evals": _evals, "methods": _methods},
    "sweep": {"results": _results_writable, "cache": _cache, "data_root": _data_root, "seeds": _seeds,
              "device": _device_text, "evals": _evals, "methods": _methods},
    "tune": {"tune_dir": _tune_dir, "cache": _cache, "data_root": _data_root, "seeds": _seeds, "device": _device,
             "methods": _methods},
    "encode": {"cache": _cache_writable, "data_root": _data_root, "device": _device, "splits": _splits},
    "layers": {"cache": _cache_writable, "data_root": _data_root},
    "report": {"results": _results_readable, "out": _out_file, "plot_dir": _plot_dir},
    "data": {"data_root": _data_root},
    "analyze": {"results": _results_readable, "out": _out_file, "plot_dir": _plot_dir},
}


def check(command: str | None, args: argparse.Namespace) -> None:
    """Run ``command``'s checks on ``args`` (in place); raises AlignbenchError with one line."""
    for dest, fn in COMMAND_CHECKS.get(command or "", {}).items():
        if hasattr(args, dest):
            fn(args, dest)


__all__ = ["COMMAND_CHECKS", "check", "existing_dir", "folder_or_absent", "output_file", "writable_dir"]

