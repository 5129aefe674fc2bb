"""Cost of one mid-fit checkpoint (alignbench/fit_checkpoint.py) for the largest trained head here.

A checkpoint holds the parameters, AdamW's two moments and the best state so far; the trainer
writes one at most every ``ALIGNBENCH_CHECKPOINT_S`` seconds (default 300), so its cost is
reported as a share of that interval.  Default: SAIL's head on the default pair's inputs
([CLS; mean patch] of effnet-lite0 = 2 × 1280, MiniLM 384), 119M weights.

    python benchmarks/bench_checkpoint.py
    python benchmarks/bench_checkpoint.py --method linear --d-image 1280 --d-text 384 --repeat 5
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="sail", help="a global-feature trained method (sail, linear, mlp, fusemix, …)")
    p.add_argument("--d-image", type=int, default=2560)
    p.add_argument("--d-text", type=int, default=384)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--dir", default=None, help="where to write (default: a temporary folder under the cwd)")
    args = p.parse_args(argv)

    import torch

    from alignbench.fit_checkpoint import DEFAULT_INTERVAL_S, Checkpointer
    from alignbench.registry import METHODS

    torch.set_num_threads(1)
    m = METHODS.get(args.method)()
    m._init(args.d_image, args.d_text, 0)
    params = [q for mod in m.modules().values() for q in mod.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3)
    for q in params:
        q.grad = torch.zeros_like(q)
    opt.step()  # AdamW's moments exist, as after any training step
    from alignbench.training import _deep_clone

    best = _deep_clone(m._state_tensors())  # the best state so far: a copy of its own
    times = []
    with tempfile.TemporaryDirectory(dir=args.dir or ".") as d:
        ck = Checkpointer(Path(d) / "bench.ckpt.pt", "bench", 0)
        for _ in range(args.repeat):
            t = time.perf_counter()
            ck.save({"model": m._state_tensors(), "optimizer": opt.state_dict(), "best_state": best})
            times.append(time.perf_counter() - t)
        size = ck.path.stat().st_size
    med = statistics.median(times)
    print(f"{args.method} head ({sum(q.numel() for q in params) / 1e6:.1f}M weights, inputs {args.d_image}/{args.d_text}): "
          f"checkpoint {size / 2**30:.2f} GiB, save {med:.2f} s median of {args.repeat} "
          f"({', '.join(f'{t:.2f}' for t in times)}) = {100 * med / DEFAULT_INTERVAL_S:.1f}% of the "
          f"{DEFAULT_INTERVAL_S:.0f} s interval")
    return 0


if __name__ == "__main__":
    sys.exit(main())
