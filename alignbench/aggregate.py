"""From result records to table rows: one row per run identity, its seeds averaged, with intervals and tests.

A row averages runs that differ in the seed alone (``results.row_identity``);
anything else that differs (a method setting, a layer, the dtype, the training
or validation data) makes its own row, labelled with what differs from the
default, e.g. ``pal [image-layer 9]`` or ``pal [K=128]``.  A setting counts as
default when it has the value of plain runs (no method option set, not tuned),
or failing those of any run that did not set it (so no method code, and no
torch, is imported to learn defaults).  A row whose runs set method options
shows those alone: what they imply (``lr=…`` turns the range test off) is not
a setting of its own, and a tuned study's choices never redefine the default.

Cells are mean ± 95% interval (``alignbench.stats``): Student t over seeds;
with one seed, a bootstrap over the stored per-query / per-image outcomes.
Two rows are compared by a paired test (t over ≥ 3 shared seeds, else a paired
bootstrap over the same queries), which decides what is bold and what
``report --compare`` prints.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from alignbench import stats
from alignbench.results import TUNED_MARK, row_identity

log = logging.getLogger(__name__)

GROUP_PATHS = ("budget", "pair", "image.encoder", "text.encoder")  # shown as group columns, never in labels
DERIVED = ("feature_keys",)  # identity paths that follow from others (cache keys of the layers, dtype, data): no label
LEAVES = ("train", "val")  # split references: one label part ("train coco:train"), not one per field
METHOD_PATH = "method.config."  # a method setting's identity path starts so
ENCODER_DEFAULTS = ("image.layer", "text.layer")  # resolved per encoder (alignbench.identity)
MIN_SEEDS_FOR_T = 3  # paired t over seeds from this many shared seeds on; fewer → paired bootstrap


# -- rows -----------------------------------------------------------------------------
def untimed_resume(record: dict[str, Any]) -> bool:
    """A fit resumed from a checkpoint that did not record the time spent before it (code before the fix)."""
    fit_info = (record.get("method") or {}).get("fit_info") or {}
    return fit_info.get("resumed_after_epoch") is not None and \
        (record.get("timings") or {}).get("fit_earlier_s") is None


def fit_time(record: dict[str, Any]) -> float | None:
    """The wall seconds of a run's whole fit, or None where the run did not time one.

    None for a run that reused a stored fit (no fitting), and for one resumed from a checkpoint
    whose earlier time is unknown: its ``timings.fit`` counts only the last process's share.
    """
    t = (record.get("timings") or {}).get("fit")
    if (record.get("fit") or {}).get("reused") or not isinstance(t, (int, float)) or untimed_resume(record):
        return None
    return float(t)


@dataclass
class RowRuns:
    """The runs of one row identity: seed → records (normally one per seed)."""

    key: str
    method: str
    flat: dict[str, Any]
    runs: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    label: str = ""

    @property
    def seeds(self) -> list[int]:
        return sorted(self.runs)

    def fit_seconds(self) -> float | None:
        """Median wall time of the row's fits; runs whose whole fit was not timed (:func:`fit_time`) are left out."""
        times = sorted(t for recs in self.runs.values() for r in recs if (t := fit_time(r)) is not None)
        if not times:
            return None
        mid = len(times) // 2
        return times[mid] if len(times) % 2 else (times[mid - 1] + times[mid]) / 2

    def values(self, eval_key: str, metric: str) -> dict[int, float]:
        """seed → value (runs repeating a seed are averaged); seeds without the metric are left out."""
        out = {}
        for seed, recs in self.runs.items():
            vals = [v for r in recs if isinstance(v := (r["metrics"].get(eval_key) or {}).get(metric), (int, float))]
            if vals:
                out[seed] = float(vals[0]) if len(vals) == 1 else float(sum(vals) / len(vals))
        return out


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict) and prefix[:-1] not in LEAVES:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: "{}"}
    return {prefix[:-1]: json.dumps(obj, sort_keys=True, default=str)}


def _typed_paths(record: dict[str, Any]) -> set[str]:
    """The identity paths this run set explicitly (the rest took their defaults)."""
    from alignbench.config import EncoderOptions, RunSpec

    spec = record.get("spec") or {}
    enc = spec.get("encoder") or {}
    out = {f"{METHOD_PATH}{k}" for k in (spec.get("method_options") or {})}
    if enc.get("image_layer") is not None:
        out.add("image.layer")
    if enc.get("text_layer") is not None:
        out.add("text.layer")
    if enc.get("dtype", EncoderOptions.dtype) != EncoderOptions.dtype:
        out.add("dtype")
    for name in ("train", "val"):
        if name in spec and spec[name] != RunSpec.__dataclass_fields__[name].default:
            out.add(name)
    return out


def group_rows(records: Iterable[dict[str, Any]]) -> dict[str, RowRuns]:
    """Row key → RowRuns, with each row's label set (unique among rows of the same method)."""
    rows: dict[str, RowRuns] = {}
    untyped: dict[tuple[str, str], Counter] = {}  # (method, path) → values of runs that did not set it
    plain: dict[tuple[str, str], Counter] = {}  # the same, from runs that set no method option and were not tuned
    typed: dict[str, set[str]] = {}  # row key → paths its runs set explicitly
    for rec in records:
        flat = _flatten(row_identity(rec))
        key = json.dumps(flat, sort_keys=True)
        method = json.loads(flat.get("method.name", json.dumps(rec["spec"]["method"])))
        row = rows.setdefault(key, RowRuns(key, method, flat))
        row.runs.setdefault(int(rec["spec"].get("seed", 0)), []).append(rec)
        set_here = _typed_paths(rec)
        typed.setdefault(key, set()).update(set_here)
        is_plain = "tuned" not in flat and not any(p.startswith(METHOD_PATH) for p in set_here)
        for p, v in flat.items():
            if p not in set_here:
                untyped.setdefault((method, p), Counter())[v] += 1
                if is_plain:
                    plain.setdefault((method, p), Counter())[v] += 1
    by_method: dict[str, list[RowRuns]] = {}
    for row in rows.values():
        by_method.setdefault(row.method, []).append(row)
    for method, members in by_method.items():
        paths = sorted(p for p in {p for r in members for p in r.flat} - set(GROUP_PATHS) if not p.startswith(DERIVED))
        varying = {p for p in paths if len({r.flat.get(p) for r in members}) > 1}
        defaults = {p: plain.get((m, p), c).most_common(1)[0][0] for (m, p), c in untyped.items() if m == method}
        for r in members:
            shown = sorted((varying | typed[r.key]) & set(paths) & set(r.flat) - {"tuned"}, key=_label_order)
            if any(p.startswith(METHOD_PATH) for p in typed[r.key]):  # the options it set, not what they imply
                shown = [p for p in shown if not p.startswith(METHOD_PATH) or p in typed[r.key]]
            # a layer nobody typed is the encoder's default (the pair is a group column): not a label part
            shown = [p for p in shown if p not in ENCODER_DEFAULTS or p in typed[r.key]]
            if any(p not in defaults for p in shown):  # a setting no run left at its default: ask the method
                defaults = {**_config_defaults(method), **defaults}
            parts = [_part(p, r.flat[p]) for p in shown if r.flat[p] != defaults.get(p)]
            name = f"{method}{TUNED_MARK}" if "tuned" in r.flat else method  # tuned on dev (alignbench tune)
            r.label = f"{name} [{'; '.join(parts)}]" if parts else name
        _disambiguate(members, sorted(varying))
    for r in rows.values():  # report --include-stale: results the current code would not reproduce
        if any(rec.get("_stale") for recs in r.runs.values() for rec in recs):
            r.label += " [stale]"
    return rows


def _label_order(path: str) -> tuple[bool, str]:
    return (not path.startswith(METHOD_PATH), path)  # method settings first: "pal [K=128; image-layer 9]"


def _config_defaults(method: str) -> dict[str, str]:
    """The method's default config as identity paths (imports the method: only when the runs cannot tell)."""
    from alignbench.registry import METHODS

    try:
        config = METHODS.get(method).Config().to_dict()
    except Exception as exc:  # a method not installed here: its settings are shown in full
        log.debug("no defaults for %s: %s", method, exc)
        return {}
    return _flatten({"method": {"config": config}})


def _disambiguate(members: list[RowRuns], varying: list[str]) -> None:
    """Rows whose labels collide (same budget and pair) show every setting that varies."""
    seen: dict[tuple, list[RowRuns]] = {}
    for r in members:
        seen.setdefault((r.label, r.flat.get("budget"), r.flat.get("pair")), []).append(r)
    for same in seen.values():
        if len(same) > 1:
            for r in same:
                r.label = f"{r.method} [{'; '.join(_part(p, r.flat.get(p)) for p in sorted(varying, key=_label_order))}]"


_PART_NAMES = {"image.layer": "image-layer", "text.layer": "text-layer", "method.version": "version", "dtype": "dtype"}


def _part(path: str, value: Any) -> str:
    """One label part: ``K=128``, ``image-layer 9``, ``train coco:train``."""
    v = json.loads(value) if value is not None else None
    if isinstance(v, dict) and "dataset" in v:  # a split reference
        v = f"{v['dataset']}:{v.get('split')}" if v.get("split") else str(v["dataset"])
    text = v if isinstance(v, str) else ("default" if v is None else f"{v:g}" if isinstance(v, float) else json.dumps(v))
    if path.startswith(METHOD_PATH):
        return f"{path[len(METHOD_PATH):]}={text}"
    return f"{_PART_NAMES.get(path, path)} {text}"


# -- cells and comparisons ------------------------------------------------------------
@dataclass
class Cell:
    """One table cell: the mean over seeds with its 95% interval; ``bold`` set by ``mark_best``."""

    interval: stats.Interval
    seeds: int
    bold: bool = False

    @property
    def mean(self) -> float:
        return self.interval.mean


class Resampler:
    """Bootstrap resamples of each (run, evaluation), computed once and kept (the same ones serve CIs and tests)."""

    def __init__(self, n_boot: int = stats.N_BOOT, seed: int = stats.BOOT_SEED):
        self.n_boot, self.seed = n_boot, seed
        self._cache: dict[tuple[str, str], tuple[Any, dict[str, np.ndarray], Any] | None] = {}

    def get(self, record: dict[str, Any], eval_key: str) -> tuple[Any, dict[str, np.ndarray], Any] | None:
        """(outcomes, {metric: resampled values}, task) or None when the run stored no usable outcomes."""
        ck = (record["run_id"], eval_key)
        if ck not in self._cache:
            self._cache[ck] = self._compute(record, eval_key)
        return self._cache[ck]

    def _compute(self, record: dict[str, Any], eval_key: str):
        from alignbench.errors import AlignbenchError
        from alignbench.outcomes import Outcomes
        from alignbench.registry import TASKS

        stored = (record.get("outcomes") or {}).get(eval_key)
        if not stored:
            return None
        try:
            out = Outcomes.from_json(stored)
            task = TASKS.get(out.task)()
            samples = stats.resample(lambda w: task.resampled_metrics(out, w), out.units, self.n_boot, self.seed)
        except (AlignbenchError, NotImplementedError, KeyError, ValueError) as exc:
            log.warning("%s: cannot resample the outcomes of %s (%s); no bootstrap interval", record["run_id"], eval_key, exc)
            return None
        return out, samples, task


def cell(row: RowRuns, eval_key: str, metric: str, resampler: Resampler) -> Cell | None:
    """Mean ± t interval over seeds; one seed → bootstrap over its units (no outcomes → no interval)."""
    vals = row.values(eval_key, metric)
    if not vals:
        return None
    if len(vals) > 1:
        return Cell(stats.t_interval(list(vals.values())), len(vals))
    (seed, value), = vals.items()
    boot = _pooled_samples([row.runs[seed][0]], eval_key, metric, resampler)
    if boot is None:
        return Cell(stats.Interval(value, value, value, 1, "none"), 1)
    units, samples = boot
    return Cell(stats.bootstrap_interval(value, samples, units), 1)


def _pooled_samples(records: list[dict], eval_key: str, metric: str, resampler: Resampler):
    """(n units of the metric, mean over ``records`` of each resample's metric), or None if any lacks outcomes or
    the runs were scored on different numbers of units."""
    got = [resampler.get(r, eval_key) for r in records]
    if not got or any(g is None or metric not in g[1] for g in got):
        return None
    units = {tuple(sorted(g[0].units.items())) for g in got}
    if len(units) != 1:
        return None
    out, _, task = got[0]
    return out.units[task.unit_of(metric, out)], np.mean([g[1][metric] for g in got], axis=0)


def compare(a: RowRuns, b: RowRuns, eval_key: str, metric: str, resampler: Resampler) -> stats.Comparison | None:
    """Paired A − B: t over shared seeds when ≥ 3, else a paired bootstrap over the same queries; None if untestable."""
    va, vb = a.values(eval_key, metric), b.values(eval_key, metric)
    shared = sorted(set(va) & set(vb))
    if len(shared) >= MIN_SEEDS_FOR_T:
        return stats.paired_t([va[s] for s in shared], [vb[s] for s in shared])
    seeds_a, seeds_b = (shared, shared) if shared else (sorted(va), sorted(vb))
    if not seeds_a or not seeds_b:
        return None
    sa = _pooled_samples([a.runs[s][0] for s in seeds_a], eval_key, metric, resampler)
    sb = _pooled_samples([b.runs[s][0] for s in seeds_b], eval_key, metric, resampler)
    if sa is None or sb is None or sa[0] != sb[0]:
        return None
    point_a, point_b = np.mean([va[s] for s in seeds_a]), np.mean([vb[s] for s in seeds_b])
    return stats.paired_bootstrap(float(point_a), float(point_b), sa[1], sb[1], sa[0])


def mark_best(members: list[tuple[RowRuns, Cell | None]], eval_key: str, metric: str, resampler: Resampler) -> None:
    """Bold the best mean and every entry not significantly worse than it (paired p ≥ ALPHA); needs ≥ 2 entries."""
    present = [(r, c) for r, c in members if c is not None and np.isfinite(c.mean)]
    if len(present) < 2:
        return
    best_row, best_cell = max(present, key=lambda rc: rc[1].mean)
    best_cell.bold = True
    for r, c in present:
        if r is best_row:
            continue
        if c.mean == best_cell.mean:
            c.bold = True
            continue
        test = compare(best_row, r, eval_key, metric, resampler)
        c.bold = test is not None and test.p >= stats.ALPHA
