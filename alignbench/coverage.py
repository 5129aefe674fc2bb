"""Which cells a results folder holds: for each method and (pair, budget), the seeds of its default and tuned rows.

Why: a comparison is complete only when every method has its rows in every group, and a
hand-kept list of what is missing goes stale as runs land.  This reads the same rows the
table shows (:func:`alignbench.report.build_table`), so "missing" means missing from the table.
A method that declares no search space cannot have a tuned row (``n/a``); every built-in
method is listed, so one never run shows up too (plug-ins only where they have results).
"""
from __future__ import annotations

from typing import Any

from alignbench.results import TUNED_MARK

NONE = "–"


def coverage(records: list[dict[str, Any]], *, by: str = "budget") -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per method, one column per group, cells ``default seeds / tuned seeds``."""
    from alignbench.registry import METHODS
    from alignbench.report import build_table

    table = build_table(records, by=by)
    groups: list[tuple[str, ...]] = []
    seeds: dict[tuple[str, tuple[str, ...], bool], int] = {}
    for r in table.rows:
        if r.group not in groups:
            groups.append(r.group)
        if r.runs is None:
            continue
        tuned = "tuned" in r.runs.flat
        if not tuned and r.runs.label != r.runs.method:
            continue  # a variant (another setting), neither the default nor the tuned row
        key = (r.runs.method, r.group, tuned)
        seeds[key] = max(seeds.get(key, 0), r.seeds)
    built_in = {e.name for e in METHODS.entries() if not e.origin and e.module.startswith("alignbench.methods.")}
    names = sorted(built_in | {m for m, _, _ in seeds}, key=lambda m: (m == "random", m))
    header = ["method", *(" ".join(g) for g in groups)]
    rows = []
    for m in names:
        tunable = m in METHODS and bool(getattr(METHODS.get(m), "search_space", None))
        cells = []
        for g in groups:
            default = seeds.get((m, g, False))
            tuned = seeds.get((m, g, True))
            tuned_text = f"{tuned}{TUNED_MARK}" if tuned else (NONE if tunable else "n/a")
            cells.append(f"{default or NONE} / {tuned_text}")
        rows.append([m, *cells])
    return header, rows


def render_coverage(records: list[dict[str, Any]], *, by: str = "budget") -> str:
    """The coverage as a Markdown table with its caption."""
    from tabulate import tabulate

    header, rows = coverage(records, by=by)
    text = tabulate(rows, headers=header, tablefmt="pipe", disable_numparse=True)
    caption = ("Seeds of each method's faithful-default row / its tuned row (†) per group; – none yet, n/a: the method "
               "has no search space. Rows with other settings are not counted.")
    return f"{text}\n\n{caption}\n"
