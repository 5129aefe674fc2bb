"""Seconds per epoch of trained methods, and Procrustes' fit, on cached real features (Flickr8k; default pair).

Needs the pair's Flickr8k train and dev features in the cache
(``alignbench encode --datasets flickr8k --splits train,dev``).  The budget is
subsampled as ``alignbench run`` does (seed 0); validation is the dev split.

    python benchmarks/bench_fit_real.py --budget 1000
    python benchmarks/bench_fit_real.py --budget 10000 --epochs 3
    python benchmarks/bench_fit_real.py --methods "linear,sail,sail:dtype=fp32" --epochs 4
    python benchmarks/bench_fit_real.py --pair dinov2-s14+minilm-l6 --budget 10000 --epochs 3

Every method runs in ONE process at the same batch size with a fixed lr (no LR
range test) for ``--epochs`` epochs; an epoch is the time between two
consecutive validation checks (training steps + one validation pass), and the
median over epochs 2… is reported, with its ratio to the first method's
(``linear``): the machine is shared, so only ratios measured in the same run
compare.  The first epoch also holds input preparation and optimiser state,
reported as ``first_s``.  Procrustes' fit is timed ``--repeat`` times (median wall
and process CPU seconds: on a loaded machine the wall time is mostly waiting).
Prints one JSON line per method, then a table; ``dtype``/``optimizer`` say
which CPU path ran (``dtype=auto``: bf16 where AMX / AVX-512 bf16 exist).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

TRAINED = "linear,mlp,sail,freeze-align"


def time_epochs(method, train, val, seed: int) -> dict:
    """Fit ``method``; the wall time of each epoch (between validation checks) and of the whole fit."""
    from alignbench.training import observe_epochs

    marks: list[float] = []
    t0 = time.perf_counter()
    with observe_epochs(lambda epoch, loss: marks.append(time.perf_counter())):
        method.fit(train, val, seed=seed)
    fit_s = time.perf_counter() - t0
    per = [b - a for a, b in zip(marks, marks[1:])]
    info = method.fit_info
    return {"fit_s": round(fit_s, 2), "epochs": info.get("epochs"), "first_s": round(marks[0] - t0, 2),
            "epoch_s": [round(p, 2) for p in per], "median_s": round(statistics.median(per), 3) if per else None,
            "batch": info.get("batch_size"), "dtype": info.get("dtype"), "optimizer": info.get("optimizer"),
            "params": method.num_parameters()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=int, default=1000)
    p.add_argument("--methods", default=TRAINED, help=f"comma list with overrides; the first is the reference ({TRAINED})")
    p.add_argument("--epochs", type=int, default=4, help="epochs per trained method (median over epochs 2…)")
    p.add_argument("--lr", type=float, default=1e-3, help="fixed lr (no LR range test: it is not an epoch)")
    p.add_argument("--repeat", type=int, default=3, help="Procrustes fits (median); 0 skips Procrustes")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pair", default=None, help="encoder pair (default: the default pair); its Flickr8k features cached")
    args = p.parse_args(argv)

    import numpy as np
    import torch
    from tabulate import tabulate

    from alignbench.config import DEFAULT_PAIR, parse_method_spec, split_methods
    from alignbench.devices import cpu_bf16_flags
    from alignbench.registry import METHODS
    from alignbench.runner import subsample_indices
    from alignbench.source import FeatureSource

    torch.set_num_threads(args.threads)
    pair = args.pair or DEFAULT_PAIR
    src = FeatureSource(pair, progress=False)
    all_train, val = src.pairs("flickr8k", "train"), src.pairs("flickr8k", "dev")
    train = all_train.subset(subsample_indices(len(all_train), args.budget, 0))
    print(f"# {pair}, budget {args.budget}, dev {len(val)} pairs, torch threads {torch.get_num_threads()}, "
          f"CPU bf16 flags: {', '.join(cpu_bf16_flags()) or 'none'}", flush=True)
    rows, ref = [], None
    for spec in split_methods(args.methods):
        name, opts = parse_method_spec(spec)
        opts = {"lr": args.lr, "max_epochs": args.epochs, **opts}
        r = {"method": spec, "budget": args.budget, **time_epochs(METHODS.get(name)(**opts), train, val, 0)}
        ref = ref or r["median_s"]
        r["ratio"] = round(r["median_s"] / ref, 2) if ref and r["median_s"] else None
        print(json.dumps(r), flush=True)
        rows.append([spec, r["batch"], r["dtype"], r["optimizer"], r["first_s"], r["median_s"], r["ratio"], r["params"]])
    if args.repeat:
        times, cpu = [], []
        for _ in range(args.repeat):
            m = METHODS.get("procrustes")()
            t, c = time.perf_counter(), time.process_time()
            m.fit(train, val, seed=0)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        print(json.dumps({"method": "procrustes", "budget": args.budget, "fit_s": [round(t, 2) for t in times],
                          "median_s": round(float(np.median(times)), 2), "cpu_s": round(float(np.median(cpu)), 2),
                          "rank": m.fit_info.get("rank")}), flush=True)
        rows.append(["procrustes (fit)", None, "fp64", f"rank {m.fit_info.get('rank')}", None,
                     round(float(np.median(times)), 2), None, m.num_parameters()])
    print(tabulate(rows, headers=["method", "batch", "dtype", "optimizer / svd", "first_s", "median s/epoch",
                                  "÷ first", "params"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
