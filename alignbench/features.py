"""Feature containers shared by the feature store, methods and tasks.

Why views: token features are large (Flickr8k × DINOv2 ≈ 1.2 GB in fp16), so
they stay memory-mapped on disk and a container holds the arrays plus a row
index.  ``subset`` is free; tensors are materialised per batch, in float32
unless asked otherwise.  Text tokens are ragged (flat array + offsets) and are
padded only per batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from alignbench.errors import FeatureError
from alignbench.mapped_rows import release, take_rows


def _rows(n: int, rows: np.ndarray | None) -> np.ndarray:
    return np.arange(n) if rows is None else rows


def _check_finite(name: str, arr: np.ndarray) -> None:
    if arr.size and not np.isfinite(np.asarray(arr, dtype=np.float32)).all():
        bad = int((~np.isfinite(np.asarray(arr, dtype=np.float32))).sum())
        raise FeatureError(f"{name} contain {bad} non-finite values (NaN or inf); re-encode or clean them")


class _RowView:
    """What image and text features share: a view of selected ``rows`` of a ``pooled`` array."""

    pooled: np.ndarray
    rows: np.ndarray | None

    def __len__(self) -> int:
        return len(self.pooled) if self.rows is None else len(self.rows)

    @property
    def dim(self) -> int:
        return int(self.pooled.shape[1])

    def subset(self, idx: Sequence[int] | np.ndarray):
        """A view of rows ``idx`` of this view (no copy)."""
        idx = np.asarray(idx, dtype=np.int64)
        return replace(self, rows=_rows(len(self.pooled), self.rows)[idx])

    def global_array(self) -> np.ndarray:
        """(len, d) float32 global features of the selected rows."""
        a = self.pooled if self.rows is None else self.pooled[self.rows]
        return np.asarray(a, dtype=np.float32)

    def global_tensor(self, dtype=None):
        import torch

        a = self.global_array()
        if not a.flags.writeable:  # a read-only memmap: copy rather than alias read-only memory
            a = np.array(a)
        return torch.from_numpy(np.ascontiguousarray(a)).to(dtype or torch.float32)


@dataclass
class ImageFeatures(_RowView):
    """Per-image features: a global vector and, optionally, tokens.

    ``pooled``: (N, d) global feature (CLS / pooled).  ``tokens``: (N, T, d_tok)
    prefix tokens (CLS) followed by ``grid[0]*grid[1]`` patch tokens in
    row-major order.  ``final_norm``: (weight, bias, eps) of the encoder's final
    LayerNorm when tokens were stored before it (ViTs), so global methods can
    map patch tokens into the space of ``pooled`` for segmentation.
    """

    pooled: np.ndarray
    tokens: np.ndarray | None = None
    grid: tuple[int, int] | None = None
    n_prefix: int = 0
    final_norm: tuple[np.ndarray, np.ndarray, float] | None = None
    rows: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    @property
    def token_dim(self) -> int:
        if self.tokens is None:
            raise FeatureError("these image features have no tokens (encode with tokens=True)")
        return int(self.tokens.shape[2])

    @property
    def n_tokens(self) -> int:
        return 0 if self.tokens is None else int(self.tokens.shape[1])

    def token_array(self, idx: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """(B, T, d) tokens of the selected rows (``idx`` indexes the view)."""
        if self.tokens is None:
            raise FeatureError("these image features have no tokens (encode with tokens=True)")
        rows = _rows(len(self.pooled), self.rows)
        if idx is not None:
            rows = rows[np.asarray(idx, dtype=np.int64)]
        order = np.argsort(rows, kind="stable")  # sorted reads are much faster on a memmap
        out = np.empty((len(rows), *self.tokens.shape[1:]), dtype=self.tokens.dtype)
        out[order] = take_rows(self.tokens, rows[order])
        return out

    def token_tensor(self, idx=None, dtype=None):
        """(B, T, d) float tensor of tokens; no padding mask needed (fixed T)."""
        import torch

        return torch.from_numpy(self.token_array(idx)).to(dtype or torch.float32)

    def patch_tensor(self, idx=None, *, normed: bool = False, dtype=None):
        """(B, P, d) patch tokens without prefix; ``normed`` applies the final norm."""
        import torch

        t = self.token_tensor(idx, dtype=torch.float32)[:, self.n_prefix :]
        if normed and self.final_norm is not None:
            w, b, eps = self.final_norm
            t = torch.nn.functional.layer_norm(t, (t.shape[-1],), torch.as_tensor(w), torch.as_tensor(b), eps)
        return t.to(dtype or torch.float32)

    def validate(self, name: str = "image features") -> "ImageFeatures":
        _check_finite(name, self.global_array())
        return self


@dataclass
class TextFeatures(_RowView):
    """Per-text features: a pooled vector and, optionally, ragged tokens.

    ``tokens`` is (sum_i L_i, d) with ``offsets`` (N+1,) so text i has tokens
    ``tokens[offsets[i]:offsets[i+1]]`` (special tokens kept, no padding).
    """

    pooled: np.ndarray
    tokens: np.ndarray | None = None
    offsets: np.ndarray | None = None
    rows: np.ndarray | None = None
    texts: list[str] | None = None
    meta: dict = field(default_factory=dict)

    @property
    def token_dim(self) -> int:
        if self.tokens is None:
            raise FeatureError("these text features have no tokens (encode with tokens=True)")
        return int(self.tokens.shape[1])

    def lengths(self) -> np.ndarray:
        if self.offsets is None:
            raise FeatureError("these text features have no tokens (encode with tokens=True)")
        rows = _rows(len(self.pooled), self.rows)
        return (self.offsets[rows + 1] - self.offsets[rows]).astype(np.int64)

    def token_batch(self, idx=None, *, pad_to: int | None = None, dtype=None):
        """Padded (B, L, d) float tensor and (B, L) bool mask (True = real token)."""
        import torch

        if self.tokens is None or self.offsets is None:
            raise FeatureError("these text features have no tokens (encode with tokens=True)")
        rows = _rows(len(self.pooled), self.rows)
        if idx is not None:
            rows = rows[np.asarray(idx, dtype=np.int64)]
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        lens = ends - starts
        L = int(max(lens.max(initial=1), pad_to or 0))
        out = np.zeros((len(rows), L, self.tokens.shape[1]), dtype=self.tokens.dtype)
        mask = np.zeros((len(rows), L), dtype=bool)
        for i, (s, e) in enumerate(zip(starts, ends)):
            out[i, : e - s] = self.tokens[s:e]
            mask[i, : e - s] = True
        if len(rows):
            release(self.tokens, int(starts.min()), int(ends.max()))  # a memmap's pages read: unmapped
        return torch.from_numpy(out).to(dtype or torch.float32), torch.from_numpy(mask)

    def validate(self, name: str = "text features") -> "TextFeatures":
        _check_finite(name, self.global_array())
        return self


@dataclass
class Pairs:
    """Image–text pairs for fitting: pair i = (images[image_index[i]], texts[text_index[i]]).

    Images are stored once (Flickr8k has 5 captions per image); pairs index into
    them, so a 10k budget does not duplicate image tokens.
    """

    images: ImageFeatures
    texts: TextFeatures
    image_index: np.ndarray
    text_index: np.ndarray

    def __post_init__(self) -> None:
        self.image_index = np.asarray(self.image_index, dtype=np.int64)
        self.text_index = np.asarray(self.text_index, dtype=np.int64)
        if len(self.image_index) != len(self.text_index):
            raise FeatureError(
                f"pairs need as many image as text indices ({len(self.image_index)} vs {len(self.text_index)})"
            )

    def __len__(self) -> int:
        return len(self.image_index)

    def image(self) -> ImageFeatures:
        """Image features row-aligned with the pairs (a view, no copy)."""
        return self.images.subset(self.image_index)

    def text(self) -> TextFeatures:
        return self.texts.subset(self.text_index)

    def subset(self, idx) -> "Pairs":
        idx = np.asarray(idx, dtype=np.int64)
        return Pairs(self.images, self.texts, self.image_index[idx], self.text_index[idx])

    def validate(self) -> "Pairs":
        if len(self) == 0:
            raise FeatureError("no pairs to fit on (budget 0?)")
        self.image().validate("image features")
        self.text().validate("text features")
        return self
