"""The typed references a resolved run is made of: evaluations, split references, encoder references.

Why a module of their own: the CLI, the runner and the resolver all name
evaluations and splits; parsing them lives here once, and
:mod:`alignbench.identity` builds the run out of these values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from alignbench.errors import ConfigError


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
    """A canonical encoder name and its resolved (non-negative) layer."""

    encoder: str
    layer: int

    def to_dict(self) -> dict[str, Any]:
        return {"encoder": self.encoder, "layer": self.layer}
