"""What is done, what is stale or damaged, and why: the planner ``run``, ``sweep`` and ``report`` share.

A stored result counts as done only when it parses against its schema AND its
identity hash equals what the current code resolves for the same spec
(alignbench.identity).  Anything else is redone with a reason a person can
act on ("stale: method version 1→2", "damaged result file …"); the old file is
left where it is (nothing stored is lost) and ``report`` leaves it out.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from alignbench.config import RunSpec
from alignbench.errors import AlignbenchError
from alignbench.identity import ResolvedRun, Resolver, differences, id_hash
from alignbench.results import ResultStore

log = logging.getLogger(__name__)


def _variant(spec: dict[str, Any] | None) -> str:
    """The method's settings as the user asked for them: ``:tuned`` (by study) or the typed options.

    A default run, ``pal:K=128`` and ``pal:tuned`` of the same (pair, budget, seed) are
    different runs side by side, never a stale version of each other; a typed spec
    whose identity changed (code version, a default, the study's best trial) is.
    """
    if not spec:
        return ""
    if spec.get("tuned"):
        return "tuned:" + str(spec["tuned"].get("study"))
    return json.dumps(spec.get("method_options") or {}, sort_keys=True, default=str)


def _loose_key(rec: dict[str, Any]) -> tuple:
    """(method, pair, budget, seed, variant): finds the previous result of a run whose identity changed."""
    res = rec.get("resolved")
    spec = rec.get("spec") or {}
    if isinstance(res, dict):
        return (res["method"]["name"], res["pair"], res["budget"], res["seed"], _variant(spec))
    return (spec.get("method"), spec.get("pair"), (rec.get("budget") or {}).get("pairs", spec.get("budget")),
            spec.get("seed"), _variant(spec))


class ResultIndex:
    """The valid results of a folder by run-identity hash, the damaged files, and previous results."""

    def __init__(self, results_dir: str | Path):
        self.store = ResultStore(results_dir)
        self.by_hash: dict[str, dict[str, Any]] = {}
        self.previous: dict[tuple, dict[str, Any]] = {}
        for rec in self.store.load_all():
            if rec.get("schema_version", 1) >= 2:
                self.by_hash[id_hash(rec["run_id"])] = rec
            self.previous.setdefault(_loose_key(rec), rec)
        self.damaged: dict[str, str] = {p.name: why for p, why in self.store.skipped}

    def find(self, run: ResolvedRun) -> dict[str, Any] | None:
        return self.by_hash.get(id_hash(run.run_id))

    def why_redo(self, run: ResolvedRun) -> str | None:
        """Why ``run`` has to be (re)done although something was stored for it; None if it is new."""
        name = self.store.path_for(run).name
        if name in self.damaged:
            return f"damaged result {name}: {self.damaged[name]}"
        variant = _variant(run.spec.to_dict()) if run.spec is not None else ""
        prev = self.previous.get((run.method.name, run.pair, run.budget, run.seed, variant))
        if prev is None and run.spec is not None:
            prev = self.previous.get((run.spec.method, run.spec.pair, run.budget, run.seed, variant))
        if prev is None:
            return None
        if prev.get("fit_id") and id_hash(prev["fit_id"]) == id_hash(run.fit_id):
            return None  # new evaluations of a kept fit: nothing stored is stale
        return f"stale result {Path(prev['_file']).name}: " + "; ".join(differences(prev.get("resolved"), run.to_dict()))


@dataclass
class Plan:
    """Runs to do and done; ``why`` says for a run to do why its stored result does not count."""

    todo: list[ResolvedRun] = field(default_factory=list)
    done: list[ResolvedRun] = field(default_factory=list)
    why: dict[str, str] = field(default_factory=dict)


def plan_runs(runs: Iterable[ResolvedRun], results_dir: str | Path, *, overwrite: bool = False) -> Plan:
    """Split resolved runs into to-do and done (duplicates, i.e. equivalent spellings, dropped)."""
    index = ResultIndex(results_dir)
    out, seen = Plan(), set()
    for run in runs:
        h = id_hash(run.run_id)
        if h in seen:
            continue
        seen.add(h)
        if not overwrite and index.find(run) is not None:
            out.done.append(run)
            continue
        out.todo.append(run)
        why = index.why_redo(run)
        if why:
            out.why[run.run_id] = why
            log.info("%s: redoing (%s)", run.run_id, why)
    return out


def resolve_all(specs: Iterable[RunSpec], resolver: Resolver) -> list[ResolvedRun]:
    return [resolver.resolve(s) for s in specs]


def sweep_done(specs: Iterable[RunSpec], results_dir: str | Path, *, store_root: str | Path | None = None,
               data_root: str | Path | None = None, guard: bool = False) -> tuple[set[str], dict[str, str]]:
    """(spec keys whose current result is stored and valid, {spec key: why it is redone}) for a sweep.

    Sweeps track runs by the spec as typed (``spec_key``); a spec that cannot be
    resolved here is not done (its job fails and records why).  ``guard``: refuse
    (SplitOverlapError) runs whose training or validation images are evaluated.
    """
    resolver = Resolver(store_root, data_root)
    index = ResultIndex(results_dir)
    done: set[str] = set()
    why: dict[str, str] = {}
    for spec in specs:
        try:
            run = resolver.resolve(spec)
        except AlignbenchError as exc:
            log.debug("%s cannot be resolved here: %s", spec.spec_key, exc)
            continue
        if guard:
            resolver.check_splits(run)
        if index.find(run) is not None:
            done.add(spec.spec_key)
        else:
            reason = index.why_redo(run)
            if reason:
                why[spec.spec_key] = reason
    return done, why


# -- report: which stored results are stale -----------------------------------------------
@dataclass
class Staleness:
    """How many stored results are stale and why; how many could only be checked in part."""

    stale: dict[str, str] = field(default_factory=dict)  # file name → reason


def mark_stale(records: list[dict[str, Any]], resolver: Resolver | None = None) -> Staleness:
    """Set ``rec['_stale']`` (reason or None) and ``rec['_label']`` (current method label) on each record.

    A record is stale when the current code resolves its spec to something else
    (method version or config, encoders, layers, splits, evaluations).
    """
    from alignbench.identity_cache import IdentityCache

    resolver = resolver or Resolver()
    cache = IdentityCache()
    out = Staleness()
    memo: dict[Any, Any] = {}
    for rec in records:
        name = Path(rec.get("_file", rec.get("run_id", "?"))).name
        reason, label = _stale_reason(rec, resolver, memo, cache)
        rec["_stale"], rec["_label"] = reason, label
        if reason:
            out.stale[name] = reason
    cache.save()
    return out


def _stale_reason(rec: dict[str, Any], resolver: Resolver, memo: dict, cache: Any) -> tuple[str | None, str | None]:
    """Compare what the code decides (method, encoders, layers, splits, evals) with the record.

    Feature keys depend on the data root at hand, which need not be the one the run
    used, so they are checked by ``run`` (which reads the data), not here.  What the
    code decides is remembered per code version (alignbench.identity_cache): no torch.
    """
    if rec.get("schema_version", 1) < 2 or not isinstance(rec.get("resolved"), dict):
        return "result schema 1 (no resolved identity recorded); rerun to refresh", None
    old = {k: v for k, v in rec["resolved"].items() if k != "feature_keys"}
    key = json.dumps([rec["spec"], old.get("budget")], sort_keys=True, default=str)
    if key not in memo:
        memo[key] = cache.get(key)
        if memo[key] is None:
            try:
                cur = resolver.resolve(RunSpec.from_dict(rec["spec"]), data=False, budget=old.get("budget"))
                d = cur.to_dict()
                d.pop("feature_keys", None)
                memo[key] = {"resolved": d, "label": cur.method.label}
            except AlignbenchError as exc:
                memo[key] = {"error": str(exc)}
            cache.put(key, memo[key])
    cur = memo[key]
    if "error" in cur:
        return f"cannot be resolved by this code ({cur['error']})", None
    if cur["resolved"] == old:
        return None, cur["label"]
    return "; ".join(differences(old, cur["resolved"])), cur["label"]


__all__ = ["Plan", "ResultIndex", "Staleness", "mark_stale", "plan_runs", "resolve_all", "sweep_done"]
