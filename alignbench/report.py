"""From result files to paper tables: rows × task metrics, mean ± 95% CI.

A row averages runs that differ in the seed alone (``alignbench.aggregate``):
the ``random`` control is a row like any method, a method run with another
setting is its own row labelled with it.  Rows are grouped by budget or by
encoder pair; columns are ``task/dataset/metric`` — by default each task's
headline metrics (retrieval I→T and T→I R@1, classification top-1,
segmentation mIoU).  Cells carry a 95% interval (t over seeds, or a bootstrap
over test queries / images with one seed) and bold is decided by a paired
test; the caption says both.  Writing a table as Markdown or LaTeX is
:mod:`alignbench.report_render`.
"""
from __future__ import annotations

import difflib
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from alignbench.aggregate import MIN_SEEDS_FOR_T, Cell, Resampler, RowRuns, cell, group_rows, mark_best, untimed_resume
from alignbench.errors import ConfigError
from alignbench.report_render import DECIMALS, latex_escape, to_latex, to_markdown  # noqa: F401  (re-exported)
from alignbench.results import TUNED_MARK, eval_of_key
from alignbench.stats import ALPHA, BOOT_SEED, N_BOOT

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger(__name__)

BY = ("budget", "pair")
FORMATS = ("markdown", "latex", "csv")
TASK_ORDER = ("retrieval", "classification", "segmentation")
CONTROLS = ("random",)  # listed last in each group, so chance sits under the methods
UNIT_WORDS = {"retrieval": "test queries", "classification": "test queries", "segmentation": "test images"}


# -- metric metadata ------------------------------------------------------------------
def _task(name: str) -> Any:
    from alignbench.registry import TASKS

    try:
        return TASKS.get(name)
    except Exception:  # results from a task that is not installed here: show its raw metric names
        return None


def headline_metrics(task: str) -> tuple[str, ...]:
    cls = _task(task)
    return tuple(getattr(cls, "headline", ())) if cls else ()


def _conditional_headline(task: str, metrics: set[str]) -> tuple[str, ...]:
    """Metrics a task adds to its headline when an evaluation's results hold a given metric (``headline_if_present``)."""
    cls = _task(task)
    extra = getattr(cls, "headline_if_present", {}) if cls else {}
    return tuple(m for key, ms in extra.items() if key in metrics for m in ms)


def metric_label(task: str, metric: str) -> str:
    cls = _task(task)
    labels = getattr(cls, "metric_labels", {}) if cls else {}
    return labels.get(metric, metric)


def format_budget(n: Any) -> str:
    """10000 → '10k', 2500 → '2.5k', 500 → '500', 'max' → 'max'."""
    try:
        n = int(n)
    except (TypeError, ValueError):
        return str(n)
    if n >= 1000 and n % 100 == 0:
        return f"{n / 1000:g}k"
    return f"{n:,}"


# -- columns --------------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    """One table column: a metric of one evaluation (``eval`` is the results key)."""

    task: str
    dataset: str
    eval: str
    metric: str

    @property
    def label(self) -> str:
        return metric_label(self.task, self.metric)

    @property
    def name(self) -> str:
        return f"{self.eval}/{self.metric}"

    @property
    def where(self) -> str:
        """What was evaluated: ``camvid``, ``voc:val@slide,threshold=0.5`` (a protocol is a column of its own)."""
        return self.eval.split("/", 1)[1] if "/" in self.eval else self.dataset


def available_columns(records: list[dict[str, Any]]) -> list[Column]:
    """Every (evaluation, numeric metric) in ``records``, in table order (no pandas: report must start fast)."""
    cols = set()
    for rec in records:
        evals = {e["key"]: e for e in rec.get("evals", []) if isinstance(e, dict) and "key" in e}
        for key, metrics in rec["metrics"].items():
            if not isinstance(metrics, dict):
                continue
            ev = evals.get(key) or eval_of_key(key)
            for metric, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    cols.add((ev.get("task"), ev.get("dataset"), key, metric))
    cols = {Column(*c) for c in cols}

    def order(c: Column):
        t = TASK_ORDER.index(c.task) if c.task in TASK_ORDER else len(TASK_ORDER)
        head = headline_metrics(c.task)
        cls = _task(c.task)
        known = list(getattr(cls, "metric_labels", {}) if cls else {})
        if c.metric in head:
            m = (0, head.index(c.metric))
        elif c.metric in known:
            m = (1, known.index(c.metric))
        else:
            m = (2, 0)
        return (t, c.task, c.eval, m, c.metric)

    return sorted(cols, key=order)


def select_columns(records: list[dict[str, Any]], metrics: Iterable[str] | None = None) -> list[Column]:
    """Headline columns by default; ``metrics`` picks by metric, ``task/metric`` or ``task/dataset/metric``.

    ``all`` selects every metric.  Unknown selectors raise ConfigError with suggestions.
    """
    cols = available_columns(records)
    if not cols:
        raise ConfigError("no metrics in these results")
    wanted = [m.strip() for m in (metrics or []) if m.strip()]
    if not wanted:
        present: dict[str, set[str]] = {}
        for c in cols:
            present.setdefault(c.eval, set()).add(c.metric)
        out = []
        for c in cols:
            head = headline_metrics(c.task) + _conditional_headline(c.task, present[c.eval])
            if (c.metric in head) if head else "/" not in c.metric:
                out.append(c)
        return out
    if wanted == ["all"]:
        return cols
    out, names = [], set()
    for sel in wanted:
        low = sel.lower()
        hit = [c for c in cols if low in (n.lower() for n in (c.metric, f"{c.task}/{c.metric}", c.name, f"{c.dataset}/{c.metric}"))]
        if not hit:
            pool = {n.lower(): n for n in sorted({c.metric for c in cols} | {c.name for c in cols})}
            close = [pool[m] for m in difflib.get_close_matches(low, list(pool), n=3, cutoff=0.5)]
            hint = f"; did you mean {', '.join(repr(s) for s in close)}?" if close else ""
            raise ConfigError(
                f"no metric {sel!r} in these results{hint} (metrics: {', '.join(sorted({c.metric for c in cols}))}; "
                "select as METRIC, TASK/METRIC or TASK/DATASET/METRIC, or 'all')"
            )
        for c in hit:
            if c.name not in names:
                names.add(c.name)
                out.append(c)
    return out


# -- aggregation ----------------------------------------------------------------------
@dataclass
class Row:
    group: tuple[str, ...]  # display values of the group columns
    method: str  # the row's label: method name plus what differs from the defaults
    seeds: int  # seeds averaged into this row
    cells: list[Cell | None] = field(default_factory=list)
    runs: RowRuns | None = None
    fit_s: float | None = None  # median fit wall time over the row's runs (None: every run reused a stored fit)


@dataclass
class Table:
    """A report table, independent of the output format."""

    group_names: list[str]
    columns: list[Column]
    rows: list[Row]
    by: str

    @property
    def caption(self) -> str:
        return caption(self)


def _group_columns(records: list[dict[str, Any]], by: str) -> list[str]:
    if by not in BY:
        raise ConfigError(f"cannot group by {by!r}; choose one of {', '.join(BY)}")
    other = "pair" if by == "budget" else "budget"
    return [by] + ([other] if len({json.dumps(_group_value(r, other)) for r in records}) > 1 else [])


def _group_value(rec: dict[str, Any], name: str) -> Any:
    spec = rec["spec"]
    if name == "budget":
        return (rec.get("budget") or {}).get("pairs", spec.get("budget"))
    return spec.get(name)


def _sort_key(col: str, value: Any) -> Any:
    from alignbench.config import OFFLINE_PAIRS

    if col == "budget":
        try:
            return (0, int(value), "")
        except (TypeError, ValueError):
            return (1, 0, str(value))
    if col == "pair":
        return (OFFLINE_PAIRS.index(value), "") if value in OFFLINE_PAIRS else (len(OFFLINE_PAIRS), str(value))
    return str(value)


def build_table(
    records: list[dict[str, Any]],
    *,
    by: str = "budget",
    metrics: Iterable[str] | None = None,
    resampler: Resampler | None = None,
) -> Table:
    """Rows of runs that differ in the seed alone, with mean ± 95% CI cells and tested bold."""
    columns = select_columns(records, metrics)
    groups = _group_columns(records, by)
    resampler = resampler or Resampler()
    keyed = []
    for rr in group_rows(records).values():
        first = next(iter(rr.runs.values()))[0]
        gvals = tuple(_group_value(first, g) for g in groups)
        keyed.append((tuple(_sort_key(g, v) for g, v in zip(groups, gvals)) + (rr.method in CONTROLS, rr.label), gvals, rr))
    keyed.sort(key=lambda t: t[0])
    rows = []
    for _, gvals, rr in keyed:
        display = tuple(format_budget(v) if g == "budget" else str(v) for g, v in zip(groups, gvals))
        cells = [cell(rr, c.eval, c.metric, resampler) for c in columns]
        rows.append(Row(display, rr.label, len(rr.runs), cells, rr, rr.fit_seconds()))
    by_group: dict[tuple, list[Row]] = {}
    for r in rows:
        by_group.setdefault(r.group, []).append(r)
    for members in by_group.values():
        for j, c in enumerate(columns):
            mark_best([(r.runs, r.cells[j]) for r in members], c.eval, c.metric, resampler)
    return Table(groups, columns, rows, by)


def caption(table: Table) -> str:
    """What the cells and the bold mean: the interval, its resampling unit, the test."""
    kinds = {c.interval.kind for r in table.rows for c in r.cells if c is not None}
    units = sorted({UNIT_WORDS.get(col.task, "test units") for r in table.rows for col, c in zip(table.columns, r.cells)
                    if c is not None and c.interval.kind == "bootstrap"})  # fmt: skip
    parts = ["Percent."]
    if "t" in kinds:
        parts.append("Rows with several seeds: mean ± half-width of the 95% confidence interval (Student t over seeds).")
    if "bootstrap" in kinds:
        parts.append(
            f"Rows with one seed: value ± half-width of the 95% percentile bootstrap interval over {' and '.join(units)} "
            f"({N_BOOT:,} resamples, seed {BOOT_SEED})."
        )
    if "none" in kinds:
        parts.append("A value without ± has one seed and no stored outcomes to resample.")
    if any(TUNED_MARK in r.method for r in table.rows):
        parts.append(_tuned_caption(table))
    if any(r.fit_s is not None for r in table.rows):
        resumed = any(untimed_resume(rec) for r in table.rows if r.runs is not None
                      for recs in r.runs.runs.values() for rec in recs)
        left_out = "runs that reused a stored fit, or resumed one without timing its earlier part," if resumed else \
            "runs that reused a stored fit"
        parts.append(f"fit s: median wall-clock seconds of one fit over the row's runs ({left_out} left out); machines "
                     "and load differ between runs, so compare within a table only.")
    parts.append(
        f"Bold: the best mean per column within each {_within(table)} and every entry not significantly worse "
        f"(p ≥ {ALPHA:g}; paired t over ≥ {MIN_SEEDS_FOR_T} shared seeds, else a paired bootstrap over the same test "
        "queries or images; an entry that cannot be tested is not bold)."
    )
    return " ".join(parts)


def search_budgets(table: Table) -> dict[tuple[Any, Any], list[str]]:
    """(trials, objective) of the studies behind the table's tuned rows → the rows tuned so.

    Why: a tuned comparison is fair only when every tuned row had the same search, and a
    ``:tuned`` run takes the best trial of its study whatever the study's size (a study still
    running, or one stopped early, has fewer trials); each result records the study's size.
    """
    out: dict[tuple[Any, Any], list[str]] = {}
    for r in table.rows:
        if r.runs is None or "tuned" not in r.runs.flat:
            continue
        where = " ".join([*(g for g in r.group if g), f"{r.runs.method}{TUNED_MARK}"])
        for recs in r.runs.runs.values():
            for rec in recs:
                t = (rec.get("spec") or {}).get("tuned") or {}
                rows = out.setdefault((t.get("n_trials"), t.get("objective")), [])
                if where not in rows:
                    rows.append(where)
    return out


def _tuned_caption(table: Table) -> str:
    """The † sentence: the search every tuned row had, or which rows had another."""
    budgets = search_budgets(table)
    if len(budgets) == 1:
        (trials, objective), = budgets
        same = f"{trials} trials per study, objective {objective}, for every tuned row" if trials else \
            "same trials and objective for every tuned row"
        return f"{TUNED_MARK} tuned on the validation split (alignbench tune: {same}; the label shows the chosen settings)."
    usual = max(budgets, key=lambda k: len(budgets[k]))
    others = "; ".join(f"{', '.join(rows)}: {n if n is not None else '?'} trials, objective {o}"
                       for (n, o), rows in budgets.items() if (n, o) != usual)
    log.warning("tuned rows had different searches (%s trials, objective %s, except %s)", usual[0], usual[1], others)
    return (f"{TUNED_MARK} tuned on the validation split (alignbench tune; the label shows the chosen settings). "
            f"NOT the same search for every tuned row: {usual[0]} trials, objective {usual[1]}, except {others}; "
            "compare those rows with care.")


def summary_frame(records: list[dict[str, Any]], *, by: str = "budget", metrics: Iterable[str] | None = None) -> "pd.DataFrame":
    """Tidy aggregate (one row per group × table row × metric) for CSV output."""
    import pandas as pd

    table = build_table(records, by=by, metrics=metrics)
    out = []
    for r in table.rows:
        for col, c in zip(table.columns, r.cells):
            if c is None:
                continue
            iv = c.interval
            out.append({**dict(zip(table.group_names, r.group)), "method": r.method, "task": col.task,
                        "dataset": col.dataset, "eval": col.eval, "metric": col.metric, "mean": iv.mean,
                        "ci_low": iv.low, "ci_high": iv.high, "interval": iv.kind, "seeds": c.seeds, "bold": c.bold,
                        "fit_s": r.fit_s})  # fmt: skip
    return pd.DataFrame(out).round({"mean": 4, "ci_low": 4, "ci_high": 4, "fit_s": 2})


# -- rendering (alignbench.report_render) ------------------------------------------------
def _within(table: Table) -> str:
    return " and ".join(table.group_names)


def render(
    records: list[dict[str, Any]], *, fmt: str = "markdown", by: str = "budget", metrics: Iterable[str] | None = None
) -> str:
    """The report as text in ``fmt`` (markdown | latex | csv)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown report format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "csv":
        return summary_frame(records, by=by, metrics=metrics).to_csv(index=False)
    table = build_table(records, by=by, metrics=metrics)
    return to_markdown(table) if fmt == "markdown" else to_latex(table)
