"""The result-file schemas as pydantic models: a stored result is parsed, not just opened.

Why: a file that is valid JSON can still be partial or damaged (a key cut off,
a metric that became a string, an evaluation without metrics).  ``run``,
``sweep`` and ``report`` parse every result against its schema version's model
here; a file that does not parse is named, reported and redone, never counted
as done.  Extra keys are allowed (helpers add blocks such as ``outcomes``).
"""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Spec(_Open):
    method: str
    pair: str
    seed: int


class _Encoder(BaseModel):
    encoder: str
    layer: int


class _Split(BaseModel):
    dataset: str
    split: str


class _Method(BaseModel):
    name: str
    version: int
    config: dict[str, Any]


class _Eval(BaseModel):
    task: str
    dataset: str
    split: Optional[str]
    key: str


class Resolved(BaseModel):
    """``ResolvedRun.to_dict()`` (alignbench.identity)."""

    pair: str
    image: _Encoder
    text: _Encoder
    dtype: str
    method: _Method
    train: _Split
    val: Optional[_Split]
    budget: int
    seed: int
    evals: list[_Eval]
    feature_keys: dict[str, Any]


Metrics = dict[str, dict[str, Optional[float]]]


class ResultV1(_Open):
    schema_version: Literal[1]
    status: Literal["ok"] = "ok"
    run_id: str
    spec: _Spec
    metrics: Metrics


class ResultV2(_Open):
    schema_version: Literal[2]
    status: Literal["ok"]
    run_id: str
    fit_id: str
    spec: _Spec
    resolved: Resolved
    metrics: Metrics
    evals: list[dict[str, Any]]

    @field_validator("metrics")
    @classmethod
    def _some_metrics(cls, v: Metrics) -> Metrics:
        if not v:
            raise ValueError("no metrics")
        return v

    @model_validator(mode="after")
    def _complete_and_consistent(self) -> "ResultV2":
        from alignbench.identity import fit_id_of, id_hash, run_id_of

        missing = [e.key for e in self.resolved.evals if e.key not in self.metrics]
        if missing:
            raise ValueError(f"partial result: no metrics for {', '.join(missing)}")
        resolved = self.resolved.model_dump()
        if id_hash(self.run_id) != id_hash(run_id_of(resolved)) or id_hash(self.fit_id) != id_hash(fit_id_of(resolved)):
            raise ValueError("run_id/fit_id do not match the recorded identity (the file was edited or damaged)")
        return self


MODELS = {1: ResultV1, 2: ResultV2}


def schema_problem(rec: dict[str, Any]) -> str | None:
    """None if ``rec`` parses as its schema version's model, else a one-line reason."""
    model = MODELS.get(rec.get("schema_version"))  # type: ignore[arg-type]
    if model is None:
        return f"unknown result schema version {rec.get('schema_version')!r}"
    try:
        model.model_validate(rec)
    except ValidationError as exc:
        errs = exc.errors()
        first = errs[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "record"
        more = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
        return f"damaged or partial result (schema {rec['schema_version']}): {where}: {first.get('msg')}{more}"
    return None


__all__ = ["MODELS", "Resolved", "ResultV1", "ResultV2", "schema_problem"]
