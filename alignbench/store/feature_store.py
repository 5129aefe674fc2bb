"""FeatureStore: encode once per (encoder, layer, dataset, split, preprocessing), then memory-map.

Entries are readable folders, ``<root>/<encoder>/<dataset>-<split>-L<layer>-<dtype>-<hash>/``,
holding ``.npy`` files (pooled float32, tokens float16, ragged text tokens plus
int64 offsets) and a ``meta.json`` written last with the full key, shapes,
counts and every file's size and whole-file checksum (keys:
:mod:`~alignbench.store.keys`; writing: :mod:`~alignbench.store.encoding`;
verification: :mod:`~alignbench.store.checksums`).  A damaged entry is
quarantined, named in a warning and re-encoded — never silently used.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

from alignbench.errors import ConfigError, DataError
from alignbench.features import ImageFeatures, TextFeatures
from alignbench.store.checksums import QUARANTINE, CorruptEntry, check_entry, quarantine
from alignbench.store.encoding import EncodeSettings, EntryWriter
from alignbench.store.entries import CacheEntry, load_features
from alignbench.store.keys import (EntryKey, Request, dataset_name, dataset_options, entry_key, hash_json,
                                   json_normal, safe_name, texts_fingerprint)
from alignbench.store.locking import entry_lock

log = logging.getLogger("alignbench.store")

ENV_CACHE = "ALIGNBENCH_CACHE"
CHECKPOINT_SECONDS = 20.0


def default_root() -> Path:
    """``$ALIGNBENCH_CACHE``, else ``~/.cache/alignbench/features``."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "alignbench" / "features"


class FeatureStore:
    """Cached encoder features on disk; encode on first use, memory-map afterwards.

    ``root``: cache folder (default ``$ALIGNBENCH_CACHE`` or
    ``~/.cache/alignbench/features``).  Shared by processes and cluster jobs:
    entries are immutable once written and writers lock per entry.
    """

    def __init__(self, root: str | os.PathLike | None = None, *, checkpoint_seconds: float = CHECKPOINT_SECONDS,
                 text_chunk: int | None = None, device: str = "cpu"):
        self.root = Path(root).expanduser() if root is not None else default_root()
        self.device = str(device)  # where encoders compute (a resolved device: "cpu", "cuda:0"); not in the key
        self.checkpoint_seconds = checkpoint_seconds  # how often an encode saves a resumable checkpoint
        self.text_chunk = text_chunk  # texts sorted by length within chunks of this many (default 4096)
        self._encoders: dict[Any, Any] = {}
        self._datasets: dict[Any, Any] = {}
        self.last_action: str = ""  # "reused" | "encoded" | "resumed": for CLI summaries and tests

    def __getstate__(self) -> dict:  # picklable for cluster jobs: drop loaded models
        d = dict(self.__dict__)
        d["_encoders"], d["_datasets"] = {}, {}
        return d

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.root)!r})"

    # -- features ---------------------------------------------------------------------
    def image_features(self, encoder: str, dataset: Any, split: str, *, layer: int | None = None,
                       dtype: str = "fp32", data_root: Any = None, progress: bool = True,
                       batch_size: int | None = None, num_workers: int | None = None, decode: str = "auto",
                       encoder_options: dict | None = None, tokens: bool = True,
                       verify: bool = False) -> ImageFeatures:
        """Global (N, d) float32 and token (N, T, d) float16 features of a split's images.

        ``decode``/``num_workers``: how images are decoded (:func:`alignbench.encode.iter_image_batches`);
        they change speed only, never the vectors, so they are not part of the key.
        ``verify``: re-hash every file even if this process verified it already.
        """
        req = self._image_request(encoder, dataset, split, layer, dtype, data_root, encoder_options, tokens)
        return self._get(req, EncodeSettings(progress, batch_size, num_workers, decode), verify)

    def dense_image_features(self, encoder: str, dataset: Any, split: str, *, encoder_options: dict | None = None,
                             **kw: Any) -> ImageFeatures:
        """Image features for dense tasks: the WHOLE image squashed to the encoder's input (``resize=squash``).

        Why: a centre crop leaves mask pixels without a patch (CamVid frames are
        4:3).  Encoders that know no ``resize`` option give their default images
        (:func:`alignbench.feature_kinds.dense_options` decides).
        """
        from alignbench.feature_kinds import dense_options

        opts = dense_options(self, encoder, kw.get("layer"), kw.get("dtype", "fp32"), encoder_options) or None
        return self.image_features(encoder, dataset, split, encoder_options=opts, **kw)

    def text_features(self, encoder: str, dataset: Any, split: str, *, layer: int | None = None,
                      dtype: str = "fp32", data_root: Any = None, progress: bool = True,
                      batch_size: int | None = None, num_workers: int | None = None,
                      encoder_options: dict | None = None, tokens: bool = True,
                      verify: bool = False) -> TextFeatures:
        """Features of every caption of a caption dataset's split, in ``captions(split)`` order."""
        req = self._text_request(encoder, dataset, split, layer, dtype, data_root, encoder_options, tokens)
        return self._get(req, EncodeSettings(progress, batch_size), verify)

    def prompt_features(self, encoder: str, dataset: Any, *, layer: int | None = None, dtype: str = "fp32",
                        data_root: Any = None, progress: bool = True, batch_size: int | None = None,
                        num_workers: int | None = None, encoder_options: dict | None = None,
                        tokens: bool = True, verify: bool = False) -> tuple[TextFeatures, int, int]:
        """Class prompts ``template.format(c)``, class-major: row ``c * n_templates + t``."""
        req = self._prompt_request(encoder, dataset, layer, dtype, data_root, encoder_options, tokens)
        feats = self._get(req, EncodeSettings(progress, batch_size), verify)
        return feats, int(req.extra["n_classes"]), int(req.extra["n_templates"])

    def text_list_features(self, encoder: str, texts: Sequence[str], *, tag: str, layer: int | None = None,
                           dtype: str = "fp32", data_root: Any = None, progress: bool = True,
                           batch_size: int | None = None, num_workers: int | None = None,
                           encoder_options: dict | None = None, tokens: bool = True,
                           verify: bool = False) -> TextFeatures:
        """Features of any list of strings, keyed by a hash of the strings (``tag`` names the folder)."""
        req = self._textlist_request(encoder, texts, tag, layer, dtype, encoder_options, tokens)
        return self._get(req, EncodeSettings(progress, batch_size), verify)

    # -- keys and checks without encoding ------------------------------------------------
    def entry_key(self, kind: str, encoder: str, dataset: Any, split: str | None = None, *,
                  layer: int | None = None, dtype: str = "fp32", data_root: Any = None,
                  encoder_options: dict | None = None, tokens: bool = True) -> EntryKey:
        """The key, key hash and folder of an entry, computed without encoding or building a model.

        ``kind``: images | dense_images | texts | prompts (``split`` is ignored for prompts).
        """
        if kind == "dense_images":
            from alignbench.feature_kinds import dense_options

            encoder_options = dense_options(self, encoder, layer, dtype, encoder_options) or None
            kind = "images"
        build = {"images": self._image_request, "texts": self._text_request}.get(kind)
        if build is not None:
            req = build(encoder, dataset, split, layer, dtype, data_root, encoder_options, tokens)
        elif kind == "prompts":
            req = self._prompt_request(encoder, dataset, layer, dtype, data_root, encoder_options, tokens)
        else:
            raise ConfigError(f"unknown feature kind {kind!r}; use images, dense_images, texts or prompts")
        return entry_key(self.root, req)

    def has_images(self, encoder: str, dataset: Any, split: str, *, layer: int | None = None,
                   dtype: str = "fp32", data_root: Any = None, encoder_options: dict | None = None,
                   tokens: bool = True) -> bool:
        """True if the entry exists and is intact (verified like a load, once per process; nothing is encoded
        or deleted)."""
        req = self._image_request(encoder, dataset, split, layer, dtype, data_root, encoder_options, tokens)
        return self._valid(req)

    def has_texts(self, encoder: str, dataset: Any, split: str, *, layer: int | None = None,
                  dtype: str = "fp32", data_root: Any = None, encoder_options: dict | None = None,
                  tokens: bool = True) -> bool:
        req = self._text_request(encoder, dataset, split, layer, dtype, data_root, encoder_options, tokens)
        return self._valid(req)

    def has_prompts(self, encoder: str, dataset: Any, *, layer: int | None = None, dtype: str = "fp32",
                    data_root: Any = None, encoder_options: dict | None = None, tokens: bool = True) -> bool:
        req = self._prompt_request(encoder, dataset, layer, dtype, data_root, encoder_options, tokens)
        return self._valid(req)

    def entry_name(self, kind: str, encoder: str, dataset: Any, split: str | None = None, *,
                   layer: int | None = None, dtype: str = "fp32", data_root: Any = None,
                   encoder_options: dict | None = None, tokens: bool = True) -> str:
        """``<encoder>/<entry folder>`` that a request reads; ``kind`` is the loading method's name
        (``image_features``, ``text_features``, ``prompt_features``).

        Nothing is encoded or read beyond the dataset listing: run identities
        (alignbench.identity) hash these names.
        """
        args = (layer, dtype, data_root, encoder_options, tokens)
        if kind == "image_features":
            req = self._image_request(encoder, dataset, split, *args)
        elif kind == "text_features":
            req = self._text_request(encoder, dataset, split, *args)
        elif kind == "prompt_features":
            req = self._prompt_request(encoder, dataset, *args)
        else:
            raise ConfigError(f"unknown feature request {kind!r} (image_features, text_features or prompt_features)")
        path = entry_key(self.root, req).path
        return f"{path.parent.name}/{path.name}"

    # -- listing --------------------------------------------------------------------------
    def entries(self) -> list[CacheEntry]:
        """Complete entries under the root (folders with a ``meta.json``), sorted by path."""
        out = []
        for meta in sorted(self.root.glob("*/*/meta.json")):
            if meta.parent.name.startswith(".") or meta.parent.parent.name.startswith("."):
                continue
            try:
                out.append(CacheEntry(meta.parent, json.loads(meta.read_text())))
            except (OSError, ValueError):
                out.append(CacheEntry(meta.parent, {"kind": "corrupt"}))
        return out

    def partial(self) -> list[Path]:
        """Temporary folders of interrupted encodes (resumed by the next request for the same key)."""
        return sorted(p for p in self.root.glob("*/.tmp-*") if p.is_dir())

    def status(self) -> dict[str, Any]:
        """Summary for ``alignbench encode --list`` and the sweep planner."""
        entries = self.entries()
        return {
            "root": str(self.root),
            "entries": [e.row() for e in entries],
            "n_entries": len(entries),
            "size_bytes": sum(e.size_bytes for e in entries),
            "partial": [str(p) for p in self.partial()],
            "quarantined": sorted(str(p) for p in (self.root / QUARANTINE).glob("*")),
        }

    def remove(self, *, encoder: str | None = None, dataset: str | None = None, split: str | None = None,
               kind: str | None = None, partial: bool = False) -> int:
        """Delete matching entries (all given filters must match); ``partial`` also drops temp folders."""
        n = 0
        for e in self.entries():
            if encoder is not None and e.encoder != safe_name(self._canonical(encoder)) and e.encoder != encoder:
                continue
            if (dataset is not None and e.dataset != dataset) or (split is not None and e.split != split):
                continue
            if kind is not None and e.kind != kind:
                continue
            shutil.rmtree(e.path, ignore_errors=True)
            n += 1
        if partial:
            for p in self.partial():
                entry = p.parent / p.name[len(".tmp-"):]
                with entry_lock(entry, p.name):
                    shutil.rmtree(p, ignore_errors=True)
                n += 1
        return n

    def size_bytes(self) -> int:
        return sum(e.size_bytes for e in self.entries())

    # -- encoders and datasets (cached per store) -----------------------------------
    def encoder(self, name: str, *, layer: int | None = None, dtype: str = "fp32", options: dict | None = None,
                modality: str | None = None):
        """An encoder instance (its model is built lazily, on first encode).

        ``modality`` picks the tower of a dual hub model (``hf:openai/clip-…``).
        """
        key = (self._canonical(name), modality, layer, dtype, json.dumps(options or {}, sort_keys=True, default=str))
        if key not in self._encoders:
            kw = dict(options or {})
            if modality is not None:
                kw["modality"] = modality
            self._encoders[key] = _get_encoder(name, layer=layer, dtype=dtype, device=self.device, **kw)
        return self._encoders[key]

    def dataset(self, dataset: Any, data_root: Any = None):
        """A dataset object from a registry name (cached), or the object itself."""
        if not isinstance(dataset, str):
            return dataset
        key = (dataset, str(data_root) if data_root is not None else None)
        if key not in self._datasets:
            self._datasets[key] = _get_dataset(dataset, data_root)
        return self._datasets[key]

    def dataset_view(self, dataset: Any, data_root: Any, view: Any):
        """``view.of(dataset)`` (e.g. a dataset's sliding windows), built once per store: a view may read
        image headers to lay itself out."""
        ds = self.dataset(dataset, data_root)
        key = ("view", id(ds), view)
        if key not in self._datasets:
            self._datasets[key] = (ds, view.of(ds))  # ds kept alive so its id is not reused
        return self._datasets[key][1]

    @staticmethod
    @functools.lru_cache(maxsize=None)
    def _canonical(name: str) -> str:
        from alignbench.registry import ENCODERS

        try:
            return ENCODERS.canonical(name)
        except Exception:  # unknown names fail later with "did you mean"
            return name

    # -- requests ---------------------------------------------------------------------
    def _enc(self, name, modality, layer, dtype, options):
        enc = self.encoder(name, layer=layer, dtype=dtype, options=options, modality=modality)
        if getattr(enc, "modality", modality) != modality:
            raise ConfigError(f"{name!r} is a{'n' if enc.modality == 'image' else ''} {enc.modality} encoder; "
                              f"it cannot encode {modality}s (pairs are VISION+TEXT)")
        return enc

    def _image_request(self, encoder, dataset, split, layer, dtype, data_root, options, tokens) -> Request:
        enc = self._enc(encoder, "image", layer, dtype, options)
        ds = self.dataset(dataset, data_root)
        split = ds.check_split(split)
        images = ds.images(split)
        content = hash_json([getattr(images, "fingerprint", None), len(images), dataset_options(ds)])[:16]
        return Request("images", enc, self._canonical(encoder), dataset_name(ds), split,
                       f"{dataset_name(ds)}-{split}", content, tokens, lambda: images)

    def _text_request(self, encoder, dataset, split, layer, dtype, data_root, options, tokens) -> Request:
        enc = self._enc(encoder, "text", layer, dtype, options)
        ds = self.dataset(dataset, data_root)
        if not hasattr(ds, "captions"):
            raise ConfigError(f"dataset {dataset_name(ds)!r} has no captions; its texts are class prompts "
                              "(use prompt features)")
        split = ds.check_split(split)
        texts = list(ds.captions(split))
        return Request("texts", enc, self._canonical(encoder), dataset_name(ds), split,
                       f"{dataset_name(ds)}-{split}", texts_fingerprint(texts), tokens, lambda: texts)

    def _prompt_request(self, encoder, dataset, layer, dtype, data_root, options, tokens) -> Request:
        enc = self._enc(encoder, "text", layer, dtype, options)
        ds = self.dataset(dataset, data_root)
        if not hasattr(ds, "classnames"):
            raise ConfigError(f"dataset {dataset_name(ds)!r} has no class names to build prompts from")
        classes, templates = list(ds.classnames), list(ds.templates)
        if not classes or not templates:
            raise DataError(f"dataset {dataset_name(ds)!r} has {len(classes)} classes and "
                            f"{len(templates)} prompt templates; it needs at least one of each")
        texts = [t.format(c) for c in classes for t in templates]
        return Request("prompts", enc, self._canonical(encoder), dataset_name(ds), "prompts",
                       f"{dataset_name(ds)}-prompts", texts_fingerprint(texts), tokens, lambda: texts,
                       {"n_classes": len(classes), "n_templates": len(templates)})

    def _textlist_request(self, encoder, texts, tag, layer, dtype, options, tokens) -> Request:
        enc = self._enc(encoder, "text", layer, dtype, options)
        texts = [str(t) for t in texts]
        return Request("textlist", enc, self._canonical(encoder), tag, "", safe_name(tag),
                       texts_fingerprint(texts), tokens, lambda: texts)

    # -- get: load or encode -------------------------------------------------------------
    def _get(self, req: Request, settings: EncodeSettings, verify: bool):
        entry = entry_key(self.root, req)
        key = json_normal(entry.key)
        feats = self._try_load(entry.path, key, force=verify)
        if feats is not None:
            self.last_action = "reused"
            return feats
        with entry_lock(entry.path, f"{req.encoder_name} {req.label}"):
            feats = self._try_load(entry.path, key, force=False)  # a concurrent writer may have finished it
            if feats is not None:
                self.last_action = "reused"
                return feats
            settings.checkpoint_seconds, settings.text_chunk = self.checkpoint_seconds, self.text_chunk
            self.last_action = EntryWriter(req, entry, settings).run()
        feats = self._try_load(entry.path, key, force=False)
        if feats is None:  # pragma: no cover - we just wrote and checked it
            raise DataError(f"feature cache entry {entry.path} could not be read back after encoding")
        return feats

    def _valid(self, req: Request) -> bool:
        entry = entry_key(self.root, req)
        try:
            check_entry(entry.path, json_normal(entry.key))
            return True
        except (CorruptEntry, OSError):
            return False

    def _try_load(self, path: Path, key: dict, *, force: bool):
        if not path.exists():
            return None
        try:
            return load_features(path, check_entry(path, key, force=force))
        except (CorruptEntry, OSError, ValueError, KeyError) as exc:
            log.warning("feature cache entry %s is damaged (%s); quarantined in %s and re-encoding it", path, exc,
                        self.root / QUARANTINE)
            quarantine(path, self.root, str(exc))
            return None


def _get_encoder(name: str, **kw: Any):
    try:
        from alignbench.encoders import get_encoder
    except ImportError:
        from alignbench.registry import ENCODERS

        return ENCODERS.get(name)(**kw)
    return get_encoder(name, **kw)


def _get_dataset(name: str, root: Any):
    try:
        from alignbench.datasets import get_dataset
    except ImportError:
        from alignbench.registry import DATASETS

        return DATASETS.get(name)(root=root)
    return get_dataset(name, root=root)
