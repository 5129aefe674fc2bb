"""Execute one run: the single function local, debug and SLURM execution all call.

``run_one(spec)`` is a pure function of the RunSpec and the cached features:
it encodes (or loads) what the spec needs, subsamples the training pairs
(nested by seed), fits the method, evaluates every ``task:dataset:split`` and
writes ONE result JSON atomically.  A failed run leaves
``<run_id>.failed.json`` with its traceback beside the results (so a sweep can
report it) and re-raises; it never touches another run's file.

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
from alignbench.errors import AlignbenchError, ConfigError
from alignbench.results import SCHEMA_VERSION, ResultStore

log = logging.getLogger(__name__)

_SUBSAMPLE_SALT = 0x5EED  # keeps the pair subsample stream apart from the method's own seed use


# -- spec parsing ---------------------------------------------------------------------
@dataclass(frozen=True)
class EvalSpec:
    """One evaluation: ``task:dataset[:split]`` (split None = the dataset's test split)."""

    task: str
    dataset: str
    split: str | None = None

    @classmethod
    def parse(cls, text: str) -> "EvalSpec":
        parts = [p.strip() for p in str(text).split(":")]
        if len(parts) not in (2, 3) or not all(parts):
            raise ConfigError(f"cannot read evaluation {text!r}: use TASK:DATASET[:SPLIT], e.g. retrieval:flickr8k:test")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    def resolved(self) -> "EvalSpec":
        """Canonical task/dataset names and an explicit split (no data is read)."""
        from alignbench.registry import DATASETS, TASKS
        from alignbench.tasks.base import default_split

        task = TASKS.canonical(self.task)
        dataset = DATASETS.canonical(self.dataset)
        split = self.split or default_split(DATASETS.get(dataset))
        return EvalSpec(task, dataset, split)

    @property
    def key(self) -> str:
        """Metrics key in results: ``task/dataset`` (``:split`` added when it is not the test split)."""
        tail = f":{self.split}" if self.split and self.split != "test" else ""
        return f"{self.task}/{self.dataset}{tail}"

    def __str__(self) -> str:
        return f"{self.task}:{self.dataset}" + (f":{self.split}" if self.split else "")


def parse_split_ref(text: str, default_split: str) -> tuple[str, str]:
    """'flickr8k:train' → ('flickr8k', 'train'); 'flickr8k' → ('flickr8k', default_split)."""
    name, _, split = str(text).partition(":")
    if not name.strip():
        raise ConfigError(f"cannot read dataset split {text!r}: use DATASET[:SPLIT], e.g. flickr8k:train")
    return name.strip(), (split.strip() or default_split)


def validate_spec(spec: RunSpec) -> None:
    """Check every name and hyperparameter in ``spec`` without reading data or encoding.

    Raises UnknownNameError (with "did you mean"), ConfigError or
    AlignbenchError (a task asked for a dataset of the wrong kind).
    """
    from alignbench.registry import DATASETS, METHODS, TASKS

    cls = METHODS.get(spec.method)
    cls.Config().update(dict(spec.method_options))  # ConfigError on unknown / bad hyperparameters
    _check_pair(spec.pair)
    for ref in (spec.train, spec.val):
        if ref:
            ds = DATASETS.get(parse_split_ref(ref, "train")[0])
            if getattr(ds, "kind", "captions") != "captions":
                raise AlignbenchError(f"{ref}: training and validation need an image–caption dataset, not a {ds.kind} one")
    for text in spec.evals:
        ev = EvalSpec.parse(text)
        task = TASKS.get(ev.task)()
        ds_cls = DATASETS.get(ev.dataset)
        task.check_dataset(DATASETS.canonical(ev.dataset), getattr(ds_cls, "kind", ""))


def _check_pair(pair: str) -> None:
    """VISION+TEXT with both names known (UnknownNameError with "did you mean" otherwise)."""
    try:
        from alignbench.encoders import parse_pair
    except ImportError:  # encoders package without the helper: check the names ourselves
        from alignbench.registry import ENCODERS

        vision, sep, text = str(pair).partition("+")
        if not sep or not vision.strip() or not text.strip():
            raise ConfigError(f"encoder pair {pair!r} is not VISION+TEXT (e.g. effnet-lite0+minilm-l6)") from None
        ENCODERS.resolve(vision.strip())
        ENCODERS.resolve(text.strip())
        return
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


def available_pairs(train: str, data_root: str | Path | None = None, *, dataset: Any = None) -> int:
    """Image–caption pairs in a training split (``dataset:split``), counted from the captions file.

    Cheap (no encoding), so a budget that cannot be met fails before any work.
    """
    from alignbench.registry import DATASETS

    name, split = parse_split_ref(train, "train")
    ds = dataset if dataset is not None else DATASETS.get(name)(root=data_root)
    return len(ds.caption_image_index(ds.check_split(split)))


# -- planning -------------------------------------------------------------------------
def plan(specs: Iterable[RunSpec], results_dir: str | Path = "results/runs") -> tuple[list[RunSpec], list[RunSpec]]:
    """Split specs into (to run, already done); duplicates are dropped."""
    store = ResultStore(results_dir)
    todo, done, seen = [], [], set()
    for spec in specs:
        if spec.run_id in seen:
            continue
        seen.add(spec.run_id)
        (done if store.exists(spec) else todo).append(spec)
    return todo, done


# -- execution ------------------------------------------------------------------------
def run_one(
    spec: RunSpec,
    *,
    results_dir: str | Path = "results/runs",
    store_root: str | Path | None = None,
    data_root: str | Path | None = None,
    overwrite: bool = False,
    device: str = "cpu",
    progress: bool = True,
) -> Path:
    """Run ``spec`` and return the path of its result JSON (skipped if it exists)."""
    store = ResultStore(results_dir)
    path = store.path_for(spec)
    if path.exists() and not overwrite:
        log.info("%s: result exists, skipping (%s)", spec.run_id, path)
        return path
    started = _now()
    t0 = time.perf_counter()
    state = {"phase": "validate"}
    try:
        validate_spec(spec)
        record = _execute(spec, store_root, data_root, device, progress, state)
    except Exception as exc:  # Ctrl-C (KeyboardInterrupt) is not a failure of the run: no record
        _write_failure(store, spec, exc, started, state["phase"])
        raise
    record.update(
        schema_version=SCHEMA_VERSION,
        status="ok",
        run_id=spec.run_id,
        started_at=started,
        finished_at=_now(),
    )
    record["timings"]["total"] = time.perf_counter() - t0
    out = store.write(_ordered(record))
    log.info("%s: done in %.1f s → %s", spec.run_id, record["timings"]["total"], out)
    return out


def _execute(spec: RunSpec, store_root, data_root, device: str, progress: bool, state: dict) -> dict[str, Any]:
    import torch

    from alignbench import feature_kinds, provenance
    from alignbench.registry import METHODS, TASKS
    from alignbench.source import FeatureSource
    from alignbench.store import FeatureStore

    timings: dict[str, Any] = {}
    source = FeatureSource(
        spec.pair,
        store=FeatureStore(store_root, device=device),
        data_root=data_root,
        image_layer=spec.encoder.image_layer,
        text_layer=spec.encoder.text_layer,
        dtype=spec.encoder.dtype,
        progress=progress,
    )
    evals = [EvalSpec.parse(e).resolved() for e in spec.evals]
    tasks = {ev.task: TASKS.get(ev.task)() for ev in evals}

    # 1. encode (or load from the cache) everything the run will read.
    state["phase"] = "encode"
    t = time.perf_counter()
    train_ds, train_split = parse_split_ref(spec.train, "train")
    resolve_budget(spec.budget, available_pairs(spec.train, dataset=source.dataset(train_ds)))  # before encoding
    all_train = source.pairs(train_ds, train_split)
    val = None
    if spec.val:
        val_ds, val_split = parse_split_ref(spec.val, "dev")
        val = source.pairs(val_ds, val_split)
    for ev in evals:
        task = tasks[ev.task]
        task.check_dataset(source.dataset(ev.dataset))
        for need in task.needs(ev.dataset, ev.split):
            feature_kinds.fetch(source, need.what, need.dataset, need.split)
    timings["encode"] = time.perf_counter() - t

    # 2. subsample the budget (nested by seed) and fit.
    state["phase"] = "fit"
    idx = subsample_indices(len(all_train), spec.budget, spec.seed)
    train = all_train.subset(idx)
    cls = METHODS.get(spec.method)
    method = cls(**dict(spec.method_options)).to(device)
    log.info("%s: fitting %s on %d pairs (%s)", spec.run_id, spec.method, len(train), spec.pair)
    torch.manual_seed(spec.seed)
    t = time.perf_counter()
    method.fit(train, val, seed=spec.seed)
    timings["fit"] = time.perf_counter() - t

    # 3. evaluate.
    metrics: dict[str, dict[str, float]] = {}
    outcomes: dict[str, dict[str, Any]] = {}
    timings["eval"] = {}
    for ev in evals:
        log.info("%s: evaluating %s", spec.run_id, ev)
        state["phase"] = f"eval {ev}"
        t = time.perf_counter()
        metrics[ev.key], found = tasks[ev.task].evaluate_with_outcomes(method, source, source.dataset(ev.dataset), ev.split)
        if found is not None:  # per-query / per-image outcomes: intervals and paired tests need no refit
            outcomes[ev.key] = found.to_json()
        timings["eval"][ev.key] = time.perf_counter() - t

    return {
        "spec": spec.to_dict(),
        "budget": {"requested": spec.budget, "pairs": len(train), "available": len(all_train)},
        "data": {
            "train": {"dataset": train_ds, "split": train_split, "pairs": len(train), "available": len(all_train)},
            "val": None if val is None else {"ref": spec.val, "pairs": len(val)},
        },
        "evals": [{"key": ev.key, "task": ev.task, "dataset": ev.dataset, "split": ev.split} for ev in evals],
        "metrics": metrics,
        "timings": timings,
        "layers": {"image": _layer_of(all_train.images), "text": _layer_of(all_train.texts)},
        "method": {
            "name": spec.method,
            "level": getattr(method, "level", None),
            "config": method.config.to_dict(),
            "fit_info": dict(method.fit_info),
            "num_parameters": _num_parameters(method),
        },
        "features": source.reads,
        "provenance": provenance.collect(device, spec.encoder.dtype),
        "outcomes": outcomes,
    }


def _layer_of(features: Any) -> int | None:
    """The encoder layer the cached features come from (resolved: 'last' is a number here)."""
    layer = (getattr(features, "meta", None) or {}).get("key", {}).get("encoder", {}).get("layer")
    return None if layer is None else int(layer)


def _num_parameters(method: Any) -> int | None:
    try:
        return int(method.num_parameters())
    except Exception as exc:  # a method without a state yet must not fail the run here
        log.debug("num_parameters unavailable: %s", exc)
        return None


def _write_failure(store: ResultStore, spec: RunSpec, exc: Exception, started: str, phase: str) -> None:
    from alignbench import provenance

    record = {
        "schema_version": SCHEMA_VERSION,
        "status": "failed",
        "run_id": spec.run_id,
        "spec": spec.to_dict(),
        "error": {
            "type": type(exc).__name__,
            "message": str(exc),
            "user_error": isinstance(exc, AlignbenchError),
            "traceback": traceback.format_exc(),
        },
        "phase": phase,
        "started_at": started,
        "failed_at": _now(),
        "provenance": {"hostname": provenance.collect()["hostname"], "pid": os.getpid()},
    }
    try:
        path = store.write_failure(record)
        log.error("%s failed (%s: %s); details in %s", spec.run_id, type(exc).__name__, exc, path)
    except OSError as write_exc:  # never mask the original error
        log.error("%s failed and its failure record could not be written: %s", spec.run_id, write_exc)


_ORDER = (
    "schema_version", "status", "run_id", "spec", "budget", "data", "evals", "metrics",
    "timings", "layers", "method", "features", "provenance", "started_at", "finished_at", "outcomes",
)  # fmt: skip


def _ordered(record: dict[str, Any]) -> dict[str, Any]:
    """Stable, human-friendly key order in the JSON file."""
    return {**{k: record[k] for k in _ORDER if k in record}, **{k: v for k, v in record.items() if k not in _ORDER}}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


__all__ = ["EvalSpec", "available_pairs", "plan", "run_one", "subsample_indices", "validate_spec"]
