"""The encode loop: images and texts through a frozen encoder, batch by batch.

Why generators: the feature store streams each batch straight into its files
(token features do not fit in RAM), checkpoints as it goes and can resume from
any row, so this module only yields ``(row_start, arrays)`` in row order and
never holds more than a batch (images) or a chunk (texts).

Images are decoded one of two ways (``decode=``), chosen by where the model
computes.  On the CPU its threads already own every core, so anything running
beside a forward pass slows it by more than it saves: a thread pool decodes
each batch *between* forwards, straight into a reused float buffer, and
overlaps only with the consumer's writes (``"threads"``).  On an accelerator
the cores are free, so DataLoader worker processes decode ahead of the model
(``"processes"``).  Both give bit-identical pixels.  A decoder never raises (a
worker traceback would bury the file name): it returns the error and the main
process raises one :class:`DataError` naming the file.  Texts are
encoded in chunks of the split's original order; inside a chunk they are
sorted by length so batches carry little padding, and the chunk's tokens are
put back in original order before they are yielded.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from alignbench.devices import is_cpu, is_cuda
from alignbench.errors import DataError

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 64
TEXT_CHUNK = 4096
DECODE_MODES = ("auto", "threads", "processes")


MAX_ACCELERATOR_WORKERS = 16


def default_workers(n_items: int, batch_size: int, device: str = "cpu") -> int:
    """Decode in parallel workers unless the job is too small to pay their start-up.

    Beside a model on the CPU, at most 4 (they compete with its threads).  Beside an
    accelerator the cores have nothing else to do: one worker per core but one (the main
    process feeds the device), up to 16: a ViT-L/14 forward on one GPU outruns 4 workers
    several times over (figures: benchmarks/README.md, ``bench_gpu.py``).
    """
    if n_items <= 2 * batch_size:
        return 0
    cores = os.cpu_count() or 1
    if is_cpu(device):
        return max(1, min(4, cores))
    return max(1, min(MAX_ACCELERATOR_WORKERS, cores - 1))


def default_threads() -> int:
    """Decode threads: one per core plus one (the model is idle while they run; the extra
    thread keeps the cores busy while another holds the GIL), at most 8."""
    return max(1, min(8, (os.cpu_count() or 1) + 1))


def resolve_decode(decode: str, device: Any) -> str:
    """``auto`` → ``threads`` when the model computes on the CPU, else ``processes``.

    On a CPU, worker processes decoding beside the forward pass slow each forward
    (cache and scheduling contention) on top of their own CPU time, so threads
    decoding between forwards come out ahead (benchmarks/bench_encode.py measures both).
    """
    from alignbench.errors import ConfigError

    if decode not in DECODE_MODES:
        raise ConfigError(f"decode {decode!r} not supported; choose one of {', '.join(DECODE_MODES)}")
    if decode != "auto":
        return decode
    return "threads" if is_cpu(device) else "processes"


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
        return _guarded(self.images, self.start + k, self.transform)


def _guarded(images: Any, i: int, fn: Any) -> tuple[Any, str | None]:
    """``(fn(images[i]), None)``, or ``(None, message naming the image)`` — never raises."""
    try:
        return fn(images[i]), None
    except DataError as exc:
        return None, str(exc)
    except Exception as exc:  # decode/transform failure: name the image, not the worker
        return None, f"cannot read image {_image_id(images, i)!r}: {type(exc).__name__}: {exc}"


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
    by benchmarks/bench_encode.py), leaving the cores to the model.  A torchvision
    pipeline of PIL steps + ToTensor + Normalize (timm's) is cut the same way,
    with bit-identical output (:class:`~alignbench.encoders.transforms.SplitTorchvision`).
    """
    from alignbench.encoders.transforms import SplitTorchvision

    transform = SplitTorchvision.of(transform) or transform
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


class _EncodeProgress:
    """A bar where bars show (a TTY, not ``--no-progress``); otherwise an INFO line every ``HEARTBEAT_S``.

    Why: the bars used to draw into log files too (a run's log held a thousand bar redraws), and
    the trainer's rule is already "bar on a TTY, heartbeat elsewhere"; encoding now follows it.
    """

    def __init__(self, total: int, initial: int, unit: str, desc: str, enabled: bool) -> None:
        from tqdm.auto import tqdm

        from alignbench.progress import Heartbeat, progress_enabled

        self.done, self.total, self.unit, self.desc = initial, total, unit, desc
        show = enabled and progress_enabled()  # a command's --no-progress reaches these bars too
        self.bar = tqdm(total=total, initial=initial, unit=unit, unit_scale=True, desc=desc, disable=not show,
                        dynamic_ncols=True, smoothing=0.1)
        self.heartbeat = Heartbeat(log)

    def update(self, n: int) -> None:
        self.done += n
        self.bar.update(n)
        self.heartbeat(lambda: f"encoding {self.desc}: {self.done} of {self.total} {self.unit}")

    def close(self) -> None:
        self.bar.close()


def iter_image_batches(
    encoder: Any,
    images: Sequence[Any],
    *,
    start: int = 0,
    tokens: bool = True,
    batch_size: int | None = None,
    num_workers: int | None = None,
    decode: str = "auto",
    progress: bool = True,
    desc: str = "images",
) -> Iterator[ImageBatch]:
    """Encode ``images[start:]`` and yield float32 pooled / float16 token batches in order.

    ``decode``: see the module docstring; ``num_workers`` counts decode threads or
    worker processes (0: decode in the calling thread; default: per mode).
    """
    import torch

    from alignbench.devices import warn_if_slow_dtype

    bs = batch_size or DEFAULT_BATCH_SIZE
    n = len(images)
    device = str(getattr(encoder, "device", "cpu"))
    warn_if_slow_dtype(getattr(encoder, "dtype", "fp32"), device)
    mode = resolve_decode(decode, device)
    cls = _ThreadDecoder if mode == "threads" else _WorkerDecoder
    decoder = cls(encoder.transform, images, start, bs, num_workers, device=device)
    row = start
    bar = _EncodeProgress(n, start, "img", desc, progress)
    try:
        with torch.inference_mode():
            if row < n:
                decoder.submit(row)
            while row < n:
                pixels, buffer = decoder.collect()
                out = encoder.encode(pixels, tokens=tokens)
                pooled = _owned(out.pooled.float().cpu().numpy(), buffer)
                toks = None
                if tokens and out.tokens is not None:
                    toks = _owned(out.tokens.to(torch.float16).cpu().numpy(), buffer)
                batch = ImageBatch(row, pooled, toks)
                row += len(pooled)
                if row < n:
                    decoder.submit(row)  # decodes while the consumer writes this batch, not beside the model
                yield batch
                bar.update(len(pooled))
    finally:
        decoder.close()
        bar.close()


def to_device(t: Any, device: str) -> Any:
    """``t`` on ``device``; to a GPU from pinned memory without blocking (the copy overlaps the host's work)."""
    if not is_cuda(device):
        return t
    if not t.is_pinned():
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def _owned(a: np.ndarray, buffer: np.ndarray | None) -> np.ndarray:
    """``a``, copied if it may share memory with the reused pixel buffer (an encoder may return a view)."""
    return a.copy() if buffer is not None and np.may_share_memory(a, buffer) else a


class _WorkerDecoder:
    """DataLoader worker processes decode ahead of the model (uint8 through shared memory)."""

    def __init__(self, transform: Any, images: Sequence[Any], start: int, bs: int, num_workers: int | None,
                 device: str = "cpu"):
        from torch.utils.data import DataLoader

        self.device = device
        pin = is_cuda(device)
        per_image, self.per_batch = _split_transform(transform)
        items = _ImageItems(images, per_image, start)
        workers = default_workers(len(items), bs, device) if num_workers is None else num_workers
        # pin_memory: a pinning thread copies each uint8 batch into page-locked memory, so the
        # host-to-GPU copy is asynchronous (to_device) and needs no staging copy of its own.
        self.loader = iter(DataLoader(items, batch_size=bs, shuffle=False, num_workers=workers,
                                      collate_fn=_collate, pin_memory=pin))

    def submit(self, row: int) -> None:
        """Nothing to do: the workers prefetch on their own."""

    def collect(self) -> tuple[Any, None]:
        pixels, err = next(self.loader)
        if err is not None:
            raise DataError(err)
        if self.per_batch is None:
            return to_device(pixels, self.device), None
        # uint8 crosses the bus (4x less than float32) and is normalised where it lands
        return self.per_batch(to_device(pixels, self.device)), None

    def close(self) -> None:
        self.loader = None  # the DataLoader iterator stops its workers when released


class _ThreadDecoder:
    """A thread pool decodes one batch at a time, between forward passes.

    PIL releases the GIL while it decodes and resizes, so threads scale (Flickr8k
    on 2 cores: 0.35 ms wall per image with 2 threads vs 0.65 with one).
    Transforms with ``into`` write each image straight into one reused float32
    buffer; others are stacked per batch.
    """

    def __init__(self, transform: Any, images: Sequence[Any], start: int, bs: int, num_workers: int | None,
                 device: str = "cpu"):
        self.transform, self.images, self.bs, self.device = transform, images, bs, device
        threads = default_threads() if num_workers is None else num_workers
        self.into = getattr(transform, "into", None) if hasattr(transform, "shape") else None
        self.buffer = np.empty((bs, *transform.shape), np.float32) if self.into is not None else None
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="decode") if threads > 0 else None
        self.pending: list[Any] = []

    def _one(self, i: int, slot: int) -> tuple[Any, str | None]:
        if self.into is None:
            return _guarded(self.images, i, self.transform)
        return _guarded(self.images, i, lambda img: self.into(img, self.buffer[slot]))

    def submit(self, row: int) -> None:
        rows = range(row, min(len(self.images), row + self.bs))
        if self.pool is None:
            self.pending = [_finished(self._one(i, k)) for k, i in enumerate(rows)]
        else:
            self.pending = [self.pool.submit(self._one, i, k) for k, i in enumerate(rows)]

    def collect(self) -> tuple[Any, np.ndarray | None]:
        import torch

        results, self.pending = [f.result() for f in self.pending], []
        for _, err in results:
            if err is not None:
                raise DataError(err)
        if self.buffer is not None:
            return to_device(torch.from_numpy(self.buffer[: len(results)]), self.device), self.buffer
        return to_device(torch.stack([x for x, _ in results]), self.device), None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _finished(value: Any) -> Future:
    """A future that already holds ``value`` (decoding in the calling thread)."""
    future: Future = Future()
    future.set_result(value)
    return future


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
    bar = _EncodeProgress(n, start, "txt", desc, progress)
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
