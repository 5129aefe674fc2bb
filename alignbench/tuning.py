"""Tuning on the validation split only: the data a trial sees, and what it is scored on.

Split protocol (decided here, recorded with every study): the budget's
training pairs are the same nested subsample ``alignbench run`` fits on for
the seed; the validation split (Flickr8k dev by default) is cut by IMAGE into
two fixed halves, ``stop`` (early stopping, and the per-epoch losses the
pruner sees) and ``score`` (the objective).  So the objective is never
computed on the rows that chose the stopping epoch, training rows stay
exactly those of the final runs, and the test split is never loaded: only its
image ids are listed, to refuse a validation split that shares images with it.

Objectives: ``recall`` (mean of image→text and text→image R@1 on ``score``,
maximised; every method) and ``val_loss`` (symmetric InfoNCE of the method's
embeddings on ``score`` at τ 0.05, minimised; trained methods only).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from alignbench.errors import ConfigError
from alignbench.features import Pairs
from alignbench.refs import SplitRef

log = logging.getLogger(__name__)

OBJECTIVES = {"recall": "maximize", "val_loss": "minimize"}
SPLIT_PROTOCOL = "validation split cut by image into halves (seed 0): 'stop' early-stops, 'score' scores"
HALVES_SEED = 0
SCORE_TAU = 0.05


@dataclass(frozen=True)
class TuneData:
    """What trials see: training pairs per seed, the early-stopping half and the scoring half."""

    fits: dict[int, Pairs]
    stop: Pairs
    score: Pairs


def split_by_image(pairs: Pairs, seed: int = HALVES_SEED) -> tuple[Pairs, Pairs]:
    """(first half, second half) of ``pairs`` by image: no image's captions fall in both."""
    images = np.unique(pairs.image_index)
    if len(images) < 4:
        raise ConfigError(f"the validation split has {len(images)} images; tuning needs at least 4 to cut it in two")
    first = np.random.default_rng(seed).permutation(images)[: len(images) // 2]
    mask = np.isin(pairs.image_index, first)
    return pairs.subset(np.flatnonzero(mask)), pairs.subset(np.flatnonzero(~mask))


def check_disjoint_from_test(dataset: Any, val_split: str, test_split: str) -> None:
    """Refuse a validation split that is, or shares images with, the test split (lists ids; loads no features)."""
    name = getattr(dataset, "registry_name", type(dataset).__name__)
    if val_split == test_split:
        raise ConfigError(f"cannot tune on {name}:{val_split}: it is the test split; use a validation split "
                          f"such as {name}:dev")
    shared = set(dataset.images(val_split).ids) & set(dataset.images(test_split).ids)
    if shared:
        raise ConfigError(f"{name}:{val_split} shares {len(shared)} image(s) with the test split {name}:{test_split} "
                          f"(e.g. {sorted(shared)[0]}); tuning must not see test images")


def load_tune_data(source: Any, train: SplitRef, val: SplitRef, budget: int | str, seeds: list[int]) -> TuneData:
    """Training subsamples per seed and the two validation halves, through ``source`` (never the test split).

    ``train``/``val`` are resolved references (alignbench.refs.resolve_split_ref), ``budget`` a
    pair count or ``max`` (alignbench.config.parse_budget).
    """
    from alignbench.config import resolve_budget
    from alignbench.runner import subsample_indices
    from alignbench.tasks.base import default_split

    for ref in (train, val):
        ds = source.dataset(ref.dataset)
        check_disjoint_from_test(ds, ref.split, default_split(ds))
    all_train = source.pairs(train.dataset, train.split)
    n = resolve_budget(budget, len(all_train))
    fits = {s: all_train.subset(subsample_indices(len(all_train), n, s)) for s in seeds}
    stop, score = split_by_image(source.pairs(val.dataset, val.split))
    return TuneData(fits, stop, score)


def score(method: Any, pairs: Pairs, objective: str) -> float:
    """The objective of a fitted method on ``pairs`` (the scoring half)."""
    import torch

    from alignbench.tasks.base import embed_in_batches
    from alignbench.tasks.retrieval import retrieval_metrics

    uniq, caption_image = np.unique(pairs.image_index, return_inverse=True)
    with torch.no_grad():
        img = embed_in_batches(method.embed_image, pairs.images.subset(uniq), 1024)
        txt = embed_in_batches(method.embed_text, pairs.texts.subset(pairs.text_index), 1024)
        if objective == "recall":
            m = retrieval_metrics(img, txt, caption_image.reshape(-1), method.similarity, ks=(1,))
            return 0.5 * (m["i2t_R@1"] + m["t2i_R@1"])
        from alignbench.training import info_nce

        img = img.to_dense() if getattr(img, "is_sparse", False) else img
        return float(info_nce(img[torch.from_numpy(caption_image.reshape(-1))], txt, SCORE_TAU))


def is_trained(method_cls: Any) -> bool:
    """Whether the method runs the shared trainer (so it has per-epoch losses to prune on)."""
    from alignbench.training import TrainerSettings

    return issubclass(method_cls.Config, TrainerSettings)


def check_objective(method: str, objective: str) -> None:
    from alignbench.registry import METHODS

    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective {objective!r}; use one of {', '.join(OBJECTIVES)}")
    if objective == "val_loss" and not is_trained(METHODS.get(method)):
        raise ConfigError(f"objective val_loss needs a trained method; {method} is not trained "
                          "(tune it with --objective recall)")


def run_trial(trial: Any, method: str, fixed: dict[str, Any], space: dict, data: TuneData, objective: str,
              prune: bool, device: str = "cpu", checkpoints: Path | None = None) -> float:
    """``_run_trial``, with an error (not an interruption) recorded so a resumed study does not repeat it."""
    import optuna

    try:
        return _run_trial(trial, method, fixed, space, data, objective, prune, device, checkpoints)
    except optuna.TrialPruned:
        raise
    except Exception as exc:
        trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
        raise


def _run_trial(trial: Any, method: str, fixed: dict[str, Any], space: dict, data: TuneData, objective: str,
              prune: bool, device: str = "cpu", checkpoints: Path | None = None) -> float:
    """Fit the trial's config on every seed's training pairs and return the mean objective on ``score``.

    Trained methods report each epoch's early-stopping loss of the first seed
    to the study (the pruner's input; also recorded under ``--no-prune``; negated when the objective is maximised, since the pruner
    compares in the study's direction); the epochs spent go in the trial's
    ``epochs`` attribute.  A diverged fit ends the trial as pruned.

    With ``checkpoints`` (the study file's path) each fit keeps a mid-fit checkpoint beside
    it (:mod:`alignbench.fit_checkpoint`), so the re-run of a trial whose process was killed
    resumes its fits where they were saved, with the losses its first run reported.
    """
    import optuna

    from alignbench.errors import TrainingDivergedError
    from alignbench.registry import METHODS
    from alignbench.search_space import suggest
    from alignbench.training import observe_epochs

    params = {name: suggest(trial, name, p) for name, p in space.items()}
    cls = METHODS.get(method)
    sign = -1.0 if OBJECTIVES[objective] == "maximize" else 1.0
    epochs = {"n": 0}
    reported = _replay_interrupted_reports(trial)
    values = []
    for i, (seed, train) in enumerate(data.fits.items()):
        last = {"epoch": 0}

        def observe(epoch: int, val: float, first: bool = i == 0, last: dict = last) -> None:
            epochs["n"] += epoch - last["epoch"]  # a resumed fit counts the epochs it did before the interruption
            last["epoch"] = epoch
            if first:  # recorded with or without pruning: a --no-prune study keeps the curves a pruner would see
                if epoch not in reported:
                    trial.report(sign * val, epoch)
                if prune and trial.should_prune():
                    trial.set_user_attr("epochs", epochs["n"])
                    raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        m = cls(**{**fixed, **params}).to(device)
        with _trial_checkpoint(trial, checkpoints, method, fixed, params, seed):
            try:
                with observe_epochs(observe):
                    m.fit(train, data.stop, seed=seed)
            except TrainingDivergedError as exc:
                trial.set_user_attr("diverged", str(exc))
                trial.set_user_attr("epochs", epochs["n"])
                raise optuna.TrialPruned("diverged") from exc
        values.append(score(m, data.score, objective))
        if "lr" in m.fit_info:
            trial.set_user_attr(f"lr_seed{seed}", m.fit_info["lr"])
    trial.set_user_attr("epochs", epochs["n"])
    return float(np.mean(values))


def _replay_interrupted_reports(trial: Any) -> set[int]:
    """A re-run of an interrupted trial reports the losses its first run reported; returns their epochs.

    Why: its fits resume from their checkpoints, so the epochs before are not run again, yet the
    pruner must see the whole curve (a resumed fit is bit-identical to an uninterrupted one).
    """
    first = trial.user_attrs.get("retry_of")
    if first is None:
        return set()
    before = next((t for t in trial.study.get_trials(deepcopy=False) if t.number == first), None)
    values = dict(before.intermediate_values) if before is not None else {}
    for epoch, value in sorted(values.items()):
        trial.report(value, epoch)
    return set(values)


@contextlib.contextmanager
def _trial_checkpoint(trial: Any, study_path: Path | None, method: str, fixed: dict[str, Any],
                      params: dict[str, Any], seed: int) -> Iterator[None]:
    """A mid-fit checkpoint for one fit of a trial, named by what the fit depends on (study, config, seed).

    Kept only when the fit is interrupted (KeyboardInterrupt, a killed process); a fit that ends,
    is pruned, diverges or fails removes it: that trial is not run again.
    """
    if study_path is None:
        yield
        return
    from alignbench.fit_checkpoint import checkpointing

    what = json.dumps({"study": trial.study.study_name, "method": method, "fixed": fixed, "params": params,
                       "seed": seed}, sort_keys=True, default=str)
    fit_id = f"{study_path.stem}-trial-{hashlib.sha256(what.encode()).hexdigest()[:12]}-s{seed}"
    with checkpointing(study_path.parent, fit_id) as ck:
        try:
            yield
        except Exception:
            ck.remove()
            raise
        finally:
            if ck.earlier_s != 0.0:  # resumed: the seconds its first run spent on this fit
                trial.set_user_attr("earlier_s", float(trial.user_attrs.get("earlier_s", 0.0)) + (ck.earlier_s or 0.0))
                trial.set_user_attr("machines", [*trial.user_attrs.get("machines", []), *ck.machines()])
