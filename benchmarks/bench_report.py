"""Benchmark ``alignbench report`` over 1,000 stored results [target: < 2 s].

Writes N synthetic result files shaped like a real sweep's (the default four
evaluations, each with the per-query / per-image outcomes a real run stores:
1,000 image and 5,000 caption ranks, 10,000 CIFAR-10 and 10,000 Fashion-MNIST
predictions, 233 CamVid per-image confusion matrices), then times the whole
command line — interpreter start, imports, loading every file, grouping,
intervals, paired tests for bold, rendering — as a user runs it.

Sweep shape (default): 10 methods × 2 pairs × 5 budgets × 5 seeds, each also
with ``--image-layer 9`` = 1,000 results in 200 rows (t intervals over seeds,
paired t tests).  ``--one-seed`` writes the same number of rows with one seed
each instead, so every cell is a bootstrap over the stored outcomes.

  python benchmarks/bench_report.py [--n 1000] [--repeat 3] [--one-seed] [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from alignbench.config import EncoderOptions, RunSpec
from alignbench.identity import Resolver
from alignbench.outcomes import Outcomes
from alignbench.results import SCHEMA_VERSION, ResultStore
from alignbench.tasks.classification import ClassificationTask
from alignbench.tasks.retrieval import RetrievalTask
from alignbench.tasks.segmentation import SegmentationTask

METHODS = ("pal", "linear", "cca", "csa", "asif", "fusemix", "structure", "procrustes", "mlp", "random")
PAIRS = ("effnet-lite0+minilm-l6", "dinov2-s14+minilm-l6")
BUDGETS = (1000, 2000, 5000, 10_000, 20_000)
CAMVID = ["sky", "building", "pole", "road", "pavement", "tree", "sign symbol", "fence", "car", "pedestrian", "bicyclist"]


def _outcomes(rng: np.random.Generator, skill: float) -> dict[str, Outcomes]:
    """Random outcomes of one run whose quality grows with ``skill`` in [0, 1]."""
    i2t = rng.geometric(0.05 + 0.4 * skill, 1000) - 1
    t2i = rng.geometric(0.04 + 0.3 * skill, 5000) - 1
    out = {"retrieval/flickr8k": Outcomes("retrieval", "query", {"i2t_rank": i2t, "t2i_rank": t2i},
                                          {"image_query": 1000, "caption_query": 5000})}  # fmt: skip
    for name, acc in (("cifar10", 0.2 + 0.5 * skill), ("fashion-mnist", 0.1 + 0.4 * skill)):
        label = rng.integers(0, 10, 10_000)
        pred = np.where(rng.random(10_000) < acc, label, rng.integers(0, 10, 10_000))
        out[f"classification/{name}"] = Outcomes("classification", "query", {"pred": pred, "label": label},
                                                 {"image": 10_000}, {"n_classes": 10})  # fmt: skip
    per_image = np.zeros((233, 11, 11), dtype=np.int64)
    for i in range(233):
        gt = rng.choice(11, size=8, replace=False)
        for g in gt:
            per_image[i, g, g] = rng.integers(0, 4000) * skill
            per_image[i, g, rng.integers(0, 11)] += rng.integers(0, 3000)
    flat = per_image.reshape(233, -1)
    row, cell = np.nonzero(flat)
    out["segmentation/camvid"] = Outcomes("segmentation", "image", {"row": row, "cell": cell, "count": flat[row, cell]},
                                          {"image": 233}, {"classes": CAMVID, "background_index": None})  # fmt: skip
    return out


TASKS = {"retrieval": RetrievalTask(), "classification": ClassificationTask(), "segmentation": SegmentationTask()}


def write_results(root: Path, n: int, one_seed: bool) -> int:
    store = ResultStore(root)
    resolver = Resolver()
    rng = np.random.default_rng(0)
    seeds = (0,) if one_seed else (0, 1, 2, 3, 4)
    written = 0
    variant = 0
    while written < n:
        for method in METHODS:
            for pair in PAIRS:
                for budget in BUDGETS:
                    layer = None if variant == 0 else 9 + variant - 1
                    for seed in seeds:
                        if written >= n:
                            return written
                        spec = RunSpec(method=method, pair=pair, budget=budget, seed=seed,
                                       encoder=EncoderOptions(image_layer=layer))  # fmt: skip
                        run = resolver.resolve(spec, data=False)  # identity as the code decides it
                        skill = (0.0 if method == "random" else 0.3 + 0.05 * METHODS.index(method)) * budget ** 0.05 / 2
                        outs = _outcomes(rng, min(skill, 1.0))
                        store.write({
                            "schema_version": SCHEMA_VERSION, "status": "ok", "run_id": run.run_id, "fit_id": run.fit_id,
                            "spec_key": spec.spec_key, "spec": spec.to_dict(), "resolved": run.to_dict(),
                            "budget": {"requested": budget, "pairs": budget, "available": 30_000},
                            "evals": [{"key": k, "task": o.task, "dataset": k.split("/")[1], "split": "test"}
                                      for k, o in outs.items()],
                            "metrics": {k: TASKS[o.task].metrics_from_outcomes(o) for k, o in outs.items()},
                            "timings": {}, "method": {"name": method, "version": run.method.version,
                                                      "config": run.method.config, "fit_info": {}},
                            "provenance": {"synthetic": True}, "outcomes": {k: o.to_json() for k, o in outs.items()},
                        })  # fmt: skip
                        written += 1
        variant += 1
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--one-seed", action="store_true", help="one seed per row: every cell is a bootstrap")
    ap.add_argument("--keep", default=None, help="write the results here and keep them")
    args = ap.parse_args()
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_report_"))
    try:
        t0 = time.perf_counter()
        n = write_results(tmp, args.n, args.one_seed)
        size = sum(p.stat().st_size for p in tmp.glob("*.json"))
        print(f"wrote {n} results ({size / n / 1024:.0f} KiB each with outcomes) in {time.perf_counter() - t0:.0f} s")
        cmd = [str(Path(sys.executable).parent / "alignbench"), "report", "--results", str(tmp)]
        times, cpu = [], []
        for _ in range(args.repeat):
            c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True)
            times.append(time.perf_counter() - t0)
            c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append(c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime)
            if r.returncode != 0:
                sys.exit(f"report failed:\n{r.stderr}")
        rows = sum(1 for line in r.stdout.splitlines() if line.startswith("|")) - 2
        print(f"alignbench report over {n} results ({rows} rows): median wall {statistics.median(times):.2f} s "
              f"(runs {', '.join(f'{t:.2f}' for t in times)}), CPU {statistics.median(cpu):.2f} s, "
              f"load average {os.getloadavg()[0]:.1f} [target < 2 s]")  # fmt: skip
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
