"""Probe: ``kill -9`` in the middle of ``alignbench run`` leaves nothing half-written; a rerun completes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fixtures_layouts as fx

from alignbench.devices import parse_device
from alignbench.results import ResultStore, validate_record

PAIR = "tiny-vit+tiny-text"
REPO = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path) -> list[str]:
    return [sys.executable, "-m", "alignbench.cli", "run", "--pair", PAIR, "--data-root", str(tmp_path / "data"),
            "--cache", str(tmp_path / "features"), "--results", str(tmp_path / "runs"), "--no-progress",
            "--methods", "asif,random", "--budget", "10", "--seeds", "0-1", "--device", "auto",
            "--evals", "retrieval:flickr8k:test"]  # fmt: skip


def _results(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.json") if not p.name.startswith("."))


def test_kill_9_during_run_then_rerun_completes(tmp_path):
    fx.write_flickr8k(tmp_path / "data", {"train": 12, "dev": 3, "test": 4}, captions_per_image=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_run(tmp_path), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    runs = tmp_path / "runs"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and len(_results(runs) if runs.is_dir() else []) < 1:
        time.sleep(0.05)
    assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()

    survivors = _results(runs)
    assert 1 <= len(survivors) < 4
    for p in survivors:  # every visible file is a whole, valid result
        assert validate_record(json.loads(p.read_text())) is None, p

    done = subprocess.run(_run(tmp_path), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"4 run(s): {4 - len(survivors)} to do, {len(survivors)} already done" in done.stderr
    records = ResultStore(runs).load_all()
    assert len(records) == 4 and not ResultStore(runs).skipped
    # with --device auto the result records the device that ran, not the word "auto"
    assert {r["provenance"]["device"] for r in records} == {parse_device("auto").resolved}
