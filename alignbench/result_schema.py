"""The result-file schemas, checked strictly: a stored result is parsed, not just opened.

Why: a file that is valid JSON can still be partial or damaged (a key cut off,
a metric that became a string, an evaluation without metrics, an identity that
no longer matches its hash).  ``run``, ``sweep`` and ``report`` check every
result against its schema version here; a file that fails is named, reported
and redone, never counted as done.  Extra keys are allowed (other blocks such
as ``outcomes``).

A small declarative checker rather than pydantic: ``report`` reads 1,000
results in under 2 s, and importing pydantic alone would take a good part of it.
"""
from __future__ import annotations

from typing import Any, Iterable

# -- shapes ---------------------------------------------------------------------------------
STR, INT, NUM_OR_NULL, DICT, LIST = "str", "int", "num|null", "dict", "list"


class Optional_:
    def __init__(self, shape: Any):
        self.shape = shape


class ListOf:
    def __init__(self, shape: Any):
        self.shape = shape


class MapOf:
    def __init__(self, shape: Any):
        self.shape = shape


def _first(problems: Iterable[str | None]) -> str | None:
    """The first problem of a lazy sequence of checks (the rest never run)."""
    return next((p for p in problems if p), None)


def _problem(value: Any, shape: Any, where: str) -> str | None:
    if isinstance(shape, Optional_):
        return None if value is None else _problem(value, shape.shape, where)
    if isinstance(shape, dict):  # required fields; extra keys allowed
        if not isinstance(value, dict):
            return f"{where}: expected an object, found {type(value).__name__}"
        for k, sub in shape.items():
            if k not in value:
                if isinstance(sub, Optional_):
                    continue
                return f"{where}.{k}: missing" if where else f"{k}: missing"
            p = _problem(value[k], sub, f"{where}.{k}" if where else k)
            if p:
                return p
        return None
    if isinstance(shape, ListOf):
        if not isinstance(value, list):
            return f"{where}: expected a list, found {type(value).__name__}"
        return _first(_problem(v, shape.shape, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(shape, MapOf):
        if not isinstance(value, dict):
            return f"{where}: expected an object, found {type(value).__name__}"
        return _first(_problem(v, shape.shape, f"{where}.{k}") for k, v in value.items())
    ok = {
        STR: lambda v: isinstance(v, str),
        INT: lambda v: isinstance(v, int) and not isinstance(v, bool),
        NUM_OR_NULL: lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)),
        DICT: lambda v: isinstance(v, dict),
        LIST: lambda v: isinstance(v, list),
    }[shape](value)
    return None if ok else f"{where}: expected {shape}, found {type(value).__name__} {str(value)[:40]!r}"


# -- the schemas --------------------------------------------------------------------------------
SPEC = {"method": STR, "pair": STR, "seed": INT}
METRICS = MapOf(MapOf(NUM_OR_NULL))
SPLIT = {"dataset": STR, "split": STR}
ENCODER = {"encoder": STR, "layer": INT}
RESOLVED = {  # ResolvedRun.to_dict() (alignbench.identity)
    "pair": STR, "image": ENCODER, "text": ENCODER, "dtype": STR,
    "method": {"name": STR, "version": INT, "config": DICT},
    "train": SPLIT, "val": Optional_(SPLIT), "budget": INT, "seed": INT,
    "evals": ListOf({"task": STR, "dataset": STR, "split": Optional_(STR), "key": STR}),
    "feature_keys": DICT,
}  # fmt: skip
SCHEMAS: dict[int, dict[str, Any]] = {
    1: {"run_id": STR, "spec": SPEC, "metrics": METRICS},
    2: {"run_id": STR, "fit_id": STR, "spec": SPEC, "resolved": RESOLVED, "metrics": METRICS, "evals": LIST},
}


def schema_problem(rec: dict[str, Any]) -> str | None:
    """None if ``rec`` is a complete result of its schema version, else a one-line reason."""
    version = rec.get("schema_version")
    shape = SCHEMAS.get(version)  # type: ignore[arg-type]
    if shape is None:
        return f"unknown result schema version {version!r}"
    p = _problem(rec, shape, "")
    if p is None and version >= 2:
        p = _consistency(rec)
    return None if p is None else f"damaged or partial result (schema {version}): {p}"


def _consistency(rec: dict[str, Any]) -> str | None:
    from alignbench.identity import id_hash, ids_of

    if not rec["metrics"]:
        return "metrics: empty"
    missing = [e["key"] for e in rec["resolved"]["evals"] if e["key"] not in rec["metrics"]]
    if missing:
        return f"metrics: none for {', '.join(missing)} (a partial result)"
    fit_hash, run_hash = ids_of(rec["resolved"])
    if id_hash(rec["run_id"]) != run_hash or id_hash(rec["fit_id"]) != fit_hash:
        return "run_id/fit_id do not match the recorded identity (the file was edited or damaged)"
    return None


__all__ = ["SCHEMAS", "schema_problem"]
