"""The interface every evaluation task implements, plus helpers they share.

A task turns a fitted method and a dataset split's cached features into a flat
``{metric: value}`` dict (percentages).  It declares which dataset ``kind`` it
needs so that a wrong combination (segmentation on a caption dataset) fails
with a clear message before any encoding, and which features it will read
(``needs``) so the runner can encode them up front and time encoding apart
from evaluation.

Task modules import numpy only at module level: ``alignbench report`` imports
them to learn their headline metrics and must stay fast.
"""
from __future__ import annotations

import logging
from abc import ABC
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import numpy as np

from alignbench.errors import AlignbenchError, FeatureError
from alignbench.outcomes import Outcomes
from alignbench.registry import register_task  # noqa: F401  (re-exported for task files)

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from alignbench.datasets.base import Dataset
    from alignbench.methods.base import Method

log = logging.getLogger(__name__)

# Dataset kinds (alignbench.datasets.base) → the words used in error messages.
KIND_NOUN = {
    "captions": "captions",
    "classification": "class labels",
    "segmentation": "segmentation masks",
}
# The task that evaluates each dataset kind (used to expand ``--datasets``).
TASK_FOR_KIND = {"captions": "retrieval", "classification": "classification", "segmentation": "segmentation"}


@dataclass(frozen=True)
class FeatureNeed:
    """One feature set a task reads: ``what`` is a kind of :mod:`alignbench.feature_kinds` (or ``pairs``).

    ``dense_images``: image features whose patch grid covers the WHOLE image
    (squashed, not centre-cropped), as dense tasks need.  ``view``: the
    parameters of a kind that reads a view of the dataset (``crops``: the
    :class:`~alignbench.seg_protocol.CropGrid` of the sliding windows).
    """

    what: str
    dataset: str
    split: str | None = None
    view: Any = None


class Task(ABC):
    """Base class: set ``kind``, ``headline`` and ``metric_labels``; implement ``evaluate_with_outcomes``.

    A task that also implements ``metrics_from_outcomes`` and ``resampled_metrics``
    gets bootstrap intervals and paired tests over its units in reports; one
    that only implements ``evaluate`` still runs (its results have no outcomes).
    """

    kind: ClassVar[str] = ""  # dataset kind this task needs
    registry_name: ClassVar[str] = ""
    headline: ClassVar[tuple[str, ...]] = ()  # metrics shown by default in reports
    metric_labels: ClassVar[dict[str, str]] = {}  # metric key → human label (may contain → etc.)
    batch_size: int = 1024  # rows embedded per method call (bounds memory for token methods)
    #: ``classmethod(raw: dict[str, str]) -> options`` for tasks that take ``option=value`` parts in an
    #: evaluation (alignbench.refs.EvalSpec); None: the task takes none
    parse_options: ClassVar[Any] = None

    def __init__(self, options: Any = None) -> None:
        if options is not None and self.parse_options is None:
            raise AlignbenchError(f"task {self.registry_name!r} takes no options")
        self.options = options

    def check_dataset(self, dataset: "Dataset | str", kind: str | None = None) -> None:
        """Raise AlignbenchError if ``dataset`` is not of the kind this task evaluates."""
        name = dataset if isinstance(dataset, str) else (dataset.registry_name or type(dataset).__name__)
        kind = kind if kind is not None else getattr(dataset, "kind", None)
        if kind == self.kind:
            return
        fitting = datasets_of_kind(self.kind)
        what = KIND_NOUN.get(self.kind, self.kind)
        has = f" (it is a {kind} dataset)" if kind else ""
        raise AlignbenchError(
            f"{name} has no {what}{has}, so task {self.registry_name!r} cannot evaluate it; "
            f"{self.registry_name} datasets: {', '.join(fitting) if fitting else '(none registered)'}"
        )

    def needs(self, dataset: str, split: str) -> list[FeatureNeed]:
        """The features ``evaluate`` will read (the runner encodes them first)."""
        return []

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.evaluate is Task.evaluate and cls.evaluate_with_outcomes is Task.evaluate_with_outcomes:
            raise TypeError(f"task {cls.__name__} must implement evaluate_with_outcomes (or evaluate)")

    def evaluate(self, method: "Method", source: Any, dataset: "Dataset", split: str) -> dict[str, float]:
        """Score ``method`` on ``dataset``'s ``split``; values in percent."""
        return self.evaluate_with_outcomes(method, source, dataset, split)[0]

    def evaluate_with_outcomes(
        self, method: "Method", source: Any, dataset: "Dataset", split: str
    ) -> tuple[dict[str, float], Outcomes | None]:
        """The metrics and the per-unit outcomes they are computed from (None if the task keeps none)."""
        return self.evaluate(method, source, dataset, split), None

    def metrics_from_outcomes(self, outcomes: Outcomes) -> dict[str, float]:
        """Every metric of ``evaluate``, recomputed from stored outcomes (equal to the stored metrics)."""
        raise NotImplementedError(f"task {self.registry_name!r} cannot recompute metrics from outcomes")

    def unit_of(self, metric: str, outcomes: Outcomes) -> str:
        """The resampling unit (a key of ``outcomes.units``) a metric averages over."""
        return next(iter(outcomes.units))

    def resampled_metrics(self, outcomes: Outcomes, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Metrics under B resamples of the units: ``weights[unit]`` is (n_unit, B) counts; values (B,)."""
        raise NotImplementedError(f"task {self.registry_name!r} cannot resample its outcomes")

    def label(self, metric: str) -> str:
        return self.metric_labels.get(metric, metric)


def datasets_of_kind(kind: str) -> list[str]:
    """Registered dataset names of one kind (imports dataset modules; used in error messages)."""
    from alignbench.registry import DATASETS

    out = []
    for name in DATASETS.names():
        try:
            if getattr(DATASETS.get(name), "kind", None) == kind:
                out.append(name)
        except Exception as exc:  # a broken plugin must not hide the real error
            log.debug("cannot import dataset %s: %s", name, exc)
    return out


def dataset_kind(name: str) -> str:
    """The kind of a registered dataset, from its class (no data is read)."""
    from alignbench.registry import DATASETS

    return getattr(DATASETS.get(name), "kind", "")


def default_split(dataset_cls_or_obj: Any) -> str:
    """The split to evaluate when none is given: ``test`` if the dataset has one, else its last split."""
    splits = tuple(getattr(dataset_cls_or_obj, "splits", ("test",)))
    return "test" if "test" in splits else splits[-1]


def dense_images(source: Any, dataset: str, split: str) -> Any:
    """Image features for dense prediction: the whole image resized to the encoder's input.

    A centre crop would leave mask pixels without a patch (CamVid is 4:3), so
    segmentation asks the source for squashed images when it can give them.
    """
    get = getattr(source, "dense_images", None)
    if get is None:
        log.warning("this feature source has no dense_images(); segmentation uses its default (maybe cropped) images")
        return source.images(dataset, split)
    return get(dataset, split)


def embed_in_batches(embed: Callable[[Any], "torch.Tensor"], feats: Any, batch_size: int) -> "torch.Tensor":
    """Embed ``feats`` (ImageFeatures/TextFeatures) ``batch_size`` rows at a time.

    Token methods materialise (B, T, d) tensors per call; batching keeps that
    bounded whatever the split size.
    """
    import torch

    n = len(feats)
    if n == 0:
        raise FeatureError("no features to embed (empty split)")
    parts = []
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        part = embed(feats if len(idx) == n else feats.subset(idx))
        parts.append(part.detach().float().cpu())
    out = torch.cat(parts)
    check_finite(out, "embeddings")
    return out


def check_finite(t: "torch.Tensor", what: str) -> None:
    """Non-finite scores would silently count as hits or misses: refuse them."""
    import torch

    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise FeatureError(f"the method produced {bad} non-finite {what} (NaN or inf); was its fit unstable?")
