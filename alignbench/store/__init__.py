"""The feature store: encode once per (encoder, layer, dataset, split, preprocessing), then memory-map.

One job per module:
- :mod:`.keys` — cache keys and entry folders, computed without encoding;
- :mod:`.npyfile` — ``.npy`` files streamed in place and hashed as written;
- :mod:`.checksums` — whole-file checksums verified once per process, quarantine;
- :mod:`.locking` — per-entry locks, resumable progress, disk space;
- :mod:`.encoding` — the encode loops that write one entry;
- :mod:`.entries` — listing and memory-mapping entries;
- :mod:`.feature_store` — :class:`FeatureStore`, the public face.
"""
from __future__ import annotations

from alignbench.store.checksums import CorruptEntry, forget_verified
from alignbench.store.encoding import all_finite as _all_finite
from alignbench.store.entries import CacheEntry
from alignbench.store.feature_store import ENV_CACHE, FeatureStore, default_root
from alignbench.store.keys import FORMAT, EntryKey, texts_fingerprint

__all__ = ["CacheEntry", "CorruptEntry", "ENV_CACHE", "EntryKey", "FORMAT", "FeatureStore",
           "default_root", "forget_verified", "texts_fingerprint"]
