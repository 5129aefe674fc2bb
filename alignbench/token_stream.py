"""Token sources for fits on a device: resident on the GPU when they fit, else streamed with prefetch.

Why: PAL reads every training image's tokens each epoch (82,783 COCO images x
257 x 1024 fp16 = 43.6 GB), more than most GPUs hold and than many hosts have
RAM.  When the rows fit (half the free GPU memory), they are copied to the GPU
once as fp16 and every step gathers its batch there.  Otherwise a
:class:`PrefetchTokens` reads the NEXT block of fp16 rows from the memmap in a
background thread (into pinned memory on a GPU, so the copy is asynchronous)
while the current block computes: two blocks in flight, double buffering.
The same streaming path runs on the CPU, where it overlaps page-cache/disk
reads with the matmuls.  Either way the tokens are those of the memmap, so the
numbers do not depend on which path ran.  Blocks are copied out with
:func:`alignbench.mapped_rows.take_rows`, so the file's pages do not stay in
the process's RSS as the epoch walks the whole file.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from alignbench.mapped_rows import take_rows

#: Resident only when the tokens take at most this share of the free GPU memory (the rest is for CAP).
RESIDENT_SHARE = 0.5


def _shifted(z: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
    return z if shift is None else z.float() - shift


class PrefetchTokens:
    """A TokenSource over rows of an fp16 (N, T, d) array that reads block i+1 while block i computes.

    CAP asks for blocks front to back (forward), then again from the start
    (backward); the next block is guessed from the last one and read ahead.
    """

    def __init__(self, array: np.ndarray, rows: np.ndarray, device: torch.device | str = "cpu",
                 shift: torch.Tensor | None = None):
        self.array, self.rows, self.shift = array, np.asarray(rows, dtype=np.int64), shift
        self.n, self.T, self.d = len(self.rows), int(array.shape[1]), int(array.shape[2])
        self.device = torch.device(device)
        self.pin = self.device.type == "cuda"
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="tokens")
        self._pending: tuple[int, int, Future] | None = None
        self.blocks_prefetched = 0

    def _read(self, start: int, stop: int) -> torch.Tensor:
        z = torch.from_numpy(take_rows(self.array, self.rows[start:stop]))
        return z.pin_memory() if self.pin else z

    def block(self, start: int, stop: int) -> tuple[torch.Tensor, None]:
        pending, self._pending = self._pending, None
        if pending is not None and pending[:2] == (start, stop):
            z = pending[2].result()
            self.blocks_prefetched += 1
        else:
            if pending is not None:
                pending[2].cancel()
            z = self._read(start, stop)
        size = stop - start
        nxt = (stop, min(self.n, stop + size)) if stop < self.n else (0, min(self.n, size))
        self._pending = (*nxt, self._pool.submit(self._read, *nxt))
        z = z.to(self.device, non_blocking=True) if self.pin else z
        return _shifted(z, self.shift), None

    def close(self) -> None:
        self._pending = None
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __del__(self) -> None:  # a source dropped without close() must not leave its thread behind
        try:
            self._pool.shutdown(wait=False, cancel_futures=True)
        except Exception:
            pass


class ResidentTokens:
    """All training rows of a token array, copied once to a device as fp16; batches are gathered there."""

    def __init__(self, array: np.ndarray, rows: np.ndarray, device: torch.device | str, chunk: int = 1024):
        self.rows = np.asarray(rows, dtype=np.int64)  # sorted absolute rows held, position = index here
        self.device = torch.device(device)
        T, d = int(array.shape[1]), int(array.shape[2])
        self.tokens = torch.empty((len(self.rows), T, d), dtype=torch.float16, device=self.device)
        for s in range(0, len(self.rows), chunk):  # host memory stays one chunk
            block = torch.from_numpy(take_rows(array, self.rows[s : s + chunk]).astype(np.float16, copy=False))
            self.tokens[s : s + len(block)].copy_(block.pin_memory() if self.device.type == "cuda" else block,
                                                  non_blocking=True)

    @property
    def nbytes(self) -> int:
        return self.tokens.numel() * 2

    def holds(self, array: np.ndarray, rows: np.ndarray) -> bool:
        pos = np.searchsorted(self.rows, rows)
        return bool(len(rows)) and bool(np.all(pos < len(self.rows))) and bool(np.all(self.rows[pos] == rows))

    def source(self, rows: np.ndarray, shift: torch.Tensor | None = None) -> "_Gathered":
        pos = torch.from_numpy(np.searchsorted(self.rows, rows)).to(self.device)
        return _Gathered(self.tokens, pos, shift)


class _Gathered:
    """A TokenSource over some rows of a resident tensor (gathered per block, on its device)."""

    def __init__(self, tokens: torch.Tensor, pos: torch.Tensor, shift: torch.Tensor | None):
        self.tokens, self.pos, self.shift = tokens, pos, shift
        self.n, self.T, self.d = len(pos), int(tokens.shape[1]), int(tokens.shape[2])

    def block(self, start: int, stop: int) -> tuple[torch.Tensor, None]:
        return _shifted(self.tokens.index_select(0, self.pos[start:stop]), self.shift), None


def fits_on_device(nbytes: int, device: torch.device | str) -> bool:
    """True when ``nbytes`` take at most :data:`RESIDENT_SHARE` of the device's free memory (never on a CPU)."""
    device = torch.device(device)
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= RESIDENT_SHARE * free



def place_training_tokens(images, rows: np.ndarray, device: torch.device) -> tuple[tuple | None, str]:
    """Copy a fit's training image tokens to the GPU once when they fit there; else they stream per step.

    Returns ((token array, ResidentTokens) or None, what was done, for ``fit_info``).
    """
    rows = np.unique(rows)
    nbytes = len(rows) * images.n_tokens * images.token_dim * 2
    if not fits_on_device(nbytes, device):
        return None, "streamed (memmap, next block prefetched" + (", pinned)" if device.type == "cuda" else ")")
    return (images.tokens, ResidentTokens(images.tokens, rows, device)), f"resident on {device} ({nbytes / 2**30:.2f} GiB fp16)"


__all__ = ["PrefetchTokens", "RESIDENT_SHARE", "ResidentTokens", "fits_on_device", "place_training_tokens"]
