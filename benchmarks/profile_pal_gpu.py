"""Where a PAL epoch on CUDA spends its time: torch.profiler over one epoch, after a warm-up fit compiled the kernels.

Synthetic ViT-L-shaped pairs (257 x 1024 fp16 image tokens, 16 x 1024 caption tokens) resident on the GPU.

    python benchmarks/profile_pal_gpu.py --pairs 16384 --chunk-elems 268435456
"""
from __future__ import annotations

import argparse
import os
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=16384)
    p.add_argument("--K", type=int, default=512)
    p.add_argument("--chunk-elems", type=int, default=1 << 28)
    p.add_argument("--rows", type=int, default=20)
    args = p.parse_args()
    os.environ.setdefault("ALIGNBENCH_PROGRESS", "0")
    import numpy as np
    import torch
    from torch.profiler import ProfilerActivity, profile

    from alignbench.features import ImageFeatures, Pairs, TextFeatures
    from alignbench.registry import METHODS

    n, T, D, L = args.pairs, 257, 1024, 16
    g = torch.Generator(device="cuda:0").manual_seed(0)
    img = (torch.randn(n, T, D, device="cuda:0", generator=g) * 0.5 + 0.3).half().cpu().numpy()
    txt = (torch.randn(n * L, D, device="cuda:0", generator=g) + 0.3).half().cpu().numpy()
    rng = np.random.default_rng(0)
    pairs = Pairs(ImageFeatures(rng.standard_normal((n, D), dtype=np.float32), tokens=img, grid=(16, 16), n_prefix=1),
                  TextFeatures(rng.standard_normal((n, D), dtype=np.float32), tokens=txt,
                               offsets=np.arange(0, n * L + 1, L)),
                  np.arange(n), np.arange(n))
    kw = dict(K=args.K, max_epochs=1, dtype="bf16", lr_range_test=False, compile="on", chunk_elems=args.chunk_elems)
    t0 = time.perf_counter()
    METHODS.get("pal")(**kw).to("cuda:0").fit(pairs, None, seed=0)
    print(f"warm-up fit (compiles): {time.perf_counter() - t0:.1f} s", flush=True)
    pal = METHODS.get("pal")(**kw).to("cuda:0")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        pal.fit(pairs, None, seed=0)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    print(f"profiled fit: {wall:.2f} s wall; epoch_times_s {pal.fit_info['epoch_times_s']}; "
          f"token_source {pal.fit_info['token_source']}", flush=True)
    ka = prof.key_averages()
    print(ka.table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=60))
    print(ka.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
