"""The typed references a resolved run is made of: evaluations, split references, encoder references.

Why a module of their own: the CLI, the runner and the resolver all name
evaluations and splits; parsing them lives here once, and
:mod:`alignbench.identity` builds the run out of these values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from alignbench.errors import AlignbenchError, ConfigError


@dataclass(frozen=True)
class EvalSpec:
    """One evaluation: ``task:dataset[:split]`` (split None = the dataset's test split)."""

    task: str
    dataset: str
    split: str | None = None

    @classmethod
    def parse(cls, text: str) -> "EvalSpec":
        parts = [p.strip() for p in str(text).split(":")]
        if len(parts) not in (2, 3) or not all(parts):
            raise ConfigError(f"cannot read evaluation {text!r}: use TASK:DATASET[:SPLIT], e.g. retrieval:flickr8k:test")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    def resolved(self) -> "EvalSpec":
        """Canonical task/dataset names and an explicit split (no data is read)."""
        from alignbench.registry import DATASETS, TASKS
        from alignbench.tasks.base import default_split

        task = TASKS.canonical(self.task)
        dataset = DATASETS.canonical(self.dataset)
        split = self.split or default_split(DATASETS.get(dataset))
        return EvalSpec(task, dataset, split)

    @property
    def key(self) -> str:
        """Metrics key in results: ``task/dataset`` (``:split`` added when it is not the test split)."""
        tail = f":{self.split}" if self.split and self.split != "test" else ""
        return f"{self.task}/{self.dataset}{tail}"

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "dataset": self.dataset, "split": self.split, "key": self.key}

    def __str__(self) -> str:
        return f"{self.task}:{self.dataset}" + (f":{self.split}" if self.split else "")


def parse_split_ref(text: str, default_split: str) -> tuple[str, str]:
    """'flickr8k:train' → ('flickr8k', 'train'); 'flickr8k' → ('flickr8k', default_split)."""
    name, _, split = str(text).partition(":")
    if not name.strip():
        raise ConfigError(f"cannot read dataset split {text!r}: use DATASET[:SPLIT], e.g. flickr8k:train")
    return name.strip(), (split.strip() or default_split)


def check_split(ds: Any, split: str) -> str:
    """The canonical split name (aliases resolved) of a dataset class or object; DataError if it has none such."""
    from alignbench.errors import DataError

    split = getattr(ds, "split_aliases", {}).get(split, split)
    splits = tuple(getattr(ds, "splits", ()))
    if splits and split not in splits:
        name = getattr(ds, "registry_name", "") or type(ds).__name__
        raise DataError(f"dataset {name!r} has no split {split!r} (it has {', '.join(splits)})")
    return split


def resolve_split_ref(text: str, default: str, dataset_of: Callable[[str], Any]) -> "SplitRef":
    """The typed ``DATASET[:SPLIT]`` of image–caption data, at the edge: canonical names, split aliases resolved.

    ``dataset_of(canonical name)`` gives the dataset object (data read) or its class
    (``DATASETS.get``: names checked without the data).
    """
    from alignbench.registry import DATASETS

    name, split = parse_split_ref(text, default)
    canon = DATASETS.canonical(name)
    ds = dataset_of(canon)
    if getattr(ds, "kind", "captions") != "captions":
        raise AlignbenchError(f"{text}: training and validation need an image–caption dataset, not a {ds.kind} one")
    return SplitRef(canon, check_split(ds, split))


@dataclass(frozen=True)
class SplitRef:
    """A canonical dataset name and canonical split name."""

    dataset: str
    split: str

    def to_dict(self) -> dict[str, str]:
        return {"dataset": self.dataset, "split": self.split}

    def __str__(self) -> str:
        return f"{self.dataset}:{self.split}"


@dataclass(frozen=True)
class EncoderRef:
    """A canonical encoder name and its resolved (non-negative) layer.

    The layer is None (the encoder's default) only in a sweep plan resolved without the encoders.
    """

    encoder: str
    layer: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"encoder": self.encoder, "layer": self.layer}
