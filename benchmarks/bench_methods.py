"""Fit time of every registered method at a 10k budget on synthetic features.

Why synthetic: it isolates the methods' own cost from encoding.  Default dims
are the default pair's (effnet-lite0 1280-d images, MiniLM-L6 384-d texts);
rerun with ``--real`` numbers in mind: the lead reruns this on cached features.

    python benchmarks/bench_methods.py                       # all methods, defaults
    python benchmarks/bench_methods.py --methods linear,structure --max-epochs 20
    python benchmarks/bench_methods.py --methods "fusemix:n_blocks=2" --threads 2

Prints one row per method: fit seconds, epochs run, seconds per epoch, params.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="all", help="comma list with optional overrides (linear:lr=1e-3); 'all'")
    p.add_argument("--budget", type=int, default=10_000)
    p.add_argument("--val", type=int, default=1_000, help="validation pairs (early stopping)")
    p.add_argument("--d-image", type=int, default=1280)
    p.add_argument("--d-text", type=int, default=384)
    p.add_argument("--max-epochs", type=int, default=None, help="cap epochs for every trained method")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import torch
    from tabulate import tabulate

    from alignbench.config import parse_method_spec, split_methods
    from alignbench.registry import METHODS
    from synthetic import make_pairs, split_pairs

    if args.threads:
        torch.set_num_threads(args.threads)
    specs = METHODS.names() if args.methods == "all" else split_methods(args.methods)
    t0 = time.perf_counter()
    pairs = make_pairs(args.budget + args.val, d_v=args.d_image, d_t=args.d_text, seed=args.seed,
                       n_shared=32, dtype=np.float16)
    train, val, _ = split_pairs(pairs, args.budget, args.val, 0, seed=args.seed)
    print(f"synthetic features: {args.budget} train + {args.val} val pairs, "
          f"image {args.d_image}-d, text {args.d_text}-d ({time.perf_counter() - t0:.1f}s to build), "
          f"torch threads {torch.get_num_threads()}")
    rows = []
    for spec in specs:
        name, overrides = parse_method_spec(spec)
        cls = METHODS.get(name)
        fields = {f for f in cls.Config.__dataclass_fields__}
        if args.max_epochs is not None and "max_epochs" in fields:
            overrides.setdefault("max_epochs", args.max_epochs)
        m = cls(**overrides)
        t = time.perf_counter()
        m.fit(train, val, seed=args.seed)
        fit_s = time.perf_counter() - t
        epochs = m.fit_info.get("epochs")
        per_epoch = fit_s / epochs if epochs else None
        rows.append([spec, m.level, f"{fit_s:.2f}", epochs, f"{per_epoch:.3f}" if per_epoch else "-",
                     m.num_parameters()])
        print(tabulate([rows[-1]], tablefmt="plain"), flush=True)
    print()
    print(tabulate(rows, headers=["method", "level", "fit_s", "epochs", "s/epoch", "params"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
