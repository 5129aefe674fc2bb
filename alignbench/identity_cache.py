"""Remembered code-level resolutions, so ``report`` checks 1,000 results for staleness without importing torch.

Why: what the code decides for a spec (method version and full config, encoder
layers, canonical splits) needs the method classes, and importing them costs
more than the whole report (torch).  The answer changes only when the code
does, so it is kept in a small JSON file keyed by a fingerprint of the code
(path, size and mtime of every module of the package, its methods and tasks);
any edit to any of them starts a fresh cache.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FILE = "identity-cache.json"
ENV = "ALIGNBENCH_IDENTITY_CACHE"  # a file path, or empty to keep nothing
MAX_ENTRIES = 20_000


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of (path, size, mtime) of every .py file of alignbench, alignbench.methods and alignbench.tasks."""
    import importlib.util

    h = hashlib.sha256()
    for pkg in ("alignbench", "alignbench.methods", "alignbench.tasks"):
        spec = importlib.util.find_spec(pkg)
        for loc in (spec.submodule_search_locations or []) if spec else []:
            for p in sorted(Path(loc).rglob("*.py")):
                st = p.stat()
                h.update(f"{p}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def _default_path() -> Path | None:
    """``$ALIGNBENCH_IDENTITY_CACHE`` (empty: no cache), else beside the feature cache folder."""
    from alignbench.store import default_root

    env = os.environ.get(ENV)
    if env is not None:
        return Path(env).expanduser() if env.strip() else None
    return default_root().parent / FILE


class IdentityCache:
    """``{key: value}`` valid for one code fingerprint; read once, written back if it grew."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else _default_path()
        self.code = code_fingerprint()
        self.entries: dict[str, Any] = {}
        self._dirty = False
        try:
            data = json.loads(self.path.read_text(encoding="utf-8")) if self.path else {}
            if data.get("code") == self.code:
                self.entries = dict(data.get("entries") or {})
        except (OSError, ValueError, AttributeError):
            pass

    def get(self, key: str) -> Any:
        return self.entries.get(key)

    def put(self, key: str, value: Any) -> None:
        if self.entries.get(key) != value:
            self.entries[key] = value
            self._dirty = True

    def save(self) -> None:
        if not self._dirty or self.path is None:
            return
        from alignbench.atomic import write_json_atomic

        entries = dict(list(self.entries.items())[-MAX_ENTRIES:])
        try:
            write_json_atomic(self.path, {"code": self.code, "entries": entries}, indent=None)
            self._dirty = False
        except OSError as exc:  # a read-only home only costs the resolution next time
            log.debug("cannot write the identity cache %s: %s", self.path, exc)


__all__ = ["IdentityCache", "code_fingerprint"]
