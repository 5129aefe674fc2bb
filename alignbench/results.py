"""The result store: one JSON file per run, written atomically, read back as a table.

Why one file per run: sweep workers never share a file, so a crashed or
duplicated job cannot corrupt anyone else's numbers.  Files are written with
``alignbench.atomic`` (temp file, fsync, ``os.replace``), so a reader never sees
half a result; every reader still parses each file against its schema
(:func:`validate_record`), so a damaged or partial file is named and redone,
never counted as done.

A record (schema version 2) looks like::

    {"schema_version": 2, "status": "ok",
     "run_id": "<prefix>-<hash>",            # hash of fit_id + evaluations (alignbench.identity)
     "fit_id": "<prefix>-fit-<hash>",        # hash of everything but the evaluations
     "spec_key": ..., "spec": {...RunSpec as typed...},
     "resolved": {                            # ResolvedRun.to_dict(): what the ids hash
        "pair": "effnet-lite0+minilm-l6",
        "image": {"encoder": "effnet-lite0", "layer": 16}, "text": {"encoder": "minilm-l6", "layer": 5},
        "dtype": "fp32",
        "method": {"name": "pal", "version": 1, "config": {...full config after defaults...}},
        "train": {"dataset": "flickr8k", "split": "train"}, "val": {"dataset": "flickr8k", "split": "dev"} | null,
        "budget": 10000, "seed": 0,
        "evals": [{"task": "retrieval", "dataset": "flickr8k", "split": "test", "key": "retrieval/flickr8k"}],
        "feature_keys": {"train": {"images": "<encoder>/<entry>", "texts": ...}, "val": {...},
                         "evals": {"retrieval/flickr8k": {"images": ..., "texts": ...}}}},
     "budget": {"requested": "10k"|10000|"max", "pairs": 10000, "available": 30000},
     "evals": [{"key": "retrieval/flickr8k", "task": ..., "dataset": ..., "split": ...}],
     "metrics": {"retrieval/flickr8k": {"i2t_R@1": 12.3, ...}, ...},
     "timings": {"encode": s, "fit": s, "eval": {"retrieval/flickr8k": s}, "total": s},
     "method": {"name": ..., "version": 1, "config": {...}, "fit_info": {...}, "num_parameters": n},
     "fit": {"state": "<fit_id>.state.pt", "reused": false},
     "provenance": {...}, "started_at": iso, "finished_at": iso}

:func:`row_identity` (``resolved`` minus seed, evaluations and their feature
keys) is what one table row shares: runs that differ in anything else are
different rows.  Schema-1 files (no ``resolved``) still load; they are stale
(alignbench.planning), because nothing in them says which method version or
features made their numbers.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from alignbench.atomic import write_json_atomic
from alignbench.config import RunSpec
from alignbench.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
REQUIRED_KEYS = ("schema_version", "run_id", "spec", "metrics")
FAILED_SUFFIX = ".failed.json"
FRAME_COLUMNS = (
    "run_id", "method", "method_label", "pair", "budget", "seed",
    "task", "dataset", "split", "eval", "metric", "value", "stale",
)  # fmt: skip


TUNED_MARK = "†"


def method_label(method: str, options: dict[str, Any] | None, tuned: dict[str, Any] | None = None) -> str:
    """'pal' or 'pal:K=128' — how a method variant is named in tables; tuned runs are 'pal†' (own rows)."""
    if tuned is not None:
        return method_label(method, tuned.get("fixed")) + TUNED_MARK
    opts = ":".join(f"{k}={v}" for k, v in sorted((options or {}).items()))
    return f"{method}:{opts}" if opts else method


ROW_EXCLUDED = ("seed", "evals", "feature_keys")  # what may differ between runs averaged into one table row


def row_identity(record: dict[str, Any]) -> dict[str, Any]:
    """Everything a table row's runs share: the resolved run minus seed and evaluations.

    Results without a ``resolved`` section (schema 1) are described from their
    spec and fitted config, so they still group only with their own kind.
    """
    resolved = record.get("resolved")
    if not isinstance(resolved, dict):
        spec = record["spec"]
        enc = spec.get("encoder") or {}
        vision, _, text = str(spec.get("pair", "")).partition("+")
        config = (record.get("method") or {}).get("config") or spec.get("method_options") or {}
        resolved = {
            "pair": spec.get("pair"),
            "image": {"encoder": vision, "layer": enc.get("image_layer")},
            "text": {"encoder": text, "layer": enc.get("text_layer")},
            "dtype": enc.get("dtype", "fp32"),
            "method": {"name": spec["method"], "version": None, "config": config},
            "train": spec.get("train"),
            "val": spec.get("val"),
            "budget": (record.get("budget") or {}).get("pairs", spec.get("budget")),
        }
    out = {k: v for k, v in resolved.items() if k not in ROW_EXCLUDED}
    tuned = (record.get("spec") or {}).get("tuned")
    if tuned:  # a tuned run is never averaged with default runs, even where the best config is the default
        out["tuned"] = tuned.get("study")
    return out


def _json_safe(obj: Any) -> Any:
    """Replace NaN/inf (not valid JSON) by None, recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:  # numpy / torch scalars
        return _json_safe(obj.item())
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write a result (NaN/inf stored as null) atomically: see ``alignbench.atomic``."""
    return write_json_atomic(path, _json_safe(obj))


class ResultStore:
    """Result files under ``root`` (default ``results/runs``); sub-folders are read too.

    Results are named ``<run_id>.json`` (:class:`~alignbench.identity.ResolvedRun`); a failure
    is ``<spec_key>.failed.json`` (the spec as typed: a run can fail before it is resolved).
    """

    def __init__(self, root: str | os.PathLike = "results/runs"):
        self.root = Path(root)
        self.skipped: list[tuple[Path, str]] = []  # (file, why) from the last load_all

    # -- paths -------------------------------------------------------------------
    def path_for(self, run: Any) -> Path:
        """``<root>/<run_id>.json`` of a ResolvedRun (or a run id)."""
        return self.root / f"{run if isinstance(run, str) else run.run_id}.json"

    def failed_path_for(self, spec: Any) -> Path:
        """``<root>/<spec_key>.failed.json`` of a RunSpec (or a ResolvedRun, via its spec)."""
        spec = getattr(spec, "spec", None) or spec
        return self.root / f"{spec.spec_key}{FAILED_SUFFIX}"

    def exists(self, run: Any) -> bool:
        """True if the run's result file exists and is a valid, current-schema record."""
        return self.load(run) is not None

    # -- writing -----------------------------------------------------------------
    def write(self, record: dict[str, Any]) -> Path:
        problem = validate_record(record)
        if problem:
            raise ValueError(f"refusing to write an invalid result record: {problem}")
        path = atomic_write_json(self.path_for(record["run_id"]), record)
        key = record.get("spec_key")
        stale = self.root / f"{key}{FAILED_SUFFIX}" if key else None
        if stale is not None and stale.exists():  # this run has now succeeded: its old failure no longer applies
            stale.unlink()
        return path

    def write_failure(self, record: dict[str, Any]) -> Path:
        spec = RunSpec.from_dict(record["spec"])
        return atomic_write_json(self.failed_path_for(spec), record)

    # -- reading -----------------------------------------------------------------
    def _files(self, failed: bool) -> list[Path]:
        if not self.root.is_dir():
            return []
        out = []
        for p in sorted(self.root.rglob("*.json")):
            if p.name.startswith("."):
                continue
            if p.name.endswith(FAILED_SUFFIX) == failed:
                out.append(p)
        return out

    def load_all(self) -> list[dict[str, Any]]:
        """Every valid result; damaged or foreign files are skipped with a warning naming them."""
        records = []
        self.skipped = []
        for path in self._files(failed=False):
            rec = self._load(path, self.skipped)
            if rec is not None:
                rec["_file"] = str(path)
                records.append(rec)
        return records

    def load(self, run: Any) -> dict[str, Any] | None:
        """The result of ``run`` (ResolvedRun or run id) if its file exists and is valid (a bad file is warned about)."""
        path = self.path_for(run)
        return self._load(path) if path.is_file() else None

    def problem(self, run: Any) -> str | None:
        """Why the file of ``run`` cannot be used (None if it is missing or valid)."""
        path = self.path_for(run)
        if not path.is_file():
            return None
        return _read_problem(path)[1]

    def failures(self) -> list[dict[str, Any]]:
        """Failure records (``<spec_key>.failed.json``); a success deletes its run's failure record."""
        out = []
        for path in self._files(failed=True):
            try:
                rec = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                log.warning("skipping unreadable failure record %s: %s", path, exc)
                continue
            if not (self.root / path.name.replace(FAILED_SUFFIX, ".json")).exists():
                rec["_file"] = str(path)
                out.append(rec)
        return out

    @staticmethod
    def _load(path: Path, skipped: list | None = None) -> dict[str, Any] | None:
        """The record in ``path``, or None (warned, and appended to ``skipped``) if unusable."""
        rec, problem = _read_problem(path)
        if problem:
            log.warning("skipping %s: %s", path, problem)
            if skipped is not None:
                skipped.append((path, problem))
            return None
        return rec

    def to_frame(self, records: Iterable[dict[str, Any]] | None = None) -> "pd.DataFrame":
        """One row per run × metric (columns ``FRAME_COLUMNS``)."""
        return records_to_frame(self.load_all() if records is None else records)


def _read_problem(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, f"damaged result file (not valid JSON: {exc}); it is redone by the next run"
    return rec, validate_record(rec)


def validate_record(rec: Any) -> str | None:
    """Why ``rec`` is not a usable result, or None if it is (parsed against its schema's model)."""
    if not isinstance(rec, dict):
        return f"not an alignbench result (a JSON {type(rec).__name__}, expected an object)"
    missing = [k for k in REQUIRED_KEYS if k not in rec]
    if missing:
        return f"not an alignbench result (missing {', '.join(missing)})"
    version = rec["schema_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        return f"unknown result schema version {version!r}"
    if version > SCHEMA_VERSION:
        return f"written by a newer alignbench (schema {version} > {SCHEMA_VERSION}); upgrade to read it"
    if rec.get("status", "ok") != "ok":
        return f"run status is {rec.get('status')!r}, not 'ok'"
    from alignbench.result_schema import schema_problem

    return schema_problem(rec)


def records_to_frame(records: Iterable[dict[str, Any]]) -> "pd.DataFrame":
    """Flatten result records to a tidy frame: one row per run × metric."""
    import pandas as pd

    rows = []
    for rec in records:
        spec = rec["spec"]
        evals = {e["key"]: e for e in rec.get("evals", []) if isinstance(e, dict) and "key" in e}
        budget = rec.get("budget", {}).get("pairs", spec.get("budget"))
        for key, metrics in rec["metrics"].items():
            if not isinstance(metrics, dict):
                continue
            ev = evals.get(key) or eval_of_key(key)
            for metric, value in metrics.items():
                if value is None or not isinstance(value, (int, float)):
                    continue
                rows.append(
                    {
                        "run_id": rec["run_id"],
                        "method": spec["method"],
                        "method_label": rec.get("_label") or method_label(spec["method"], spec.get("method_options"),
                                                                         spec.get("tuned")),
                        "pair": (rec.get("resolved") or {}).get("pair", spec.get("pair")),
                        "budget": budget,
                        "seed": spec.get("seed"),
                        "task": ev.get("task"),
                        "dataset": ev.get("dataset"),
                        "split": ev.get("split"),
                        "eval": key,
                        "metric": metric,
                        "value": float(value),
                        "stale": bool(rec.get("_stale")),
                    }
                )
    return pd.DataFrame(rows, columns=list(FRAME_COLUMNS))


def eval_of_key(key: str) -> dict[str, Any]:
    """A metrics key 'task/dataset[:split]' → its parts (for results stored without an ``evals`` list)."""
    task, _, rest = key.partition("/")
    dataset, _, split = rest.partition(":")
    return {"task": task, "dataset": dataset, "split": split or None}


def require_results(root: str | os.PathLike, store: ResultStore | None = None) -> list[dict[str, Any]]:
    """All valid results under ``root``, or a DataError saying why there are none (``store.skipped`` names the rest)."""
    store = store or ResultStore(root)
    if not store.root.is_dir():
        raise DataError(f"results folder {str(store.root)!r} does not exist; run `alignbench run` first or pass --results")
    records = store.load_all()
    if not records:
        n = len(store.skipped)
        names = ", ".join(p.name for p, _ in store.skipped[:5]) + (", …" if n > 5 else "")
        what = f"none of its {n} JSON files is an alignbench result ({names})" if n else "it has no result files"
        raise DataError(f"no alignbench results in {str(store.root)!r}: {what}; run `alignbench run` first")
    return records
