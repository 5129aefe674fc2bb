"""Optuna studies on disk: one SQLite file per (pair, budget) under the results folder.

Why SQLite: an interrupted ``alignbench tune`` resumes where it stopped (an
interrupted trial is queued again with the same parameters, so none is lost)
and two tune processes can share a file: a file lock beside it (``study_lock``)
serialises opening a study, re-queueing and claiming the next trial, so
together they run exactly ``--trials`` trials, and each opening seeds its
sampler differently, so they do not draw the same configurations.  Each study records what it was made
for (pair, budget, method and fixed options, objective, seeds, splits, search
space); opening it for anything else is an error rather than a silent mix.
"""
from __future__ import annotations

import functools
import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from alignbench.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_TUNE_DIR = "results/tune"
_FINISHED = ("COMPLETE", "PRUNED")


@dataclass(frozen=True)
class StudyKey:
    """Everything a study's trials are comparable under."""

    method: str
    pair: str
    budget: int | str
    objective: str = "recall"
    seeds: tuple[int, ...] = (0,)
    fixed: tuple[tuple[str, Any], ...] = ()
    train: str = "flickr8k:train"
    val: str = "flickr8k:dev"

    @property
    def name(self) -> str:
        opts = "".join(f":{k}={v}" for k, v in self.fixed)
        return f"{self.method}{opts}|{self.objective}|seeds={','.join(map(str, self.seeds))}"

    def attrs(self) -> dict[str, Any]:
        d = asdict(self)
        d["seeds"], d["fixed"] = list(self.seeds), [list(kv) for kv in self.fixed]
        return d


def study_file(tune_dir: str | Path, pair: str, budget: int | str) -> Path:
    return Path(tune_dir) / f"{re.sub(r'[^A-Za-z0-9_.+-]', '_', pair)}-b{budget}.db"


def study_lock(path: Path):
    """The file lock of study file ``path`` (a FileLock beside it; hold it briefly, never during a trial)."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock")


# A trial's process writes a heartbeat every HEARTBEAT_S; a RUNNING trial whose last heartbeat is older than
# GRACE_S belongs to a process that died (kill -9, a lost node): it is failed and re-queued (reclaim_stale).
HEARTBEAT_S = 60
GRACE_S = 180


@functools.cache
def _shielded_storage_class() -> type:
    """optuna's RDBStorage with every method run under ``interrupts.shielded()``.

    Why: a Ctrl-C or SIGTERM raised mid-commit leaves the SQLite lock held, and the
    interrupted trial's own FAIL write then waits out the busy timeout.
    """
    import inspect

    import optuna

    from alignbench.interrupts import shield

    base = optuna.storages.RDBStorage
    methods = {name: shield(fn) for name, fn in vars(base).items()
               if inspect.isfunction(fn) and (name == "__init__" or not name.startswith("__"))}
    return type("ShieldedRDBStorage", (base,), {**methods, "__module__": __name__})


def _storage(path: Path):
    import warnings

    import optuna

    path.parent.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat: experimental
    return _shielded_storage_class()(
        f"sqlite:///{path}", engine_kwargs={"connect_args": {"timeout": 120}},
        heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,  # a killed process's RUNNING trial turns FAIL, then is re-queued
    )


def _check_file(storage: Any, path: Path, key: StudyKey) -> None:
    """Every study in ``path`` must be for ``key``'s pair and budget."""
    import optuna

    for s in optuna.get_all_study_summaries(storage):
        pair, budget = s.user_attrs.get("pair"), s.user_attrs.get("budget")
        if (pair, str(budget)) != (key.pair, str(key.budget)):
            raise ConfigError(f"study file {path} holds studies of pair {pair} budget {budget}, not pair {key.pair} "
                              f"budget {key.budget}; use the file alignbench tune makes for that pair and budget")


# Median pruning, no decision before epoch PRUNE_WARMUP_EPOCHS nor before PRUNE_STARTUP_TRIALS trials ended.
# Chosen by replaying the recorded --no-prune linear study at 1k (benchmarks/replay_pruner.py): with a warm-up
# of 5 the pruner stopped the study's best trial, because early val losses rank how fast a setting learns, not
# where it ends (at 1k one epoch is one optimiser step).  Replays of more studies are in results/tuned/TABLE.md.
PRUNE_WARMUP_EPOCHS = 15
PRUNE_STARTUP_TRIALS = 3


def make_pruner(warmup: int | None = None, startup: int | None = None) -> Any:
    """The pruner every new study uses (its settings are part of what a tuned table was made with)."""
    import optuna

    return optuna.pruners.MedianPruner(
        n_startup_trials=PRUNE_STARTUP_TRIALS if startup is None else startup,
        n_warmup_steps=PRUNE_WARMUP_EPOCHS if warmup is None else warmup)


def open_study(path: Path, key: StudyKey, space: dict[str, str], *, seed: int):
    """The study for ``key`` in ``path`` (made if new), its recorded key and space checked.

    Call it holding ``study_lock(path)``: a second process must not see a new
    study before its key is recorded.  The sampler's seed is ``seed`` plus the
    number of earlier openings (kept in the study), so a first run is
    reproducible while a resumed run or a second process does not replay the
    same draws.
    """
    import optuna

    from alignbench.tuning import OBJECTIVES, SPLIT_PROTOCOL

    storage = _storage(path)
    _check_file(storage, path, key)
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    existed = key.name in names
    study = optuna.create_study(
        storage=storage, study_name=key.name, direction=OBJECTIVES[key.objective], load_if_exists=True,
        pruner=make_pruner(),
    )
    openings = int(study.user_attrs.get("openings", 0))
    study.sampler = optuna.samplers.TPESampler(seed=seed + openings)
    study.set_user_attr("openings", openings + 1)
    want = {**key.attrs(), "space": space, "split_protocol": SPLIT_PROTOCOL}
    if not existed:
        for k, v in want.items():
            study.set_user_attr(k, v)
        study.set_user_attr("pruner", {"kind": "median", "warmup_epochs": PRUNE_WARMUP_EPOCHS,
                                       "startup_trials": PRUNE_STARTUP_TRIALS})
    else:
        # a resumed study keeps the pruner it was made with, whatever today's default is
        made = study.user_attrs.get("pruner") or {}
        study.pruner = make_pruner(int(made.get("warmup_epochs", PRUNE_WARMUP_EPOCHS)),
                                   int(made.get("startup_trials", PRUNE_STARTUP_TRIALS)))
        have = {k: study.user_attrs.get(k) for k in want}
        diff = [k for k in want if json.dumps(have[k], sort_keys=True) != json.dumps(want[k], sort_keys=True)]
        if diff:
            raise ConfigError(f"study {key.name!r} in {path} was made with other {', '.join(diff)} "
                              f"({', '.join(f'{k}={have[k]}' for k in diff)}); keep them or use another --tune-dir")
    return study


def requeue_interrupted(study: Any) -> int:
    """Queue again every failed trial that was interrupted (not an error) and is not queued yet; returns how many."""
    from optuna.trial import TrialState

    retried = {t.user_attrs.get("retry_of") for t in study.trials}
    n = 0
    for t in study.trials:
        if t.state == TrialState.FAIL and "error" not in t.user_attrs and t.number not in retried and t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            n += 1
    if n:
        log.info("%s: re-queued %d interrupted trial(s)", study.study_name, n)
    return n


def reclaim_stale(study: Any) -> int:
    """Fail the RUNNING trials of dead processes (no heartbeat for GRACE_S), then re-queue every interrupted trial.

    Why here and not only in optuna's optimize: a killed trial counts as running (``claimed``), so once the
    other slots are taken optimize is never called again and, without this, the study would stay a trial short.
    """
    import optuna

    optuna.storages.fail_stale_trials(study)
    return requeue_interrupted(study)


def finished(study: Any) -> int:
    return sum(t.state.name in _FINISHED for t in study.trials)


def claimed(study: Any) -> int:
    """Trials finished or running (in this or another process): what counts against ``--trials``."""
    return sum(t.state.name in (*_FINISHED, "RUNNING") for t in study.trials)


@dataclass
class TunedConfig:
    """The best trial of a study, as ``:tuned`` runs use it."""

    study: str
    file: str
    params: dict[str, Any]
    value: float
    trial: int
    objective: str
    n_trials: int
    space: dict[str, str] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return asdict(self)


def tune_command(key: StudyKey) -> str:
    opts = "".join(f":{k}={v}" for k, v in key.fixed)
    return (f"alignbench tune --methods {key.method}{opts} --pair {key.pair} --budget {key.budget} "
            f"--seeds {','.join(map(str, key.seeds))} --objective {key.objective}")


# Waiting on trials another process runs (``tune`` for its study's last trials, ``:tuned`` for a study still being
# tuned) looks again every WAIT_POLL_S; once none runs, ``:tuned`` looks once more after SETTLE_S (a tune
# process is between two trials for a moment).
WAIT_POLL_S = 15.0
SETTLE_S = 10.0


def live_trials(storage: Any, study: Any) -> int:
    """RUNNING trials whose process is alive (a heartbeat within GRACE_S, or none written yet)."""
    try:  # optuna's own staleness rule (what fail_stale_trials uses), without failing anything
        stale = set(storage._get_stale_trial_ids(study._study_id))
        return sum(t.state.name == "RUNNING" and t._trial_id not in stale for t in study.trials)
    except AttributeError:  # another optuna: no way to tell a dead trial, so count every RUNNING one
        import optuna

        log.warning("optuna %s does not expose trial heartbeats: every running trial counts as alive",
                    optuna.__version__)
        return sum(t.state.name == "RUNNING" for t in study.trials)


def _await_live_trials(storage: Any, study: Any, path: Path, wait: bool) -> int:
    """Wait while other processes run trials of ``study`` (``wait``); the live trials left (0 after waiting)."""
    told, seen = False, None
    while True:
        live = live_trials(storage, study)
        if not live and told:
            time.sleep(SETTLE_S)
            live = live_trials(storage, study)
        if not live or not wait:
            return live
        if not told:
            log.warning("study %r in %s: %d trial(s) running in another process (alignbench tune); waiting for them, "
                        "so that :tuned takes the best of the whole study (--tuned-now takes the best finished "
                        "trial now)", study.study_name, path, live)
            told = True
        if seen != (done := finished(study)):
            log.info("study %r: %d trial(s) finished, %d running", study.study_name, done, live)
            seen = done
        time.sleep(WAIT_POLL_S)


def best_config(tune_dir: str | Path, key: StudyKey, *, wait: bool = True) -> TunedConfig:
    """The best finished trial of ``key``'s study; ConfigError naming the tune command when there is none.

    Trials another live process is running are waited for (``wait``), else
    the best finished one is taken with a warning that it may still change.
    """
    import optuna

    path = study_file(tune_dir, key.pair, key.budget)
    hint = f"; make it with: {tune_command(key)}"
    if not path.exists():
        raise ConfigError(f"no tuning study file {path} for pair {key.pair} budget {key.budget}{hint}")
    storage = _storage(path)
    _check_file(storage, path, key)
    if key.name not in {s.study_name for s in optuna.get_all_study_summaries(storage)}:
        raise ConfigError(f"no tuning study {key.name!r} in {path}{hint}")
    study = optuna.load_study(study_name=key.name, storage=storage)
    live = _await_live_trials(storage, study, path, wait)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not done:
        raise ConfigError(f"study {key.name!r} in {path} has no finished trial yet{hint}")
    if live:
        log.warning("study %r in %s is still running (%d trial(s) in progress, %d finished): :tuned takes the best "
                    "finished trial, which may still change, and the table will say its study was smaller",
                    key.name, path, live, finished(study))
    if dead := sum(t.state.name == "RUNNING" for t in study.trials) - live:
        log.warning("study %r in %s has %d trial(s) whose tune process died; :tuned takes the best of the %d "
                    "finished (the tune command re-runs them: %s)", key.name, path, dead, finished(study),
                    tune_command(key))
    best = study.best_trial
    return TunedConfig(study=key.name, file=str(path), params=dict(best.params), value=float(best.value),
                       trial=best.number, objective=key.objective, n_trials=finished(study),
                       space=dict(study.user_attrs.get("space", {})))


def find_tuned(tune_dir: str | Path, method: str, fixed: dict[str, Any], pair: str, budget: int | str,
               objective: str = "recall", *, wait: bool = True) -> TunedConfig:
    """The best config for ``method:fixed`` at (pair, budget): from its study (any seeds; the most trials wins).

    ConfigError saying which ``alignbench tune`` command makes the study when there is none.
    """
    fixed_t = tuple(sorted((k, str(v)) for k, v in fixed.items()))
    key = StudyKey(method, pair, budget, objective, (0,), fixed_t)
    path = study_file(tune_dir, pair, budget)
    candidates = []
    if path.exists():
        import optuna

        storage = _storage(path)
        _check_file(storage, path, key)
        for s in optuna.get_all_study_summaries(storage):
            a = s.user_attrs
            if (a.get("method"), a.get("objective")) == (method, objective) and \
                    sorted(tuple(kv) for kv in a.get("fixed", [])) == sorted(fixed_t):
                candidates.append((s.n_trials, s.study_name, tuple(a.get("seeds", [0]))))
    if not candidates:
        raise ConfigError(f"{method}:tuned has no tuning study for pair {pair} budget {budget} in {tune_dir}; "
                          f"make it with: {tune_command(key)}")
    _, _, seeds = max(candidates)
    return best_config(tune_dir, StudyKey(method, pair, budget, objective, seeds, fixed_t), wait=wait)


def status_rows(tune_dir: str | Path) -> list[dict[str, Any]]:
    """One row per study in ``tune_dir``: trials by state, epochs and seconds spent, best value and config.

    ``trial s`` sums the wall time of the finished trials (complete or pruned): what the study
    cost, read from the study itself, whatever processes and sessions ran it (a trial that was
    interrupted and re-run counts once: its re-run, plus the part of its first run that the re-run
    resumed from a checkpoint, ``earlier_s``).
    """
    import optuna

    rows = []
    for path in sorted(Path(tune_dir).glob("*.db")):
        storage = _storage(path)
        for s in optuna.get_all_study_summaries(storage, include_best_trial=True):
            study = optuna.load_study(study_name=s.study_name, storage=storage)
            states = [t.state.name for t in study.trials]
            epochs = sum(int(t.user_attrs.get("epochs", 0)) for t in study.trials)
            seconds = sum(trial_seconds(t) for t in study.trials if t.state.name in _FINISHED)
            best = s.best_trial
            rows.append({
                "file": path.name, **_name_columns(s.study_name), "pair": s.user_attrs.get("pair"),
                "budget": s.user_attrs.get("budget"), "complete": states.count("COMPLETE"),
                "pruned": states.count("PRUNED"), "failed": states.count("FAIL"),
                "running": states.count("RUNNING") + states.count("WAITING"), "epochs": epochs,
                "trial s": round(seconds),
                "best": None if best is None else round(float(best.value), 4),
                "config": "" if best is None else " ".join(f"{k}={_short(v)}" for k, v in best.params.items()),
            })  # fmt: skip
    return rows


def trial_seconds(trial: Any) -> float:
    """Wall time of a finished trial, plus what a re-run resumed from its interrupted first run's checkpoint."""
    if not (trial.datetime_start and trial.datetime_complete):
        return 0.0
    return (trial.datetime_complete - trial.datetime_start).total_seconds() + float(trial.user_attrs.get("earlier_s", 0))


def log_finished_trial(study: Any, trial: Any) -> None:
    """Optuna callback: one log line per finished trial.

    Why: ``alignbench tune`` quiets optuna's own INFO lines (they would break the progress bar), so
    without this a ``-v --no-progress`` log of a day-long study says nothing between its first and last line.
    """
    value = "" if trial.value is None else f" {trial.value:.4g}"
    if trial.state.name == "PRUNED":  # optuna stores the last report as its value: a signed val loss, not the objective
        value = _pruned_at(study, trial)
    epochs = f", {trial.user_attrs['epochs']} epoch(s)" if trial.user_attrs.get("epochs") else ""  # 0: closed form
    params = " ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    log.info("%s: trial %d %s%s in %.0f s%s: %s", study.study_name, trial.number, trial.state.name.lower(), value,
             trial_seconds(trial), epochs, params)


def _pruned_at(study: Any, trial: Any) -> str:
    """`` at epoch 15 (dev val loss 6.11)``: the last loss the pruner saw.

    tuning.py reports the val loss negated when the study maximises, so the sign comes from the study's direction.
    """
    if "diverged" in trial.user_attrs:
        return " (training diverged)"
    if not trial.intermediate_values:
        return ""
    epoch, reported = max(trial.intermediate_values.items())
    val = -reported if study.direction.name == "MAXIMIZE" else reported
    return f" at epoch {epoch} (dev val loss {val:.4g})"


def _name_columns(study_name: str) -> dict[str, str]:
    """``pal:K=64|recall|seeds=0`` → method, objective and seeds columns (a ``|`` would split a Markdown cell)."""
    method, _, rest = study_name.partition("|")
    objective, _, seeds = rest.partition("|")
    return {"method": method, "objective": objective, "seeds": seeds.removeprefix("seeds=")}


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
