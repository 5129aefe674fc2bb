"""Sweep configuration: a YAML file and/or CLI flags → the list of RunSpecs to run.

Why its own module: ``alignbench sweep`` must answer fast (re-running a
finished sweep takes < 5 s), so everything here reads names through the
registries' source scan and never imports a method, an encoder or torch.
Names are checked up front so a typo in a 200-run sweep file is a
"did you mean" at the prompt, not 200 failed jobs.

A sweep file (all keys optional except methods; flags given on the command
line override the file's values)::

    name: budgets-vs-seeds          # readable part of the sweep id
    methods: [cca, "pal:K=128", {asif: {k: 800}}]
    pairs: [effnet-lite0+minilm-l6]  # or "all" (the offline pairs)
    budgets: [1k, 10k]
    seeds: 0-2
    tasks: [retrieval]               # keep only these tasks' evaluations
    datasets: [flickr8k]             # keep only these datasets' evaluations
    evals: ["retrieval:flickr8k:test"]   # or list evaluations explicitly
    train: flickr8k:train
    val: flickr8k:dev                # null: no validation split
    executor: slurm                  # slurm | local | debug
    profile: slurm/local.yaml
    results: results/runs           # ledgers and job logs go beside it, in results/sweeps
    cache: /scratch/features
    data_root: /data
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from alignbench.config import (
    DEFAULT_PAIR,
    OFFLINE_PAIRS,
    RunSpec,
    parse_budgets,
    parse_method_spec,
    parse_seeds,
    split_list,
    split_methods,
    split_tuned,
)
from alignbench.errors import ConfigError

EXECUTORS = ("slurm", "local", "debug")
_UNSET = object()


@dataclass
class SweepConfig:
    """The resolved sweep: what to run and where (paths kept as given)."""

    methods: list[str] = field(default_factory=list)  # method specs, "pal:K=128"
    pairs: list[str] = field(default_factory=lambda: [DEFAULT_PAIR])
    budgets: list[int | str] = field(default_factory=lambda: [10_000])
    seeds: list[int] = field(default_factory=lambda: [0])
    tasks: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    evals: list[str] = field(default_factory=list)
    train: str | None = None
    val: Any = _UNSET  # None means "no validation split"; unset keeps RunSpec's default
    executor: str = "local"
    profile: str | None = None
    results: str = "results/runs"  # the result JSONs, as for ``alignbench run`` / ``report``
    cache: str | None = None
    data_root: str | None = None
    name: str | None = None
    device: str = "auto"  # checked spelling; resolved on each worker (not part of any run id)
    image_layer: int | None = None  # encoder options of every run (part of the feature key and the run id)
    text_layer: int | None = None
    dtype: str = "fp32"
    tune_dir: str = "results/tune"  # where ``:tuned`` methods find their studies (alignbench tune)
    tuned_wait: bool = True  # ``:tuned`` waits for trials another process is running; False takes the best finished now

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        if d["val"] is _UNSET:
            d.pop("val")
        return d

    # -- derived paths ----------------------------------------------------------
    @property
    def runs_dir(self) -> Path:
        """Where run_one writes result JSONs (``--results``, default ``results/runs``)."""
        return Path(self.results).expanduser().resolve()

    @property
    def sweeps_dir(self) -> Path:
        """Where sweep ledgers and job logs live: beside the runs folder (``results/sweeps``)."""
        return sweeps_dir_for(self.results)

    @property
    def store_root(self) -> Path | None:
        if self.cache:
            return Path(self.cache).expanduser().resolve()
        env = os.environ.get("ALIGNBENCH_CACHE")
        return Path(env).expanduser().resolve() if env else None

    @property
    def data_path(self) -> Path | None:
        if self.data_root:
            return Path(self.data_root).expanduser().resolve()
        env = os.environ.get("ALIGNBENCH_DATA")
        return Path(env).expanduser().resolve() if env else None


_KEYS = {f.name for f in fields(SweepConfig)}
_KEY_ALIASES = {"data-root": "data_root", "data": "data_root", "method": "methods", "pair": "pairs",
                "budget": "budgets", "seed": "seeds", "task": "tasks", "dataset": "datasets"}


def load_sweep_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a sweep YAML file into a plain dict of known keys (ConfigError on unknown ones)."""
    import yaml

    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"sweep file {p} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"sweep file {p} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"sweep file {p} must be a mapping of keys (methods:, pairs:, budgets:, …)")
    out: dict[str, Any] = {}
    unknown = []
    for key, value in raw.items():
        k = _KEY_ALIASES.get(str(key), str(key).replace("-", "_"))
        if k not in _KEYS:
            unknown.append(str(key))
            continue
        out[k] = value
    if unknown:
        raise ConfigError(f"unknown key(s) in sweep file {p}: {_with_suggestions(unknown, sorted(_KEYS))}")
    if "name" not in out:
        out["name"] = p.stem
    if out.get("profile") and not Path(str(out["profile"])).is_absolute():
        # a profile path in a sweep file is relative to the file (or a bare profile name)
        cand = p.parent / str(out["profile"])
        if cand.exists():
            out["profile"] = str(cand)
    return out


def build_config(file_values: dict[str, Any] | None = None, **overrides: Any) -> SweepConfig:
    """Merge file values and non-None overrides (flags win) into a checked SweepConfig."""
    merged = dict(file_values or {})
    merged.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(merged) - _KEYS)
    if unknown:
        raise ConfigError(f"unknown sweep option(s): {', '.join(unknown)}")
    cfg = SweepConfig()
    if "methods" not in merged or not merged["methods"]:
        raise ConfigError("no methods given: use --methods cca,asif or a 'methods:' list in the sweep file")
    cfg.methods = _method_specs(merged["methods"])
    if "pairs" in merged:
        cfg.pairs = _pairs(merged["pairs"])
    if "budgets" in merged:
        cfg.budgets = parse_budgets(_as_list(merged["budgets"]))
    if "seeds" in merged:
        cfg.seeds = _seeds(merged["seeds"])
        if not cfg.seeds:
            raise ConfigError("no seeds given: use e.g. --seeds 0 or --seeds 0-4")
    for key in ("tasks", "datasets", "evals"):
        if key in merged:
            setattr(cfg, key, split_list(_as_list(merged[key])))
    for key in ("train", "executor", "profile", "results", "cache", "data_root", "name", "tune_dir"):
        if merged.get(key) is not None:
            setattr(cfg, key, str(merged[key]))
    for key in ("image_layer", "text_layer"):
        if merged.get(key) is not None:
            try:
                setattr(cfg, key, int(merged[key]))
            except (TypeError, ValueError):
                raise ConfigError(f"{key} must be an integer block index, got {merged[key]!r}") from None
    if merged.get("dtype") is not None:
        from alignbench.encoders.base import DTYPES

        if str(merged["dtype"]) not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {merged['dtype']!r}")
        cfg.dtype = str(merged["dtype"])
    if merged.get("device") is not None:
        from alignbench.devices import check_device_text

        cfg.device = check_device_text(merged["device"])
    if "tuned_wait" in merged:
        if not isinstance(merged["tuned_wait"], bool):
            raise ConfigError(f"tuned_wait must be true or false, got {merged['tuned_wait']!r}")
        cfg.tuned_wait = merged["tuned_wait"]
    if "val" in merged:
        v = merged["val"]
        cfg.val = None if v in (None, "", "none", "None", "null") else str(v)
    if cfg.executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {cfg.executor!r}; use one of {', '.join(EXECUTORS)}"
                          + _did_you_mean(cfg.executor, EXECUTORS))
    return cfg


def sweeps_dir_for(results: str | os.PathLike) -> Path:
    """Ledgers sit beside the result folder, not in it (``alignbench report`` reads every JSON in it)."""
    return Path(results).expanduser().resolve().parent / "sweeps"


# -- expansion ----------------------------------------------------------------------
def expand(cfg: SweepConfig) -> list[RunSpec]:
    """Every (pair, method, budget, seed) RunSpec of the sweep, in a stable order, names checked."""
    from alignbench.registry import METHODS

    methods = []
    for text in cfg.methods:
        text, tuned = split_tuned(text)
        name, opts = parse_method_spec(text)
        methods.append((METHODS.canonical(name), opts, tuned))  # UnknownNameError with did-you-mean
    for pair in cfg.pairs:
        _check_pair(pair)
    evals = resolve_evals(cfg)
    base: dict[str, Any] = {}
    if evals is not None:
        base["evals"] = tuple(evals)
    if cfg.train:
        base["train"] = cfg.train
    if cfg.val is not _UNSET:
        base["val"] = cfg.val
    from alignbench.config import EncoderOptions

    if (cfg.image_layer, cfg.text_layer, cfg.dtype) != (None, None, "fp32"):
        base["encoder"] = EncoderOptions(image_layer=cfg.image_layer, text_layer=cfg.text_layer, dtype=cfg.dtype)
    specs, seen = [], set()
    for pair in cfg.pairs:
        for name, opts, tuned in methods:
            for budget in cfg.budgets:
                record = _tuned(cfg, name, opts, pair, budget) if tuned else None
                options = {**(record["params"] if record else {}), **opts}
                for seed in cfg.seeds:
                    spec = RunSpec(method=name, pair=pair, budget=budget, seed=seed,
                                   method_options=options, tuned=record, **base)
                    if spec.run_id not in seen:
                        seen.add(spec.run_id)
                        specs.append(spec)
    return specs


def _tuned(cfg: SweepConfig, method: str, opts: dict, pair: str, budget: int | str) -> dict[str, Any]:
    """The best config of the (pair, budget) study of ``method`` with options ``opts`` (optuna loaded only here)."""
    from alignbench.studies import find_tuned

    record = find_tuned(cfg.tune_dir, method, opts, pair, budget, wait=cfg.tuned_wait).record()
    record["fixed"] = dict(opts)
    return record


def resolve_evals(cfg: SweepConfig) -> list[str] | None:
    """The evaluations each run performs, or None to keep RunSpec's defaults.

    ``evals`` lists them outright; ``tasks``/``datasets`` filter the defaults,
    and a dataset outside the defaults gets its kind's task on its test split.
    """
    from alignbench.registry import DATASETS, TASKS

    if cfg.evals:
        from alignbench.refs import EvalSpec

        for text in cfg.evals:
            EvalSpec.parse(text).resolved()  # names ("did you mean"), split and task options, one line each
        return list(cfg.evals)
    if not cfg.tasks and not cfg.datasets:
        return None
    tasks = [TASKS.canonical(t) for t in cfg.tasks]
    datasets = [DATASETS.canonical(d) for d in cfg.datasets]
    out = []
    for text in RunSpec.__dataclass_fields__["evals"].default:
        task, dataset = text.split(":")[:2]
        if (not tasks or task in tasks) and (not datasets or dataset in datasets):
            out.append(text)
    covered = {e.split(":")[1] for e in out}
    for dataset in datasets:
        if dataset in covered:
            continue
        from alignbench.tasks.base import TASK_FOR_KIND, dataset_kind, default_split

        task = TASK_FOR_KIND.get(dataset_kind(dataset))
        if task is None or (tasks and task not in tasks):
            raise ConfigError(f"no task among {tasks or 'the registered tasks'} evaluates dataset {dataset!r}")
        out.append(f"{task}:{dataset}:{default_split(DATASETS.get(dataset))}")
    if not out:
        raise ConfigError(f"tasks {cfg.tasks} and datasets {cfg.datasets} leave no evaluation to run; "
                          "name them explicitly with evals: TASK:DATASET:SPLIT")
    return out


def _check_pair(pair: str) -> None:
    """VISION+TEXT with both names known (did-you-mean through the encoder registry)."""
    try:
        from alignbench.encoders import parse_pair
    except ImportError:
        parse_pair = None
    if parse_pair is not None:
        parse_pair(pair)
        return
    from alignbench.registry import ENCODERS

    vision, sep, text = pair.partition("+")
    if not sep or not vision.strip() or not text.strip():
        raise ConfigError(f"encoder pair {pair!r} is not VISION+TEXT (e.g. {DEFAULT_PAIR})")
    ENCODERS.resolve(vision.strip())
    ENCODERS.resolve(text.strip())


# -- value readers ----------------------------------------------------------------------
def _as_list(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [str(v) if not isinstance(v, (dict, int)) else v for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    return value


def _method_specs(value: Any) -> list[str]:
    """Strings ('pal:K=128'), comma lists, or YAML mappings {pal: {K: 128}} → method specs."""
    items = value if isinstance(value, list) else split_methods(str(value))
    out = []
    for item in items:
        if isinstance(item, dict):
            if len(item) != 1:
                raise ConfigError(f"method entry {item!r}: use one mapping per method, e.g. {{pal: {{K: 128}}}}")
            (name, opts), = item.items()
            opts = opts or {}
            if not isinstance(opts, dict):
                raise ConfigError(f"options of method {name!r} must be a mapping, got {opts!r}")
            out.append(":".join([str(name)] + [f"{k}={v}" for k, v in opts.items()]))
        else:
            out.extend(split_methods(str(item)))
    if not out:
        raise ConfigError("no methods given")
    return out


def _pairs(value: Any) -> list[str]:
    items = split_list(_as_list(value))
    out: list[str] = []
    for p in items:
        out.extend(OFFLINE_PAIRS if p == "all" else [p])
    if not out:
        raise ConfigError("no encoder pairs given")
    return list(dict.fromkeys(out))


def _seeds(value: Any) -> list[int]:
    if isinstance(value, list):
        out: list[int] = []
        for v in value:
            out.extend(parse_seeds(v if isinstance(v, int) else str(v)))
        return out
    return parse_seeds(value if isinstance(value, int) else str(value))


def _did_you_mean(name: str, known: Any) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _with_suggestions(names: list[str], known: list[str]) -> str:
    return ", ".join(f"{n!r}{_did_you_mean(n, known)}" for n in names) + f"; known keys: {', '.join(known)}"


__all__ = ["EXECUTORS", "SweepConfig", "build_config", "expand", "load_sweep_file", "resolve_evals"]
