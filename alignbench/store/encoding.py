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
    """``np.isfinite(a).all()``; for float16 via the exponent bits (numpy's float16 math is ~10× slower)."""
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

        meta = seal({
            "format": FORMAT, "key": key, "key_hash": hash_json(key), "kind": req.kind,
            "encoder": safe_name(req.encoder_name), "encoder_name": req.encoder_name, "dataset": req.dataset,
            "split": req.split, "count": len(items), "files": files, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "encode_seconds": round(time.time() - t0, 3), "device": str(getattr(req.encoder, "device", "cpu")),
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

    # -- images -----------------------------------------------------------------------
    def _encode_images(self, images: Any, state: dict) -> dict:
        from alignbench.encode import iter_image_batches

        req, tmp, s = self.req, self.tmp, self.settings
        enc, n = req.encoder, len(images)
        if n == 0:
            raise DataError(f"{req.label} has no images")
        shapes = state.get("shapes")
        batches = iter_image_batches(enc, images, start=state["done"], tokens=req.tokens, batch_size=s.batch_size,
                                     num_workers=s.num_workers, decode=s.decode, progress=s.progress,
                                     desc=f"{req.encoder_name} {req.label}")
        writers: dict[str, NpyWriter] = {}
        checkpoint = None
        done = state["done"]
        try:
            if done and shapes:
                writers["pooled"] = NpyWriter(tmp / "pooled.npy", np.float32, tuple(shapes["pooled"]), resume_rows=0)
                if "tokens" in shapes:
                    writers["tokens"] = NpyWriter(tmp / "tokens.npy", np.float16, tuple(shapes["tokens"]),
                                                  resume_rows=0)
            for b in batches:
                self._check_batch(b.pooled, b.tokens, b.start)
                if not writers:  # the first batch tells the shapes
                    shapes = {"pooled": [n, b.pooled.shape[1]]}
                    if b.tokens is not None:
                        shapes["tokens"] = [n, *b.tokens.shape[1:]]
                    self._reserve(npy_bytes(np.float32, shapes["pooled"])
                                  + (npy_bytes(np.float16, shapes["tokens"]) if "tokens" in shapes else 0))
                    writers["pooled"] = NpyWriter(tmp / "pooled.npy", np.float32, tuple(shapes["pooled"]))
                    if "tokens" in shapes:
                        writers["tokens"] = NpyWriter(tmp / "tokens.npy", np.float16, tuple(shapes["tokens"]))
                    state["shapes"] = shapes
                elif self.needed is None:  # resumed: the rest of the rows
                    per_row = sum(w.row_bytes for w in writers.values())
                    self._reserve(per_row * (n - b.start))
                if checkpoint is None:
                    checkpoint = self._checkpointer(state, list(writers.values()))
                writers["pooled"].write(b.start, b.pooled)
                if b.tokens is not None:
                    writers["tokens"].write(b.start, b.tokens)
                done = b.start + len(b.pooled)
                checkpoint(done)
            for w in writers.values():
                w.sync()
        except BaseException as exc:
            if checkpoint is not None and done > state["done"] and not is_disk_full(exc):
                checkpoint(done, force=True)  # keep the finished rows for the rerun
            raise
        finally:
            batches.close()
            for w in writers.values():
                w.close()
        hashed = {w.path.name: w.digest for w in writers.values() if w.digest is not None}
        fn = enc.final_norm() if req.tokens else None
        if fn is not None:
            w, bias, eps = fn
            np.savez(tmp / "final_norm.npz", weight=np.asarray(w, np.float32), bias=np.asarray(bias, np.float32),
                     eps=np.float64(eps))
        return {"hashed": hashed, "shapes": shapes, "grid": list(enc.grid), "n_prefix": int(enc.n_prefix),
                "resolution": int(enc.resolution)}

    # -- texts ------------------------------------------------------------------------
    def _encode_texts(self, texts: Any, state: dict) -> dict:
        from alignbench.encode import TEXT_CHUNK, iter_text_chunks

        req, tmp, s = self.req, self.tmp, self.settings
        enc, n = req.encoder, len(texts)
        if n == 0:
            raise DataError(f"{req.label} has no texts")
        shapes = state.get("shapes")
        writers: dict[str, NpyWriter] = {}
        if state["done"] and shapes:
            writers["pooled"] = NpyWriter(tmp / "pooled.npy", np.float32, tuple(shapes["pooled"]), resume_rows=0)
            writers["offsets"] = NpyWriter(tmp / "offsets.npy", np.int64, (n + 1,), resume_rows=0)
            if "tokens" in shapes:
                writers["tokens"] = NpyWriter(tmp / "tokens.npy", np.float16, (0, shapes["tokens"][1]),
                                              resume_rows=state["token_rows"])
        token_rows = state["token_rows"]
        chunks = iter_text_chunks(enc, texts, start=state["done"], tokens=req.tokens, batch_size=s.batch_size,
                                  chunk_size=s.text_chunk or TEXT_CHUNK, progress=s.progress,
                                  desc=f"{req.encoder_name} {req.label}")
        done = state["done"]
        checkpoint = None
        try:
            for c in chunks:
                self._check_batch(c.pooled, c.tokens, c.start)
                if not writers:
                    shapes = {"pooled": [n, c.pooled.shape[1]]}
                    writers["pooled"] = NpyWriter(tmp / "pooled.npy", np.float32, (n, c.pooled.shape[1]))
                    writers["offsets"] = NpyWriter(tmp / "offsets.npy", np.int64, (n + 1,))
                    writers["offsets"].write(0, np.zeros(1, np.int64))
                    if c.tokens is not None:
                        shapes["tokens"] = [0, c.tokens.shape[1]]
                        writers["tokens"] = NpyWriter(tmp / "tokens.npy", np.float16, (0, c.tokens.shape[1]))
                    state["shapes"] = shapes
                if self.needed is None:  # estimate the rest from this chunk's tokens per text
                    per_text = 4 * c.pooled.shape[1] + 8 + (c.tokens.nbytes if c.tokens is not None else 0) / len(c.pooled)
                    self._reserve(per_text * (n - c.start) + sum(len(t) + 4 for t in texts[c.start:]))
                if checkpoint is None:
                    checkpoint = self._checkpointer(state, list(writers.values()))
                writers["pooled"].write(c.start, c.pooled)
                if c.tokens is not None:
                    writers["tokens"].append(c.tokens)
                writers["offsets"].write(c.start + 1, token_rows + np.cumsum(c.lengths))
                token_rows += int(c.lengths.sum())
                done = c.start + len(c.pooled)
                checkpoint(done, token_rows)
            if "tokens" in writers:
                writers["tokens"].finish_ragged()
                shapes["tokens"] = [token_rows, shapes["tokens"][1]]
            else:  # no tokens: offsets are meaningless, drop them
                writers.pop("offsets").close()
                (tmp / "offsets.npy").unlink()
            for w in writers.values():
                w.sync()
        except BaseException as exc:
            if checkpoint is not None and state["done"] < done < n and not is_disk_full(exc):
                checkpoint(done, token_rows, force=True)  # keep the finished chunks for the rerun
            raise
        finally:
            chunks.close()
            for w in writers.values():
                w.close()
        hashed = {w.path.name: w.digest for w in writers.values() if w.digest is not None}
        write_json(tmp / "texts.json", list(texts))
        return {"hashed": hashed, "shapes": shapes, **req.extra}
