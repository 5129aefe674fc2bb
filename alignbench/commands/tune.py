"""``alignbench tune``: search each method's declared space on the validation split only (Optuna).

Every method in one command gets the same number of trials, the same
objective and the same seeds (METHODS.md, "Comparing methods fairly").  The
split protocol is ``alignbench.tuning``'s; the studies live in SQLite files
under ``--tune-dir`` (``alignbench.studies``), so rerunning the command
resumes and ``--status`` lists them.  ``alignbench run --methods pal:tuned``
then runs the best configuration.
"""
from __future__ import annotations

import argparse
import sys
import time

from alignbench.studies import WAIT_POLL_S  # seconds between two looks at trials another process runs

HELP = "tune methods' hyperparameters on the validation split (Optuna TPE, median pruning, SQLite studies)"
EXAMPLES = [
    "alignbench tune --methods pal,linear,csa,asif --budget 1k,10k --trials 20 --seeds 0",
    "alignbench tune --methods structure --params lam,lambda_warmup_epochs --budget 1k",
    "alignbench tune --methods pal,linear --objective val_loss --budget 1k",
    "alignbench tune --status",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", "--method", dest="methods", default=None,
                   help="comma-separated methods, options after ':' stay fixed (e.g. pal:center=both,linear)")
    p.add_argument("--budget", "--budgets", dest="budget", default="10k", help="paired-data budget(s) (default: 10k)")
    p.add_argument("--pair", "--pairs", dest="pair", default=None,
                   help="encoder pair(s) VISION+TEXT or 'all' (default: effnet-lite0+minilm-l6)")
    p.add_argument("--seeds", "--seed", dest="seeds", default="0",
                   help="seeds each trial fits (objective = their mean; default: 0)")
    p.add_argument("--trials", type=int, default=20, help="finished trials per study, every method alike (default: 20)")
    p.add_argument("--objective", default="recall", choices=("recall", "val_loss"),
                   help="recall: mean validation R@1 both ways (default); val_loss: validation InfoNCE (trained methods)")
    p.add_argument("--params", default=None, help="search only these parameters of each method's space, e.g. lr,tau_p")
    p.add_argument("--no-prune", action="store_true", help="no median pruning of trained methods' trials")
    p.add_argument("--no-wait", action="store_true",
                   help="end once every trial is finished or running, without waiting for the trials another process "
                        "sharing the study still runs (by default tune ends when its study is complete, so "
                        "`tune && run --methods M:tuned` uses the whole study)")
    p.add_argument("--train", default="flickr8k:train", help="training pairs DATASET:SPLIT (default: flickr8k:train)")
    p.add_argument("--val", default="flickr8k:dev", help="validation pairs DATASET:SPLIT, cut in two by image "
                   "(early stopping / objective; default: flickr8k:dev)")
    p.add_argument("--tune-dir", default=None, help="folder of the study files (default: results/tune)")
    p.add_argument("--data-root", default=None, help="datasets folder (default: $ALIGNBENCH_DATA)")
    p.add_argument("--cache", default=None, help="feature cache folder (default: $ALIGNBENCH_CACHE)")
    p.add_argument("--device", default="auto", help="device for fitting: cpu, cuda, cuda:1 or auto (default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--status", action="store_true", help="list the studies: trials, best value and config")


def main(args: argparse.Namespace) -> int:
    from alignbench.studies import DEFAULT_TUNE_DIR

    tune_dir = args.tune_dir or DEFAULT_TUNE_DIR
    if args.status:
        return _status(tune_dir)
    plan = build_plan(args)
    from alignbench.devices import parse_device

    device = parse_device(args.device).resolved
    for pair, budget, entries in plan:
        _tune_pair_budget(args, tune_dir, pair, budget, entries, device)
    return 0


def build_plan(args: argparse.Namespace) -> list:
    """[(pair, budget, [(StudyKey, space)])], every name, option and parameter checked before any data is read."""
    from alignbench.config import DEFAULT_PAIR, OFFLINE_PAIRS, parse_budgets, parse_method_spec, parse_seeds, \
        split_list, split_methods
    from alignbench.errors import ConfigError
    from alignbench.registry import METHODS
    from alignbench.runner import _check_pair
    from alignbench.search_space import space_for
    from alignbench.studies import StudyKey
    from alignbench.tuning import check_objective

    if args.trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {args.trials}")
    if not args.methods:
        raise ConfigError("say which methods to tune, e.g. --methods pal,linear,csa,asif")
    pairs = list(OFFLINE_PAIRS) if args.pair == "all" else split_list(args.pair) or [DEFAULT_PAIR]
    for pair in pairs:
        _check_pair(pair)
    seeds = tuple(parse_seeds(args.seeds))
    only = split_list(args.params) or None
    methods = []
    for text in split_methods(args.methods):
        if "tuned" in text.split(":")[1:]:
            raise ConfigError(f"{text}: ':tuned' is for alignbench run; tune searches the method's space")
        name, options = parse_method_spec(text)
        name = METHODS.canonical(name)
        METHODS.get(name).Config().update(options)  # ConfigError on unknown / bad fixed options
        check_objective(name, args.objective)
        methods.append((name, tuple(sorted(options.items()))))
    if only:  # each name must belong to some method's space ("did you mean" from the first one otherwise)
        for n in only:
            if not any(n in space_for(m) for m, _ in methods):
                space_for(methods[0][0], [n])
    plan = []
    for pair in pairs:
        for budget in parse_budgets(args.budget):
            entries = []
            for name, fixed in methods:
                own = [n for n in only if n in space_for(name)] if only else None
                if only and not own:
                    raise ConfigError(f"none of --params {','.join(only)} is in {name}'s search space "
                                      f"({', '.join(space_for(name))})")
                space = space_for(name, own, dict(fixed))
                if not space:
                    raise ConfigError(f"{name}: every parameter of its space is fixed by its options; nothing to tune")
                key = StudyKey(name, pair, budget, args.objective, seeds, fixed, args.train, args.val)
                entries.append((key, space))
            plan.append((pair, budget, entries))
    return plan


def _tune_pair_budget(args, tune_dir: str, pair: str, budget, entries: list, device: str) -> None:
    from alignbench.refs import resolve_split_ref
    from alignbench.search_space import describe_space
    from alignbench.source import FeatureSource
    from alignbench.store import FeatureStore
    from alignbench.studies import GRACE_S, finished, open_study, reclaim_stale, study_file, study_lock
    from alignbench.tuning import is_trained, load_tune_data, run_trial

    source = FeatureSource(pair, store=FeatureStore(args.cache) if args.cache else None, data_root=args.data_root,
                           progress=not args.no_progress)
    train, val = (resolve_split_ref(text, default, source.dataset) for text, default in ((args.train, "train"),
                                                                                      (args.val, "dev")))
    data = load_tune_data(source, train, val, budget, list(entries[0][0].seeds))
    path = study_file(tune_dir, pair, budget)
    lock = study_lock(path)
    for key, space in entries:
        with lock:
            study = open_study(path, key, describe_space(space), seed=key.seeds[0])
            reclaim_stale(study)
        left = args.trials - finished(study)
        label = f"{key.name} ({pair}, budget {budget})"
        if left <= 0:
            print(f"{label}: {finished(study)} trial(s) finished, nothing to do", file=sys.stderr)
            continue
        print(f"{label}: {left} trial(s) to run", file=sys.stderr)
        import optuna

        from alignbench.registry import METHODS

        prune = not args.no_prune and is_trained(METHODS.get(key.method))
        t0 = time.perf_counter()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        _optimize(study, lock, args.trials,
                  lambda trial: run_trial(trial, key.method, dict(key.fixed), space, data, key.objective, prune, device,
                                          checkpoints=path),
                  wait=not args.no_wait, label=label)
        best = study.best_trial if any(t.state.name == "COMPLETE" for t in study.trials) else None
        if finished(study) < args.trials:  # the rest are running in another process sharing the study
            print(f"{label}: {args.trials - finished(study)} trial(s) still running elsewhere (one of a killed tune "
                  f"counts as running until {GRACE_S} s after its last heartbeat; the same command then re-runs it)",
                  file=sys.stderr)
        print(f"{label}: done in {time.perf_counter() - t0:.1f} s; best {None if best is None else round(best.value, 4)} "
              f"{'' if best is None else best.params} ({path})", file=sys.stderr)


def _optimize(study, lock, trials: int, objective, *, wait: bool = True, label: str = "") -> None:
    """Run trials one at a time until ``trials`` are finished (or, ``wait=False``, finished or running) in any
    process sharing the study.

    The next trial is claimed (created RUNNING) while holding the study's file
    lock, and the lock is let go as the trial starts, so two processes never
    both take the last slot.  Waiting for the other processes' last trials also
    catches one that dies meanwhile: once its heartbeat is stale it is re-queued
    and run here.
    """
    from alignbench.studies import GRACE_S, claimed, finished, log_finished_trial, reclaim_stale

    def run(trial):
        lock.release()
        return objective(trial)

    told = False
    while True:
        lock.acquire()
        try:
            reclaim_stale(study)
            if claimed(study) >= trials:
                if not wait or finished(study) >= trials:
                    return
                if not told:
                    print(f"{label}: waiting for {trials - finished(study)} trial(s) running in another process "
                          f"(one whose process died is re-run here {GRACE_S} s after its last heartbeat; "
                          "--no-wait ends now)", file=sys.stderr)
                    told = True
                lock.release()
                time.sleep(WAIT_POLL_S)
                continue
            study.optimize(run, n_trials=1, callbacks=[log_finished_trial])
        finally:
            if lock.is_locked:
                lock.release()


def _status(tune_dir: str) -> int:
    from tabulate import tabulate

    from alignbench.studies import status_rows

    rows = status_rows(tune_dir)
    if not rows:
        print(f"no studies in {tune_dir}; make some with alignbench tune --methods …", file=sys.stderr)
        return 0
    print(tabulate(rows, headers="keys", tablefmt="github"))
    return 0
