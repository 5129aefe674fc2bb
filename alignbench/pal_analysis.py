"""Anchor cross-modal consistency of PAL profiles (PAL paper, Fig. 3–4).

Question answered: do matched image and caption activate the SAME anchors,
and more so than mismatched pairs?  Two measures per pair of profiles:

* top-k hard overlap ``|topk(p_img) ∩ topk(p_txt)| / k``;
* soft Dice ``2 Σ min(a, b) / (Σ a + Σ b)`` on top-k-truncated profiles
  (entries outside each profile's own top-k set to 0; negative cosines
  clamped to 0 so the Dice is a proper overlap of non-negative masses).

Mismatched pairs pair each image with a caption of a DIFFERENT image.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


def _topk_mask(p: torch.Tensor, k: int) -> torch.Tensor:
    idx = p.topk(min(k, p.shape[1]), dim=1).indices
    return torch.zeros_like(p, dtype=torch.bool).scatter_(1, idx, True)


def topk_overlap(a: torch.Tensor, b: torch.Tensor, k: int = 5) -> torch.Tensor:
    """(N,) fraction of shared anchors among each row's top-k of ``a`` and of ``b``."""
    k = min(k, a.shape[1])
    return (_topk_mask(a.float(), k) & _topk_mask(b.float(), k)).sum(1).float() / k


def truncate_topk(p: torch.Tensor, k: int) -> torch.Tensor:
    """Keep each row's top-k entries (clamped at 0), zero the rest."""
    p = p.float()
    return torch.where(_topk_mask(p, k), p.clamp(min=0), torch.zeros_like(p))


def soft_dice(a: torch.Tensor, b: torch.Tensor, k: int = 5) -> torch.Tensor:
    """(N,) soft Dice 2Σmin(a,b)/(Σa+Σb) of the top-k-truncated rows (0 when both are empty)."""
    ta, tb = truncate_topk(a, k), truncate_topk(b, k)
    denom = ta.sum(1) + tb.sum(1)
    num = 2 * torch.minimum(ta, tb).sum(1)
    return torch.where(denom > 0, num / denom.clamp(min=1e-30), torch.zeros_like(denom))


def mismatched_partners(image_ids: np.ndarray, seed: int = 0, tries: int = 20) -> np.ndarray:
    """For each pair i, a pair j whose image differs from i's (−1 when none exists)."""
    image_ids = np.asarray(image_ids)
    n = len(image_ids)
    rng = np.random.default_rng(seed)
    partner = np.full(n, -1, dtype=np.int64)
    todo = np.arange(n)
    for _ in range(tries):
        if not len(todo) or n < 2:
            break
        cand = rng.integers(0, n, size=len(todo))
        ok = image_ids[cand] != image_ids[todo]
        partner[todo[ok]] = cand[ok]
        todo = todo[~ok]
    return partner


def _stats(x: torch.Tensor) -> dict[str, float]:
    x = x.double()
    return {"mean": float(x.mean()) if len(x) else float("nan"),
            "std": float(x.std(unbiased=False)) if len(x) else float("nan")}


def anchor_consistency(
    image_profiles: torch.Tensor,
    text_profiles: torch.Tensor,
    *,
    image_ids: np.ndarray | None = None,
    k: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Matched vs mismatched top-k overlap and soft Dice of row-paired profiles (N, K).

    ``image_ids[i]`` identifies pair i's image (so a caption of the same image
    is never used as a mismatch); default: every pair is its own image.
    """
    n = len(image_profiles)
    if len(text_profiles) != n:
        raise ValueError(f"need as many image as text profiles ({n} vs {len(text_profiles)})")
    ids = np.arange(n) if image_ids is None else np.asarray(image_ids)
    partner = mismatched_partners(ids, seed)
    keep = torch.from_numpy(np.flatnonzero(partner >= 0))
    mis_t = text_profiles[torch.from_numpy(partner[keep.numpy()])]
    mis_i = image_profiles[keep]
    out: dict[str, Any] = {"k": k, "n_pairs": n, "n_mismatched": int(len(keep))}
    for name, fn in (("overlap", topk_overlap), ("dice", soft_dice)):
        matched = fn(image_profiles, text_profiles, k)
        mismatched = fn(mis_i, mis_t, k)
        out[f"{name}_matched"] = _stats(matched)
        out[f"{name}_mismatched"] = _stats(mismatched)
        out[f"{name}_gap"] = out[f"{name}_matched"]["mean"] - out[f"{name}_mismatched"]["mean"]
    return out


def pal_consistency(method: Any, pairs: Any, *, k: int = 5, seed: int = 0) -> dict[str, Any]:
    """Anchor consistency of a fitted PAL (or any profile method) on ``pairs``; adds the parameter count."""
    img = method.embed_image(pairs.image())
    txt = method.embed_text(pairs.text())
    out = anchor_consistency(img, txt, image_ids=pairs.image_index, k=k, seed=seed)
    out["n_params"] = int(method.num_parameters())
    return out
