"""Reading entries back: listing rows for ``encode --list`` and memory-mapped feature objects."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alignbench.features import ImageFeatures, TextFeatures
from alignbench.store.checksums import content_digest


@dataclass
class CacheEntry:
    """One cached folder as listed by :meth:`FeatureStore.entries`."""

    path: Path
    meta: dict = field(default_factory=dict)

    kind = property(lambda self: self.meta.get("kind", "?"))
    encoder = property(lambda self: self.meta.get("encoder", self.path.parent.name))
    dataset = property(lambda self: self.meta.get("dataset", "?"))
    split = property(lambda self: self.meta.get("split", ""))
    count = property(lambda self: int(self.meta.get("count", 0)))
    layer = property(lambda self: self.meta.get("key", {}).get("encoder", {}).get("layer"))
    dtype = property(lambda self: self.meta.get("key", {}).get("encoder", {}).get("dtype"))

    @property
    def size_bytes(self) -> int:
        return sum(int(f.get("size", 0)) for f in self.meta.get("files", {}).values())

    def row(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder, "kind": self.kind, "dataset": self.dataset, "split": self.split,
            "layer": self.layer, "dtype": self.dtype, "count": self.count,
            "dim": self.meta.get("shapes", {}).get("pooled", [0, 0])[-1],
            "tokens": "tokens.npy" in self.meta.get("files", {}), "size_bytes": self.size_bytes,
            "path": str(self.path),
        }


def load_features(path: Path, meta: dict) -> ImageFeatures | TextFeatures:
    """The entry's features: big arrays memory-mapped, small ones read."""
    files = meta["files"]

    def arr(name):
        return np.load(path / name, mmap_mode="r") if name in files else None

    info = {"path": str(path), "key": meta["key"], "encoder": meta["encoder"], "dataset": meta["dataset"],
            "split": meta["split"], "kind": meta["kind"], "digest": content_digest(meta)}
    if meta["kind"] == "images":
        fn = None
        if "final_norm.npz" in files:
            with np.load(path / "final_norm.npz") as z:
                fn = (z["weight"].copy(), z["bias"].copy(), float(z["eps"]))
        grid = tuple(meta["grid"]) if meta.get("grid") else None
        return ImageFeatures(pooled=arr("pooled.npy"), tokens=arr("tokens.npy"), grid=grid,
                             n_prefix=int(meta.get("n_prefix", 0)), final_norm=fn, meta=info)
    texts = json.loads((path / "texts.json").read_text()) if "texts.json" in files else None
    offsets = np.load(path / "offsets.npy") if "offsets.npy" in files else None
    return TextFeatures(pooled=arr("pooled.npy"), tokens=arr("tokens.npy"), offsets=offsets, texts=texts, meta=info)
