"""Replay a recorded ``--no-prune`` study under other pruner settings: epochs saved vs the best trial kept.

A ``--no-prune`` study keeps every trial's per-epoch curve (what a pruner would see) and its final score, so
any pruner can be replayed on it offline, in trial order, without fitting anything.  The setting
``alignbench tune`` uses (``studies.make_pruner``) is marked.

    python benchmarks/replay_pruner.py results/tuned/cost/linear-noprune-effnet-lite0+minilm-l6-b1000.db

Prints, per (warm-up epochs, startup trials): how many times fewer epochs than no pruning, the best score
among trials that were not pruned, and how many were not pruned.
"""
from __future__ import annotations

import argparse


def replay(trials: list, warmup: int, startup: int) -> tuple[int, float, int]:
    import optuna

    from alignbench.studies import make_pruner

    study = optuna.create_study(direction="maximize", pruner=make_pruner(warmup, startup))
    spent, kept = 0, []
    for t in trials:
        live = study.ask()
        pruned = False
        for step, value in sorted(t.intermediate_values.items()):
            spent += 1
            live.report(value, step)
            if live.should_prune():
                pruned = True
                break
        if pruned:
            study.tell(live, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(live, t.value)
            kept.append(t.value)
    return spent, max(kept), len(kept)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study_db", help="a study file made with alignbench tune --no-prune")
    p.add_argument("--warmups", default="5,10,15,20")
    p.add_argument("--startups", default="3,5")
    args = p.parse_args(argv)

    import optuna
    from tabulate import tabulate

    from alignbench.studies import PRUNE_STARTUP_TRIALS, PRUNE_WARMUP_EPOCHS

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{args.study_db}"
    rows = []
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        if study.direction != optuna.study.StudyDirection.MAXIMIZE:
            raise SystemExit(f"{summary.study_name}: replay assumes a maximised objective (recall)")
        trials = [t for t in study.trials if t.state.name == "COMPLETE" and t.intermediate_values]
        full = sum(len(t.intermediate_values) for t in trials)
        best = max(t.value for t in trials)
        for w in (int(x) for x in args.warmups.split(",")):
            for s in (int(x) for x in args.startups.split(",")):
                spent, kept_best, kept = replay(trials, w, s)
                mark = "<- alignbench tune" if (w, s) == (PRUNE_WARMUP_EPOCHS, PRUNE_STARTUP_TRIALS) else ""
                rows.append([summary.study_name, w, s, f"{full / spent:.2f}", kept_best, best, f"{kept}/{len(trials)}",
                             mark])
    print(tabulate(rows, headers=["study", "warm-up", "startup", "fewer epochs", "best kept", "best of all",
                                  "not pruned", ""]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
