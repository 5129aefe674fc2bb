"""The encode loop: images and texts through a frozen encoder, batch by batch.

Why generators: the feature store streams each batch straight into its files
(token features do not fit in RAM), checkpoints as it goes and can resume from
any row, so this module only yields ``(row_start, arrays)`` in row order and
never holds more than a batch (images) or a chunk (texts).

Images are decoded and transformed in DataLoader workers; a worker never
raises (a worker traceback would bury the file name): it returns the error and
the main process raises one :class:`DataError` naming the file.  Texts are
encoded in chunks of the split's original order; inside a chunk they are
sorted by length so batches carry little padding, and the chunk's tokens are
put back in original order before they are yielded.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from alignbench.errors import DataError

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 64
TEXT_CHUNK = 4096


def default_workers(n_items: int, batch_size: int) -> int:
    """Decode in parallel workers unless the job is too small to pay their start-up."""
    if n_items <= 2 * batch_size:
        return 0
    return max(1, min(4, os.cpu_count() or 1))


class _ImageItems:
    """Map-style dataset over rows ``start..`` of an ImageList; picklable for workers.

    ``transform`` maps a PIL image to what a worker ships: the encoder's full
    transform, or only its uint8 ``pixels`` step when the encoder normalises
    whole batches in the main process (see :func:`iter_image_batches`).
    """

    def __init__(self, images: Any, transform: Any, start: int):
        self.images, self.transform, self.start = images, transform, start

    def __len__(self) -> int:
        return len(self.images) - self.start

    def __getitem__(self, k: int):
        i = self.start + k
        try:
            return self.transform(self.images[i]), None
        except DataError as exc:
            return None, str(exc)
        except Exception as exc:  # decode/transform failure: name the image, not the worker
            return None, f"cannot read image {_image_id(self.images, i)!r}: {type(exc).__name__}: {exc}"


def _image_id(images: Any, i: int) -> str:
    ids = getattr(images, "ids", None)
    return str(ids[i]) if ids is not None else f"#{i}"


def _collate(items):
    """Stack a batch, or return the first error message in it.

    torch's ``default_collate`` stacks a worker's batch straight into shared
    memory, so handing it to the main process copies nothing.
    """
    from torch.utils.data import default_collate

    for _, err in items:
        if err is not None:
            return None, err
    return default_collate([x for x, _ in items]), None


def _split_transform(transform: Any) -> tuple[Any, Any]:
    """(per-image step for the workers, per-batch step for the main process or None).

    Transforms with ``pixels``/``normalise`` ship uint8 from the workers and
    normalise whole batches (1.4 vs 3.5 ms CPU per image on 2 cores, measured
    by benchmarks/bench_encode.py), leaving the cores to the model.
    """
    if callable(getattr(transform, "pixels", None)) and callable(getattr(transform, "normalise", None)):
        return transform.pixels, transform.normalise
    return transform, None


@dataclass
class ImageBatch:
    start: int
    pooled: np.ndarray  # (B, d) float32
    tokens: np.ndarray | None  # (B, T, d_tok) float16


@dataclass
class TextChunk:
    start: int
    pooled: np.ndarray  # (B, d) float32
    tokens: np.ndarray | None  # (sum lengths, d_tok) float16, in original order
    lengths: np.ndarray  # (B,) int64 token counts


def _progress(total: int, initial: int, unit: str, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit=unit, unit_scale=True, desc=desc, disable=not enabled,
                dynamic_ncols=True, smoothing=0.1)


def iter_image_batches(
    encoder: Any,
    images: Sequence[Any],
    *,
    start: int = 0,
    tokens: bool = True,
    batch_size: int | None = None,
    num_workers: int | None = None,
    progress: bool = True,
    desc: str = "images",
) -> Iterator[ImageBatch]:
    """Encode ``images[start:]`` and yield float32 pooled / float16 token batches in order."""
    import torch
    from torch.utils.data import DataLoader

    bs = batch_size or DEFAULT_BATCH_SIZE
    n = len(images)
    per_image, per_batch = _split_transform(encoder.transform)
    items = _ImageItems(images, per_image, start)
    workers = default_workers(len(items), bs) if num_workers is None else num_workers
    loader = DataLoader(items, batch_size=bs, shuffle=False, num_workers=workers, collate_fn=_collate)
    row = start
    bar = _progress(n, start, "img", desc, progress)
    try:
        with torch.inference_mode():
            for pixels, err in loader:
                if err is not None:
                    raise DataError(err)
                if per_batch is not None:
                    pixels = per_batch(pixels)
                out = encoder.encode(pixels.to(encoder.device), tokens=tokens)
                pooled = out.pooled.float().cpu().numpy()
                toks = out.tokens.to(torch.float16).cpu().numpy() if tokens and out.tokens is not None else None
                yield ImageBatch(row, pooled, toks)
                row += len(pooled)
                bar.update(len(pooled))
    finally:
        bar.close()


def iter_text_chunks(
    encoder: Any,
    texts: Sequence[str],
    *,
    start: int = 0,
    tokens: bool = True,
    batch_size: int | None = None,
    chunk_size: int = TEXT_CHUNK,
    progress: bool = True,
    desc: str = "texts",
) -> Iterator[TextChunk]:
    """Encode ``texts[start:]`` chunk by chunk; yields chunks in original order.

    Token features come back unpadded (special tokens kept) as one flat array
    per chunk plus per-text lengths, ready for a ragged store.
    """
    import torch

    bs = batch_size or DEFAULT_BATCH_SIZE
    n = len(texts)
    bar = _progress(n, start, "txt", desc, progress)
    try:
        with torch.inference_mode():
            for c0 in range(start, n, chunk_size):
                chunk = list(texts[c0 : c0 + chunk_size])
                order = np.argsort([len(t) for t in chunk], kind="stable")  # char length ~ token length
                pooled_parts, flat_parts, len_parts = [], [], []
                for b0 in range(0, len(chunk), bs):
                    idx = order[b0 : b0 + bs]
                    out = encoder.encode([chunk[i] for i in idx], tokens=tokens)
                    pooled_parts.append(out.pooled.float().cpu().numpy())
                    if tokens and out.tokens is not None:
                        mask = out.mask.bool()
                        flat_parts.append(out.tokens[mask].to(torch.float16).cpu().numpy())
                        len_parts.append(mask.sum(1).cpu().numpy().astype(np.int64))
                    bar.update(len(idx))
                inv = np.empty_like(order)
                inv[order] = np.arange(len(order))
                pooled = np.concatenate(pooled_parts)[inv]
                if flat_parts:
                    yield TextChunk(c0, pooled, *_unsort_ragged(np.concatenate(flat_parts),
                                                                np.concatenate(len_parts), inv))
                else:
                    yield TextChunk(c0, pooled, None, np.zeros(len(chunk), dtype=np.int64))
    finally:
        bar.close()


def _unsort_ragged(flat: np.ndarray, lengths_sorted: np.ndarray, inv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder a ragged (flat, lengths) array from sorted to original order.

    ``inv[j]`` is the sorted position of original item j.  Vectorised gather:
    no Python loop over items.
    """
    starts_sorted = np.concatenate([[0], np.cumsum(lengths_sorted)[:-1]])
    lengths = lengths_sorted[inv]
    out_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    gather = np.repeat(starts_sorted[inv] - out_starts, lengths) + np.arange(int(lengths.sum()))
    return flat[gather], lengths
