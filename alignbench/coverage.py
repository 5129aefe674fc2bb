"""Which cells a results folder holds: for each method and (pair, budget), the seeds of its default and tuned rows.

Why: a comparison is complete only when every method has its rows in every group, and a
hand-kept list of what is missing goes stale as runs land.  This reads the same rows the
table shows (:func:`alignbench.report.build_table`), so "missing" means missing from the table.
A method that declares no search space cannot have a tuned row (``n/a``); every built-in
method is listed, so one never run shows up too (plug-ins only where they have results).
"""
from __future__ import annotations

from pathlib import Path
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


def fill_commands(records: list[dict[str, Any]], *, results: str) -> list[str]:
    """The ``alignbench`` commands that would fill every gap :func:`coverage` shows, one (pair, budget) at a time.

    Why: the next step after reading the table is to run what is missing, with exactly the
    evaluations, splits and search (trials, objective, study folder) of the rows already there,
    so the new rows join the same table.  Each gap is filled up to the seeds the table's rows
    use; ``run`` skips the runs already stored, and ``tune`` resumes a study.  Tuned gaps are
    listed only for a folder that holds tuned rows (results/default holds defaults alone).
    """
    from alignbench.registry import METHODS
    from alignbench.report import build_table, search_budgets

    table = build_table(records)
    seeds_used: set[int] = set()
    cells: dict[tuple[str, int], dict[str, Any]] = {}
    have: dict[tuple[str, int, str, bool], set[int]] = {}
    tune_dirs: list[str] = []
    for r in table.rows:
        if r.runs is None:
            continue
        spec = next(iter(r.runs.runs.values()))[0]["spec"]
        key = (spec["pair"], int(spec["budget"]))
        cell = cells.setdefault(key, {"evals": [], "train": spec.get("train"), "val": spec.get("val")})
        for recs in r.runs.runs.values():
            for e in recs[0]["spec"].get("evals") or []:
                if e not in cell["evals"]:
                    cell["evals"].append(e)
        tuned = "tuned" in r.runs.flat
        if tuned:
            study_file = (spec.get("tuned") or {}).get("file")
            if study_file and str(Path(study_file).parent) not in tune_dirs:
                tune_dirs.append(str(Path(study_file).parent))
        elif r.runs.label != r.runs.method:
            continue
        seeds_used.update(r.runs.seeds)
        have.setdefault((*key, r.runs.method, tuned), set()).update(r.runs.seeds)
    if not seeds_used:
        return []
    target = sorted(seeds_used)
    built_in = sorted(e.name for e in METHODS.entries() if not e.origin and e.module.startswith("alignbench.methods."))
    searches = search_budgets(table)
    trials, objective = max(searches, key=lambda k: len(searches[k])) if searches else (None, None)
    trials, objective = trials or 20, objective or "recall"  # records from before studies recorded them
    seeds_text = ",".join(map(str, target))
    out = []
    for (pair, budget), cell in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        common = f"--pair {pair} --budget {budget}"
        splits = "".join(f" --{name} {cell[name]}" for name in ("train", "val")
                         if cell[name] and cell[name] != f"flickr8k:{'train' if name == 'train' else 'dev'}")
        evals = f" --evals {','.join(cell['evals'])}" if cell["evals"] else ""
        defaults = [m for m in built_in if not set(target) <= have.get((pair, budget, m, False), set())]
        tunable = [m for m in built_in if getattr(METHODS.get(m), "search_space", None)
                   and not set(target) <= have.get((pair, budget, m, True), set())]
        if defaults:
            out.append(f"alignbench run {common} --methods {','.join(defaults)} --seeds {seeds_text}{splits}{evals} "
                       f"--results {results}")
        if tunable and searches:  # a folder of tuned rows: its gaps include the tuned ones
            tune_dir = f" --tune-dir {tune_dirs[0]}" if tune_dirs and tune_dirs[0] != "results/tune" else ""
            search = f" --trials {trials}" + (f" --objective {objective}" if objective != "recall" else "")
            out.append(f"alignbench tune {common} --methods {','.join(tunable)}{search} --seeds 0{splits}{tune_dir} && "
                       f"alignbench run {common} --methods {','.join(m + ':tuned' for m in tunable)} --seeds {seeds_text}"
                       f"{splits}{evals}{tune_dir} --results {results}")
    return out


def render_coverage(records: list[dict[str, Any]], *, by: str = "budget", results: str | None = None) -> str:
    """The coverage as a Markdown table with its caption, then (given ``results``) the commands that fill its gaps."""
    from tabulate import tabulate

    header, rows = coverage(records, by=by)
    text = tabulate(rows, headers=header, tablefmt="pipe", disable_numparse=True)
    caption = ("Seeds of each method's faithful-default row / its tuned row (†) per group; – none yet, n/a: the method "
               "has no search space. Rows with other settings are not counted.")
    out = f"{text}\n\n{caption}\n"
    todo = fill_commands(records, results=results) if results is not None else []
    if todo:
        out += "\nTo fill the gaps (stored runs are skipped, studies resume):\n\n" + "\n".join(todo) + "\n"
    return out
