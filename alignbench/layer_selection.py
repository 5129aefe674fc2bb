"""Which (image layer, text layer) to align: mutual k-NN alignment (STRUCTURE's layer selection).

Why: STRUCTURE shows the last layers are often not the most similar across
modalities; it scores every (image layer, text layer) pair by mutual k-NN
alignment (Huh et al., "platonic representation") on ≤ 5000 random training
pairs, k = ⌈2·n^{1/3}⌉, and aligns the best pair.  Any method can use the
choice (PAL included), so it lives here rather than in one method.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from alignbench.errors import ConfigError, FeatureError

log = logging.getLogger(__name__)


def default_k(n: int) -> int:
    """k = ⌈2·n^{1/3}⌉ (STRUCTURE), at most n − 1."""
    return max(1, min(n - 1, math.ceil(2 * n ** (1 / 3))))


def knn_indices(x: Any, k: int, *, chunk: int = 2048) -> np.ndarray:
    """(n, k) indices of each row's k nearest rows by cosine similarity, self excluded."""
    import torch

    t = torch.as_tensor(np.asarray(x, dtype=np.float32) if not isinstance(x, torch.Tensor) else x).float()
    if t.ndim != 2:
        raise FeatureError(f"k-NN needs a 2-d feature matrix, got shape {tuple(t.shape)}")
    n = len(t)
    if not 1 <= k < n:
        raise ConfigError(f"k must be in [1, n-1] = [1, {n - 1}], got {k}")
    if not torch.isfinite(t).all():
        raise FeatureError("features contain NaN or inf; cannot compute nearest neighbours")
    t = torch.nn.functional.normalize(t, dim=-1)
    out = np.empty((n, k), dtype=np.int64)
    for s in range(0, n, chunk):
        sim = t[s : s + chunk] @ t.T
        rows = torch.arange(s, min(s + chunk, n))
        sim[rows - s, rows] = -math.inf
        out[s : s + chunk] = sim.topk(k, dim=1).indices.numpy()
    return out


def knn_overlap(idx_a: np.ndarray, idx_b: np.ndarray) -> float:
    """Mean over rows of |N_a(i) ∩ N_b(i)| / k for two (n, k) neighbour-index arrays."""
    n, k = idx_a.shape
    a = np.sort(idx_a, axis=1)
    b = np.sort(idx_b, axis=1)
    hits = 0
    for i in range(n):
        hits += len(np.intersect1d(a[i], b[i], assume_unique=True))
    return hits / (n * k)


def mutual_knn(a: Any, b: Any, k: int | None = None) -> float:
    """Mutual k-NN alignment of two row-aligned feature sets (1 = identical neighbourhoods).

    Random, unrelated features score ≈ k / (n − 1).
    """
    n = len(a)
    if len(b) != n:
        raise FeatureError(f"mutual k-NN needs row-aligned features, got {n} vs {len(b)} rows")
    k = default_k(n) if k is None else int(k)
    return knn_overlap(knn_indices(a, k), knn_indices(b, k))


@dataclass
class LayerChoice:
    """The best (image layer, text layer) and the full score matrix (rows: image layers)."""

    image_layer: int
    text_layer: int
    scores: np.ndarray
    image_layers: list[int] = field(default_factory=list)
    text_layers: list[int] = field(default_factory=list)
    k: int = 0
    n: int = 0

    @property
    def score(self) -> float:
        return float(self.scores[self.image_layers.index(self.image_layer), self.text_layers.index(self.text_layer)])

    def as_frame(self):
        """Scores as a pandas DataFrame (index: image layer, columns: text layer)."""
        import pandas as pd

        return pd.DataFrame(self.scores, index=pd.Index(self.image_layers, name="image_layer"),
                            columns=pd.Index(self.text_layers, name="text_layer"))

    def to_dict(self) -> dict[str, Any]:
        return {"image_layer": self.image_layer, "text_layer": self.text_layer, "score": self.score,
                "k": self.k, "n": self.n, "image_layers": self.image_layers, "text_layers": self.text_layers,
                "scores": self.scores.tolist()}


def select_layers(image_layers: dict[int, Any], text_layers: dict[int, Any], *, sample: int = 5000,
                  seed: int = 0, k: int | None = None) -> LayerChoice:
    """Score every (image layer, text layer) pair by mutual k-NN on ≤ ``sample`` random rows.

    ``image_layers[L]`` and ``text_layers[M]`` are row-aligned (n, d) arrays of
    paired global features.  Neighbours are computed once per layer; ties in
    the best score go to the later layers (closest to the usual default).
    """
    if not image_layers or not text_layers:
        raise ConfigError("need at least one image layer and one text layer to choose from")
    sizes = {len(v) for v in (*image_layers.values(), *text_layers.values())}
    if len(sizes) != 1:
        raise FeatureError(f"all layers must hold the same paired rows; got row counts {sorted(sizes)}")
    n_all = sizes.pop()
    if n_all < 3:
        raise FeatureError(f"need at least 3 pairs for mutual k-NN, got {n_all}")
    rows = np.sort(np.random.default_rng(seed).permutation(n_all)[: min(sample, n_all)])
    n = len(rows)
    k = default_k(n) if k is None else int(k)
    il, tl = sorted(image_layers), sorted(text_layers)
    knn_i = {L: knn_indices(np.asarray(image_layers[L])[rows], k) for L in il}
    knn_t = {M: knn_indices(np.asarray(text_layers[M])[rows], k) for M in tl}
    scores = np.array([[knn_overlap(knn_i[L], knn_t[M]) for M in tl] for L in il])
    best = max(((i, j) for i in range(len(il)) for j in range(len(tl))), key=lambda ij: (scores[ij], ij))
    choice = LayerChoice(il[best[0]], tl[best[1]], scores, il, tl, k, n)
    log.info("layer selection: image layer %d, text layer %d (mutual k-NN %.4f, k=%d, n=%d)",
             choice.image_layer, choice.text_layer, choice.score, k, n)
    return choice


def select_layers_for_pair(pair: str, dataset: str = "flickr8k", split: str = "train", *,
                           image_layers: list[int] | None = None, text_layers: list[int] | None = None,
                           sample: int = 5000, seed: int = 0, store: Any = None, data_root: Any = None,
                           dtype: str = "fp32", progress: bool = True) -> LayerChoice:
    """Encode every candidate layer of ``pair`` ("VISION+TEXT") through the feature store and select.

    One random caption per image is used (≤ ``sample`` distinct images), so
    duplicate images of a multi-caption dataset do not inflate image-side
    neighbourhoods.  Only global features are cached (``tokens=False``).
    Encoding every layer of a whole split is the expensive part: pass
    ``image_layers``/``text_layers`` to restrict the search.
    """
    from alignbench.source import split_pair
    from alignbench.store import FeatureStore

    store = store if store is not None else FeatureStore()
    v_name, t_name = split_pair(pair)
    ds = store.dataset(dataset, data_root)
    if image_layers is None:
        image_layers = list(range(store.encoder(v_name, dtype=dtype).num_layers))
    if text_layers is None:
        text_layers = list(range(store.encoder(t_name, dtype=dtype).num_layers))
    cap_img = np.asarray(ds.caption_image_index(split), dtype=np.int64)
    rng = np.random.default_rng(seed)
    with_caption = np.unique(cap_img)
    images = np.sort(rng.permutation(with_caption)[: min(sample, len(with_caption))])
    order = np.argsort(cap_img, kind="stable")  # captions grouped by image
    starts = np.searchsorted(cap_img[order], images, side="left")
    counts = np.searchsorted(cap_img[order], images, side="right") - starts
    caps = order[starts + (rng.random(len(images)) * counts).astype(np.int64)]
    kw = {"dtype": dtype, "data_root": data_root, "progress": progress, "tokens": False}
    img = {L: store.image_features(v_name, ds, split, layer=L, **kw).global_array()[images] for L in image_layers}
    txt = {M: store.text_features(t_name, ds, split, layer=M, **kw).global_array()[caps] for M in text_layers}
    return select_layers(img, txt, sample=len(images), seed=seed)
