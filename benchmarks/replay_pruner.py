"""Replay a recorded ``--no-prune`` study under other pruner settings: epochs saved vs the best trial kept.

A ``--no-prune`` study keeps every trial's per-epoch curve (what a pruner would see) and its final score, so
any pruner can be replayed on it offline, in trial order, without fitting anything.  The setting
``alignbench tune`` uses (``studies.make_pruner``) is marked.

    python benchmarks/replay_pruner.py results/tuned/cost/*-noprune-*.db

Prints, per study and (warm-up epochs, startup trials): how many times fewer epochs than no pruning, the best
score among trials that were not pruned, and how many were not pruned; then, per setting, the same over all the
studies given (total epochs without pruning ÷ with it, and in how many studies the best trial survived): the
issue's target is about a whole ``alignbench tune``, not one method's study.
"""
from __future__ import annotations

import argparse
from pathlib import Path


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


def _mark(warmup: int, startup: int) -> str:
    from alignbench.studies import PRUNE_STARTUP_TRIALS, PRUNE_WARMUP_EPOCHS

    return "<- alignbench tune" if (warmup, startup) == (PRUNE_WARMUP_EPOCHS, PRUNE_STARTUP_TRIALS) else ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study_db", nargs="+", help="study files made with alignbench tune --no-prune")
    p.add_argument("--warmups", default="5,10,15,20")
    p.add_argument("--startups", default="3,5")
    args = p.parse_args(argv)

    import optuna
    from tabulate import tabulate

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows, totals = [], {}
    for db in args.study_db:
        storage = f"sqlite:///{db}"
        for summary in optuna.get_all_study_summaries(storage):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            if study.direction != optuna.study.StudyDirection.MAXIMIZE:
                raise SystemExit(f"{summary.study_name}: replay assumes a maximised objective (recall)")
            trials = [t for t in study.trials if t.state.name == "COMPLETE" and t.intermediate_values]
            if not trials:
                continue
            full = sum(len(t.intermediate_values) for t in trials)
            best = max(t.value for t in trials)
            name = f"{Path(db).stem}: {summary.study_name.split('|')[0]}"
            for w in (int(x) for x in args.warmups.split(",")):
                for s in (int(x) for x in args.startups.split(",")):
                    spent, kept_best, kept = replay(trials, w, s)
                    total = totals.setdefault((w, s), [0, 0, 0, 0])
                    total[0] += full
                    total[1] += spent
                    total[2] += kept_best == best
                    total[3] += 1
                    rows.append([name, w, s, f"{full / spent:.2f}", f"{kept_best:.2f}", f"{best:.2f}",
                                 f"{kept}/{len(trials)}", _mark(w, s)])
    print(tabulate(rows, headers=["study", "warm-up", "startup", "fewer epochs", "best kept", "best of all",
                                  "not pruned", ""]))
    print()
    print(tabulate([[w, s, f"{full / spent:.2f}", full, spent, f"{best}/{n}", _mark(w, s)]
                    for (w, s), (full, spent, best, n) in totals.items()],
                   headers=["warm-up", "startup", "fewer epochs, all studies", "epochs unpruned", "epochs pruned",
                            "studies keeping their best", ""]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
