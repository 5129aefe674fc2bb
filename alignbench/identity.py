"""Resolve a RunSpec once into the run it describes, and hash what was resolved.

Why: a spec *as typed* is not an identity.  ``pal`` and ``pal:tau_p=0.03`` (the
default) are one run; ``lr=0.01`` and ``lr=1e-2`` are one run; and after a
method's default or its code changes, the same typed spec is a *different* run.
So before any work the spec becomes a :class:`ResolvedRun` — canonical encoder
names with their resolved layers, dtype, the feature-cache entries it will read,
the method's canonical name, ``version`` and FULL config after defaults and
coercion, canonical train/val/eval splits, the budget as a number of pairs and
the seed — and the ids hash that:

* ``fit_id``  = hash of everything but the evaluations (what the fitted state depends on);
* ``run_id``  = hash of ``fit_id`` + the evaluations (what the metrics depend on).

Both keep a readable prefix (``pal-tau_p0.1-effnet-lite0+minilm-l6-b10000-s0-…``).
Everything downstream (runner, FeatureSource, planning, staleness) takes the
ResolvedRun and never re-parses pair, split or budget strings.

Resolution reads no pixels and loads no model: dataset listings and encoder
fingerprints only (:class:`Resolver` memoises them, so resolving the 1,000
specs behind a report costs about as much as resolving one per encoder pair).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignbench.config import RunSpec, resolve_budget
from alignbench.errors import ConfigError
from alignbench.refs import (EncoderRef, EvalSpec, SplitRef, check_split, parse_split_ref,  # noqa: F401  (re-exported)
                             resolve_split_ref)

ID_HASH_CHARS = 12
_PREFIX_MAX = 90


# -- methods ----------------------------------------------------------------------------
@dataclass(frozen=True)
class MethodRef:
    """Canonical method name, its class ``version`` and its FULL config (JSON values)."""

    name: str
    version: int
    config: dict[str, Any] = field(hash=False)
    defaults: dict[str, Any] = field(default_factory=dict, hash=False, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "config": self.config}

    @property
    def non_default(self) -> dict[str, Any]:
        """Config entries that differ from the method's current defaults (names a variant in tables)."""
        return {k: v for k, v in self.config.items() if k not in self.defaults or self.defaults[k] != v}

    @property
    def label(self) -> str:
        """'pal' or 'pal:K=128:tau_p=0.1' — equivalent spellings give one label."""
        opts = ":".join(f"{k}={_short(v)}" for k, v in sorted(self.non_default.items()))
        return f"{self.name}:{opts}" if opts else self.name


def _jsonable(obj: Any) -> Any:
    """The JSON form of a config (tuples → lists, numpy scalars → numbers) as it is hashed and stored."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _short(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def resolve_method(name: str, options: dict[str, Any] | None = None) -> tuple[type, MethodRef]:
    """(method class, MethodRef) of ``name`` with ``options`` applied over its defaults.

    The one place a method name + options become an identity: UnknownNameError
    (did you mean) or ConfigError for bad hyperparameters.  Extension point for
    methods whose config is itself resolved (e.g. a ``:tuned`` variant).
    """
    from alignbench.registry import METHODS

    cls = METHODS.get(name)
    config = cls.Config().update(dict(options or {}))
    version = getattr(cls, "version", None)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ConfigError(f"method {name!r} ({cls.__module__}.{cls.__name__}) has no integer class attribute "
                          f"'version' ≥ 1; add `version = 1` to the class")
    ref = MethodRef(METHODS.canonical(name), version, _jsonable(config.to_dict()),
                    _jsonable(cls.Config().to_dict()))
    return cls, ref


def make_method(ref: MethodRef | dict[str, Any]) -> Any:
    """A fresh (unfitted) method instance with exactly the config of ``ref``.

    The config went through JSON (tuples are lists there): values are put back
    into the field types and the result must hash to the same config.
    """
    from alignbench.registry import METHODS

    ref = ref if isinstance(ref, MethodRef) else MethodRef(ref["name"], int(ref["version"]), dict(ref["config"]))
    cls = METHODS.get(ref.name)
    base = cls.Config()
    values = {k: tuple(v) if isinstance(v, list) and isinstance(getattr(base, k, None), tuple) else v
              for k, v in ref.config.items()}
    method = cls(config=base.update(values))
    if _jsonable(method.config.to_dict()) != ref.config:
        raise ConfigError(f"method {ref.name!r}: the recorded config cannot be rebuilt by this code "
                          f"(fields changed since it was written)")
    return method


# -- the resolved run ---------------------------------------------------------------------
@dataclass(frozen=True)
class ResolvedRun:
    """Everything that determines one run's numbers, resolved; ``fit_id``/``run_id`` hash it.

    ``spec`` (as typed) and ``available`` (pairs in the training split) ride along for
    provenance and are not part of the identity.
    """

    pair: str
    image: EncoderRef
    text: EncoderRef
    dtype: str
    method: MethodRef
    train: SplitRef
    val: SplitRef | None
    budget: int
    seed: int
    evals: tuple[EvalSpec, ...]
    feature_keys: dict[str, Any] = field(hash=False)
    spec: RunSpec | None = field(default=None, compare=False, hash=False, repr=False)
    available: int | None = field(default=None, compare=False, hash=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The ``resolved`` block of a result record (structure documented in alignbench/results.py)."""
        return {
            "pair": self.pair,
            "image": self.image.to_dict(),
            "text": self.text.to_dict(),
            "dtype": self.dtype,
            "method": self.method.to_dict(),
            "train": self.train.to_dict(),
            "val": None if self.val is None else self.val.to_dict(),
            "budget": self.budget,
            "seed": self.seed,
            "evals": [e.to_dict() for e in self.evals],
            "feature_keys": _jsonable(self.feature_keys),
        }

    @classmethod
    def fit_from_dict(cls, d: dict[str, Any], spec: RunSpec | None = None) -> "ResolvedRun":
        """The fit a stored ``resolved`` block describes: everything but the evaluations, as recorded.

        Its ``fit_id`` is the recorded one (a fit does not depend on evaluations); only the
        label's defaults are today's.
        """
        m, part = d["method"], fit_part(d)
        method = MethodRef(m["name"], int(m["version"]), dict(m["config"]), resolve_method(m["name"])[1].defaults)
        return cls(pair=d["pair"], image=EncoderRef(**d["image"]), text=EncoderRef(**d["text"]), dtype=d["dtype"],
                   method=method, train=SplitRef(**d["train"]),
                   val=None if d.get("val") is None else SplitRef(**d["val"]), budget=int(d["budget"]),
                   seed=int(d["seed"]), evals=(), feature_keys=part["feature_keys"], spec=spec)

    @property
    def fit_id(self) -> str:
        return fit_id_of(self.to_dict(), self.method.label)

    @property
    def run_id(self) -> str:
        return run_id_of(self.to_dict(), self.method.label)

    def __str__(self) -> str:
        return f"{self.method.label} {self.pair} budget {self.budget} seed {self.seed}"


def fit_part(resolved: dict[str, Any]) -> dict[str, Any]:
    """What a fit depends on: ``resolved`` minus the evaluations and their feature keys."""
    out = {k: v for k, v in resolved.items() if k != "evals"}
    out["feature_keys"] = {k: v for k, v in (resolved.get("feature_keys") or {}).items() if k != "evals"}
    return out


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:ID_HASH_CHARS]


def _prefix(resolved: dict[str, Any], label: str | None) -> str:
    name = resolved["method"]["name"]
    opts = (label or name)[len(name):].replace(":", "-").replace("=", "")
    text = f"{name}{opts}"[: _PREFIX_MAX - 40] + f"-{resolved['pair']}-b{resolved['budget']}-s{resolved['seed']}"
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", text)


def ids_of(resolved: dict[str, Any]) -> tuple[str, str]:
    """(fit hash, run hash) of a ``resolved`` block: the identity parts of ``fit_id`` and ``run_id``."""
    fit = _digest(fit_part(resolved))
    evals = {"evals": resolved.get("evals"), "keys": (resolved.get("feature_keys") or {}).get("evals")}
    return fit, _digest([fit, evals])


def fit_id_of(resolved: dict[str, Any], label: str | None = None) -> str:
    """``<readable prefix>-fit-<hash of everything but the evaluations>``.

    The prefix (``label``: method name + non-default options) is for people; only
    the hash is identity (:func:`id_hash`), so a default that moves without changing
    the config does not change what a run *is*.
    """
    return f"{_prefix(resolved, label)}-fit-{ids_of(resolved)[0]}"


def run_id_of(resolved: dict[str, Any], label: str | None = None) -> str:
    """``<readable prefix>-<hash of the fit hash + the evaluations and their feature keys>``."""
    return f"{_prefix(resolved, label)}-{ids_of(resolved)[1]}"


def id_hash(an_id: str) -> str:
    """The identity part of a fit or run id (the readable prefix is not compared)."""
    return str(an_id).rsplit("-", 1)[-1]


def differences(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """Why a stored ``resolved`` block differs from the current one, in words ('method version 1→2')."""
    if not old:
        return ["no resolved identity recorded (result schema 1)"]
    out = []
    om, nm = old.get("method") or {}, new["method"]
    if om.get("name") != nm["name"]:
        out.append(f"method {om.get('name')}→{nm['name']}")
    if om.get("version") != nm["version"]:
        out.append(f"method version {om.get('version')}→{nm['version']}")
    oc, nc = om.get("config") or {}, nm["config"]
    changed = sorted(k for k in set(oc) | set(nc) if oc.get(k, _MISSING) != nc.get(k, _MISSING))
    if changed:
        out.append("config changed: " + ", ".join(changed))
    for side in ("image", "text"):
        if (old.get(side) or {}) != new[side]:
            o, n = old.get(side) or {}, new[side]
            out.append(f"{side} encoder {o.get('encoder')} layer {o.get('layer')}→{n['encoder']} layer {n['layer']}")
    for k in ("pair", "dtype", "train", "val", "budget", "seed", "evals"):
        if old.get(k) != new.get(k) and not (k == "pair" and any("encoder" in d for d in out)):
            out.append(f"{k} changed")
    ok, nk = old.get("feature_keys") or {}, new.get("feature_keys") or {}
    if ok != nk:
        parts = sorted(_changed_paths(ok, nk))
        out.append("feature cache keys changed: " + ", ".join(parts[:4]) + (", …" if len(parts) > 4 else ""))
    return out or ["identity hash changed"]


_MISSING = object()


def _changed_paths(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _changed_paths(a.get(k), b.get(k), f"{prefix}{' ' if prefix else ''}{k}")
        return out
    return [prefix] if a != b else []


# -- resolving ----------------------------------------------------------------------------
class Resolver:
    """Resolve RunSpecs against one feature store and data root; listings and keys are memoised."""

    def __init__(self, store_root: str | Path | None = None, data_root: str | Path | None = None, *,
                 store: Any = None):
        from alignbench.store import FeatureStore

        self.store = store if store is not None else FeatureStore(store_root)
        self.data_root = data_root
        self._sources: dict[Any, Any] = {}
        self._memo: dict[Any, Any] = {}

    def source(self, pair: str | tuple[str, str], image_layer: int | None, text_layer: int | None, dtype: str) -> Any:
        """The FeatureSource of a pair + encoder options (shared by every spec that uses them)."""
        from alignbench.source import FeatureSource

        key = (pair, image_layer, text_layer, dtype)
        if key not in self._sources:
            self._sources[key] = FeatureSource(pair, store=self.store, data_root=self.data_root,
                                               image_layer=image_layer, text_layer=text_layer, dtype=dtype)
        return self._sources[key]

    def _once(self, key: Any, make):
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def resolve(self, spec: RunSpec, *, data: bool = True, budget: int | None = None,
                layers: bool = True) -> ResolvedRun:
        """The ResolvedRun of ``spec`` (BudgetError, DataError, UnknownNameError… before any work).

        ``data=False`` resolves what the *code* decides without opening any dataset
        (method, encoders and layers, canonical splits): no feature keys, and the
        budget is ``budget`` (as recorded) when the spec says ``max``.  ``report``
        uses it, because the data root at hand need not be the one a run used.
        ``layers=False`` (planning a sweep where the weights are not) keeps the layers
        as requested (None: the encoder's default) instead of asking the encoders.
        """
        from alignbench.registry import DATASETS

        _, method = resolve_method(spec.method, spec.method_options)
        enc = spec.encoder
        src = self.source(spec.pair, enc.image_layer, enc.text_layer, enc.dtype)
        image_layer, text_layer = (self._once(("layers", id(src)), src.resolved_layers) if layers
                                   else (enc.image_layer, enc.text_layer))
        train = self._once(("split", spec.train, "train", data), lambda: resolve_split_ref(spec.train, "train", src.dataset if data else DATASETS.get))
        val = self._once(("split", spec.val, "dev", data), lambda: resolve_split_ref(spec.val, "dev", src.dataset if data else DATASETS.get)) if spec.val else None
        available = None
        if data:  # the budget first: "more pairs than exist" is the likeliest mistake
            available = self._once(("available", train),
                                   lambda: len(src.dataset(train.dataset).caption_image_index(train.split)))
            budget = resolve_budget(spec.budget, available)
        evals = tuple(self._once(("eval", e, data), lambda e=e: self._resolve_eval(src, e, data)) for e in spec.evals)
        feature_keys: dict[str, Any] = {}
        if data:
            feature_keys["train"] = self._keys(src, ("images", "texts"), train)
            if val is not None:
                feature_keys["val"] = self._keys(src, ("images", "texts"), val)
            feature_keys["evals"] = {ev.key: self._once(("evalkeys", id(src), ev), lambda ev=ev: self._eval_keys(src, ev))
                                     for ev in evals}
        elif isinstance(spec.budget, int) or budget is None:
            budget = resolve_budget(spec.budget, 1 << 62)
        return ResolvedRun(
            pair=f"{src.image_encoder}+{src.text_encoder}",
            image=EncoderRef(src.image_encoder, image_layer), text=EncoderRef(src.text_encoder, text_layer),
            dtype=enc.dtype, method=method, train=train, val=val, budget=int(budget), seed=int(spec.seed),
            evals=evals, feature_keys=feature_keys, spec=spec, available=available,
        )  # fmt: skip

    def check_splits(self, run: ResolvedRun) -> None:
        """SplitOverlapError if ``run``'s training/validation images meet its evaluated splits (alignbench.split_guard)."""
        from alignbench.split_guard import check_disjoint

        key = ("guard", run.train, run.val, run.evals)
        if key not in self._memo:
            check_disjoint(run, self.source((run.image.encoder, run.text.encoder), None, None, run.dtype))
            self._memo[key] = True

    def _keys(self, src: Any, whats: tuple[str, ...], ref: SplitRef) -> dict[str, str]:
        return {w: self._once(("key", id(src), w, ref.dataset, ref.split),
                              lambda w=w: src.feature_key(w, ref.dataset, ref.split)) for w in whats}

    @staticmethod
    def _resolve_eval(src: Any, text: str, data: bool) -> EvalSpec:
        from alignbench.registry import DATASETS, TASKS

        ev = EvalSpec.parse(text).resolved()
        task = TASKS.get(ev.task)()
        if data:
            ds = src.dataset(ev.dataset)
            task.check_dataset(ds)
        else:
            ds = DATASETS.get(ev.dataset)
            task.check_dataset(ev.dataset, getattr(ds, "kind", ""))
        return dataclasses.replace(ev, split=check_split(ds, ev.split))

    @staticmethod
    def _eval_keys(src: Any, ev: EvalSpec) -> dict[str, str]:
        from alignbench.feature_kinds import expand

        out: dict[str, str] = {}
        for need in ev.task_object().needs(ev.dataset, ev.split):
            for w in expand(need.what):
                name = w if need.dataset == ev.dataset and need.split in (ev.split, None) else f"{w}:{need.dataset}:{need.split}"
                out[name] = src.feature_key(w, need.dataset, need.split, need.view)
        return out


def resolve_run(spec: RunSpec, *, store_root: str | Path | None = None, data_root: str | Path | None = None) -> ResolvedRun:
    """Resolve one spec (for many, keep one :class:`Resolver`)."""
    return Resolver(store_root, data_root).resolve(spec)


__all__ = [
    "EncoderRef", "EvalSpec", "MethodRef", "ResolvedRun", "Resolver", "SplitRef", "differences", "fit_id_of",
    "fit_part", "id_hash", "ids_of", "make_method", "parse_split_ref", "resolve_method", "resolve_run", "run_id_of",
]  # fmt: skip
