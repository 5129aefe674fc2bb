"""Whole-file checksums of cache entries, verified once per process; damaged entries quarantined.

Why: a sampled check let 8 MB of zeroed tokens through, and an unchecked
``meta.json`` let a flipped ``n_prefix`` through.  Every file of an entry now
carries an xxh3-128 checksum of its whole content (written with it, computed
as its bytes stream out), and ``meta.json`` carries one of its own content.
A process hashes every file of an entry the first time it opens it and
remembers the files' identity (inode, size, mtime), so later opens in the same
process cost a few ``stat`` calls.  xxh3 reads at memory speed (about 7.5 GB/s
in one thread here vs 0.9 for sha256), so the first open of a 1.5 GB token file
is dominated by reading it (benchmarks/bench_verify.py).

Entries written before this format recorded a whole-file sha256 per file and
no meta checksum: they are verified once against that sha256 and upgraded in
place (meta rewritten with xxh3 checksums), never re-encoded.
"""
from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import shutil
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

HASH = "xxh3_128"  # name of the per-file checksum field in meta.json
META_HASH = "meta_xxh3_128"  # meta.json's checksum of its own content (without this field)
LEGACY_HASH = "sha256"  # what entries written before whole-file verification recorded
READ_CHUNK = 16 << 20  # bytes hashed per call (a slice of the memory map)
QUARANTINE = ".quarantine"  # under the cache root: what was wrong with each damaged entry

_VERIFIED: dict[str, tuple] = {}  # entry path -> identity of its files when this process verified them


class CorruptEntry(Exception):
    """An entry folder that cannot be trusted (internal; the store quarantines and re-encodes it)."""


def new_hasher() -> Any:
    import xxhash

    return xxhash.xxh3_128()


def hash_file(path: Path, *, legacy: bool = False) -> tuple[str, str | None]:
    """(xxh3-128, sha256 if ``legacy``) of the whole file, in one sequential pass.

    Hashes straight from a memory map: no copy into a buffer (faster than
    ``readinto`` from the page cache), and ``MAP_POPULATE`` reads a cold file
    in large requests (faster than faulting it in page by page).
    """
    h = new_hasher()
    sha = hashlib.sha256() if legacy else None
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size:
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            with mmap.mmap(f.fileno(), size, flags=flags, prot=mmap.PROT_READ) as m:
                if hasattr(m, "madvise"):
                    m.madvise(mmap.MADV_SEQUENTIAL)
                view = memoryview(m)
                try:
                    for off in range(0, size, READ_CHUNK):
                        part = view[off : off + READ_CHUNK]
                        h.update(part)
                        if sha is not None:
                            sha.update(part)
                        part.release()
                finally:
                    view.release()
    return h.hexdigest(), (sha.hexdigest() if sha is not None else None)


def file_record(path: Path, digest: str | None = None) -> dict[str, Any]:
    """meta.json's record of one file: size and whole-file checksum (``digest``: already known)."""
    return {"size": path.stat().st_size, HASH: digest or hash_file(path)[0]}


def _canonical(meta: dict) -> bytes:
    body = {k: v for k, v in meta.items() if k != META_HASH}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()


def seal(meta: dict) -> dict:
    """``meta`` as it will read back, with its own checksum added."""
    import xxhash

    meta = json.loads(json.dumps(meta, default=str))
    meta[META_HASH] = xxhash.xxh3_128_hexdigest(_canonical(meta))
    return meta


def content_digest(meta: dict) -> str | None:
    """One xxh3-128 over an entry's file checksums: equal digests, bit-equal features.

    Unlike ``meta.json``'s own checksum it leaves out when and how fast the entry
    was written, so two encodings that gave the same bits share it.  None for
    entries whose files carry no xxh3 (legacy entries not yet upgraded).
    """
    import xxhash

    files = meta.get("files") or {}
    if not files or not all(HASH in f for f in files.values()):
        return None
    return xxhash.xxh3_128_hexdigest("\n".join(f"{n}={files[n][HASH]}" for n in sorted(files)).encode())


def read_meta(path: Path) -> dict:
    """The entry's meta.json, checked against its own checksum (legacy metas have none)."""
    import xxhash

    try:
        meta = json.loads((path / "meta.json").read_text())
    except FileNotFoundError:
        raise CorruptEntry("meta.json is missing") from None
    except (OSError, ValueError) as exc:
        raise CorruptEntry(f"meta.json is unreadable: {exc}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
        raise CorruptEntry("meta.json has no file list")
    if META_HASH in meta:
        if xxhash.xxh3_128_hexdigest(_canonical(meta)) != meta[META_HASH]:
            raise CorruptEntry("meta.json fails its checksum")
    elif not is_legacy(meta):
        raise CorruptEntry("meta.json has no checksum")
    return meta


def is_legacy(meta: dict) -> bool:
    """Written before whole-file verification: a sha256 per file, no meta checksum."""
    files = meta.get("files") or {}
    return META_HASH not in meta and bool(files) and all(LEGACY_HASH in f for f in files.values())


def _identity(path: Path, names: list[str]) -> tuple:
    out = []
    for name in ["meta.json", *names]:
        st = (path / name).stat()
        out.append((name, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


def mark_verified(path: Path, meta: dict) -> None:
    """Remember that this process has checked (or just written) every byte of the entry."""
    _VERIFIED[str(path)] = _identity(path, sorted(meta["files"]))


def forget_verified() -> None:
    """Forget what this process verified (as a new process would)."""
    _VERIFIED.clear()


def check_entry(path: Path, key: dict, *, hash_files: bool = True, force: bool = False) -> dict:
    """The entry's meta, or CorruptEntry naming the file that is wrong.

    Always checks meta.json's checksum and key and every file's size; ``hash_files``
    hashes every file unless this process already verified these very files
    (``force``: hash them regardless, as ``encode --verify`` does).
    """
    meta = read_meta(path)
    if meta.get("key") != key:
        raise CorruptEntry("meta.json does not match the cache key")
    names = sorted(meta["files"])
    for name in names:
        try:
            size = (path / name).stat().st_size
        except FileNotFoundError:
            raise CorruptEntry(f"{name} is missing") from None
        if size != meta["files"][name].get("size"):
            raise CorruptEntry(f"{name} has {size} bytes, expected {meta['files'][name].get('size')}")
    legacy = is_legacy(meta)
    if not (hash_files or force):
        return meta
    if not force and not legacy and _VERIFIED.get(str(path)) == _identity(path, names):
        return meta
    for name in names:
        want = meta["files"][name]
        digest, sha = hash_file(path / name, legacy=legacy)
        if legacy and sha != want[LEGACY_HASH]:
            raise CorruptEntry(f"{name} fails its checksum")
        if not legacy and digest != want.get(HASH):
            raise CorruptEntry(f"{name} fails its checksum")
        want[HASH] = digest
    if legacy:
        meta = _upgrade(path, meta)
    mark_verified(path, meta)
    return meta


def _upgrade(path: Path, meta: dict) -> dict:
    """Rewrite a verified legacy meta.json with xxh3 checksums (no re-encode); keep it if read-only."""
    from alignbench.store.locking import write_json

    for rec in meta["files"].values():
        rec.pop(LEGACY_HASH, None)
        rec.pop("sample_sha256", None)
    meta = seal(meta)
    try:
        write_json(path / "meta.json", meta)
        log.info("feature cache entry %s verified and upgraded to whole-file xxh3 checksums", path)
    except OSError as exc:
        log.info("feature cache entry %s verified; cannot upgrade its meta.json (%s)", path, exc)
    return meta


def quarantine(path: Path, root: Path, reason: str) -> None:
    """Move a damaged entry out of the cache, keep its meta.json and the reason, drop its data."""
    qdir = root / QUARANTINE / f"{path.parent.name}--{path.name}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    _VERIFIED.pop(str(path), None)
    try:
        qdir.parent.mkdir(parents=True, exist_ok=True)
        os.rename(path, qdir)
    except OSError:
        shutil.rmtree(path, ignore_errors=True)
        return
    for f in qdir.iterdir():
        if f.name != "meta.json":
            if f.is_dir():
                shutil.rmtree(f, ignore_errors=True)
            else:
                f.unlink(missing_ok=True)
    (qdir / "reason.txt").write_text(f"{path}\n{reason}\n")
