"""From result files to paper tables: methods × task metrics, mean ± s.d. over seeds.

Rows are methods (the ``random`` control included like any other), grouped by
budget or by encoder pair; columns are ``task/dataset/metric`` — by default
each task's headline metrics (retrieval I→T and T→I R@1, classification
top-1, segmentation mIoU).  The best mean of each column within a group is in
bold.  Markdown goes through pandas/tabulate; the LaTeX table is assembled
here because a booktabs table with a spanning header, ``\\cmidrule``\\ s and a
``\\midrule`` between groups is not something pandas' Styler emits.
"""
from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from alignbench.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger(__name__)

BY = ("budget", "pair")
FORMATS = ("markdown", "latex", "csv")
TASK_ORDER = ("retrieval", "classification", "segmentation")
CONTROLS = ("random",)  # listed last in each group, so chance sits under the methods
DECIMALS = 1


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


def available_columns(frame: "pd.DataFrame") -> list[Column]:
    cols = {Column(r.task, r.dataset, r.eval, r.metric) for r in frame[["task", "dataset", "eval", "metric"]].itertuples()}

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


def select_columns(frame: "pd.DataFrame", metrics: Iterable[str] | None = None) -> list[Column]:
    """Headline columns by default; ``metrics`` picks by metric, ``task/metric`` or ``task/dataset/metric``.

    ``all`` selects every metric.  Unknown selectors raise ConfigError with suggestions.
    """
    cols = available_columns(frame)
    wanted = [m.strip() for m in (metrics or []) if m.strip()]
    if not wanted:
        out = []
        for c in cols:
            head = headline_metrics(c.task)
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
class Cell:
    mean: float
    std: float
    n: int
    bold: bool = False


@dataclass
class Row:
    group: tuple[str, ...]  # display values of the group columns
    method: str
    seeds: int
    cells: list[Cell | None] = field(default_factory=list)


@dataclass
class Table:
    """A report table, independent of the output format."""

    group_names: list[str]
    columns: list[Column]
    rows: list[Row]
    by: str


def _group_columns(frame: "pd.DataFrame", by: str) -> list[str]:
    if by not in BY:
        raise ConfigError(f"cannot group by {by!r}; choose one of {', '.join(BY)}")
    other = "pair" if by == "budget" else "budget"
    return [by] + ([other] if frame[other].nunique(dropna=False) > 1 else [])


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


def build_table(frame: "pd.DataFrame", *, by: str = "budget", metrics: Iterable[str] | None = None) -> Table:
    """Aggregate a results frame (``ResultStore.to_frame``) into a Table."""
    import numpy as np

    if frame.empty:
        raise ConfigError("no metrics in these results")
    columns = select_columns(frame, metrics)
    groups = _group_columns(frame, by)
    keys = groups + ["method_label"]
    sub = frame[(frame["eval"] + "/" + frame["metric"]).isin({c.name for c in columns})]
    stats = sub.groupby(keys + ["eval", "metric"], dropna=False)["value"].agg(["mean", "std", "count"]).reset_index()
    seeds = frame.groupby(keys, dropna=False)["seed"].nunique().to_dict()

    row_keys = sorted(
        {tuple(k) for k in frame[keys].itertuples(index=False)},
        key=lambda k: tuple(_sort_key(g, v) for g, v in zip(groups, k[:-1]))
        + ((k[-1].split(":")[0] in CONTROLS), k[-1]),
    )
    lookup = {tuple(r[k] for k in keys + ["eval", "metric"]): r for r in stats.to_dict("records")}
    rows = []
    for k in row_keys:
        cells: list[Cell | None] = []
        for c in columns:
            r = lookup.get((*k, c.eval, c.metric))
            if r is None:
                cells.append(None)
            else:
                std = float(r["std"]) if r["count"] > 1 and np.isfinite(r["std"]) else 0.0
                cells.append(Cell(float(r["mean"]), std, int(r["count"])))
        display = tuple(format_budget(v) if g == "budget" else str(v) for g, v in zip(groups, k[:-1]))
        rows.append(Row(display, k[-1], int(seeds.get(k, 0)), cells))
    _mark_best(rows, len(columns))
    return Table(groups, columns, rows, by)


def _mark_best(rows: list[Row], n_cols: int) -> None:
    """Bold the best displayed mean per column within each group (ties all bold; needs ≥ 2 values)."""
    by_group: dict[tuple, list[Row]] = {}
    for r in rows:
        by_group.setdefault(r.group, []).append(r)
    for members in by_group.values():
        for j in range(n_cols):
            vals = [round(r.cells[j].mean, DECIMALS) for r in members if r.cells[j] is not None]
            if len(vals) < 2:
                continue
            best = max(vals)
            for r in members:
                if r.cells[j] is not None and round(r.cells[j].mean, DECIMALS) == best:
                    r.cells[j].bold = True


def summary_frame(frame: "pd.DataFrame", *, by: str = "budget", metrics: Iterable[str] | None = None) -> "pd.DataFrame":
    """Tidy aggregate (one row per group × method × metric) for CSV output."""
    columns = select_columns(frame, metrics)
    groups = _group_columns(frame, by)
    keep = {c.name for c in columns}
    sub = frame[(frame["eval"] + "/" + frame["metric"]).isin(keep)]
    out = (
        sub.groupby(groups + ["method_label", "task", "dataset", "split", "eval", "metric"], dropna=False)["value"]
        .agg(mean="mean", std="std", n="count")
        .reset_index()
        .rename(columns={"method_label": "method"})
    )
    out["std"] = out["std"].fillna(0.0)
    return out.round({"mean": 4, "std": 4})


# -- rendering ------------------------------------------------------------------------
def _fmt(cell: Cell | None, pm: str) -> str:
    if cell is None:
        return ""
    text = f"{cell.mean:.{DECIMALS}f}"
    if cell.n > 1:
        text += f" {pm} {cell.std:.{DECIMALS}f}"
    return text


def _headers(table: Table) -> list[tuple[str, str]]:
    """(spanning header, metric label) per column; the dataset names the span (task too if ambiguous)."""
    tasks_per_ds: dict[str, set] = {}
    for c in table.columns:
        tasks_per_ds.setdefault(c.dataset, set()).add(c.task)
    out = []
    for c in table.columns:
        head = c.eval.split("/", 1)[1] if "/" in c.eval else c.dataset
        if len(tasks_per_ds[c.dataset]) > 1:
            head = f"{c.task} {head}"
        out.append((head, c.label))
    return out


def _sparse(table: Table) -> list[list[str]]:
    """Group values shown only where they change (readable tables)."""
    shown, prev = [], None
    for r in table.rows:
        vals = []
        for i, v in enumerate(r.group):
            same = prev is not None and prev[: i + 1] == r.group[: i + 1]
            vals.append("" if same else v)
        shown.append(vals)
        prev = r.group
    return shown


def to_markdown(table: Table) -> str:
    import pandas as pd

    heads = _headers(table)
    data = []
    for shown, r in zip(_sparse(table), table.rows):
        cells = [(f"**{_fmt(c, '±')}**" if c and c.bold else _fmt(c, "±")) or "–" for c in r.cells]
        data.append([*shown, r.method, r.seeds, *cells])
    names = [*table.group_names, "method", "seeds", *[f"{h} {lab}" for h, lab in heads]]
    df = pd.DataFrame(data, columns=names)
    align = ["left"] * (len(table.group_names) + 1) + ["right"] * (1 + len(heads))
    body = df.to_markdown(index=False, colalign=align, disable_numparse=True)
    note = f"\n\nMean ± s.d. over seeds (percent). Best value per column within each {_within(table)} in bold."
    return body + note + "\n"


def _within(table: Table) -> str:
    return " and ".join(table.group_names)


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "→": r"$\rightarrow$", "±": r"$\pm$",
}  # fmt: skip


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def to_latex(table: Table) -> str:
    """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``)."""
    heads = _headers(table)
    n_lead = len(table.group_names) + 2  # group columns, method, seeds
    lines = [
        f"% alignbench report: mean $\\pm$ s.d. over seeds; best per column within each {_within(table)} in bold.",
        "% Requires \\usepackage{booktabs}.",
        "\\begin{tabular}{" + "l" * (n_lead - 1) + "r" + "r" * len(heads) + "}",
        "\\toprule",
    ]
    # spanning header: consecutive columns with the same dataset share one \multicolumn
    spans: list[tuple[str, int]] = []
    for h, _ in heads:
        if spans and spans[-1][0] == h:
            spans[-1] = (h, spans[-1][1] + 1)
        else:
            spans.append((h, 1))
    top, rules, start = [""] * n_lead, [], n_lead + 1
    for h, width in spans:
        top.append(f"\\multicolumn{{{width}}}{{c}}{{{latex_escape(h)}}}")
        rules.append(f"\\cmidrule(lr){{{start}-{start + width - 1}}}")
        start += width
    lines.append(" & ".join(top) + " \\\\")
    lines.append(" ".join(rules))
    lead = [latex_escape(g) for g in table.group_names] + ["method", "seeds"]
    lines.append(" & ".join(lead + [latex_escape(lab) for _, lab in heads]) + " \\\\")
    lines.append("\\midrule")
    prev_group = None
    for shown, r in zip(_sparse(table), table.rows):
        if prev_group is not None and r.group[0] != prev_group:
            lines.append("\\midrule")
        prev_group = r.group[0]
        cells = []
        for c in r.cells:
            text = _fmt(c, "$\\pm$") or "--"
            cells.append(f"\\textbf{{{text}}}" if c and c.bold else text)
        row = [latex_escape(v) for v in shown] + [latex_escape(r.method), str(r.seeds)] + cells
        lines.append(" & ".join(row) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def render(frame: "pd.DataFrame", *, fmt: str = "markdown", by: str = "budget", metrics: Iterable[str] | None = None) -> str:
    """The report as text in ``fmt`` (markdown | latex | csv)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown report format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "csv":
        return summary_frame(frame, by=by, metrics=metrics).to_csv(index=False)
    table = build_table(frame, by=by, metrics=metrics)
    return to_markdown(table) if fmt == "markdown" else to_latex(table)
