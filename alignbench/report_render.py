"""A report :class:`~alignbench.report.Table` as text: Markdown (tabulate) and a booktabs LaTeX tabular.

Why apart from :mod:`alignbench.report`: building a table (grouping, intervals,
bold) and writing it out change for different reasons.  The LaTeX table is
assembled here because a booktabs table with a spanning header, ``\\cmidrule``\\ s
and a ``\\midrule`` between groups is not something pandas' Styler emits.
"""
from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from alignbench.aggregate import Cell
    from alignbench.report import Table

DECIMALS = 1


def format_cell(cell: "Cell | None", pm: str) -> str:
    """'71.2 ± 0.8' (``pm`` is the plus-minus sign of the output format); '' for no value."""
    if cell is None:
        return ""
    text = f"{cell.mean:.{DECIMALS}f}"
    if cell.interval.kind != "none":
        text += f" {pm} {cell.interval.half_width:.{DECIMALS}f}"
    return text


def format_seconds(seconds: float | None) -> str:
    """Fit time for a table: '0.4', '12', '1,234'; '' when unknown."""
    if seconds is None:
        return ""
    return f"{seconds:.1f}" if seconds < 10 else f"{seconds:,.0f}"


def column_headers(table: "Table") -> list[tuple[str, str]]:
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


def sparse_groups(table: "Table") -> list[list[str]]:
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


def to_markdown(table: "Table") -> str:
    from tabulate import tabulate

    heads = column_headers(table)
    data = []
    for shown, r in zip(sparse_groups(table), table.rows):
        cells = [(f"**{format_cell(c, '±')}**" if c and c.bold else format_cell(c, "±")) or "–" for c in r.cells]
        data.append([*shown, r.method, r.seeds, format_seconds(r.fit_s) or "–", *cells])
    names = [*table.group_names, "method", "seeds", "fit s", *[f"{h} {lab}" for h, lab in heads]]
    align = ["left"] * (len(table.group_names) + 1) + ["right"] * (2 + len(heads))
    body = tabulate(data, headers=names, tablefmt="pipe", colalign=align, disable_numparse=True)
    return body + "\n\n" + table.caption + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "→": r"$\rightarrow$", "±": r"$\pm$",
}  # fmt: skip


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def to_latex(table: "Table") -> str:
    """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``)."""
    heads = column_headers(table)
    n_lead = len(table.group_names) + 3  # group columns, method, seeds, fit s
    lines = [f"% {line}" for line in textwrap.wrap("alignbench report. " + table.caption, 100)] + [
        "% Requires \\usepackage{booktabs}.",
        "\\begin{tabular}{" + "l" * (n_lead - 2) + "rr" + "r" * len(heads) + "}",
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
    lead = [latex_escape(g) for g in table.group_names] + ["method", "seeds", "fit s"]
    lines.append(" & ".join(lead + [latex_escape(lab) for _, lab in heads]) + " \\\\")
    lines.append("\\midrule")
    prev_group = None
    for shown, r in zip(sparse_groups(table), table.rows):
        if prev_group is not None and r.group[0] != prev_group:
            lines.append("\\midrule")
        prev_group = r.group[0]
        cells = []
        for c in r.cells:
            text = format_cell(c, "$\\pm$") or "--"
            cells.append(f"\\textbf{{{text}}}" if c and c.bold else text)
        row = [latex_escape(v) for v in shown] + [latex_escape(r.method), str(r.seeds), format_seconds(r.fit_s) or "--"] + cells
        lines.append(" & ".join(row) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


__all__ = ["DECIMALS", "column_headers", "format_cell", "format_seconds", "latex_escape", "sparse_groups", "to_latex", "to_markdown"]
