"""Tables the project publishes (README, results/), checked against the stored runs they come from.

Why: every number README or results/ quotes must come from stored runs through the command
shown next to it, and a table pasted by hand goes stale the moment a run is added or redone.
So each published table sits right under a marker naming the report command that prints it::

    <!-- alignbench report --results results/default --format markdown -->
    | budget | method | ... |

:func:`check` runs each marked command in-process and compares the table it prints with the
file's; :func:`update` rewrites the file's table.  CI runs the check
(tests/test_published_tables.py); ``make tables`` (``python -m alignbench.published --update``)
refreshes every file in :data:`PUBLISHED`.  Only the table's lines are compared: the prose
around it, and the caption ``report`` prints under it, are the author's.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from alignbench.errors import ConfigError

log = logging.getLogger(__name__)

#: Files with marked tables, relative to the repository root.
PUBLISHED = ("README.md", "results/README_table.md", "results/tuned/TABLE.md", "results/parity/README.md")

MARKER = re.compile(r"^<!-- (alignbench report .*?) -->\s*$")
#: Report options that write files: a published table's command only prints.
_WRITES = ("--out", "--plot", "--plot-dir")


@dataclass(frozen=True)
class MarkedTable:
    """One marked table: the command, and where its table lines sit in the file (``start:end``)."""

    path: Path
    command: str
    start: int
    end: int
    lines: tuple[str, ...]

    @property
    def where(self) -> str:
        return f"{self.path}:{self.start}"


def find_tables(path: str | Path) -> list[MarkedTable]:
    """Every marker of ``path`` with the table right under it (ConfigError when a marker has none)."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").split("\n")
    out = []
    for i, line in enumerate(lines):
        m = MARKER.match(line)
        if not m:
            continue
        command = m.group(1)
        written = [a for a in shlex.split(command) if a.split("=")[0] in _WRITES]
        if written:
            raise ConfigError(f"{path}:{i + 1}: a published table's command must only print it, "
                              f"not write files ({', '.join(written)})")
        end = i + 1
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        if end == i + 1:
            raise ConfigError(f"{path}:{i + 1}: no table right under the marker for `{command}`")
        out.append(MarkedTable(path, command, i + 1, end, tuple(lines[i + 1:end])))
    return out


def render(command: str, root: str | Path) -> list[str]:
    """The table lines ``command`` prints, run in-process from ``root`` (its paths are relative to it)."""
    from alignbench.cli import main

    argv = shlex.split(command)[1:]  # drop "alignbench"
    buf = io.StringIO()
    with contextlib.chdir(root), contextlib.redirect_stdout(buf):
        rc = main(argv)
    if rc != 0:
        raise ConfigError(f"`{command}` exited with {rc}")
    table, started = [], False
    for line in buf.getvalue().split("\n"):
        if line.startswith("|"):
            table.append(line)
            started = True
        elif started:
            break
    if not table:
        raise ConfigError(f"`{command}` printed no table")
    return table


def check(path: str | Path, root: str | Path) -> list[str]:
    """One message per marked table of ``path`` that differs from what its command prints now."""
    problems = []
    for t in find_tables(path):
        fresh = render(t.command, root)
        if list(t.lines) != fresh:
            changed = sum(a != b for a, b in zip(t.lines, fresh)) + abs(len(t.lines) - len(fresh))
            problems.append(f"{t.where}: the table differs from `{t.command}` in {changed} line(s) "
                            f"({len(t.lines)} published, {len(fresh)} printed); refresh with `make tables`")
    return problems


def update(path: str | Path, root: str | Path) -> int:
    """Rewrite every marked table of ``path`` with what its command prints; returns how many changed."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").split("\n")
    changed = 0
    for t in reversed(find_tables(path)):  # bottom-up: earlier line numbers stay valid
        fresh = render(t.command, root)
        if list(t.lines) != fresh:
            lines[t.start:t.end] = fresh
            changed += 1
            log.info("%s: table rewritten from `%s`", t.where, t.command)
    if changed:
        path.write_text("\n".join(lines), encoding="utf-8")
    return changed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m alignbench.published", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", help=f"files with marked tables (default: {', '.join(PUBLISHED)})")
    p.add_argument("--update", action="store_true", help="rewrite the tables instead of checking them")
    p.add_argument("--root", default=".", help="the repository root the commands' paths are relative to")
    args = p.parse_args(argv)
    root = Path(args.root)
    files = [Path(f) for f in args.files] or [root / f for f in PUBLISHED]
    bad = 0
    for f in files:
        try:
            if args.update:
                print(f"{f}: {update(f, root)} table(s) rewritten")
            else:
                problems = check(f, root)
                bad += len(problems)
                print("\n".join(problems) if problems else f"{f}: every marked table matches its command")
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 1 if bad else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
