"""Synthetic paired features that are truly alignable, for fast method tests.

Why: method tests need image/text features whose pairing is recoverable (so a
working method beats chance retrieval by a wide margin) without running an
encoder.  Both modalities are noisy linear views of one shared latent ``z``:

* image global feature  = A z + offset_v + noise       (d_v)
* image tokens          = [CLS = the global feature, patch_p = A_p z + offset_v + noise]
                          with A_p = A + a small position-specific perturbation,
                          on a ``grid`` of patches (row-major, one prefix token)
* text tokens (ragged)  = B z + offset_t + position term + noise, 3..max_T_t tokens
* text global feature   = mean of its tokens (as sentence encoders mean-pool)

The offsets make features non-centred (as real encoder features are) and the
noise lives in every dimension, so a method has to find the shared subspace.
Import in tests as ``from synthetic import make_pairs, split_pairs`` (pytest
puts ``tests/`` on ``sys.path``); elsewhere add ``tests/`` to the path.
"""
from __future__ import annotations

import numpy as np

from alignbench.features import ImageFeatures, Pairs, TextFeatures


def make_pairs(
    n: int,
    d_v: int = 48,
    d_t: int = 32,
    T_v: int = 9,
    max_T_t: int = 7,
    seed: int = 0,
    n_shared: int = 8,
    grid: tuple[int, int] = (2, 4),
    *,
    captions_per_image: int = 1,
    noise: float = 0.6,
    min_T_t: int = 3,
    dtype: type = np.float32,
) -> Pairs:
    """``n`` image–text pairs sharing an ``n_shared``-dim latent.

    ``T_v`` must equal ``1 + grid[0] * grid[1]`` (one CLS prefix token).
    With ``captions_per_image = c`` there are ``ceil(n / c)`` images, each with
    up to ``c`` captions (Flickr-like); pair ``i`` is (image ``i // c``,
    text ``i``).  The latent of each image is in ``images.meta["latent"]``.
    """
    if T_v != 1 + grid[0] * grid[1]:
        raise ValueError(f"T_v={T_v} must be 1 + grid[0]*grid[1] = {1 + grid[0] * grid[1]}")
    if not 1 <= min_T_t <= max_T_t:
        raise ValueError(f"need 1 <= min_T_t ({min_T_t}) <= max_T_t ({max_T_t})")
    rng = np.random.default_rng(seed)
    n_img = -(-n // captions_per_image)
    # Fixed "encoders" (the maps) from a seed-independent generator would tie all
    # seeds to one geometry; deriving them from ``seed`` keeps datasets distinct.
    A = rng.standard_normal((n_shared, d_v)) / np.sqrt(n_shared)
    B = rng.standard_normal((n_shared, d_t)) / np.sqrt(n_shared)
    A_pos = A[None] + 0.2 * rng.standard_normal((grid[0] * grid[1], n_shared, d_v)) / np.sqrt(n_shared)
    off_v = 0.5 * rng.standard_normal(d_v)
    off_t = 0.5 * rng.standard_normal(d_t)
    pos_t = 0.2 * rng.standard_normal((max_T_t, d_t))

    z = rng.standard_normal((n_img, n_shared))
    pooled_v = z @ A + off_v + noise * rng.standard_normal((n_img, d_v))
    patches = np.einsum("nk,pkd->npd", z, A_pos) + off_v + noise * rng.standard_normal((n_img, T_v - 1, d_v))
    tokens_v = np.concatenate([pooled_v[:, None], patches], axis=1)

    # Each caption sees its image's latent plus a little caption-specific jitter.
    z_txt = z[np.arange(n) // captions_per_image] + 0.1 * rng.standard_normal((n, n_shared))
    lengths = rng.integers(min_T_t, max_T_t + 1, size=n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tok_t = np.empty((int(offsets[-1]), d_t))
    for i in range(n):
        L = lengths[i]
        tok_t[offsets[i] : offsets[i + 1]] = (
            z_txt[i] @ B + off_t + pos_t[:L] + noise * rng.standard_normal((L, d_t))
        )
    pooled_t = np.stack([tok_t[offsets[i] : offsets[i + 1]].mean(0) for i in range(n)]) if n else np.zeros((0, d_t))

    images = ImageFeatures(
        pooled=pooled_v.astype(dtype),
        tokens=tokens_v.astype(dtype),
        grid=tuple(grid),
        n_prefix=1,
        meta={"latent": z, "synthetic": True},
    )
    texts = TextFeatures(
        pooled=pooled_t.astype(dtype),
        tokens=tok_t.astype(dtype),
        offsets=offsets,
        texts=[f"synthetic caption {i}" for i in range(n)],
        meta={"synthetic": True},
    )
    return Pairs(images, texts, np.arange(n) // captions_per_image, np.arange(n))


def split_pairs(pairs: Pairs, n_train: int, n_val: int, n_test: int, *, seed: int = 0) -> tuple[Pairs, Pairs, Pairs]:
    """Disjoint train / val / test pair sets, split by IMAGE (no image in two splits).

    Sizes are in pairs and rounded to whole images; raises ValueError if the
    pairs are too few.
    """
    n_img = int(pairs.image_index.max()) + 1 if len(pairs) else 0
    cpi = max(1, len(pairs) // max(n_img, 1))
    want = [-(-k // cpi) for k in (n_train, n_val, n_test)]
    if sum(want) > n_img:
        raise ValueError(f"need {sum(want)} images for the split, have {n_img}")
    order = np.random.default_rng(seed).permutation(n_img)
    out = []
    start = 0
    for k, n_pairs in zip(want, (n_train, n_val, n_test)):
        imgs = order[start : start + k]
        start += k
        idx = np.flatnonzero(np.isin(pairs.image_index, imgs))[:n_pairs]
        out.append(pairs.subset(idx))
    return tuple(out)  # type: ignore[return-value]


def chance_recall_at_1(n_gallery: int) -> float:
    """Expected R@1 of a random ranking over a gallery of ``n_gallery`` items."""
    return 1.0 / n_gallery


def recall_at_1(sim: "np.ndarray") -> float:
    """Fraction of rows whose top-scoring column is the diagonal one (1:1 pairs)."""
    sim = np.asarray(sim)
    return float((sim.argmax(1) == np.arange(len(sim))).mean())
