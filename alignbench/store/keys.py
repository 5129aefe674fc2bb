"""Cache keys: what identifies an entry, computed without building a model or reading features.

Why: the key hashes everything that changes the vectors — the encoder's
``fingerprint()`` (weights hash, layer, pooling, preprocessing, resolution,
dtype, backend), the dataset name and split and a fingerprint of the split's
content — so a stale entry can never be read for new settings, and a caller
(the sweep planner, run identities) can name an entry cheaply.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

FORMAT = 1  # part of every key: changing it re-encodes every cache, so checksum upgrades never touch it


def safe_name(name: str) -> str:
    """A folder-safe version of ``name``."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name).strip("_") or "x"


def hash_json(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj``."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def json_normal(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists, odd values strings)."""
    return json.loads(json.dumps(obj, default=str))


def texts_fingerprint(texts: Sequence[str]) -> str:
    return hash_json(list(texts))[:16]


def dataset_name(ds: Any) -> str:
    return getattr(ds, "registry_name", "") or getattr(ds, "name", "") or type(ds).__name__.lower()


def dataset_options(ds: Any) -> Any:
    return json.loads(json.dumps(getattr(ds, "options", {}) or {}, sort_keys=True, default=str))


@dataclass
class Request:
    """What to encode and where it goes; its key is computed without building a model."""

    kind: str  # images | texts | prompts | textlist
    encoder: Any  # an (unbuilt) encoder instance
    encoder_name: str
    dataset: str
    split: str
    label: str  # human-readable folder stem
    content: str  # content fingerprint
    tokens: bool
    items: Callable[[], Any]  # ImageList or list[str], fetched lazily
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "kind": self.kind, "encoder": self.encoder.fingerprint(),
            "dataset": self.dataset, "split": self.split, "content": self.content, "tokens": self.tokens,
        }


@dataclass(frozen=True)
class EntryKey:
    """The identity of one cache entry: its full key, that key's hash and its folder."""

    key: dict
    digest: str  # sha256 of the canonical key (the folder name carries its first 16 hex digits)
    path: Path

    def __hash__(self) -> int:
        return hash(self.digest)


def entry_key(root: Path, req: Request) -> EntryKey:
    """Where ``req`` lives under ``root``: ``<root>/<encoder>/<label>-L<layer>-<dtype>-<hash16>``."""
    key = req.key
    digest = hash_json(key)
    fp = key["encoder"]
    stem = f"{req.label}-L{fp.get('layer', 'x')}-{fp.get('dtype', getattr(req.encoder, 'dtype', 'x'))}"
    return EntryKey(key, digest, root / safe_name(req.encoder_name) / f"{safe_name(stem)}-{digest[:16]}")
