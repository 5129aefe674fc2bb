"""A fit's tokens L2-normalised once, in the matmul dtype: the CPU fast path of PAL's CAP.

Why: CAP needs ``norm(Z)`` of every image and caption of a batch in the
forward and again in the backward of every step.  Computed from the fp16
memmap each time, the casts (fp16 → fp32 → bf16), the norm and the divide
cost more than the bf16 token–anchor matmuls themselves (profile in
README's benchmarks).  The tokens do not change during a fit, so they are
normalised once per fit and kept contiguous; a step gathers its rows (a
zero-copy view when they are consecutive).  The numbers are those of the
per-step path: the same normalising function on the same fp32 values.

Captions are also sorted by length inside a batch and cut into blocks padded
to their own longest, instead of every caption padded to the batch's longest
(2.5× fewer text similarities on Flickr8k's captions; padded tokens never
counted anyway).

Kept only when it fits: at most :data:`PREPARED_SHARE` of the available
memory; otherwise CAP streams and normalises per step as before.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from alignbench.cap_kernels import _prep
from alignbench.features import Pairs
from alignbench.mapped_rows import take_rows
from alignbench.token_rows import absolute_rows, ragged_token_rows

log = logging.getLogger(__name__)

#: The prepared tokens of a fit take at most this share of the memory available when the fit starts.
PREPARED_SHARE = 0.25


def available_bytes() -> int:
    """Memory the OS can still give this process (psutil's ``available``)."""
    import psutil

    return int(psutil.virtual_memory().available)


def _normalise(z: np.ndarray, dtype: torch.dtype, shift: torch.Tensor | None) -> torch.Tensor:
    """Raw tokens (any float dtype) → what CAP's per-step path multiplies: norm(z − shift) in ``dtype``."""
    t = torch.from_numpy(np.ascontiguousarray(z))
    return _prep(t if shift is None else t.float() - shift, dtype)


def _positions(held: np.ndarray, rows: np.ndarray) -> np.ndarray | None:
    """Positions of ``rows`` in the sorted ``held``, or None if any is not held."""
    rows = np.asarray(rows, dtype=np.int64)
    pos = np.searchsorted(held, rows)
    if not len(rows) or np.any(pos >= len(held)) or np.any(held[np.minimum(pos, len(held) - 1)] != rows):
        return None
    return pos


class PreparedImages:
    """Normalised tokens (n, T, d) of the sorted absolute ``rows`` of an (N, T, d) token array."""

    def __init__(self, array: np.ndarray, rows: np.ndarray, dtype: torch.dtype, shift: torch.Tensor | None = None,
                 chunk: int = 256):
        self.array, self.rows = array, np.asarray(rows, dtype=np.int64)
        T, d = int(array.shape[1]), int(array.shape[2])
        self.tokens = torch.empty((len(self.rows), T, d), dtype=dtype)
        for s in range(0, len(self.rows), chunk):
            self.tokens[s : s + chunk] = _normalise(take_rows(array, self.rows[s : s + chunk]), dtype, shift)

    @staticmethod
    def nbytes_for(array: np.ndarray, n_rows: int, dtype: torch.dtype) -> int:
        return n_rows * int(array.shape[1]) * int(array.shape[2]) * torch.finfo(dtype).bits // 8

    def source(self, array: np.ndarray, rows: np.ndarray) -> "PreparedRows | None":
        """A TokenSource over ``rows`` (absolute, sorted) of ``array``; None if this does not hold them."""
        pos = _positions(self.rows, rows) if array is self.array else None
        return None if pos is None else PreparedRows(self.tokens, pos)


class PreparedRows:
    """Some rows of prepared image tokens (CAP's TokenSource; already normalised)."""

    normalized = True

    def __init__(self, tokens: torch.Tensor, pos: np.ndarray):
        self.tokens, self.pos = tokens, pos
        self.n, self.T, self.d = len(pos), int(tokens.shape[1]), int(tokens.shape[2])

    def block(self, start: int, stop: int) -> tuple[torch.Tensor, None]:
        p = self.pos[start:stop]
        if int(p[-1]) - int(p[0]) == len(p) - 1:  # sorted and consecutive: a view, no copy
            return self.tokens[int(p[0]) : int(p[-1]) + 1], None
        return self.tokens.index_select(0, torch.from_numpy(p)), None


class PreparedTexts:
    """Normalised tokens of the sorted absolute captions ``texts`` of a ragged (Σ L, d) token array.

    Stored flat, caption after caption, with one zero row at the end that padding points to.
    """

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, texts: np.ndarray, dtype: torch.dtype,
                 shift: torch.Tensor | None = None, chunk_rows: int = 1 << 16):
        self.array, self.texts = tokens, np.asarray(texts, dtype=np.int64)
        self.lens = offsets[self.texts + 1] - offsets[self.texts]
        self.starts = np.cumsum(self.lens) - self.lens  # where each caption starts in self.flat
        total = int(self.lens.sum())
        src_rows = ragged_token_rows(offsets, self.texts)
        self.flat = torch.zeros((total + 1, int(tokens.shape[1])), dtype=dtype)
        for s in range(0, total, chunk_rows):
            e = min(total, s + chunk_rows)
            self.flat[s:e] = _normalise(take_rows(tokens, src_rows[s:e]), dtype, shift)

    @staticmethod
    def nbytes_for(tokens: np.ndarray, offsets: np.ndarray, texts: np.ndarray, dtype: torch.dtype) -> int:
        n_tok = int((offsets[texts + 1] - offsets[texts]).sum()) + 1
        return n_tok * int(tokens.shape[1]) * torch.finfo(dtype).bits // 8

    def source(self, array: np.ndarray, texts: np.ndarray) -> "tuple[RaggedRows, np.ndarray] | None":
        """(TokenSource over ``texts`` sorted by length, that order), or None if these are not held.

        ``texts`` are absolute caption rows in any order; the source's row i is ``texts[order[i]]``.
        """
        pos = _positions(self.texts, texts) if array is self.array else None
        if pos is None:
            return None
        lens = self.lens[pos]
        order = np.argsort(lens, kind="stable")
        return RaggedRows(self.flat, self.starts[pos[order]], lens[order]), order


class RaggedRows:
    """Captions sorted by length; each CAP block is padded to its own longest (CAP's TokenSource)."""

    normalized = True

    def __init__(self, flat: torch.Tensor, starts: np.ndarray, lens: np.ndarray):
        self.flat, self.starts, self.lens = flat, np.asarray(starts, dtype=np.int64), np.asarray(lens, dtype=np.int64)
        self.n, self.d = len(self.lens), int(flat.shape[1])
        self.T = int(self.lens.max(initial=1))

    def blocks(self, K: int, chunk_elems: int) -> list[tuple[int, int, int]]:
        """(start, stop, longest) per block: about ``chunk_elems`` similarities each (lengths ascend)."""
        out, s = [], 0
        while s < self.n:
            first = max(1, chunk_elems // (K * int(self.lens[s])))
            m = max(1, chunk_elems // (K * int(self.lens[min(self.n, s + first) - 1])))
            e = min(self.n, s + m)
            out.append((s, e, int(self.lens[s:e].max())))
            s = e
        return out

    def block(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        lens = self.lens[start:stop]
        L = int(lens.max())
        t = np.arange(L)
        valid = t[None, :] < lens[:, None]
        idx = np.where(valid, self.starts[start:stop, None] + t[None, :], len(self.flat) - 1)
        z = self.flat.index_select(0, torch.from_numpy(idx.reshape(-1))).view(len(lens), L, self.d)
        return z, None if valid.all() else torch.from_numpy(valid)


def prepare_pairs(splits: dict[str, Pairs | None], dtype: torch.dtype, dtype_name: str,
                  shift_v: torch.Tensor | None, shift_t: torch.Tensor | None) -> tuple[list, str]:
    """Prepared images and captions of each split's pairs, in order, while they take at most
    :data:`PREPARED_SHARE` of the available memory; and a line saying what was prepared (for fit_info)."""
    room = PREPARED_SHARE * available_bytes()
    out: list = []
    done, used = [], 0
    for split, pairs in splits.items():
        if pairs is None:
            continue
        img = np.unique(absolute_rows(pairs.images, pairs.image_index))
        txt = np.unique(absolute_rows(pairs.texts, pairs.text_index))
        for side, size, build in (
            ("images", PreparedImages.nbytes_for(pairs.images.tokens, len(img), dtype),
             lambda: PreparedImages(pairs.images.tokens, img, dtype, shift_v)),
            ("texts", PreparedTexts.nbytes_for(pairs.texts.tokens, pairs.texts.offsets, txt, dtype),
             lambda: PreparedTexts(pairs.texts.tokens, pairs.texts.offsets, txt, dtype, shift_t)),
        ):
            if used + size > room:
                log.info("%s %s tokens not prepared (%.2f GiB over the memory share): normalised per step",
                         split, side, size / 2**30)
                continue
            out.append(build())
            used += size
            done.append(f"{split} {side}")
    what = (f"{', '.join(done)} normalised once ({dtype_name}, {used / 2**30:.2f} GiB)" if done
            else "none (over the memory share): normalised per step")
    return out, what


__all__ = ["prepare_pairs", "PREPARED_SHARE", "PreparedImages", "PreparedRows", "PreparedTexts", "RaggedRows", "available_bytes"]
