"""Fitted methods of stored runs, for analyses: the stored state when there is one, else a faithful refit.

Why a refit fallback: results written before fitted states were kept have
only their record.  Their fit is a pure function of the record (method
options, encoder pair and layers, training split, budget, seed), so it is
redone the way ``runner`` fits (same nested subsample, ``torch.manual_seed``,
``fit(train, val, seed=...)``), on the cached features, and said so.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignbench.analyses import StoredFit
from alignbench.errors import AlignbenchError, DataError

if TYPE_CHECKING:
    from alignbench.identity import ResolvedRun

log = logging.getLogger(__name__)


class FitLoader:
    """Loads (or refits) the methods of result records from one results folder."""

    def __init__(self, results: str | Path, *, cache: str | Path | None = None, data_root: str | Path | None = None):
        self.results = Path(results)
        self.cache, self.data_root = cache, data_root
        self._sources: dict[tuple, Any] = {}
        self._runs: dict[str, Any] = {}  # record → its ResolvedRun
        self._resolver: Any = None
        self.refits: list[tuple[str, float]] = []  # (run_id, seconds) of runs refit for lack of a state

    @property
    def notes(self) -> list[str]:
        """What the user should know about how the fits were obtained."""
        if not self.refits:
            return []
        total = sum(s for _, s in self.refits)
        return [f"warning: {len(self.refits)} run(s) had no stored fitted state and were refit from their "
                f"records ({total:.1f} s): {', '.join(r for r, _ in self.refits[:3])}"
                + (", …" if len(self.refits) > 3 else "")]

    def run_of(self, record: dict[str, Any]) -> "ResolvedRun":
        """The resolved fit behind a record (no evaluations): its ``resolved`` block, or (schema 1) its spec resolved here."""
        import dataclasses

        from alignbench.config import RunSpec
        from alignbench.identity import ResolvedRun, Resolver

        key = str(record.get("_file") or record.get("run_id"))
        if key not in self._runs:
            resolved, spec = record.get("resolved"), record.get("spec") or {}
            if isinstance(resolved, dict):
                self._runs[key] = ResolvedRun.fit_from_dict(resolved)
            elif spec.get("method") and spec.get("train"):  # a refit evaluates nothing: no evaluation is resolved
                self._resolver = self._resolver or Resolver(self.cache, self.data_root)
                self._runs[key] = self._resolver.resolve(dataclasses.replace(RunSpec.from_dict(spec), evals=()))
            else:
                raise DataError(f"result {record.get('_file', record.get('run_id'))!r} has no spec to refit from")
        return self._runs[key]

    def source_for(self, fit: StoredFit | dict[str, Any]) -> Any:
        """The feature source of a fit's encoders, resolved layers and dtype (one per distinct setting)."""
        from alignbench.source import FeatureSource
        from alignbench.store import FeatureStore

        run = self.run_of(fit.record if isinstance(fit, StoredFit) else fit)
        key = (run.image.encoder, run.text.encoder, run.image.layer, run.text.layer, run.dtype)
        if key not in self._sources:
            self._sources[key] = FeatureSource.for_run(
                run, store=FeatureStore(self.cache) if self.cache is not None else None, data_root=self.data_root,
                progress=False)
        return self._sources[key]

    def fit(self, record: dict[str, Any]) -> StoredFit:
        """The record with its fitted method: the stored state if any, else refit (noted in ``notes``)."""
        method = self._stored(record)
        if method is None:
            t = time.perf_counter()
            method = self._refit(record)
            self.refits.append((str(record.get("run_id")), time.perf_counter() - t))
        return StoredFit(record=record, method=method)

    def _stored(self, record: dict[str, Any]) -> Any:
        """The method rebuilt from the fitted state kept beside the result (``alignbench.fits``), if any."""
        try:
            from alignbench.fits import load_fitted, state_path
        except ImportError:  # an alignbench that does not keep fitted states
            return None
        fit_id = record.get("fit_id")
        folder = Path(record["_file"]).parent if record.get("_file") else self.results  # states sit beside results
        if not fit_id or not state_path(folder, fit_id).is_file():
            return None  # schema-1 results, or a run stored before states were kept: refit (noted)
        try:
            return load_fitted(record, folder)
        except AlignbenchError as exc:  # damaged, or another method version: refit instead, never use it
            log.warning("%s; refitting %s from its record", exc, record.get("run_id"))
            return None

    def _refit(self, record: dict[str, Any]) -> Any:
        import torch

        from alignbench.identity import make_method
        from alignbench.runner import subsample_indices

        run = self.run_of(record)
        source = self.source_for(record)
        all_train = source.pairs(run.train.dataset, run.train.split)
        val = source.pairs(run.val.dataset, run.val.split) if run.val is not None else None
        train = all_train.subset(subsample_indices(len(all_train), run.budget, run.seed))
        method = make_method(run.method)
        log.info("refitting %s on %d pairs (no stored state)", record.get("run_id"), len(train))
        torch.manual_seed(run.seed)
        method.fit(train, val, seed=run.seed)
        return method
