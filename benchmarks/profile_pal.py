"""Where a PAL training step spends its CPU time, on cached real features (default pair, Flickr8k train).

One step over the whole budget (budget ≤ batch size: one step is one epoch) is
run a few times, then once under torch.profiler (record_shapes); prints the
median step time and the operators by self CPU time, grouped by input shapes.
Needs the default pair's Flickr8k train features in the cache.

    ALIGNBENCH_CACHE=/path/to/features python benchmarks/profile_pal.py --budget 2000 --dtype bf16
    python benchmarks/profile_pal.py --budget 2000 --dtype fp32 --compile off --no-prepare
"""
from __future__ import annotations

import argparse
import os
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=int, default=2000)
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--compile", default="on", choices=("on", "off"))
    p.add_argument("--no-prepare", dest="prepare", action="store_false",
                   help="normalise tokens per step (the path taken when they do not fit in memory)")
    p.add_argument("--steps", type=int, default=2, help="timed steps before the profiled one")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=int, default=25, help="operators shown")
    args = p.parse_args()
    os.environ.setdefault("ALIGNBENCH_PROGRESS", "0")

    import numpy as np
    import torch
    from torch.profiler import ProfilerActivity, profile

    from alignbench.cap import Workspace
    from alignbench.config import DEFAULT_PAIR
    from alignbench.registry import METHODS
    from alignbench.runner import subsample_indices
    from alignbench.source import FeatureSource
    from alignbench.training import info_nce
    from alignbench.token_rows import training_token_means

    torch.set_num_threads(args.threads)
    all_train = FeatureSource(DEFAULT_PAIR, progress=False).pairs("flickr8k", "train")
    train = all_train.subset(subsample_indices(len(all_train), args.budget, 0))
    m = METHODS.get("pal")(dtype=args.dtype, compile=args.compile)
    m.mu_v, m.mu_t = training_token_means(train, m.config.pool, m.config.center, m.device)
    m._init_anchors(train.images.token_dim, train.texts.token_dim, 0)
    m._workspace, m._compile_fit = Workspace(), args.compile == "on"
    if args.prepare:
        print("prepared:", m._prepare_tokens(train, None))
    idx = np.arange(len(train))

    def step() -> None:
        Av, At = m.anchors()
        pv, pt = m._pair_profiles(train, idx, Av, At)
        info_nce(pv, pt, m.config.temperature).backward()

    step()  # compiles, faults in the workspace
    times = []
    for _ in range(args.steps):
        t, c = time.perf_counter(), time.process_time()
        step()
        times.append((time.perf_counter() - t, time.process_time() - c))
    wall, cpu = np.median([t[0] for t in times]), np.median([t[1] for t in times])
    print(f"{m.matmul_dtype()[1]}, compile {args.compile}, budget {args.budget}: step {wall:.2f} s wall / {cpu:.2f} s CPU "
          f"(median of {len(times)}; load average {os.getloadavg()[0]:.1f})")
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    print(prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=40, max_shapes_column_width=60))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
