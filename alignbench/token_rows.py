"""Row bookkeeping for token features: absolute rows of a view, ragged text-token rows, one checking pass.

Why a module: feature views (:mod:`alignbench.features`) select rows of large
memory-mapped arrays without copying, so a token method that reads tokens
directly (PAL's CAP, its centring means) needs the absolute rows of a view and,
for ragged text tokens, the rows of each caption's tokens in the flat array.
"""
from __future__ import annotations

import numpy as np
import torch

from alignbench.errors import FeatureError
from alignbench.features import ImageFeatures, TextFeatures


def absolute_rows(f: ImageFeatures | TextFeatures, idx: np.ndarray | None = None) -> np.ndarray:
    """Absolute rows of the underlying arrays for the view ``f`` (optionally rows ``idx`` of it)."""
    rows = np.arange(len(f.pooled)) if f.rows is None else np.asarray(f.rows)
    return rows if idx is None else rows[idx]


def ragged_token_rows(offsets: np.ndarray, texts: np.ndarray) -> np.ndarray:
    """Rows of the ragged (Σ L, d) token array that belong to texts ``texts`` (absolute indices)."""
    starts, lens = offsets[texts], offsets[texts + 1] - offsets[texts]
    return np.repeat(starts - (np.cumsum(lens) - lens), lens) + np.arange(int(lens.sum()))


def scan_tokens(arr: np.ndarray, rows: np.ndarray, what: str, *, want_mean: bool,
                chunk_bytes: int = 1 << 26) -> torch.Tensor | None:
    """One streaming pass over ``arr[rows]``: FeatureError on NaN/inf; the mean token if ``want_mean``.

    ``rows`` index the first axis: images (N, T, d) or the ragged text tokens (Σ L, d).
    """
    chunk = max(1, chunk_bytes // max(1, arr[:1].nbytes))
    total = torch.zeros(arr.shape[-1], dtype=torch.float64) if want_mean else None
    # A sum is finite iff every term is (NaN and inf propagate; fp16/bf16/fp32 terms cannot overflow the wider
    # accumulator), and a reduction runs several times faster than isfinite over every element on the CPU.
    acc = torch.float64 if arr.dtype.itemsize >= 4 else torch.float32
    for s in range(0, len(rows), chunk):
        block = torch.from_numpy(arr[rows[s : s + chunk]])  # fancy indexing copies: writable, contiguous
        sums = block.double().reshape(-1, block.shape[-1]).sum(0) if total is not None else block.sum(dtype=acc)
        if not torch.isfinite(sums).all():
            raise FeatureError(f"{what} contain non-finite values (NaN or inf); re-encode or clean them")
        if total is not None:
            total += sums
    if total is None:
        return None
    n_tokens = len(rows) * (arr.shape[1] if arr.ndim == 3 else 1)
    return (total / max(n_tokens, 1)).float()


def mean_unit_tokens(tokens: np.ndarray, rows: np.ndarray, shift: torch.Tensor | None, step: int) -> torch.Tensor:
    """(len(rows), d) mean of the L2-normalised (optionally shifted) tokens of each image, ``step`` images at a time."""
    out = torch.empty(len(rows), tokens.shape[-1])
    for s in range(0, len(rows), step):
        z = torch.from_numpy(np.ascontiguousarray(tokens[rows[s : s + step]])).float()
        if shift is not None:
            z = z - shift
        out[s : s + step] = torch.nn.functional.normalize(z, dim=-1).mean(1)
    return out


def training_token_means(train, pool: str, center: str, device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Check a fit's training tokens are finite and, for PAL's ``center``, take their means, one pass each.

    Image mean: over every token of the distinct training images; text mean: over the real tokens of
    the training captions.  ``pool="cls"`` reads no tokens, so nothing is scanned.
    """
    if pool == "cls":
        return None, None
    img_rows = np.unique(absolute_rows(train.images, train.image_index))
    mu_v = scan_tokens(train.images.tokens, img_rows, "image tokens", want_mean=center in ("image", "both"))
    txt_rows = ragged_token_rows(train.texts.offsets, np.unique(absolute_rows(train.texts, train.text_index)))
    mu_t = scan_tokens(train.texts.tokens, txt_rows, "text tokens", want_mean=center in ("text", "both"))
    return (None if mu_v is None else mu_v.to(device)), (None if mu_t is None else mu_t.to(device))
