"""Tables the project publishes (README, results/), checked against the stored runs they come from.

Why: every number README or results/ quotes must come from stored runs through the command
shown next to it, and a table pasted by hand goes stale the moment a run is added or redone.
So each published table sits right under a marker naming the report command that prints it::

    <!-- alignbench report --results results/default --format markdown -->
    | budget | method | ... |

:func:`check` runs each marked command in-process and compares the table it prints with the
file's; :func:`update` rewrites the file's table.  CI runs the check
(tests/test_published_tables.py); ``make tables`` (``python -m alignbench.published --update``)
refreshes every file in :data:`PUBLISHED`.  The caption ``report`` prints under the table (what
the intervals, the bold and the † claim) is part of what is checked: it follows the table after
one blank line.  The prose around them is the author's.
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

#: A marker names a command that only reads what is stored: ``report`` (tables, ``--compare``) or
#: ``tune --status`` (the studies: trials, epochs and seconds spent, best configs).
MARKER = re.compile(r"^<!-- (alignbench (?:report|tune --status)(?: .*?)?) -->\s*$")
#: Report options that write files: a published table's command only prints.
_WRITES = ("--out", "--plot", "--plot-dir")
#: How the captions ``report`` prints begin (tables; ``--compare``): a paragraph so opening right
#: under a marked table is its caption, anything else is the author's prose and never rewritten.
CAPTION_OPENERS = ("Percent.", "A = ", "Seeds of each")


@dataclass(frozen=True)
class MarkedTable:
    """One marked table: the command, where its table lines sit (``start:end``) and its caption (``end:caption_end``)."""

    path: Path
    command: str
    start: int
    end: int
    lines: tuple[str, ...]
    caption_end: int
    caption: tuple[str, ...]

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
        end, cap_end = _block(lines, i + 1)
        if end == i + 1:
            raise ConfigError(f"{path}:{i + 1}: no table right under the marker for `{command}`")
        out.append(MarkedTable(path, command, i + 1, end, tuple(lines[i + 1:end]), cap_end,
                               tuple(lines[end + 1:cap_end])))
    return out


def render(command: str, root: str | Path) -> tuple[list[str], list[str]]:
    """The table lines ``command`` prints, and its caption's, run in-process from ``root`` (paths relative to it)."""
    from alignbench.cli import main

    argv = shlex.split(command)[1:]  # drop "alignbench"
    buf = io.StringIO()
    with contextlib.chdir(root), contextlib.redirect_stdout(buf):
        rc = main(argv)
    if rc != 0:
        raise ConfigError(f"`{command}` exited with {rc}")
    lines = buf.getvalue().split("\n")
    first = next((i for i, line in enumerate(lines) if line.startswith("|")), None)
    if first is None:
        raise ConfigError(f"`{command}` printed no table")
    end, cap_end = _block(lines, first)
    return lines[first:end], lines[end + 1:cap_end]


def _block(lines: list[str], first: int) -> tuple[int, int]:
    """Where the table starting at ``first`` ends, and where the caption under it ends (= the table's end if none).

    The caption is the paragraph one blank line under the table when it opens as ``report``'s captions do.
    """
    end = first
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    cap_end = end
    if end + 1 < len(lines) and lines[end] == "" and lines[end + 1].startswith(CAPTION_OPENERS):
        cap_end = end + 1
        while cap_end < len(lines) and lines[cap_end] != "":
            cap_end += 1
    return end, cap_end


def check(path: str | Path, root: str | Path) -> list[str]:
    """One message per marked table of ``path`` that differs from what its command prints now (table or caption)."""
    problems = []
    for t in find_tables(path):
        table, caption = render(t.command, root)
        if list(t.lines) != table:
            changed = sum(a != b for a, b in zip(t.lines, table)) + abs(len(t.lines) - len(table))
            problems.append(f"{t.where}: the table differs from `{t.command}` in {changed} line(s) "
                            f"({len(t.lines)} published, {len(table)} printed); refresh with `make tables`")
        if list(t.caption) != caption:
            problems.append(f"{t.where}: the caption under the table differs from the one `{t.command}` prints"
                            f"{'' if t.caption else ' (none published)'}; refresh with `make tables`")
    return problems


def update(path: str | Path, root: str | Path) -> int:
    """Rewrite every marked table of ``path`` (and its caption) with what its command prints; how many changed."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").split("\n")
    changed = 0
    for t in reversed(find_tables(path)):  # bottom-up: earlier line numbers stay valid
        table, caption = render(t.command, root)
        if list(t.lines) != table or list(t.caption) != caption:
            block = table + (["", *caption] if caption else [])
            lines[t.start:t.caption_end] = block
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
