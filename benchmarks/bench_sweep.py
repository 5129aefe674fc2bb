"""Benchmark sweep scheduling: the same 32-run sweep through SLURM and through the local executor.

Prints (targets from the issue in brackets):

1. overhead  wall time of a 32-run closed-form sweep (cca, csa, asif, random ×
   4 budgets × 2 seeds) on tiny encoders through the local SLURM cluster
   (``--executor slurm --profile slurm/local.yaml --wait``) vs the local
   executor, both end to end from the command line, features cached
   beforehand [ratio <= 1.5];
2. resume    wall time of re-running the finished sweep (nothing to submit) [< 5 s].

Both executors get the same parallelism (the node's CPUs) and the same packing
(4 closed-form runs per job), so the ratio is the price of sbatch, the queue
and srun.  Needs a running cluster (``bash slurm/cluster.sh start``; SLURM_CONF
is found from this checkout if unset).  Usage:

  python benchmarks/bench_sweep.py [--repeat 3] [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from sweep_world import EVALS, PAIR, write_tiny_data  # noqa: E402

METHODS, BUDGETS, SEEDS = "cca,csa,asif,random", "10,20,30,40", "0,1"


def alignbench(args: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "alignbench.cli", *args], env=env, capture_output=True, text=True,
                       cwd=REPO)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"alignbench {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return dt, r


def sweep(results: Path, executor: str, *extra: str) -> list[str]:
    return ["sweep", "--methods", METHODS, "--pairs", PAIR, "--budgets", BUDGETS, "--seeds", SEEDS,
            "--evals", EVALS, "--results", str(results / "runs"), "--executor", executor, *extra]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=1, help="sweeps per executor (median reported)")
    ap.add_argument("--keep", default=None, help="work folder to keep (default: a temporary one)")
    args = ap.parse_args()

    conf = REPO / "slurm" / ".cluster" / "etc" / "slurm.conf"
    env = dict(os.environ)
    if "SLURM_CONF" not in env and conf.is_file():
        env["SLURM_CONF"] = str(conf)
    if subprocess.run(["sinfo", "-h"], env=env, capture_output=True).returncode != 0:
        raise SystemExit("no SLURM cluster reachable: bash slurm/cluster.sh start")

    work = Path(args.keep or tempfile.mkdtemp(prefix="bench-sweep-"))
    work.mkdir(parents=True, exist_ok=True)
    data = write_tiny_data(work / "data") if not (work / "data").exists() else work / "data"
    env.update(ALIGNBENCH_DATA=str(data), ALIGNBENCH_CACHE=str(work / "features"))

    # Encode once, in-process (so neither timed sweep pays for encoding).
    alignbench(["sweep", "--methods", "cca", "--pairs", PAIR, "--budgets", "10", "--seeds", "0", "--evals", EVALS,
                "--results", str(work / "warm" / "runs"), "--executor", "debug"], env)

    times: dict[str, list[float]] = {"local": [], "slurm": []}
    for i in range(args.repeat):
        for executor, extra in (("local", ()), ("slurm", ("--profile", "slurm/local.yaml", "--wait"))):
            results = work / f"{executor}-{i}"
            shutil.rmtree(results, ignore_errors=True)
            dt, r = alignbench(sweep(results, executor, *extra), env)
            n_done = len([p for p in (results / "runs").glob("*.json") if not p.name.endswith(".failed.json")])
            if n_done != 32:
                raise SystemExit(f"{executor} sweep finished {n_done}/32 runs:\n{r.stdout}")
            times[executor].append(dt)
            print(f"  {executor:<6} sweep {i + 1}: {dt:6.1f} s (32 runs)", flush=True)

    resume, _ = alignbench(sweep(work / f"slurm-{args.repeat - 1}", "slurm", "--profile", "slurm/local.yaml"), env)
    local, slurm = statistics.median(times["local"]), statistics.median(times["slurm"])
    ratio = slurm / local
    load = os.getloadavg()[0]
    print(f"\n32-run closed-form sweep, tiny encoders, {os.cpu_count()} CPUs (load average {load:.1f}):")
    print(f"  local executor  {local:6.1f} s")
    print(f"  local SLURM     {slurm:6.1f} s")
    print(f"  ratio           {ratio:6.2f}x   [target <= 1.5x] {'OK' if ratio <= 1.5 else 'MISSED'}")
    print(f"  resume finished sweep {resume:5.2f} s [target < 5 s] {'OK' if resume < 5 else 'MISSED'}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
