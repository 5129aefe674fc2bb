"""Cost of ``alignbench tune``: wall time and training epochs with median pruning vs without.

Runs the real command on cached features (default pair, Flickr8k train/dev)
into throw-away study folders, once with pruning and once with ``--no-prune``,
and reads the epochs every trial spent from its study.

    python benchmarks/bench_tune.py --methods linear,structure --budget 1k --trials 20
    python benchmarks/bench_tune.py --methods csa,asif --budget 1k --trials 20 --no-compare
    # the two halves as two processes, the pruned studies kept (e.g. as the studies ``run --tuned`` uses):
    python benchmarks/bench_tune.py --methods linear --modes prune --tune-dir results/tune
    python benchmarks/bench_tune.py --methods linear --modes no-prune --tune-dir /tmp/noprune

Prints one row per (method, pruning): wall seconds, trials complete/pruned, epochs spent.
"""
from __future__ import annotations

import argparse
import contextlib
import tempfile
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="linear,structure")
    p.add_argument("--budget", default="1k")
    p.add_argument("--pair", default="effnet-lite0+minilm-l6")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seeds", default="0")
    p.add_argument("--no-compare", action="store_true", help="pruned runs only (closed-form methods: no pruning)")
    p.add_argument("--modes", default="prune,no-prune", help="which of prune,no-prune to run (default: both)")
    p.add_argument("--tune-dir", default=None, help="keep the studies in this folder (default: throw-away folders; "
                   "a study already there resumes, so give each mode its own folder)")
    args = p.parse_args(argv)

    import optuna
    from tabulate import tabulate

    from alignbench.cli import main as cli
    from alignbench.studies import study_file

    modes = [m.strip() for m in args.modes.split(",")]
    if not set(modes) <= {"prune", "no-prune"}:
        p.error(f"--modes takes prune and/or no-prune, got {args.modes!r}")
    runs = [True] if args.no_compare else [m == "prune" for m in modes]
    rows = []
    for method in args.methods.split(","):
        for prune in runs:
            with contextlib.ExitStack() as stack:
                tune_dir = args.tune_dir or stack.enter_context(tempfile.TemporaryDirectory())
                t0 = time.perf_counter()
                rc = cli(["tune", "--methods", method, "--budget", args.budget, "--pair", args.pair, "--trials",
                          str(args.trials), "--seeds", args.seeds, "--tune-dir", tune_dir, "--no-progress",
                          "--device", "cpu", *([] if prune else ["--no-prune"])])
                wall = time.perf_counter() - t0
                path = study_file(tune_dir, args.pair, args.budget if not args.budget.endswith("k") else
                                  int(float(args.budget[:-1]) * 1000))
                storage = f"sqlite:///{path}"
                (name,) = [s.study_name for s in optuna.get_all_study_summaries(storage)
                           if s.study_name.split("|")[0] == method]
                study = optuna.load_study(study_name=name, storage=storage)
                states = [t.state.name for t in study.trials]
                rows.append({"method": method, "pruning": prune, "rc": rc, "wall_s": round(wall, 1),
                             "complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"),
                             "epochs": sum(int(t.user_attrs.get("epochs", 0)) for t in study.trials),
                             "best": round(study.best_value, 3) if states.count("COMPLETE") else None})
                print(rows[-1], flush=True)
    print(tabulate(rows, headers="keys", tablefmt="github"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
