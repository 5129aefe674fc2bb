"""The Python API: ``ab.run``, ``ab.load_results`` and ``ab.fit`` (``import alignbench as ab``).

Why it goes through the CLI's own functions: the same bad arguments must give
the same errors (``commands.run.build_specs`` checks every name, option and
budget before anything is encoded), and a run started here is the same run
(same id, same result file) as one started by ``alignbench run``.
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from alignbench.errors import AlignbenchError, ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import torch

    from alignbench.methods.base import Method

log = logging.getLogger(__name__)
PathLike = str | os.PathLike


def _text(value: Any) -> str | None:
    """A CLI-style comma list from a Python value (list, int, str); None stays None."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def run(methods: str | Sequence[str], *, budget: Any = "10k", pair: str | Sequence[str] | None = None,
        seeds: Any = 0, tasks: Any = None, datasets: Any = None, evals: Any = None, train: str | None = None,
        val: str | None = None, results: PathLike = "results/runs", data_root: PathLike | None = None,
        cache: PathLike | None = None, device: str = "auto", overwrite: bool = False, progress: bool = False,
        dataset_files: Iterable[PathLike] = (), image_layer: int | None = None, text_layer: int | None = None,
        dtype: str = "fp32") -> "pd.DataFrame":
    """Run methods × pairs × budgets × seeds (finished runs are reused) and return their results.

    Arguments mean what the ``alignbench run`` flags of the same names mean and
    accept the same text (``methods="pal:K=128,csa"``, ``budget="1k,10k"``) or
    Python lists (``methods=["pal", "csa"]``, ``seeds=[0, 1, 2]``).  Returns
    :func:`load_results`' frame for these runs; a run that fails for a reason
    other than bad input is a row with ``status == "failed"`` and its error.
    """
    from alignbench.commands import run as run_cmd
    from alignbench.datasets.cards import use
    from alignbench.devices import parse_device
    from alignbench.planning import plan_runs
    from alignbench.runner import now_iso, run_one

    use(dataset_files, data_root)
    args = argparse.Namespace(
        methods=_text(methods), budget=_text(budget), pair=_text(pair), seeds=_text(seeds), tasks=_text(tasks),
        datasets=_text(datasets), evals=_text(evals), train=train, val=val, image_layer=image_layer,
        text_layer=text_layer, dtype=dtype,
    )  # fmt: skip
    if not args.methods:
        raise ConfigError("no methods given: e.g. ab.run(methods=['pal', 'csa'], budget='1k')")
    from alignbench.preflight import check

    args.device, args.data_root, args.results, args.cache = device, data_root, results, cache
    check("run", args)  # the CLI's checks of every value and path, in the same order
    specs = run_cmd.build_specs(args)
    runs = run_cmd.resolve_specs(specs, args)  # budgets, overlapping splits: refused before any work
    choice = parse_device(device)
    since = now_iso()  # what another process stores from now on is not redone by overwrite=True
    todo = plan_runs(runs, results, overwrite=overwrite).todo
    failed: dict[str, str] = {}
    for run in todo:
        try:
            run_one(run, results_dir=results, store_root=cache, data_root=data_root, overwrite=overwrite,
                    fresh_since=since, device=str(choice), progress=progress)
        except AlignbenchError:
            raise  # bad input repeats for every run: say it once, as the CLI does
        except Exception as exc:  # noqa: BLE001 - kept as a failed row, like the CLI's FAILED line
            log.error("%s failed: %s: %s", run.run_id, type(exc).__name__, exc)
            failed[run.run_id] = f"{type(exc).__name__}: {exc}"
    frame = load_results(results, run_ids=[r.run_id for r in runs])
    if failed:
        import pandas as pd

        extra = pd.DataFrame([{"run_id": rid, "status": "failed", "error": msg} for rid, msg in failed.items()])
        frame = pd.concat([frame, extra], ignore_index=True)
    return frame


def load_results(path: PathLike = "results/runs", *, run_ids: Iterable[str] | None = None,
                 intervals: bool = True) -> "pd.DataFrame":
    """One row per stored run: its config, every metric, and a 95% interval per metric.

    Columns: ``run_id, status, method, method_label, pair, budget, seed, train,
    val, method_options, config, git, device, file``, then one column per
    metric named ``task/dataset[:split]/metric``; with ``intervals`` each
    metric whose run stored per-query outcomes also gets ``…_low`` and
    ``…_high`` (percentile bootstrap over the test queries or images,
    ``alignbench.stats``).  Unreadable files are skipped with a warning.
    """
    import pandas as pd

    from alignbench.results import ResultStore, method_label

    store = ResultStore(path)
    if not store.root.is_dir():
        from alignbench.errors import DataError

        raise DataError(f"results folder {str(store.root)!r} does not exist")
    wanted = set(run_ids) if run_ids is not None else None
    rows = []
    for rec in store.load_all():
        if wanted is not None and rec["run_id"] not in wanted:
            continue
        spec, prov = rec["spec"], rec.get("provenance") or {}
        row: dict[str, Any] = {
            "run_id": rec["run_id"], "status": rec.get("status", "ok"), "method": spec["method"],
            "method_label": method_label(spec["method"], spec.get("method_options")), "pair": spec.get("pair"),
            "budget": (rec.get("budget") or {}).get("pairs", spec.get("budget")), "seed": spec.get("seed"),
            "train": spec.get("train"), "val": spec.get("val"), "method_options": spec.get("method_options") or {},
            "config": (rec.get("method") or {}).get("config"), "git": ((prov.get("git") or {}).get("commit")),
            "device": (prov.get("device") or {}).get("device") if isinstance(prov.get("device"), dict) else prov.get("device"),
            "file": rec.get("_file"),
        }  # fmt: skip
        for key, metrics in (rec.get("metrics") or {}).items():
            for metric, value in (metrics or {}).items():
                if isinstance(value, (int, float)):
                    row[f"{key}/{metric}"] = float(value)
            if intervals and key in (rec.get("outcomes") or {}):
                for metric, (low, high) in _intervals(key, rec["outcomes"][key], metrics or {}).items():
                    row[f"{key}/{metric}_low"], row[f"{key}/{metric}_high"] = low, high
        rows.append(row)
    return pd.DataFrame(rows)


def _intervals(key: str, stored: dict, metrics: dict[str, float]) -> dict[str, tuple[float, float]]:
    """Bootstrap intervals of one evaluation's metrics from its stored outcomes ({} if it cannot)."""
    from alignbench.outcomes import Outcomes
    from alignbench.registry import TASKS
    from alignbench.stats import bootstrap_interval, resample

    try:
        outcomes = Outcomes.from_json(stored)
        task = TASKS.get(outcomes.task)()
        samples = resample(lambda w: task.resampled_metrics(outcomes, w), outcomes.units)
    except (AlignbenchError, NotImplementedError, KeyError) as exc:
        log.warning("no intervals for %s: %s", key, exc)
        return {}
    n = max(outcomes.units.values())
    out = {}
    for metric, s in samples.items():
        if metric in metrics:
            iv = bootstrap_interval(float(metrics[metric]), s, n)
            out[metric] = (iv.low, iv.high)
    return out


class Fitted:
    """A fitted method, ready for your own features (numpy arrays or alignbench feature objects).

    ``embed_image(x)`` / ``embed_text(y)`` take (N, d) global features from the
    same encoders (and layers) it was fitted on, or (N, T, d) tokens for a
    token-level method; ``similarity(a, b)`` scores (Na, Nb).  ``method`` is
    the underlying :class:`~alignbench.methods.base.Method`.
    """

    def __init__(self, method: "Method", pair: str, info: dict[str, Any]):
        self.method, self.pair, self.info = method, pair, info
        self.image_dim, self.text_dim = int(info["image_dim"]), int(info["text_dim"])  # what embed_* expect

    def __repr__(self) -> str:
        return f"Fitted({self.method.registry_name!r}, pair={self.pair!r}, pairs={self.info.get('pairs')})"

    def embed_image(self, features: Any) -> "torch.Tensor":
        return self.method.embed_image(_features(features, "image"))

    def embed_text(self, features: Any) -> "torch.Tensor":
        return self.method.embed_text(_features(features, "text"))

    def similarity(self, a: Any, b: Any) -> "torch.Tensor":
        import torch

        return self.method.similarity(torch.as_tensor(a), torch.as_tensor(b))


def _features(x: Any, side: str) -> Any:
    """Wrap a user's array as Image/TextFeatures: (N, d) global, or (N, T, d) tokens (first token as global)."""
    from alignbench.features import ImageFeatures, TextFeatures

    if isinstance(x, (ImageFeatures, TextFeatures)):
        return x
    a = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float32)
    if a.ndim == 2:
        return ImageFeatures(pooled=a) if side == "image" else TextFeatures(pooled=a)
    if a.ndim == 3:
        n, t, _ = a.shape
        if side == "image":
            return ImageFeatures(pooled=a[:, 0].copy(), tokens=a.astype(np.float16), n_prefix=1)
        offsets = np.arange(0, n * t + 1, t, dtype=np.int64)
        return TextFeatures(pooled=a.mean(1), tokens=a.reshape(n * t, -1).astype(np.float16), offsets=offsets)
    raise ConfigError(f"{side} features must be (N, d) or (N, T, d) arrays, got shape {a.shape}")


def fit(method: str, *, pair: str | None = None, budget: Any = "10k", seed: int = 0, train: str | None = None,
        val: str | None = "default", data_root: PathLike | None = None, cache: PathLike | None = None,
        device: str = "auto", progress: bool = False, dataset_files: Iterable[PathLike] = (),
        image_layer: int | None = None, text_layer: int | None = None, dtype: str = "fp32") -> Fitted:
    """Fit one method (``"pal:K=128"``) on ``budget`` pairs of ``train`` — the subset a run of that seed uses.

    Names, options and the budget are checked as ``alignbench run`` checks
    them; features come from (and go to) the same cache.
    """
    import dataclasses

    import torch

    from alignbench.commands import run as run_cmd
    from alignbench.datasets.cards import use
    from alignbench.devices import parse_device
    from alignbench.identity import Resolver, make_method
    from alignbench.runner import subsample_indices
    from alignbench.source import FeatureSource
    from alignbench.store import FeatureStore

    use(dataset_files, data_root)
    if isinstance(budget, (list, tuple)) or "," in str(budget):
        raise ConfigError("ab.fit takes one budget (e.g. '1k'); use ab.run for several")
    args = argparse.Namespace(methods=method, budget=_text(budget), pair=pair, seeds=str(seed), tasks=None,
                              datasets=None, evals=None, train=train, val=None if val == "default" else (val or "none"),
                              image_layer=image_layer, text_layer=text_layer, dtype=dtype)
    specs = run_cmd.build_specs(args)
    if len(specs) != 1:
        raise ConfigError(f"ab.fit fits one method on one pair; this asks for {len(specs)} runs (use ab.run)")
    store = FeatureStore(cache) if cache is not None else None
    # resolved once (no evaluations: a fit evaluates nothing); everything below reads the resolved run
    run = Resolver(store=store, data_root=data_root).resolve(dataclasses.replace(specs[0], evals=()))
    source = FeatureSource.for_run(run, store=store, data_root=data_root, progress=progress)
    all_train = source.pairs(run.train.dataset, run.train.split)
    val_pairs = source.pairs(run.val.dataset, run.val.split) if run.val is not None else None
    idx = subsample_indices(len(all_train), run.budget, run.seed)
    m = make_method(run.method).to(str(parse_device(device)))
    torch.manual_seed(run.seed)
    m.fit(all_train.subset(idx), val_pairs, seed=run.seed)
    return Fitted(m, run.pair, {"pairs": len(idx), "available": len(all_train), "train": str(run.train),
                                "val": None if run.val is None else str(run.val), "seed": run.seed,
                                "image_dim": all_train.images.dim, "text_dim": all_train.texts.dim})
