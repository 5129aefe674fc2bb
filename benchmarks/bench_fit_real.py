"""Fit time per epoch and parameter count of methods on cached real features (default pair, Flickr8k).

Needs the default pair's Flickr8k train and dev features in the cache
(``alignbench encode --datasets flickr8k --splits train,dev``).  The budget is
subsampled as ``alignbench run`` does (seed 0); validation is the dev split.

    python benchmarks/bench_fit_real.py 1000 "procrustes,linear:lr=1e-3:max_epochs=3,sail:lr=1e-3:max_epochs=1"

Prints one JSON line per method: fit seconds, epochs, seconds per epoch, batch, parameters.
"""
from __future__ import annotations

import json
import sys
import time


def main(argv: list[str]) -> int:
    import torch

    from alignbench.config import DEFAULT_PAIR, parse_method_spec, split_methods
    from alignbench.registry import METHODS
    from alignbench.runner import subsample_indices
    from alignbench.source import FeatureSource

    budget, specs = int(argv[0]), split_methods(argv[1])
    torch.set_num_threads(2)
    src = FeatureSource(DEFAULT_PAIR, progress=False)
    all_train, val = src.pairs("flickr8k", "train"), src.pairs("flickr8k", "dev")
    train = all_train.subset(subsample_indices(len(all_train), budget, 0))
    for spec in specs:
        name, opts = parse_method_spec(spec)
        m = METHODS.get(name)(**opts)
        t = time.perf_counter()
        m.fit(train, val, seed=0)
        dt = time.perf_counter() - t
        ep = m.fit_info.get("epochs")
        print(json.dumps({"method": spec, "budget": budget, "fit_s": round(dt, 2), "epochs": ep,
                          "s_per_epoch": round(dt / ep, 3) if ep else None, "batch": m.fit_info.get("batch_size"),
                          "params": m.num_parameters()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
