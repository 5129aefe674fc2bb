"""A tiny world for sweep tests: tiny encoders, datasets in their real on-disk layouts.

Shared by tests/test_sweep.py (local/debug executors) and tests/test_slurm.py
(the real cluster), so both compare the same runs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import fixtures_layouts as fx

PAIR = "tiny-vit+tiny-text"
EVALS = "retrieval:flickr8k:test,classification:cifar10:test"
REPO = Path(__file__).resolve().parents[1]


def write_tiny_data(root: Path) -> Path:
    """flickr8k (30 train images × 2 captions = 60 pairs) and a 3-class cifar10 ImageFolder test split."""
    fx.write_flickr8k(root, {"train": 30, "dev": 6, "test": 8}, captions_per_image=2)
    # colours after flickr8k's: an evaluated image must not also be a training image (alignbench.split_guard)
    fx.write_image_folder(root / "cifar10" / "test", {"airplane": 3, "cat": 3, "dog": 3}, start=100)
    return root


def sweep_args(results: Path, *, methods="cca,asif", budgets="20,40", seeds="0,1", extra=()) -> list[str]:
    """``results``/runs gets the result JSONs, ``results``/sweeps the ledger and logs."""
    return ["sweep", "--methods", methods, "--pairs", PAIR, "--budgets", budgets, "--seeds", seeds,
            "--evals", EVALS, "--results", str(results / "runs"), *extra]


def cli(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    """``alignbench …`` in a fresh process (as a user types it)."""
    return subprocess.run([sys.executable, "-m", "alignbench.cli", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def metrics_by_run(runs_dir: Path) -> dict[str, dict]:
    """{run_id: metrics} of every result JSON (each must parse: no partial files)."""
    out = {}
    for p in sorted(runs_dir.glob("*.json")):
        if p.name.endswith(".failed.json"):
            continue
        rec = json.loads(p.read_text())
        out[rec["run_id"]] = rec["metrics"]
    return out


def ledger_of(results: Path) -> dict:
    paths = sorted((results / "sweeps").glob("*.json"))
    assert len(paths) == 1, paths
    return json.loads(paths[0].read_text())
