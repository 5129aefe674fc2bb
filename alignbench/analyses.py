"""Method-specific analyses of stored fits (``alignbench analyze METHOD``): one table of them.

Why a table: ``analyze`` must say, for any method name, whether an analysis
exists and which methods have one, and the CLI must not grow a branch per
method.  Each :class:`Analysis` turns fitted methods (with their result
records) into rows; the command prints them and draws a figure.

PAL (METHODS.md, "Analysis", paper Fig. 3–4): anchor cross-modal consistency of
matched vs mismatched image–caption pairs on held-out pairs (top-k hard overlap
and soft Dice, :mod:`alignbench.pal_analysis`), the number of trainable
parameters K·(d_v+d_t), and the stored metrics, so fits with different K give
a metric-vs-K curve.
"""
from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from alignbench.errors import ConfigError, DataError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger(__name__)


@dataclass
class StoredFit:
    """One stored run: its result record and its fitted method (state loaded, ready to embed)."""

    record: dict[str, Any]
    method: Any

    @property
    def spec(self) -> dict[str, Any]:
        return self.record.get("spec") or {}

    def config(self) -> dict[str, Any]:
        return (self.record.get("method") or {}).get("config") or {}


@dataclass(frozen=True)
class AnalysisOptions:
    """What the user chose for an analysis (checked at the edge; the analysis never parses text)."""

    on: tuple[str, str] | None = None  # (dataset, split) of the held-out pairs; None = the fit's retrieval eval
    k: int = 5
    max_pairs: int = 1000
    seed: int = 0
    metric: str = "i2t_R@1"


@dataclass(frozen=True)
class Analysis:
    """An analysis of one method family: rows per fit, and the figure it draws."""

    methods: tuple[str, ...]
    what: str
    rows: Callable[[Sequence[StoredFit], Any, AnalysisOptions], list[dict[str, Any]]]
    plot: Callable[["pd.DataFrame", Path, AnalysisOptions], list[Path]]
    sweep_key: str = ""  # the config field the figure puts on its x axis


# -- PAL ------------------------------------------------------------------------------------------------
def _held_out(fit: StoredFit, options: AnalysisOptions) -> tuple[str, str]:
    """The pairs to measure consistency on: ``--on``, else the fit's first retrieval evaluation."""
    if options.on is not None:
        return options.on
    for ev in fit.record.get("evals") or []:
        if isinstance(ev, dict) and ev.get("task") == "retrieval" and ev.get("dataset"):
            return ev["dataset"], ev.get("split") or "test"
    return "flickr8k", "test"


def _subset(pairs: Any, max_pairs: int, seed: int) -> Any:
    """At most ``max_pairs`` pairs, the same ones for every fit (a fixed seed)."""
    import numpy as np

    if len(pairs) <= max_pairs:
        return pairs
    idx = np.sort(np.random.default_rng(seed).choice(len(pairs), max_pairs, replace=False))
    return pairs.subset(idx)


def _metric(record: dict[str, Any], metric: str) -> tuple[str, float | None]:
    """(metric key, value) of ``metric`` ('i2t_R@1' or 'retrieval/flickr8k/i2t_R@1') in a record."""
    head, _, name = metric.rpartition("/")
    for key, values in (record.get("metrics") or {}).items():
        if isinstance(values, dict) and name in values and (not head or key == head or key.startswith(head)):
            value = values[name]
            return f"{key}/{name}", (float(value) if isinstance(value, (int, float)) else None)
    return metric, None


def pal_rows(fits: Sequence[StoredFit], source_for: Any, options: AnalysisOptions) -> list[dict[str, Any]]:
    """One row per fit: K, parameters, matched/mismatched top-k overlap and soft Dice, and the metric."""
    from alignbench.pal_analysis import pal_consistency
    from alignbench.results import method_label

    rows = []
    for fit in fits:
        dataset, split = _held_out(fit, options)
        pairs = _subset(source_for(fit).pairs(dataset, split), options.max_pairs, options.seed)
        c = pal_consistency(fit.method, pairs, k=options.k, seed=options.seed)
        key, value = _metric(fit.record, options.metric)
        spec = fit.spec
        rows.append({
            "method": method_label(spec.get("method", "pal"), spec.get("method_options")),
            "pair": spec.get("pair"), "budget": (fit.record.get("budget") or {}).get("pairs", spec.get("budget")),
            "seed": spec.get("seed"), "K": int(fit.method.config.K), "params": c["n_params"],
            "on": f"{dataset}:{split}", "pairs": c["n_pairs"],
            f"overlap@{options.k} matched": c["overlap_matched"]["mean"],
            f"overlap@{options.k} mismatched": c["overlap_mismatched"]["mean"],
            f"dice@{options.k} matched": c["dice_matched"]["mean"],
            f"dice@{options.k} mismatched": c["dice_mismatched"]["mean"],
            "metric": key, "value": value, "run_id": fit.record.get("run_id"),
        })  # fmt: skip
    return rows


def plot_metric_vs_k(frame: "pd.DataFrame", out_dir: Path, options: AnalysisOptions) -> list[Path]:
    """Stored metric and matched−mismatched Dice vs K, one line per (pair, budget); mean ± 95% t-CI over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from alignbench.stats import t_interval

    dice_gap = frame[f"dice@{options.k} matched"] - frame[f"dice@{options.k} mismatched"]
    frame = frame.assign(dice_gap=dice_gap)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    panels = ((axes[0], "value", frame["metric"].iloc[0] if len(frame) else options.metric),
              (axes[1], "dice_gap", f"Dice@{options.k} matched − mismatched"))
    for ax, column, title in panels:
        for (pair, budget), part in frame.groupby(["pair", "budget"], sort=True):
            ks, means, lo, hi = [], [], [], []
            for k, at_k in part.groupby("K", sort=True):
                values = [v for v in at_k[column].tolist() if v is not None and v == v]
                if not values:
                    continue
                ci = t_interval(values)
                ks.append(k)
                means.append(ci.mean)
                lo.append(ci.low if ci.low == ci.low else ci.mean)
                hi.append(ci.high if ci.high == ci.high else ci.mean)
            if ks:
                ax.plot(ks, means, marker="o", label=f"{pair}, {budget} pairs")
                ax.fill_between(ks, lo, hi, alpha=0.2)
        ax.set_xscale("log", base=2)
        ks_all = sorted({int(k) for k in frame["K"]})
        ax.set_xticks(ks_all, [str(k) for k in ks_all])
        ax.minorticks_off()
        ax.set_xlabel("K (anchors)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("PAL vs K (mean over seeds; band: 95% t-CI where ≥ 2 seeds)", fontsize=9)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "pal_vs_K.png", out_dir / "pal_vs_K.pdf"]
    for p in paths:
        fig.savefig(p, dpi=150)
    plt.close(fig)
    return paths


#: method → analysis.  Add a method's analysis here (and nowhere else).
ANALYSES: dict[str, Analysis] = {
    "pal": Analysis(methods=("pal",), what="anchor cross-modal consistency (matched vs mismatched), "
                    "parameters, metric vs K", rows=pal_rows, plot=plot_metric_vs_k, sweep_key="K"),
}


def analysis_for(method: str) -> tuple[str, Analysis]:
    """(canonical method name, its analysis); ConfigError naming the methods that have one otherwise."""
    from alignbench.errors import UnknownNameError
    from alignbench.registry import METHODS

    have = ", ".join(sorted(ANALYSES))
    try:
        name = METHODS.canonical(method)
    except UnknownNameError:
        close = difflib.get_close_matches(method.lower(), list(ANALYSES), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"unknown method {method!r}{hint} (methods with an analysis: {have})") from None
    if name not in ANALYSES:
        raise ConfigError(f"method {name!r} has no analysis (methods with an analysis: {have})")
    return name, ANALYSES[name]


@dataclass(frozen=True)
class FitFilter:
    """Which stored runs to analyse (None = any)."""

    method: str
    pairs: tuple[str, ...] = ()
    budgets: tuple[int, ...] = ()
    seeds: tuple[int, ...] = ()
    where: dict[str, str] = field(default_factory=dict)  # config field → value, e.g. {"pool": "cap"}

    def keep(self, record: dict[str, Any]) -> bool:
        spec = record.get("spec") or {}
        if spec.get("method") != self.method:
            return False
        budget = (record.get("budget") or {}).get("pairs", spec.get("budget"))
        config = (record.get("method") or {}).get("config") or {}
        return ((not self.pairs or spec.get("pair") in self.pairs)
                and (not self.budgets or budget in self.budgets)
                and (not self.seeds or spec.get("seed") in self.seeds)
                and all(str(config.get(k)) == v for k, v in self.where.items()))


def select(records: Iterable[dict[str, Any]], flt: FitFilter) -> list[dict[str, Any]]:
    """The records ``flt`` keeps, in a stable order; DataError saying what exists when none match."""
    records = list(records)
    kept = [r for r in records if flt.keep(r)]
    if not kept:
        of_method = [r for r in records if (r.get("spec") or {}).get("method") == flt.method]
        if not of_method:
            raise DataError(f"no stored {flt.method} runs among {len(records)} results; "
                            f"run e.g. `alignbench run --methods {flt.method}` first")
        budgets = sorted({str((r.get("budget") or {}).get("pairs")) for r in of_method})
        pairs = sorted({str((r.get("spec") or {}).get("pair")) for r in of_method})
        raise DataError(f"none of the {len(of_method)} stored {flt.method} runs matches the filters "
                        f"(they have pairs {', '.join(pairs)}; budgets {', '.join(budgets)})")
    return sorted(kept, key=lambda r: (str((r.get("spec") or {}).get("pair")), str(r.get("run_id"))))


__all__ = ["ANALYSES", "Analysis", "AnalysisOptions", "FitFilter", "StoredFit", "analysis_for", "pal_rows",
           "plot_metric_vs_k", "select"]
