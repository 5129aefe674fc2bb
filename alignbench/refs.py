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
    """One evaluation: ``task:dataset[:split][:option=value…]`` (split None = the dataset's test split).

    ``options`` is the task's typed options object (its ``Options`` class parses
    ``option=value`` parts, e.g. segmentation's :class:`~alignbench.seg_protocol.SegProtocol`),
    or None for the task's default; a default typed out (``protocol=whole``) resolves to None,
    so the key, the identity and the result of a default evaluation never change.
    """

    task: str
    dataset: str
    split: str | None = None
    options: Any = None

    @classmethod
    def parse(cls, text: str) -> "EvalSpec":
        parts = [p.strip() for p in str(text).split(":")]
        named = [p for p in parts if "=" in p]
        plain = [p for p in parts if "=" not in p]
        if len(plain) not in (2, 3) or not all(parts) or parts[: len(plain)] != plain:
            raise ConfigError(f"cannot read evaluation {text!r}: use TASK:DATASET[:SPLIT][:OPTION=VALUE…], "
                              "e.g. retrieval:flickr8k:test or segmentation:voc:val:protocol=slide")
        options = None
        if named:
            raw: dict[str, str] = {}
            for item in named:
                key, _, value = item.partition("=")
                if not key.strip() or not value.strip():
                    raise ConfigError(f"cannot read option {item!r} of evaluation {text!r}: use OPTION=VALUE")
                raw[key.strip()] = value.strip()
            options = _task_options(plain[0], raw)
        return cls(plain[0], plain[1], plain[2] if len(plain) == 3 else None, options)

    def resolved(self) -> "EvalSpec":
        """Canonical task/dataset names, an explicit split, options checked against the dataset (no data is read)."""
        from alignbench.registry import DATASETS, TASKS
        from alignbench.tasks.base import default_split

        task = TASKS.canonical(self.task)
        dataset = DATASETS.canonical(self.dataset)
        ds_cls = DATASETS.get(dataset)
        split = self.split or default_split(ds_cls)
        options = self.options.for_dataset(ds_cls) if self.options is not None else None
        return EvalSpec(task, dataset, split, options)

    @property
    def key(self) -> str:
        """Metrics key in results: ``task/dataset`` (``:split`` added when it is not the test split,
        ``@<options>`` when the task's options are not its default: ``segmentation/voc:val@slide,threshold=0.5``)."""
        tail = f":{self.split}" if self.split and self.split != "test" else ""
        tag = f"@{self.options.tag}" if self.options is not None else ""
        return f"{self.task}/{self.dataset}{tail}{tag}"

    def to_dict(self) -> dict[str, Any]:
        out = {"task": self.task, "dataset": self.dataset, "split": self.split, "key": self.key}
        if self.options is not None:  # default evaluations keep the records (and ids) they always had
            out["protocol"] = self.options.to_dict()
        return out

    def task_object(self) -> Any:
        """The task instance that runs this evaluation (with its options)."""
        from alignbench.registry import TASKS

        cls = TASKS.get(self.task)
        return cls(options=self.options) if self.options is not None else cls()

    def __str__(self) -> str:
        text = f"{self.task}:{self.dataset}" + (f":{self.split}" if self.split else "")
        return text + (f":{self.options.options_text()}" if self.options is not None else "")


def _task_options(task: str, raw: dict[str, str]) -> Any:
    """The task's typed options from ``{option: text}``; None when they amount to its default."""
    from alignbench.registry import TASKS

    parse = getattr(TASKS.get(task), "parse_options", None)
    if parse is None:
        raise ConfigError(f"task {TASKS.canonical(task)!r} takes no options (got {', '.join(raw)})")
    options = parse(raw)
    return None if options is None or getattr(options, "is_default", False) else options


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
