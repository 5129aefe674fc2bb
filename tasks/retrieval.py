"""Image↔text retrieval with Recall@K, the protocol METHODS.md fixes.

Two details that published numbers often get wrong, done right here:

* an image query is a hit if ANY of its captions is in the top K;
* the text→image gallery holds each image ONCE (a gallery with one copy per
  caption deflates R@5/10).

Ties are counted against the query (a negative scoring equal to the positive
ranks above it), so a collapsed method that scores everything alike gets
chance-level recall, not 100 %.  Similarities are computed in chunks: memory
stays at chunk × gallery whatever the split size.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from alignbench.errors import DataError
from alignbench.outcomes import Outcomes
from alignbench.tasks.base import FeatureNeed, Task, check_finite, embed_in_batches, register_task

KS = (1, 5, 10)


def retrieval_ranks(
    image_emb: Any,
    text_emb: Any,
    caption_image: np.ndarray,
    similarity: Callable[[Any, Any], Any],
    *,
    chunk: int = 1024,
    max_matrix: int = 1 << 26,
) -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks of the best positive: (per image with ≥1 caption, per caption).

    ``caption_image[j]`` is the index (into ``image_emb``) of caption j's image.
    ``similarity(images, texts)`` returns an (n_images, n_texts) score matrix;
    it is always called with images first, so asymmetric scores stay correct.
    The score matrix is computed once, in image chunks, and kept for the
    text→image pass when it has at most ``max_matrix`` entries (256 MB);
    larger galleries recompute it in caption chunks instead.
    """
    import torch

    ci = torch.as_tensor(np.asarray(caption_image, dtype=np.int64))
    n_img, n_txt = len(image_emb), len(text_emb)
    if len(ci) != n_txt:
        raise DataError(f"{n_txt} captions but {len(ci)} caption→image indices")
    if n_txt and (int(ci.min()) < 0 or int(ci.max()) >= n_img):
        raise DataError(f"caption→image index out of range for {n_img} images")
    keep = n_img * n_txt <= max_matrix

    i2t, kept = [], []
    for start in range(0, n_img, chunk):
        sim = _scores(similarity, image_emb[start : start + chunk], text_emb)
        i2t.append(_image_to_text_ranks(sim, start, ci))
        if keep:
            kept.append(sim)
    i2t_ranks = torch.cat(i2t).numpy() if i2t else np.zeros(0, dtype=np.int64)

    if keep and kept:
        t2i_ranks = _text_to_image_ranks(torch.cat(kept), ci).numpy()
    else:
        t2i = []
        for start in range(0, n_txt, chunk * 4):
            cols = slice(start, start + chunk * 4)
            t2i.append(_text_to_image_ranks(_scores(similarity, image_emb, text_emb[cols]), ci[cols]))
        t2i_ranks = torch.cat(t2i).numpy() if t2i else np.zeros(0, dtype=np.int64)
    return i2t_ranks[i2t_ranks >= 0], t2i_ranks


def _scores(similarity, images, texts):
    import torch

    sim = similarity(images, texts).float()
    if not bool(torch.isfinite(sim.sum(dtype=torch.float64))):  # one reduction instead of an elementwise check
        check_finite(sim, "similarities")
    return sim


def _image_to_text_ranks(sim, start: int, ci):
    """Per image row of ``sim`` (rows start at image ``start``): captions of OTHER images scoring ≥ its best own caption.

    -1 for images without captions.  O(B × n_txt): the best own caption comes
    from a scatter over the captions, not from a B × n_txt mask.
    """
    import torch

    B = sim.shape[0]
    local = ci - start
    j = torch.nonzero((local >= 0) & (local < B)).squeeze(1)
    li = local[j]
    vals = sim[li, j]
    best = torch.full((B,), -torch.inf).scatter_reduce(0, li, vals, "amax")
    own_at_best = torch.zeros(B, dtype=torch.long).scatter_add(0, li, (vals >= best[li]).long())
    rank = (sim >= best[:, None]).sum(1) - own_at_best
    has = torch.zeros(B, dtype=torch.bool)
    has[li] = True
    return torch.where(has, rank, torch.full_like(rank, -1))


def _text_to_image_ranks(sim, ci_cols):
    """Per caption column of ``sim`` (all images × these captions): other images scoring ≥ its own image."""
    pos = sim.gather(0, ci_cols[None, :])
    return (sim >= pos).sum(0) - 1


def recall_at(ranks: np.ndarray, ks: tuple[int, ...] = KS) -> dict[int, float]:
    """Recall@K in percent from 0-based ranks."""
    if len(ranks) == 0:
        raise DataError("no retrieval queries (empty split?)")
    return {k: 100.0 * float((ranks < k).mean()) for k in ks}


def retrieval_metrics(image_emb, text_emb, caption_image, similarity, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """``i2t_R@K`` and ``t2i_R@K`` for every K in ``ks``."""
    return metrics_from_ranks(*retrieval_ranks(image_emb, text_emb, caption_image, similarity), ks)


def metrics_from_ranks(i2t: np.ndarray, t2i: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """``i2t_R@K`` and ``t2i_R@K`` from the 0-based ranks of the first correct item per query."""
    out = {f"i2t_R@{k}": v for k, v in recall_at(i2t, ks).items()}
    out.update({f"t2i_R@{k}": v for k, v in recall_at(t2i, ks).items()})
    return out


@register_task("retrieval", aliases=("image-text-retrieval",))
class RetrievalTask(Task):
    """Image→text and text→image Recall@1/5/10 (any-caption hits, unique-image gallery)."""

    kind = "captions"
    headline = ("i2t_R@1", "t2i_R@1")
    metric_labels = {f"{d}_R@{k}": f"{lab} R@{k}" for d, lab in (("i2t", "I→T"), ("t2i", "T→I")) for k in KS}

    def needs(self, dataset: str, split: str) -> list[FeatureNeed]:
        return [FeatureNeed("pairs", dataset, split)]

    def evaluate_with_outcomes(self, method: Any, source: Any, dataset: Any, split: str) -> tuple[dict[str, float], Outcomes]:
        """Recall@K plus, per image query and per caption query, the rank of its first correct item."""
        import torch

        self.check_dataset(dataset)
        pairs = source.pairs(dataset.registry_name, split)
        # Every caption of the split, mapped to its image (pairs may list captions in any order).
        n_txt = len(pairs.texts)
        caption_image = np.full(n_txt, -1, dtype=np.int64)
        caption_image[pairs.text_index] = pairs.image_index
        if (caption_image < 0).any():
            keep = np.flatnonzero(caption_image >= 0)
            texts, caption_image = pairs.texts.subset(keep), caption_image[keep]
        else:
            texts = pairs.texts
        with torch.no_grad():
            img = embed_in_batches(method.embed_image, pairs.images, self.batch_size)
            txt = embed_in_batches(method.embed_text, texts, self.batch_size)
            i2t, t2i = retrieval_ranks(img, txt, caption_image, method.similarity)
        outcomes = Outcomes(
            task="retrieval", unit="query", arrays={"i2t_rank": i2t, "t2i_rank": t2i},
            units={"image_query": len(i2t), "caption_query": len(t2i)},
        )  # fmt: skip
        return metrics_from_ranks(i2t, t2i), outcomes

    def metrics_from_outcomes(self, outcomes: Outcomes) -> dict[str, float]:
        return metrics_from_ranks(outcomes.arrays["i2t_rank"], outcomes.arrays["t2i_rank"])

    def unit_of(self, metric: str, outcomes: Outcomes) -> str:
        return "image_query" if metric.startswith("i2t") else "caption_query"

    def resampled_metrics(self, outcomes: Outcomes, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for d, name, unit in (("i2t", "i2t_rank", "image_query"), ("t2i", "t2i_rank", "caption_query")):
            ranks, w = outcomes.arrays[name], weights[unit]
            for k in KS:
                # einsum, not BLAS: a threaded gemv on a busy machine is 15x slower for these shapes
                out[f"{d}_R@{k}"] = 100.0 * np.einsum("nb,n->b", w, (ranks < k).astype(w.dtype)) / len(ranks)
        return out
