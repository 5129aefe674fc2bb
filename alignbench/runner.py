"""Execute one run: the single function local, debug and SLURM execution all call.

``run_one(run)`` is a pure function of the ResolvedRun (alignbench.identity)
and the cached features: it encodes (or loads) what the run reads, subsamples
the training pairs (nested by seed), fits the method, evaluates every
evaluation and writes ONE result JSON atomically.  A failed run leaves
``<spec_key>.failed.json`` with its traceback beside the results (so a sweep
can report it) and re-raises; it never touches another run's file.

Kept free of module-level heavy imports and inside the installed package, so
submitit can pickle a reference to it and import it in a job.
"""
from __future__ import annotations

import logging
import os
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from alignbench.config import RunSpec, resolve_budget
from alignbench.errors import AlignbenchError
from alignbench.identity import EvalSpec, ResolvedRun, Resolver, parse_split_ref  # noqa: F401  (parse_split_ref re-exported)
from alignbench.results import SCHEMA_VERSION, ResultStore
from alignbench.run_lock import RunBusy, holding_fit

log = logging.getLogger(__name__)

_SUBSAMPLE_SALT = 0x5EED  # keeps the pair subsample stream apart from the method's own seed use


# -- spec parsing (EvalSpec and split references live in alignbench.identity) -----------
def validate_spec(spec: RunSpec) -> None:
    """Check every name and hyperparameter in ``spec`` without reading data or encoding.

    Raises UnknownNameError (with "did you mean"), ConfigError, DataError (no such
    split) or AlignbenchError (a task asked for a dataset of the wrong kind).
    """
    from alignbench.registry import DATASETS, METHODS, TASKS
    from alignbench.refs import resolve_split_ref

    cls = METHODS.get(spec.method)
    cls.Config().update(dict(spec.method_options))  # ConfigError on unknown / bad hyperparameters
    _check_pair(spec.pair)
    for ref, default in ((spec.train, "train"), (spec.val, "dev")):
        if ref:
            resolve_split_ref(ref, default, DATASETS.get)
    for text in spec.evals:
        ev = EvalSpec.parse(text).resolved()  # task options checked against the dataset (a threshold needs a background)
        ds_cls = DATASETS.get(ev.dataset)
        TASKS.get(ev.task)().check_dataset(ev.dataset, getattr(ds_cls, "kind", ""))


def _check_pair(pair: str) -> None:
    """VISION+TEXT with both names known (UnknownNameError with "did you mean" otherwise)."""
    from alignbench.encoders import parse_pair

    parse_pair(pair)


# -- budgets --------------------------------------------------------------------------
def subsample_indices(n_available: int, budget: int | str, seed: int) -> np.ndarray:
    """Indices of the pairs a (budget, seed) run fits on, nested across budgets.

    For a seed, one fixed permutation of all pairs; budget N takes its first N
    (so the 1k subset is inside the 10k subset).  Returned sorted, which keeps
    memory-mapped reads sequential; ``max`` takes everything.
    """
    n = resolve_budget(budget, n_available)
    perm = np.random.default_rng(np.random.SeedSequence([int(seed), _SUBSAMPLE_SALT])).permutation(n_available)
    return np.sort(perm[:n])


# -- planning -------------------------------------------------------------------------
def plan(specs: Iterable[RunSpec | ResolvedRun], results_dir: str | Path = "results/runs", *,
         resolver: Resolver | None = None) -> tuple[list[ResolvedRun], list[ResolvedRun]]:
    """Split runs into (to run, already done); equivalent spellings are one run.

    Done = a valid stored result with the identity the current code resolves
    (alignbench.planning says why anything else is redone).
    """
    from alignbench.planning import plan_runs

    resolver = resolver or Resolver()
    runs = [s if isinstance(s, ResolvedRun) else resolver.resolve(s) for s in specs]
    p = plan_runs(runs, results_dir)
    return p.todo, p.done


# -- execution ------------------------------------------------------------------------
@dataclass(frozen=True)
class RunOutcome:
    """Where a run's result is, and whether this call ran it (False: it was stored, here or by another process)."""

    path: Path
    ran: bool


def run_one(run: RunSpec | ResolvedRun, **options: Any) -> Path:
    """Run ``run`` and return the path of its result JSON (skipped if a valid current result exists).

    The options are ``run_or_take``'s; this is it for callers that need only the path.
    """
    return run_or_take(run, **options).path


def run_or_take(
    run: RunSpec | ResolvedRun,
    *,
    results_dir: str | Path = "results/runs",
    store_root: str | Path | None = None,
    data_root: str | Path | None = None,
    overwrite: bool = False,
    device: str = "cpu",
    progress: bool = True,
    wait_if_busy: bool = True,
    fresh_since: str | None = None,
) -> RunOutcome:
    """Run ``run`` unless a valid current result exists; say which happened.

    A RunSpec is resolved first (alignbench.identity); a failure at any phase,
    resolution included, leaves ``<spec_key>.failed.json``.  While another
    process runs the same fit in ``results_dir`` (alignbench.run_lock), this one
    waits for it and then takes its result (``wait_if_busy=False``: raises
    RunBusy instead); if that process died first, this one runs the fit.
    ``overwrite`` redoes a stored result unless it started at or after
    ``fresh_since`` (an ISO time: a concurrent command's work, not to redo).
    """
    from alignbench.store import FeatureStore

    store = ResultStore(results_dir)
    spec = run.spec if isinstance(run, ResolvedRun) else run
    started = now_iso()
    t0 = time.perf_counter()
    state = {"phase": "resolve"}
    try:
        if not isinstance(run, ResolvedRun):
            validate_spec(run)
            run = Resolver(store=FeatureStore(store_root) if store_root is not None else None,
                           data_root=data_root).resolve(run)
        path = store.path_for(run)
        with holding_fit(results_dir, run.fit_id, wait=wait_if_busy) as waited:
            stored = store.load(run)  # read inside the lock: another process may have just written it
            if stored is not None and (not overwrite or waited or _started_since(stored, fresh_since)):
                log.info("%s: result exists, skipping (%s)", run.run_id, path)
                return RunOutcome(path, ran=False)
            problem = store.problem(run) if stored is None else None
            if problem:
                log.info("%s: redoing it: %s", path, problem)
            record = _execute(run, results_dir, store_root, data_root, device, progress, state)
            record.update(
                schema_version=SCHEMA_VERSION,
                status="ok",
                run_id=run.run_id,
                fit_id=run.fit_id,
                spec_key=spec.spec_key if spec is not None else None,
                started_at=started,
                finished_at=now_iso(),
            )
            record["timings"]["total"] = time.perf_counter() - t0
            out = store.write(_ordered(record))  # inside the lock: a waiter finds the result when it gets in
    except RunBusy:
        raise  # not a failure of the run: another process is running it
    except Exception as exc:  # Ctrl-C (KeyboardInterrupt) is not a failure of the run: no record
        _write_failure(store, spec, exc, started, state["phase"], run)
        raise
    log.info("%s: done in %.1f s → %s", run.run_id, record["timings"]["total"], out)
    return RunOutcome(out, ran=True)


def _started_since(record: dict[str, Any], since: str | None) -> bool:
    """Whether ``record``'s run started at or after ``since`` (ISO times in UTC, as ``_now`` writes them)."""
    if since is None or not record.get("started_at"):
        return False
    return datetime.fromisoformat(record["started_at"]) >= datetime.fromisoformat(since)


def _execute(run: ResolvedRun, results_dir, store_root, data_root, device: str, progress: bool,
             state: dict) -> dict[str, Any]:
    import torch

    from alignbench import feature_kinds, provenance
    from alignbench.fit_checkpoint import checkpointing
    from alignbench.fits import fitted_for, save_fitted, state_path
    from alignbench.identity import make_method
    from alignbench.split_guard import check_disjoint
    from alignbench.source import FeatureSource
    from alignbench.store import FeatureStore

    timings: dict[str, Any] = {}
    source = FeatureSource.for_run(run, store=FeatureStore(store_root, device=device), data_root=data_root,
                                   progress=progress)
    tasks = {ev: ev.task_object() for ev in run.evals}  # one per evaluation: its options (protocol) are its own

    # 0. training and validation images are never evaluated (image identity, before any work).
    state["phase"] = "check splits"
    check_disjoint(run, source)

    # 1. a stored fit of this fit_id (alignbench.fits), else the training data; features of every evaluation.
    state["phase"] = "encode"
    t = time.perf_counter()
    method = fitted_for(run, results_dir, device=device)
    all_train = val = None
    if method is None:
        all_train = source.pairs(run.train.dataset, run.train.split)
        val = source.pairs(run.val.dataset, run.val.split) if run.val is not None else None
    for ev in run.evals:
        for need in tasks[ev].needs(ev.dataset, ev.split):
            feature_kinds.fetch(source, need.what, need.dataset, need.split, need.view)
    timings["encode"] = time.perf_counter() - t

    # 2. subsample the budget (nested by seed) and fit; keep the fitted state.
    state["phase"] = "fit"
    fit = {"state": state_path(results_dir, run.fit_id).name, "reused": method is not None}
    if method is None:
        train = all_train.subset(subsample_indices(len(all_train), run.budget, run.seed))
        method = make_method(run.method).to(device)
        log.info("%s: fitting %s on %d pairs (%s)", run.run_id, run.method.label, len(train), run.pair)
        torch.manual_seed(run.seed)
        t = time.perf_counter()
        with checkpointing(results_dir, run.fit_id) as ck:  # killed mid-fit: the same command resumes from the last save
            method.fit(train, val, seed=run.seed)
            timings["fit"] = time.perf_counter() - t
            if ck.earlier_s != 0.0:  # resumed: the whole fit's time, and the share of the processes before
                timings["fit_earlier_s"] = ck.earlier_s
                timings["fit"] += ck.earlier_s or 0.0
                fit["machines"] = ck.machines()  # the seconds of each process; another CPU's are not comparable
            try:
                save_fitted(method, run, results_dir)
            except OSError as exc:  # the metrics are still right; only the reuse is lost
                log.warning("%s: the fitted state could not be stored (%s); its next evaluation will refit",
                            run.run_id, exc)
                fit["state"] = None
    else:
        log.info("%s: evaluating the stored fit %s (no refit)", run.run_id, fit["state"])
        timings["fit"] = 0.0

    # 3. evaluate.
    metrics: dict[str, dict[str, float]] = {}
    outcomes: dict[str, dict[str, Any]] = {}
    timings["eval"] = {}
    for ev in run.evals:
        log.info("%s: evaluating %s", run.run_id, ev)
        state["phase"] = f"eval {ev}"
        t = time.perf_counter()
        metrics[ev.key], found = tasks[ev].evaluate_with_outcomes(method, source, source.dataset(ev.dataset), ev.split)
        if found is not None:  # per-query / per-image outcomes: intervals and paired tests need no refit
            outcomes[ev.key] = found.to_json()
        timings["eval"][ev.key] = time.perf_counter() - t

    requested = run.spec.budget if run.spec is not None else run.budget
    return {
        "spec": run.spec.to_dict() if run.spec is not None else None,
        "resolved": run.to_dict(),
        "budget": {"requested": requested, "pairs": run.budget, "available": run.available},
        "data": {
            "train": {**run.train.to_dict(), "pairs": run.budget, "available": run.available},
            "val": None if run.val is None else {**run.val.to_dict(), "pairs": None if val is None else len(val)},
        },
        "evals": [ev.to_dict() for ev in run.evals],  # key, task, dataset, split (+ protocol when not the default)
        "metrics": metrics,
        "timings": timings,
        "layers": {"image": run.image.layer, "text": run.text.layer},  # resolved (alignbench.identity)
        "method": {
            "name": run.method.name,
            "version": run.method.version,
            "level": getattr(method, "level", None),
            "config": method.config.to_dict(),
            "fit_info": dict(method.fit_info),
            "num_parameters": _num_parameters(method),
        },
        "fit": fit,
        "features": source.reads,
        "provenance": provenance.collect(device, run.dtype),
        "outcomes": outcomes,
    }


def _num_parameters(method: Any) -> int | None:
    try:
        return int(method.num_parameters())
    except Exception as exc:  # a method without a state yet must not fail the run here
        log.debug("num_parameters unavailable: %s", exc)
        return None


def _write_failure(store: ResultStore, spec: RunSpec, exc: Exception, started: str, phase: str,
                   run: Any = None) -> None:
    from alignbench import provenance

    resolved = run if isinstance(run, ResolvedRun) else None
    record = {
        "schema_version": SCHEMA_VERSION,
        "status": "failed",
        "run_id": resolved.run_id if resolved is not None else None,
        "spec_key": spec.spec_key,
        "spec": spec.to_dict(),
        "error": {
            "type": type(exc).__name__,
            "message": str(exc),
            "user_error": isinstance(exc, AlignbenchError),
            "traceback": traceback.format_exc(),
        },
        "phase": phase,
        "started_at": started,
        "failed_at": now_iso(),
        "provenance": {"hostname": provenance.collect()["hostname"], "pid": os.getpid()},
    }
    try:
        path = store.write_failure(record)
        log.error("%s failed (%s: %s); details in %s", spec.spec_key, type(exc).__name__, exc, path)
    except OSError as write_exc:  # never mask the original error
        log.error("%s failed and its failure record could not be written: %s", spec.spec_key, write_exc)


_ORDER = (
    "schema_version", "status", "run_id", "fit_id", "spec_key", "spec", "resolved", "budget", "data", "evals",
    "metrics", "timings", "layers", "method", "fit", "features", "provenance", "started_at", "finished_at",
    "outcomes",
)  # fmt: skip


def _ordered(record: dict[str, Any]) -> dict[str, Any]:
    """Stable, human-friendly key order in the JSON file."""
    return {**{k: record[k] for k in _ORDER if k in record}, **{k: v for k, v in record.items() if k not in _ORDER}}


def now_iso() -> str:
    """Now, UTC, to the second: how results record started_at and finished_at."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


__all__ = ["EvalSpec", "parse_split_ref", "plan", "run_one", "subsample_indices", "validate_spec"]
