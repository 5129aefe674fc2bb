"""Per-query / per-image outcomes of one evaluation, stored compactly in the result.

Why: a confidence interval over test queries and a paired test between two
methods both need the per-unit outcomes, and refitting a method to get them
back costs minutes.  A task therefore returns, beside its metrics, the small
integer arrays every metric can be recomputed from (retrieval: the rank of
the first correct item per query; classification: prediction and label per
image; segmentation: one confusion matrix per image, stored sparse).

In the result JSON each array is ``{"dtype", "shape", "zlib_b64"}``: the
little-endian bytes of the smallest integer type that holds it, zlib
compressed, base64 encoded.  Decoding is lazy (``Outcomes.from_json`` only
when a statistic needs it), so ``report`` over many results stays fast.
"""
from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from alignbench.errors import DataError

_INT_TYPES = (np.int8, np.int16, np.int32, np.int64)


@dataclass
class Outcomes:
    """Named per-unit integer arrays of one evaluation plus what is needed to read them.

    ``units`` maps each resampling unit (e.g. ``image_query``) to its count;
    ``meta`` holds task-specific scalars (class names, background index).
    """

    task: str
    unit: str  # the resampling unit named in captions: "query" or "image"
    arrays: dict[str, np.ndarray]
    units: dict[str, int]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "unit": self.unit,
            "units": {k: int(v) for k, v in self.units.items()},
            "meta": self.meta,
            "arrays": {k: encode_array(v) for k, v in self.arrays.items()},
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "Outcomes":
        try:
            return cls(
                task=str(obj["task"]),
                unit=str(obj["unit"]),
                arrays={k: decode_array(v) for k, v in obj["arrays"].items()},
                units={k: int(v) for k, v in obj["units"].items()},
                meta=dict(obj.get("meta") or {}),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"malformed outcomes in a result file ({exc!r})") from None


def encode_array(a: np.ndarray) -> dict[str, Any]:
    """An integer array as ``{"dtype", "shape", "zlib_b64"}`` in the smallest type that holds it."""
    a = np.asarray(a)
    if a.dtype.kind not in "iub":
        raise DataError(f"outcomes are integer arrays, got {a.dtype}")
    a = a.astype(np.int64)
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    small = next(t for t in _INT_TYPES if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max)
    dt = np.dtype(small).newbyteorder("<")
    raw = np.ascontiguousarray(a.astype(dt)).tobytes()
    return {"dtype": dt.str, "shape": list(a.shape), "zlib_b64": base64.b64encode(zlib.compress(raw, 6)).decode("ascii")}


def decode_array(obj: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`encode_array` (returns int64); DataError if the bytes do not match the shape."""
    try:
        dt = np.dtype(obj["dtype"])
        shape = tuple(int(s) for s in obj["shape"])
        raw = zlib.decompress(base64.b64decode(obj["zlib_b64"]))
    except (KeyError, TypeError, ValueError, zlib.error) as exc:
        raise DataError(f"cannot decode a stored outcome array ({exc})") from None
    if dt.kind not in "iu" or len(raw) != dt.itemsize * int(np.prod(shape, dtype=np.int64)):
        raise DataError(f"stored outcome array does not match its dtype {dt} and shape {shape}")
    return np.frombuffer(raw, dtype=dt).reshape(shape).astype(np.int64)


class SparseRows:
    """Per-unit count matrices collected one unit at a time, kept as their non-zero entries only.

    ADE20K's 150 classes make a 150 × 150 confusion matrix per image; 2,000 of
    them dense would be 360 MB, their non-zero entries are a few MB.
    """

    def __init__(self) -> None:
        self._rows: list[np.ndarray] = []
        self._cells: list[np.ndarray] = []
        self._counts: list[np.ndarray] = []
        self.n = 0

    def add(self, dense: np.ndarray) -> None:
        flat = np.asarray(dense).ravel()
        cell = np.flatnonzero(flat)
        self._rows.append(np.full(len(cell), self.n, dtype=np.int64))
        self._cells.append(cell)
        self._counts.append(flat[cell])
        self.n += 1

    def arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        """``row``, flat ``cell`` and ``count`` of the non-zero entries (names prefixed)."""
        cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)  # noqa: E731
        return {f"{prefix}row": cat(self._rows), f"{prefix}cell": cat(self._cells), f"{prefix}count": cat(self._counts)}


def dense_rows(row: np.ndarray, cell: np.ndarray, count: np.ndarray, n_rows: int, n_cells: int) -> Any:
    """A scipy CSR matrix (n_rows × n_cells) from :class:`SparseRows` arrays (sparse: ADE20K has 150² cells)."""
    from scipy import sparse

    return sparse.csr_matrix((count.astype(np.float64), (row, cell)), shape=(n_rows, n_cells))
