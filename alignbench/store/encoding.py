"""Writing one cache entry: encode loops streamed into a temporary folder, renamed when complete.

Why: batches go straight into preallocated files (token features do not fit
in memory) with a checkpoint every few seconds, so a killed encode resumes
bit-identically; every file's checksum is taken as it is written; features
that are not finite are refused as they arrive (never found at evaluation);
the folder is fsync'ed and renamed into place only when complete, and a full
disk removes the partial folder and says how much space the entry needs.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alignbench.errors import AlignbenchError, DataError, FeatureError
from alignbench.store.checksums import file_record, mark_verified, seal
from alignbench.store.keys import FORMAT, EntryKey, Request, hash_json, safe_name
from alignbench.atomic import fsync_dir
from alignbench.store.locking import (disk_full_error, ensure_space, is_disk_full, save_progress, start_or_resume,
                                      temp_folder, write_json)
from alignbench.store.npyfile import NpyWriter, npy_bytes

log = logging.getLogger(__name__)


@dataclass
class EncodeSettings:
    """How to encode (speed only: none of these change the vectors, so none is in the key)."""

    progress: bool = True
    batch_size: int | None = None
    num_workers: int | None = None
    decode: str = "auto"
    checkpoint_seconds: float = 20.0
    text_chunk: int | None = None


def all_finite(a: np.ndarray) -> bool:
    """``np.isfinite(a).all()``; for float16 via the exponent bits (numpy's float16 math is many times slower)."""
    if a.dtype == np.float16:
        return not bool(np.any((a.view(np.uint16) & 0x7C00) == 0x7C00))
    return bool(np.isfinite(a).all())


class EntryWriter:
    """Encodes one request into its entry folder (resuming a checkpointed partial one)."""

    def __init__(self, req: Request, entry: EntryKey, settings: EncodeSettings):
        self.req, self.entry, self.settings = req, entry, settings
        self.path, self.tmp = entry.path, temp_folder(entry.path)
        self.needed: int | None = None  # estimated bytes still to write, once the first batch shows the shapes

    def run(self) -> str:
        """Encode and rename into place; 'encoded' or 'resumed'."""
        try:
            return self._run()
        except BaseException as exc:
            if is_disk_full(exc):
                shutil.rmtree(self.tmp, ignore_errors=True)
                raise disk_full_error(self.path.parent, self._what(), self.needed) from None
            if isinstance(exc, AlignbenchError) and not isinstance(exc, DataError):
                shutil.rmtree(self.tmp, ignore_errors=True)  # nothing to resume: the same encode fails again
            raise

    def _what(self) -> str:
        return f"{self.req.kind} of {self.req.label} ({self.req.encoder_name})"

    def _run(self) -> str:
        req, key, path, tmp = self.req, self.entry.key, self.path, self.tmp
        state = start_or_resume(tmp, key)
        action = "resumed" if state["done"] else "encoded"
        if state["done"]:
            log.info("resuming the interrupted encode of %s %s at row %d", req.encoder_name, req.label, state["done"])
        t0 = time.time()
        items = req.items()
        if req.kind == "images":
            extra = self._encode_images(items, state)
        else:
            extra = self._encode_texts(items, state)
        hashed = extra.pop("hashed", {})  # checksums of files hashed while they were written
        files = {f.name: file_record(f, hashed.get(f.name)) for f in sorted(tmp.iterdir())
                 if f.name not in ("progress.json", "meta.json") and not f.name.endswith(".tmp")}
        from alignbench import __version__
        from alignbench.provenance import cpu_info

        meta = seal({
            "format": FORMAT, "key": key, "key_hash": hash_json(key), "kind": req.kind,
            "encoder": safe_name(req.encoder_name), "encoder_name": req.encoder_name, "dataset": req.dataset,
            "split": req.split, "count": len(items), "files": files, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "encode_seconds": round(time.time() - t0, 3), "device": str(getattr(req.encoder, "device", "cpu")),
            "cpu": cpu_info(),  # another CPU's kernels may give other last bits (README: reproducing)
            "alignbench": __version__, **extra,
        })
        (tmp / "progress.json").unlink(missing_ok=True)
        write_json(tmp / "meta.json", meta)
        fsync_dir(tmp)
        try:
            os.rename(tmp, path)
            mark_verified(path, meta)  # every byte was hashed on its way out (or just read back)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            log.info("another process wrote %s first; keeping theirs", path)
            shutil.rmtree(tmp, ignore_errors=True)
        fsync_dir(path.parent)
        log.info("encoded %d %s of %s with %s in %.1f s", len(items), req.kind, req.label, req.encoder_name,
                 time.time() - t0)
        return action

    # -- helpers ---------------------------------------------------------------------
    def _checkpointer(self, state: dict, writers: list[NpyWriter]):
        last = [time.monotonic()]

        def checkpoint(done: int, token_rows: int = 0, force: bool = False) -> None:
            if not force and time.monotonic() - last[0] < self.settings.checkpoint_seconds:
                return
            for w in writers:
                w.sync()
            state.update(done=done, token_rows=token_rows)
            save_progress(self.tmp, state)
            last[0] = time.monotonic()

        return checkpoint

    def _reserve(self, needed: int) -> None:
        self.needed = int(needed)
        ensure_space(self.path.parent, self._what(), self.needed)

    def _check_batch(self, pooled: np.ndarray, tokens: np.ndarray | None, start: int) -> None:
        """Refuse to cache non-finite features (fp16 overflow, a broken model): name the entry and the fix."""
        req = self.req
        if all_finite(pooled) and (tokens is None or all_finite(tokens)):
            return
        what = "global" if not all_finite(pooled) else "token"
        why = "" if what == "global" else " (or overflow float16 storage)"
        where = f"--datasets {req.dataset}" + (f" --splits {req.split}" if req.kind in ("images", "texts") else "")
        raise FeatureError(
            f"{req.encoder_name} produced non-finite {what} features{why} for {req.label} (rows from {start}); "
            f"nothing was cached for entry {self.path}; re-encode in float32: "
            f"alignbench encode {where} --dtype fp32 (with the same --pair and layers)")

    # -- the encode loop ------------------------------------------------------------------
    def _stream(self, batches: Any, rows: _ImageRows | _TextRows, state: dict) -> dict[str, str]:
        """Write each batch where ``rows`` lays it out, checkpointing as it goes; the checksums hashed on the way."""
        checkpoint = None
        done = state["done"]
        try:
            if done and rows.shapes:  # a checkpointed partial entry: reopen its files
                rows.resume()
            for b in batches:
                self._check_batch(b.pooled, b.tokens, b.start)
                if self.needed is None:  # the first batch of this run: the space the rest needs
                    self._reserve(rows.bytes_left(b))
                if not rows.writers:  # a new entry: the first batch tells the shapes
                    state["shapes"] = rows.open(b)
                if checkpoint is None:
                    checkpoint = self._checkpointer(state, list(rows.writers.values()))
                rows.write(b)
                done = b.start + len(b.pooled)
                checkpoint(done, rows.token_rows)
            rows.finish()
            for w in rows.writers.values():
                w.sync()
        except BaseException as exc:
            if checkpoint is not None and state["done"] < done < rows.n and not is_disk_full(exc):
                checkpoint(done, rows.token_rows, force=True)  # keep the finished rows for the rerun
            raise
        finally:
            batches.close()
            for w in rows.writers.values():
                w.close()
        return {w.path.name: w.digest for w in rows.writers.values() if w.digest is not None}

    def _encode_images(self, images: Any, state: dict) -> dict:
        from alignbench.encode import iter_image_batches

        req, s = self.req, self.settings
        enc = req.encoder
        if len(images) == 0:
            raise DataError(f"{req.label} has no images")
        rows = _ImageRows(self.tmp, len(images), state)
        batches = iter_image_batches(enc, images, start=state["done"], tokens=req.tokens, batch_size=s.batch_size,
                                     num_workers=s.num_workers, decode=s.decode, progress=s.progress,
                                     desc=f"{req.encoder_name} {req.label}")
        hashed = self._stream(batches, rows, state)
        fn = enc.final_norm() if req.tokens else None
        if fn is not None:
            w, bias, eps = fn
            np.savez(self.tmp / "final_norm.npz", weight=np.asarray(w, np.float32),
                     bias=np.asarray(bias, np.float32), eps=np.float64(eps))
        return {"hashed": hashed, "shapes": rows.shapes, "grid": list(enc.grid), "n_prefix": int(enc.n_prefix),
                "resolution": int(enc.resolution)}

    def _encode_texts(self, texts: Any, state: dict) -> dict:
        from alignbench.encode import TEXT_CHUNK, iter_text_chunks

        req, s = self.req, self.settings
        if len(texts) == 0:
            raise DataError(f"{req.label} has no texts")
        rows = _TextRows(self.tmp, texts, state)
        chunks = iter_text_chunks(req.encoder, texts, start=state["done"], tokens=req.tokens,
                                  batch_size=s.batch_size, chunk_size=s.text_chunk or TEXT_CHUNK,
                                  progress=s.progress, desc=f"{req.encoder_name} {req.label}")
        hashed = self._stream(chunks, rows, state)
        write_json(self.tmp / "texts.json", list(texts))
        return {"hashed": hashed, "shapes": rows.shapes, **req.extra}


class _ImageRows:
    """Image entries: pooled (n, d) float32 and tokens (n, T, d) float16, each batch written at its rows."""

    def __init__(self, tmp: Path, n: int, state: dict):
        self.tmp, self.n = tmp, n
        self.shapes: dict | None = state.get("shapes")
        self.writers: dict[str, NpyWriter] = {}
        self.token_rows = 0  # only ragged (text) tokens count rows apart from the items

    def resume(self) -> None:
        self._open(resume_rows=0)

    def _open(self, **resume: int) -> None:
        shapes = self.shapes
        self.writers["pooled"] = NpyWriter(self.tmp / "pooled.npy", np.float32, tuple(shapes["pooled"]), **resume)
        if "tokens" in shapes:
            self.writers["tokens"] = NpyWriter(self.tmp / "tokens.npy", np.float16, tuple(shapes["tokens"]), **resume)

    def _shapes_of(self, b: Any) -> dict:
        shapes = {"pooled": [self.n, b.pooled.shape[1]]}
        if b.tokens is not None:
            shapes["tokens"] = [self.n, *b.tokens.shape[1:]]
        return shapes

    def bytes_left(self, b: Any) -> int:
        if self.writers:  # resumed: the rest of the rows
            return sum(w.row_bytes for w in self.writers.values()) * (self.n - b.start)
        shapes = self._shapes_of(b)
        return npy_bytes(np.float32, shapes["pooled"]) + (npy_bytes(np.float16, shapes["tokens"])
                                                           if "tokens" in shapes else 0)

    def open(self, b: Any) -> dict:
        self.shapes = self._shapes_of(b)
        self._open()
        return self.shapes

    def write(self, b: Any) -> None:
        self.writers["pooled"].write(b.start, b.pooled)
        if b.tokens is not None:
            self.writers["tokens"].write(b.start, b.tokens)

    def finish(self) -> None:
        pass


class _TextRows:
    """Text entries: pooled (n, d) float32, ragged tokens (all tokens, d) float16 and offsets (n + 1,) into them."""

    def __init__(self, tmp: Path, texts: Any, state: dict):
        self.tmp, self.texts, self.n = tmp, texts, len(texts)
        self.shapes: dict | None = state.get("shapes")
        self.writers: dict[str, NpyWriter] = {}
        self.token_rows = state["token_rows"]

    def resume(self) -> None:
        tmp, shapes = self.tmp, self.shapes
        self.writers["pooled"] = NpyWriter(tmp / "pooled.npy", np.float32, tuple(shapes["pooled"]), resume_rows=0)
        self.writers["offsets"] = NpyWriter(tmp / "offsets.npy", np.int64, (self.n + 1,), resume_rows=0)
        if "tokens" in shapes:
            self.writers["tokens"] = NpyWriter(tmp / "tokens.npy", np.float16, (0, shapes["tokens"][1]),
                                               resume_rows=self.token_rows)

    def bytes_left(self, c: Any) -> float:
        """An estimate from this chunk's tokens per text."""
        per_text = 4 * c.pooled.shape[1] + 8 + (c.tokens.nbytes if c.tokens is not None else 0) / len(c.pooled)
        return per_text * (self.n - c.start) + sum(len(t) + 4 for t in self.texts[c.start:])

    def open(self, c: Any) -> dict:
        n, tmp = self.n, self.tmp
        self.shapes = {"pooled": [n, c.pooled.shape[1]]}
        self.writers["pooled"] = NpyWriter(tmp / "pooled.npy", np.float32, (n, c.pooled.shape[1]))
        self.writers["offsets"] = NpyWriter(tmp / "offsets.npy", np.int64, (n + 1,))
        self.writers["offsets"].write(0, np.zeros(1, np.int64))
        if c.tokens is not None:
            self.shapes["tokens"] = [0, c.tokens.shape[1]]
            self.writers["tokens"] = NpyWriter(tmp / "tokens.npy", np.float16, (0, c.tokens.shape[1]))
        return self.shapes

    def write(self, c: Any) -> None:
        self.writers["pooled"].write(c.start, c.pooled)
        if c.tokens is not None:
            self.writers["tokens"].append(c.tokens)
        self.writers["offsets"].write(c.start + 1, self.token_rows + np.cumsum(c.lengths))
        self.token_rows += int(c.lengths.sum())

    def finish(self) -> None:
        if "tokens" in self.writers:
            self.writers["tokens"].finish_ragged()
            self.shapes["tokens"] = [self.token_rows, self.shapes["tokens"][1]]
        else:  # no tokens: offsets are meaningless, drop them
            self.writers.pop("offsets").close()
            (self.tmp / "offsets.npy").unlink()
