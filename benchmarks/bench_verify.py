"""Whole-file verification of a feature-cache entry on first open (issue 15 target: < 1 s for 1.5 GB).

Writes a synthetic entry shaped like the dinov2-s14 Flickr8k image cache
(8091 images x 257 tokens x 384, float16: 1.6 GB) with the store's own writer
(hashed as written), then times what a process does when it first opens it:
the whole-file check of every file, from the page cache (warm) and after the
file's pages were dropped (cold: read from disk), and a second open in the
same process (no re-read).  Also times the hash alone on in-memory bytes.

    python benchmarks/bench_verify.py [--dir /tmp] [--rows 8091] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignbench.store import checksums  # noqa: E402
from alignbench.store.checksums import HASH, check_entry, file_record, forget_verified, seal  # noqa: E402
from alignbench.store.locking import write_json  # noqa: E402
from alignbench.store.npyfile import NpyWriter  # noqa: E402


def write_entry(folder: Path, rows: int, tokens: int, dim: int) -> tuple[dict, float]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    tok = NpyWriter(folder / "tokens.npy", np.float16, (rows, tokens, dim))
    pooled = NpyWriter(folder / "pooled.npy", np.float32, (rows, dim))
    t0 = time.perf_counter()
    for r in range(0, rows, 128):
        n = min(128, rows - r)
        block = rng.standard_normal((n, tokens, dim), dtype=np.float32).astype(np.float16)
        tok.write(r, block)
        pooled.write(r, block[:, 0].astype(np.float32))
    for w in (tok, pooled):
        w.sync()
        w.close()
    write_seconds = time.perf_counter() - t0
    key = {"format": 1, "kind": "images", "bench": "synthetic dinov2-s14 flickr8k"}
    files = {w.path.name: file_record(w.path, w.digest) for w in (tok, pooled)}
    write_json(folder / "meta.json", seal({"format": 1, "key": key, "kind": "images", "files": files}))
    return key, write_seconds


def drop_page_cache(folder: Path) -> None:
    for f in folder.iterdir():
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=None, help="where to write the synthetic entry (default: a temp dir)")
    ap.add_argument("--rows", type=int, default=8091, help="images (default: Flickr8k's 8091)")
    ap.add_argument("--tokens", type=int, default=257)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--keep", action="store_true", help="keep the entry afterwards (its folder is printed)")
    ap.add_argument("--entry", default=None, help="time an entry kept by an earlier --keep run (no writing)")
    args = ap.parse_args()

    if args.entry:
        entry, args.keep = Path(args.entry), True
        base, key = entry.parent, json.loads((entry / "meta.json").read_text())["key"]
        written = "kept from an earlier run"
    else:
        base = Path(tempfile.mkdtemp(prefix="bench-verify-", dir=args.dir))
        entry = base / "entry"
    try:
        if not args.entry:
            key, write_s = write_entry(entry, args.rows, args.tokens, args.dim)
            written = f"written + hashed in {write_s:.1f} s"
        size = (entry / "tokens.npy").stat().st_size
        shape = np.load(entry / "tokens.npy", mmap_mode="r").shape
        print(f"hash: {HASH} (xxhash {__import__('xxhash').VERSION}); token file {size / 1e9:.2f} GB "
              f"{'x'.join(map(str, shape))} fp16, {written}; entry {entry}")

        buf = np.random.default_rng(1).integers(0, 255, 256 << 20, dtype=np.uint8).tobytes()
        h = timed(lambda: checksums.new_hasher().update(buf))
        print(f"hash alone, in memory: {0.25 * (1 << 30) / 1e9 / h:.2f} GB/s")
        del buf

        drop_page_cache(entry)
        forget_verified()
        cold = timed(lambda: check_entry(entry, key))  # the read just now left the pages cached
        forget_verified()
        warm = timed(lambda: check_entry(entry, key))
        again = timed(lambda: check_entry(entry, key))
        print(f"first open, whole-file verify, cold (pages dropped): {cold:.3f} s ({size / 1e9 / cold:.2f} GB/s)")
        print(f"first open, whole-file verify, page cache warm: {warm:.3f} s ({size / 1e9 / warm:.2f} GB/s)")
        print(f"second open in the same process (no re-read): {again * 1e3:.2f} ms")
        print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
