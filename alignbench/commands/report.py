"""``alignbench report``: tables (Markdown, LaTeX, CSV, a self-contained HTML page) and budget curves from the result store."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "turn stored results into tables (markdown, latex, csv, html page) and metric-vs-budget plots"
EXAMPLES = [
    "alignbench report --format markdown",
    "alignbench report --format html --out report.html",
    "alignbench report --format latex --by pair --out table.tex",
    "alignbench report --metric i2t_R@1,segmentation/mIoU_fg --plot --plot-dir results/figures",
    "alignbench report --format csv --metric all --results results/runs",
    "alignbench report --compare pal,linear",
    "alignbench report --coverage --by pair          # which default / tuned rows exist, with how many seeds",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", default="markdown", choices=("markdown", "latex", "csv", "html"),
                   help="output format (html: one self-contained page with sortable table, curves and provenance)")
    p.add_argument("--by", default="budget", choices=("budget", "pair"), help="group rows by budget or by encoder pair")
    p.add_argument(
        "--metric",
        "--metrics",
        dest="metrics",
        default=None,
        help="comma list of metrics (METRIC, TASK/METRIC or TASK/DATASET/METRIC) or 'all'; default: headline metrics",
    )
    p.add_argument("--results", default="results/runs", help="result folder (default: results/runs)")
    p.add_argument("--out", default=None, help="write the table to this file instead of stdout")
    p.add_argument("--compare", default=None, metavar="A,B",
                   help="paired difference of two rows per metric, with its 95%% CI and p-value (e.g. pal,linear; "
                        "'pal†,linear†' names the tuned rows of each pair and budget)")
    p.add_argument("--coverage", action="store_true",
                   help="which rows the results hold: per method and group, the seeds of its default and tuned rows, "
                        "then the run / tune commands that would fill the gaps")
    p.add_argument("--plot", action="store_true", help="also draw metric-vs-budget curves (PNG + PDF)")
    p.add_argument("--plot-dir", default="results/figures", help="where --plot writes (default: results/figures)")
    p.add_argument("--include-stale", action="store_true",
                   help="also show results whose identity no longer matches the current code (marked [stale])")


def main(args: argparse.Namespace) -> int:
    from alignbench.atomic import write_text_atomic
    from alignbench.config import split_list
    from alignbench.report import render
    records = _current_records(args)
    metrics = split_list(args.metrics) or None
    if args.coverage and args.compare is not None:
        from alignbench.errors import ConfigError

        raise ConfigError("--coverage and --compare print different tables: pass one")
    if args.coverage and args.format != "markdown":
        from alignbench.errors import ConfigError

        raise ConfigError(f"--coverage prints a Markdown table; drop --format {args.format}")
    if args.coverage:
        from alignbench.coverage import render_coverage

        text = render_coverage(records, by=args.by, results=args.results)
    elif args.compare is not None:
        from alignbench.compare import compare_report, split_labels

        text = compare_report(records, split_labels(args.compare), by=args.by, metrics=metrics)
    elif args.format == "html":
        from alignbench.report_html import render_html
        from alignbench.results import ResultStore

        text = render_html(records, by=args.by, metrics=metrics, failures=ResultStore(args.results).failures())
    else:
        text = render(records, fmt=args.format, by=args.by, metrics=metrics)
    if args.out:
        out = Path(args.out)
        write_text_atomic(out, text)
        print(f"wrote {out} ({len(records)} runs)", file=sys.stderr)
    else:
        sys.stdout.write(text)
    if args.plot:
        from alignbench.plots import plot_budget_curves

        for path in plot_budget_curves(records, args.plot_dir, metrics=metrics):
            print(f"wrote {path}", file=sys.stderr)
    return 0


def _current_records(args: argparse.Namespace) -> list:
    """Valid results, stale ones left out (or marked with --include-stale); says how many and why."""
    from collections import Counter

    from alignbench.errors import DataError
    from alignbench.identity import Resolver
    from alignbench.planning import mark_stale
    from alignbench.results import ResultStore, require_results

    store = ResultStore(args.results)
    records = require_results(args.results, store)
    for path, why in store.skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    st = mark_stale(records, Resolver())
    if st.stale:
        reasons = Counter(r for r in st.stale.values())
        top = "; ".join(f"{n}× {r}" for r, n in reasons.most_common(3)) + ("; …" if len(reasons) > 3 else "")
        if args.include_stale:
            print(f"{len(st.stale)} stale result(s) shown, marked [stale] ({top})", file=sys.stderr)
            for rec in records:
                if rec["_stale"]:
                    rec["_label"] = f"{rec.get('_label') or rec['spec']['method']} [stale]"
        else:
            print(f"left out {len(st.stale)} stale result(s) of {len(records)} ({top}); --include-stale shows them",
                  file=sys.stderr)
            records = [r for r in records if not r["_stale"]]
    if not records:
        raise DataError(f"every result in {args.results!r} is stale; rerun them with `alignbench run` "
                        "or pass --include-stale")
    return records
