"""Metric-vs-budget curves: how each method scales with paired data.

One panel per selected task metric, one line per table row (a method and its
settings), budget on a log axis, and a band for the same 95% interval the
table shows (t over seeds; bootstrap over test queries / images with one
seed).  With several encoder pairs the line style tells them apart.  Saved as
PNG (for READMEs) and PDF (for papers).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Iterable

from alignbench.errors import DataError
from alignbench.report import CONTROLS, build_table, format_budget

log = logging.getLogger(__name__)


def plot_budget_curves(
    records: list[dict[str, Any]],
    out_dir: str | Path = "results/figures",
    *,
    metrics: Iterable[str] | None = None,
    name: str = "budget_curves",
    formats: tuple[str, ...] = ("png", "pdf"),
) -> list[Path]:
    """Draw the curves for the selected metrics and return the written files."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt
    import seaborn as sns

    table = build_table(records, by="budget", metrics=metrics)
    columns = table.columns
    if not columns:
        raise DataError("no metrics to plot")
    lines: dict[tuple[str, str], list[tuple[float, Any]]] = {}  # (row label, pair) → [(budget, row)]
    for r in table.rows:
        first = next(iter(r.runs.runs.values()))[0]
        budget = float((first.get("budget") or {}).get("pairs", first["spec"].get("budget")))
        lines.setdefault((r.method, first["spec"].get("pair")), []).append((budget, r))
    labels = sorted({k[0] for k in lines}, key=lambda m: (m.split(" ")[0] in CONTROLS, m))
    pairs = sorted({k[1] for k in lines})
    styles = dict(zip(pairs, ["-", "--", ":", "-."] * len(pairs)))
    budgets = sorted({b for pts in lines.values() for b, _ in pts})

    n = len(columns)
    ncols = n if n <= 4 else 3
    nrows = math.ceil(n / ncols)
    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.0 * nrows), squeeze=False)
    palette = dict(zip(labels, sns.color_palette("tab10", n_colors=max(len(labels), 1))))
    for j, (ax, col) in enumerate(zip(axes.flat, columns)):
        for (label, pair), pts in sorted(lines.items()):
            pts = sorted((b, r.cells[j]) for b, r in pts if r.cells[j] is not None)
            if not pts:
                continue
            x = [b for b, _ in pts]
            iv = [c.interval for _, c in pts]
            name_ = label if len(pairs) == 1 else f"{label} ({pair})"
            ax.plot(x, [i.mean for i in iv], styles[pair], marker="o", color=palette[label], label=name_)
            ax.fill_between(x, [i.low for i in iv], [i.high for i in iv], color=palette[label], alpha=0.2, linewidth=0)
        ax.set_xscale("log")
        ax.set_xticks(budgets)
        ax.set_xticklabels([format_budget(b) for b in budgets])
        ax.minorticks_off()
        ax.set_title(f"{col.where} {col.label}")
        ax.set_xlabel("paired budget (log)")
        ax.set_ylabel("%  (band: 95% CI)")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    handles, names = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in formats:
        path = out_dir / f"{name}.{ext}"
        fig.savefig(path, dpi=150, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    return paths
