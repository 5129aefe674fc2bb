"""Where offline weights live, how they are hashed, and how derived files are cached.

Why: every encoder's ``fingerprint()`` carries a hash of its weights, and some
built-ins derive files from the packaged weights (a converted state dict, an
ONNX export, an extracted zip).  Hashing a 400 MB file on every run would be
slow, so hashes are remembered per (path, size, mtime); derived files are
written once, atomically, into a weights cache shared by all runs
(``$ALIGNBENCH_WEIGHTS``, else ``~/.cache/alignbench/weights``) — not the
feature cache, which tests point at throw-away folders.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Iterable

from alignbench.atomic import write_bytes_atomic
from alignbench.errors import ConfigError

log = logging.getLogger(__name__)
_HASHES: dict[str, str] = {}
_LOCK = threading.Lock()


def weights_dir() -> Path:
    """The shared cache of derived weight files (created on demand)."""
    env = os.environ.get("ALIGNBENCH_WEIGHTS")
    if env:
        root = Path(env)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = Path(base) / "alignbench" / "weights"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _hash_index() -> Path:
    return weights_dir() / "sha256-index.json"


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, remembered on disk by (absolute path, size, mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    key = f"{p}|{st.st_size}|{st.st_mtime_ns}"
    with _LOCK:
        if key in _HASHES:
            return _HASHES[key]
        index = _read_json(_hash_index())
        if key in index:
            _HASHES[key] = index[key]
            return index[key]
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    digest = h.hexdigest()
    with _LOCK:
        _HASHES[key] = digest
        index = _read_json(_hash_index())
        index[key] = digest
        try:
            write_bytes_atomic(_hash_index(), json.dumps(index, indent=0, sort_keys=True).encode())
        except OSError as exc:  # a read-only cache only costs speed
            log.debug("cannot write hash index: %s", exc)
    return digest


def files_sha256(paths: Iterable[str | os.PathLike]) -> str:
    """One hash over several files (order-independent by file name)."""
    parts = sorted((Path(p).name, file_sha256(p)) for p in paths)
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def state_dict_sha256(module: Any) -> str:
    """Hash of a torch module's tensors, for weights that have no single file (hub models)."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{tuple(tensor.shape)}|{t.dtype}".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def package_dir(module: str, install_hint: str) -> Path:
    """Folder of an installed package WITHOUT importing it (some offline weight
    packages import unrelated heavy dependencies in ``__init__``)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"package {module!r} is not installed; install it with: {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def distribution_file(dist: str, suffix: str, install_hint: str) -> Path:
    """The file of installed distribution ``dist`` whose path ends with ``suffix``."""
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(f"package {dist!r} is not installed; install it with: {install_hint}") from None
    for f in files:
        if str(f).endswith(suffix):
            return Path(f.locate()).resolve()
    raise ConfigError(f"package {dist!r} has no file ending in {suffix!r}; reinstall it with: {install_hint}")
