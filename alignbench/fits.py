"""Fitted models kept: every run stores its fitted state beside its result, keyed by ``fit_id``.

Why: a fit depends on everything but the evaluations (alignbench.identity), so
a new evaluation of the same method, budget, seed and data can evaluate the
stored state instead of refitting (PAL ≈ 6 min, linear ≈ 4 min at 10k pairs on
2 cores); analyses (``alignbench analyze``) read the same files.

A state file ``<results>/<fit_id>.state.pt`` holds ``method.state_dict()`` with the
method's name, version and full config, written atomically.  It is used only
when it loads completely and its method identity equals the run's; otherwise
it is moved aside (``….state.pt.bad-<time>``: nothing stored is lost), a
warning names the action, and the run refits.
"""
from __future__ import annotations

import io
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from alignbench.errors import AlignbenchError
from alignbench.interrupts import shield

log = logging.getLogger(__name__)

STATE_SUFFIX = ".state.pt"
FORMAT = 1


class FitStateError(AlignbenchError):
    """A stored fitted state that cannot be used (missing, damaged, or another method identity)."""


def state_path(results_dir: str | os.PathLike, fit_id: str) -> Path:
    return Path(results_dir) / f"{fit_id}{STATE_SUFFIX}"


@shield  # an interrupt inside torch.save's zip writer would surface as its own error: a "failed" run
def save_fitted(method: Any, run: Any, results_dir: str | os.PathLike) -> Path:
    """Write ``method``'s fitted state for ``run`` (a ResolvedRun) atomically; returns the path."""
    import torch

    from alignbench.atomic import write_bytes_atomic
    from alignbench.results import _json_safe

    payload = {
        "format": FORMAT,
        "fit_id": run.fit_id,
        "method": run.method.to_dict(),
        "fit_info": json.dumps(_json_safe(dict(method.fit_info)), default=str),
        "state": method.state_dict(),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return write_bytes_atomic(state_path(results_dir, run.fit_id), buf.getvalue())


def _read(path: Path, device: str) -> dict[str, Any]:
    import torch

    if not path.is_file():
        raise FitStateError(f"no fitted state at {path}")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # truncated zip, flipped bytes, foreign pickle: all unusable
        raise FitStateError(f"fitted state {path.name} is damaged ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "state" not in payload:
        raise FitStateError(f"fitted state {path.name} is not an alignbench state (format {FORMAT})")
    return payload


def _build(payload: dict[str, Any], device: str) -> Any:
    from alignbench.identity import make_method

    method = make_method(payload["method"]).to(device)
    method.load_state_dict(payload["state"])
    method.fit_info = json.loads(payload.get("fit_info") or "{}")
    return method


def load_fitted(record_or_fit_id: dict[str, Any] | str, results_dir: str | os.PathLike | None = None, *,
                device: str = "cpu") -> Any:
    """The fitted Method of a stored result (a record from ResultStore, or a fit id + its results folder).

    Raises FitStateError when the state is missing, damaged or was written by
    another version of the method than the current code has.
    """
    from alignbench.identity import resolve_method

    if isinstance(record_or_fit_id, dict):
        rec = record_or_fit_id
        if "fit_id" not in rec:
            raise FitStateError(f"result {rec.get('run_id')!r} has no fit_id (result schema 1): rerun it to keep its fit")
        fit_id = rec["fit_id"]
        if results_dir is None:
            results_dir = Path(rec["_file"]).parent if rec.get("_file") else "results/runs"
    else:
        fit_id = record_or_fit_id
        results_dir = results_dir if results_dir is not None else "results/runs"
    payload = _read(state_path(results_dir, fit_id), device)
    if payload.get("fit_id") != fit_id:
        raise FitStateError(f"fitted state for {fit_id} holds the fit {payload.get('fit_id')!r}")
    m = payload["method"]
    _, current = resolve_method(m["name"])
    if m.get("version") != current.version:
        raise FitStateError(f"fitted state {fit_id} was written by {m['name']} version {m.get('version')}; "
                            f"this code has version {current.version}")
    return _build(payload, device)


def fitted_for(run: Any, results_dir: str | os.PathLike, *, device: str = "cpu") -> Any | None:
    """The stored fitted method of ``run`` (ResolvedRun), or None (with a warning naming the action) to refit."""
    path = state_path(results_dir, run.fit_id)
    if not path.exists():
        return None
    try:
        payload = _read(path, device)
        if payload.get("fit_id") != run.fit_id or payload.get("method") != run.method.to_dict():
            old = payload.get("method") or {}
            raise FitStateError(f"fitted state {path.name} is of {old.get('name')} version {old.get('version')} "
                                f"with another config, not of this run's {run.method.name} version {run.method.version}")
        return _build(payload, device)
    except Exception as exc:  # anything unusable is refit; the bad file is kept aside, never used
        aside = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        try:
            os.replace(path, aside)
            where = f"moved aside to {aside.name}"
        except OSError as move_exc:
            where = f"could not be moved aside ({move_exc})"
        log.warning("%s (%s); refitting", exc if isinstance(exc, FitStateError) else
                    f"fitted state {path.name} cannot be loaded ({type(exc).__name__}: {exc})", where)
        return None


__all__ = ["FitStateError", "STATE_SUFFIX", "fitted_for", "load_fitted", "save_fitted", "state_path"]
