"""benchmarks/replay_pruner.py: the pruning-cost figures in results/tuned/TABLE.md come from it, so check its counts."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]


def _noprune_study(path: Path, name: str, curves: list[list[float]], values: list[float]) -> None:
    study = optuna.create_study(storage=f"sqlite:///{path}", study_name=name, direction="maximize")
    for curve, value in zip(curves, values):
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.COMPLETE, value=value,
            # tuning reports −val loss to a maximised study (alignbench.tuning.run_trial)
            intermediate_values={epoch: -loss for epoch, loss in enumerate(curve, start=1)}))


def test_replay_counts_epochs_with_and_without_pruning_over_all_studies(tmp_path):
    # three startup trials whose losses fall from 2.0, then one whose loss stays at 5.0: the median pruner stops it
    # at the end of the warm-up
    good = [[2.0 - k / 30 for k in range(30)]] * 3
    bad = [[5.0] * 30]
    _noprune_study(tmp_path / "a.db", "linear|recall|seeds=0", good + bad, [10.0, 11.0, 12.0, 3.0])
    _noprune_study(tmp_path / "b.db", "pal|recall|seeds=0", good, [1.0, 2.0, 3.0])
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "replay_pruner.py"), str(tmp_path / "a.db"),
                          str(tmp_path / "b.db"), "--warmups", "10", "--startups", "3"],
                         capture_output=True, text=True, check=True).stdout
    totals = out.split("\n\n")[1]
    row = [line.split() for line in totals.splitlines() if line.strip().startswith("10")][0]
    # unpruned: 7 trials x 30 epochs; pruned: the bad trial stops after 10 (optuna decides from step = warm-up on)
    assert row[:6] == ["10", "3", f"{210 / 190:.2f}", "210", "190", "2/2"], out
    assert "a: linear" in out and "b: pal" in out
