"""``alignbench analyze METHOD``: a method's own analysis on stored fits (a table and a figure).

Fits are the runs in ``--results`` (narrowed by ``--pair``/``--budget``/
``--seeds``/``--where``).  Each fit's method is rebuilt from its stored state;
a run stored without one (results from before fitted states were kept) is
refit from its record, exactly as the runner fitted it, with a warning.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "run a method's analysis (e.g. PAL's anchor consistency and metric vs K) on stored fits"
EXAMPLES = [
    "alignbench analyze pal --results results/runs",
    "alignbench analyze pal --pair dinov2-s14+minilm-l6 --budget 10k --on flickr8k:test --k 5",
    "alignbench analyze pal --where pool=cap --format csv --out pal.csv --plot-dir results/figures",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("method", help="method whose analysis to run (methods with one: pal)")
    p.add_argument("--results", default="results/runs", help="result folder (default: results/runs)")
    p.add_argument("--pair", "--pairs", dest="pair", default=None, help="only these encoder pairs (comma list)")
    p.add_argument("--budget", "--budgets", dest="budget", default=None, help="only these budgets, e.g. 1k,10k")
    p.add_argument("--seeds", default=None, help="only these seeds, e.g. 0-2")
    p.add_argument("--where", default=None, help="only fits whose config has KEY=VALUE (comma list), e.g. pool=cap")
    p.add_argument("--on", default=None, help="held-out pairs DATASET:SPLIT (default: the fit's retrieval eval)")
    p.add_argument("--k", type=int, default=5, help="top-k of the overlap and Dice measures (default 5)")
    p.add_argument("--max-pairs", type=int, default=1000, help="held-out pairs used per fit (default 1000)")
    p.add_argument("--metric", default="i2t_R@1", help="stored metric plotted against K (default i2t_R@1)")
    p.add_argument("--format", default="markdown", choices=("markdown", "csv"), help="table format")
    p.add_argument("--out", default=None, help="write the table to this file instead of stdout")
    p.add_argument("--plot-dir", default="results/figures", help="where the figure goes (default results/figures)")
    p.add_argument("--no-plot", action="store_true", help="print the table only")
    p.add_argument("--cache", default=None, help="feature cache folder (default: $ALIGNBENCH_CACHE)")
    p.add_argument("--data-root", default=None, help="datasets folder (default: $ALIGNBENCH_DATA)")


def _options(args: argparse.Namespace):
    from alignbench.analyses import AnalysisOptions
    from alignbench.errors import ConfigError
    from alignbench.runner import parse_split_ref

    if args.k < 1 or args.max_pairs < 2:
        raise ConfigError(f"--k must be >= 1 and --max-pairs >= 2 (got {args.k}, {args.max_pairs})")
    on = None
    if args.on:
        from alignbench.registry import DATASETS

        name, split = parse_split_ref(args.on, "test")
        cls = DATASETS.get(name)
        if getattr(cls, "kind", "captions") != "captions":
            raise ConfigError(f"--on {args.on}: anchor consistency needs image–caption pairs, not a {cls.kind} dataset")
        on = (DATASETS.canonical(name), split)
    return AnalysisOptions(on=on, k=args.k, max_pairs=args.max_pairs, metric=args.metric)


def _filter(args: argparse.Namespace, method: str):
    from alignbench.analyses import FitFilter
    from alignbench.config import parse_budgets, parse_method_spec, parse_seeds, split_list

    where = parse_method_spec("x:" + args.where.replace(",", ":"))[1] if args.where else {}
    budgets = tuple(b for b in parse_budgets(args.budget) if b != "max") if args.budget else ()
    return FitFilter(method=method, pairs=tuple(split_list(args.pair)), budgets=budgets,
                     seeds=tuple(parse_seeds(args.seeds)) if args.seeds else (), where=where)


def main(args: argparse.Namespace) -> int:
    import pandas as pd

    from alignbench.analyses import analysis_for, select
    from alignbench.fit_loader import FitLoader
    from alignbench.results import require_results

    name, analysis = analysis_for(args.method)
    options = _options(args)
    records = select(require_results(args.results), _filter(args, name))
    loader = FitLoader(args.results, cache=args.cache, data_root=args.data_root)
    print(f"analyzing {len(records)} stored {name} fit(s) from {args.results}: {analysis.what}", file=sys.stderr)
    fits = [loader.fit(r) for r in records]
    for line in loader.notes:
        print(line, file=sys.stderr)
    frame = pd.DataFrame(analysis.rows(fits, loader.source_for, options))
    text = _render(frame, args.format)
    if args.out:
        from alignbench.atomic import write_text_atomic

        write_text_atomic(args.out, text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    if not args.no_plot:
        for path in analysis.plot(frame, Path(args.plot_dir), options):
            print(f"wrote {path}", file=sys.stderr)
    return 0


def _render(frame, fmt: str) -> str:
    if fmt == "csv":
        return frame.to_csv(index=False)
    from tabulate import tabulate

    shown = frame.drop(columns=["run_id"])
    return tabulate(shown, headers="keys", tablefmt="github", showindex=False, floatfmt=".3f") + "\n"
