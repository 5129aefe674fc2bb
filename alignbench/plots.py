"""Metric-vs-budget curves: how each method scales with paired data.

One panel per selected task metric, one line per method, budget on a log
axis, error bars = s.d. over seeds (seaborn computes them from the per-run
rows).  With several encoder pairs the line style tells them apart.  Saved as
PNG (for READMEs) and PDF (for papers).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from alignbench.errors import DataError
from alignbench.report import CONTROLS, format_budget, select_columns

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger(__name__)


def plot_budget_curves(
    frame: "pd.DataFrame",
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

    columns = select_columns(frame, metrics)
    if not columns:
        raise DataError("no metrics to plot")
    keep = {c.name: f"{c.dataset} {c.label}" for c in columns}
    data = frame.assign(column=frame["eval"] + "/" + frame["metric"])
    data = data[data["column"].isin(keep)].copy()
    data["panel"] = data["column"].map(keep)
    data["budget"] = data["budget"].astype(float)
    data = data.rename(columns={"method": "method_name", "method_label": "method"})
    methods = sorted(data["method"].unique(), key=lambda m: (m.split(":")[0] in CONTROLS, m))
    multi_pair = data["pair"].nunique() > 1

    n = len(columns)
    ncols = n if n <= 4 else 3
    nrows = math.ceil(n / ncols)
    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.0 * nrows), squeeze=False)
    palette = dict(zip(methods, sns.color_palette("tab10", n_colors=max(len(methods), 1))))
    budgets = sorted(data["budget"].unique())
    for ax, col in zip(axes.flat, columns):
        panel = data[data["column"] == col.name]
        sns.lineplot(
            data=panel, x="budget", y="value", hue="method", hue_order=methods, palette=palette,
            style="pair" if multi_pair else None, marker="o", errorbar="sd", err_style="bars",
            ax=ax, legend=ax is axes.flat[0],
        )  # fmt: skip
        ax.set_xscale("log")
        ax.set_xticks(budgets)
        ax.set_xticklabels([format_budget(b) for b in budgets])
        ax.minorticks_off()
        ax.set_title(keep[col.name])
        ax.set_xlabel("paired budget (log)")
        ax.set_ylabel("%")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    first = axes.flat[0]
    if first.get_legend() is not None:
        handles, labels = first.get_legend_handles_labels()
        first.get_legend().remove()
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
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
