"""FeatureSource: the features of one encoder pair, as the runner and the tasks ask for them.

Why a thin object: tasks should say *what* they need ("the test images of
flickr8k", "the prompts of cifar10") and never which encoder, layer, dtype or
cache folder — those are fixed once per run here and forwarded to the store.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from alignbench.features import ImageFeatures, Pairs, TextFeatures
from alignbench.store import FeatureStore


def split_pair(pair: str) -> tuple[str, str]:
    """'VISION+TEXT' as typed → (vision, text) canonical names (alignbench.encoders.parse_pair)."""
    from alignbench.encoders import parse_pair

    return parse_pair(pair)


class FeatureSource:
    """Cached features of ``pair`` ("VISION+TEXT" as typed, or resolved (vision, text) names) with fixed layers and dtype."""

    def __init__(self, pair: str | tuple[str, str], *, store: FeatureStore | None = None, data_root: str | os.PathLike | None = None,
                 image_layer: int | None = None, text_layer: int | None = None, dtype: str = "fp32",
                 progress: bool = True, encoder_options: dict[str, dict] | None = None, device: str = "cpu"):
        names = pair if isinstance(pair, tuple) else split_pair(pair)
        self.pair = "+".join(names)
        self.store = store if store is not None else FeatureStore(device=device)
        self.image_encoder, self.text_encoder = (self.store._canonical(n) for n in names)
        self.data_root = data_root
        self.image_layer, self.text_layer = image_layer, text_layer
        self.dtype = dtype
        self.progress = progress
        opts = encoder_options or {}
        self._image_opts = {"layer": image_layer, "dtype": dtype, "data_root": data_root,
                            "encoder_options": opts.get("image"), "progress": progress}
        self._text_opts = {"layer": text_layer, "dtype": dtype, "data_root": data_root,
                           "encoder_options": opts.get("text"), "progress": progress}
        self._cache: dict[Any, Any] = {}
        self.reads: list[dict[str, Any]] = []  # every store entry read, with "reused" | "encoded" | "resumed"

    @classmethod
    def for_run(cls, run: Any, *, store: FeatureStore | None = None, data_root: str | os.PathLike | None = None,
                progress: bool = True) -> "FeatureSource":
        """The source a ResolvedRun reads: its canonical encoders, resolved layers and dtype."""
        return cls((run.image.encoder, run.text.encoder), store=store, data_root=data_root, image_layer=run.image.layer,
                   text_layer=run.text.layer, dtype=run.dtype, progress=progress)  # store carries the device

    def __repr__(self) -> str:
        return f"FeatureSource({self.pair!r}, store={self.store!r})"

    def resolved_layers(self) -> tuple[int, int]:
        """(image layer, text layer) as non-negative indices (no model is built)."""
        img = self.store._enc(self.image_encoder, "image", self.image_layer, self.dtype,
                              self._image_opts["encoder_options"])
        txt = self.store._enc(self.text_encoder, "text", self.text_layer, self.dtype,
                              self._text_opts["encoder_options"])
        return int(img.layer), int(txt.layer)

    def feature_key(self, what: str, dataset: str, split: str | None, view: Any = None) -> str:
        """The cache entry (``<encoder>/<folder>``) a feature kind (alignbench.feature_kinds) is read from.

        Nothing is encoded: run identities hash these names (alignbench.identity).
        """
        from alignbench.feature_kinds import feature_set, kind

        fs = feature_set(what, (self.image_encoder, self.text_encoder), dataset, split,
                         image_layer=self.image_layer, text_layer=self.text_layer, dtype=self.dtype, view=view)
        base = self._image_opts["encoder_options"] if kind(what).side == "image" else self._text_opts["encoder_options"]
        return kind(what).entry(self.store, fs, data_root=self.data_root, base=base, dataset=self.dataset(dataset))

    def _memo(self, key: Any, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def _read(self, load):
        """``load()`` from the store, noting the entry and whether it was reused or encoded (``reads``)."""
        feats = load()
        meta = getattr(feats[0] if isinstance(feats, tuple) else feats, "meta", {}) or {}
        self.reads.append({"kind": meta.get("kind"), "dataset": meta.get("dataset"), "split": meta.get("split"),
                           "encoder": meta.get("encoder"), "path": self._cache_relative(meta.get("path")),
                           "digest": meta.get("digest"), "action": self.store.last_action})
        return feats

    def _cache_relative(self, path: str | None) -> str | None:
        """An entry's path under the cache root: results are shared, the machine's cache folder is not."""
        if path is None:
            return None
        try:
            return Path(path).relative_to(self.store.root).as_posix()
        except ValueError:
            return path

    def dataset(self, name: str):
        """The dataset object (loaded once)."""
        return self.store.dataset(name, self.data_root)

    def images(self, dataset: str, split: str) -> ImageFeatures:
        return self._memo(("images", dataset, split), lambda: self._read(lambda: self.store.image_features(
            self.image_encoder, self.dataset(dataset), split, **self._image_opts)))

    def dense_images(self, dataset: str, split: str) -> ImageFeatures:
        """Image features for dense tasks: the WHOLE image resized to the encoder's input (``resize=squash``).

        Why: the default centre crop leaves mask pixels without a patch (CamVid
        frames are 4:3), so segmentation asks for this instead.  Encoders that
        know no ``resize`` option give their default images
        (:func:`alignbench.feature_kinds.dense_options` decides, for the sweep planner too).
        """
        from alignbench.feature_kinds import dense_options

        def make():
            base = self._image_opts.get("encoder_options") or {}
            opts = dense_options(self.store, self.image_encoder, self.image_layer, self.dtype, base)
            if opts == base:
                return self.images(dataset, split)
            return self._read(lambda: self.store.image_features(
                self.image_encoder, self.dataset(dataset), split, **{**self._image_opts, "encoder_options": opts}))

        return self._memo(("dense_images", dataset, split), make)

    def crops(self, dataset: str, split: str, grid: Any) -> tuple[ImageFeatures, Any]:
        """The sliding windows of a segmentation split (``grid``: a CropGrid), each squashed to the encoder's
        input like a dense image, and their :class:`~alignbench.datasets.crops.CropLayout`."""
        from alignbench.feature_kinds import dense_options

        def make():
            view = self.store.dataset_view(self.dataset(dataset), self.data_root, grid)
            base = self._image_opts.get("encoder_options") or {}
            opts = dense_options(self.store, self.image_encoder, self.image_layer, self.dtype, base)
            feats = self._read(lambda: self.store.image_features(
                self.image_encoder, view, split, **{**self._image_opts, "encoder_options": opts or None}))
            return feats, view.layout(split)

        return self._memo(("crops", dataset, split, grid), make)

    def texts(self, dataset: str, split: str) -> TextFeatures:
        return self._memo(("texts", dataset, split), lambda: self._read(lambda: self.store.text_features(
            self.text_encoder, self.dataset(dataset), split, **self._text_opts)))

    def prompts(self, dataset: str) -> tuple[TextFeatures, int, int]:
        """(features, n_classes, n_templates); row ``c * n_templates + t`` is template t of class c."""
        return self._memo(("prompts", dataset), lambda: self._read(lambda: self.store.prompt_features(
            self.text_encoder, self.dataset(dataset), **self._text_opts)))

    def pairs(self, dataset: str, split: str) -> Pairs:
        """Every caption of the split paired with its image."""
        index = np.asarray(self.dataset(dataset).caption_image_index(split), dtype=np.int64)
        return Pairs(self.images(dataset, split), self.texts(dataset, split), index, np.arange(len(index)))
