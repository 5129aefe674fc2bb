"""Procrustes: the closed-form orthogonal map of latent-space translation (Maiorca et al., NeurIPS 2023).

As the latentis library computes it, in float64: standardise each side per
dimension with the training statistics (mean, unbiased std; a constant
dimension keeps std 1), zero-pad the narrower side to d = max(d_v, d_t), and
take R = U Vᵀ from the SVD X̃ᵀỸ = U Σ Vᵀ, the orthogonal R minimising
‖X̃R − Ỹ‖_F.  An image is standardised, padded, rotated, cut back to d_t
columns and de-standardised with the text statistics, so it lands in the raw
text space (``space=raw``, the faithful default) and is scored by cosine with
the raw text feature.  ``space=standardised`` scores in the standardised text
space instead; ``space=auto`` picks the better of the two on the validation
split (text→image mean reciprocal rank).  Nothing is trained.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from alignbench.errors import ConfigError
from alignbench.features import ImageFeatures, Pairs, TextFeatures
from alignbench.methods.base import Method, MethodConfig, check_dim, check_pairs, register_method
from alignbench.search_space import Choice

log = logging.getLogger(__name__)

SPACES = ("raw", "standardised", "auto")
STD_FLOOR = 1e-12  # a per-dimension std below this counts as zero (the dimension keeps std 1)


@dataclass
class ProcrustesConfig(MethodConfig):
    """METHODS.md: standardise, zero-pad, R = UVᵀ; score in the raw text space (``space``)."""

    space: str = "raw"

    def check(self) -> None:
        if self.space not in SPACES:
            raise ConfigError(f"space must be one of {', '.join(SPACES)}, got {self.space!r}")


def standardiser(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, unbiased std) per column in float64; std ≈ 0 (or one row) → 1."""
    a = np.asarray(a, dtype=np.float64)
    mean = a.mean(0)
    std = a.std(0, ddof=1) if len(a) > 1 else np.ones(a.shape[1])
    std = np.where(np.isfinite(std) & (std > STD_FLOOR), std, 1.0)
    return mean, std


def pad_columns(a: np.ndarray, d: int) -> np.ndarray:
    """Zero-pad the columns of ``a`` to ``d``."""
    return np.pad(a, ((0, 0), (0, d - a.shape[1])))


def orthogonal_map(x_std: np.ndarray, y_std: np.ndarray) -> tuple[np.ndarray, int]:
    """(R, rank of C): R = UVᵀ for an SVD UΣVᵀ of the zero-padded X̃ᵀỸ (d × d), taken from the SVD of its unpadded block C = X̃ᵀỸ (d_v × d_t), float64.

    Why not the d×d SVD: padding makes C the only non-zero block, and a full
    d×d float64 SVD at d = 1280 dominated the fit (benchmarks in README) while
    C's is several times cheaper.  From C = U_C Σ V_Cᵀ (full U_C and V_C),
    ``U = blockdiag(U_C, I)``, ``V = blockdiag(V_C, I)`` is an SVD of the padded
    matrix, so R = UVᵀ is METHODS.md's R: orthogonal, a minimiser of
    ‖X̃R − Ỹ‖_F.  Only R[:d_v, :d_t] touches an embedding (padded rows meet
    zeros, padded columns are dropped).  Where C has full rank that block is
    unique (any SVD gives it); otherwise (fewer pairs than dimensions, or a
    constant dimension: MiniLM-L6's features have two) only its action on C's
    row space is, and the rest is the SVD's choice, here U_C's and V_C's.
    """
    from threadpoolctl import threadpool_limits

    c = x_std.T @ y_std
    d_v, d_t = c.shape
    # One BLAS thread: LAPACK's SVD is a chain of small BLAS-2 calls, each a thread barrier, and on a
    # shared CPU every barrier waits for a descheduled helper thread (the same SVD took 14× longer with
    # 2 threads than with 1 at load 20 on the 2 cores; README benchmarks).
    with threadpool_limits(limits=1, user_api="blas"):
        u, s, vt = np.linalg.svd(c, full_matrices=True)
    rank = int((s > s[0] * max(c.shape) * np.finfo(np.float64).eps).sum()) if s[0] > 0 else 0
    d = max(d_v, d_t)
    r = np.zeros((d, d))
    if d_v >= d_t:  # U = U_C, V = blockdiag(V_C, I): R = [U_C[:, :d_t] V_Cᵀ, U_C[:, d_t:]]
        r[:, :d_t] = u[:, :d_t] @ vt
        r[:, d_t:] = u[:, d_t:]
    else:  # U = blockdiag(U_C, I), V = V_C: R = [[U_C V_Cᵀ[:d_v]], [V_Cᵀ[d_v:]]]
        r[:d_v] = u @ vt[:d_v]
        r[d_v:] = vt[d_v:]
    return r, rank


@register_method("procrustes", aliases=("latent-translation",))
class Procrustes(Method):
    """Procrustes: closed-form orthogonal map between standardised features (latent translation), float64."""

    version = 2  # bump when this method's numbers change (alignbench.identity: old results go stale)

    level = "global"
    Config: ClassVar[type[MethodConfig]] = ProcrustesConfig
    search_space: ClassVar[dict[str, Any]] = {"space": Choice(("raw", "standardised"))}

    def __init__(self, config: MethodConfig | None = None, **overrides: Any):
        super().__init__(config, **overrides)
        self.R: np.ndarray | None = None  # (d, d) float64
        self.mean_v = self.std_v = self.mean_t = self.std_t = None
        self.space: str | None = None  # resolved scoring space ("raw" | "standardised")

    @property
    def d_image(self) -> int | None:
        return None if self.mean_v is None else len(self.mean_v)

    @property
    def d_text(self) -> int | None:
        return None if self.mean_t is None else len(self.mean_t)

    def fit(self, train: Pairs, val: Pairs | None = None, *, seed: int = 0) -> None:
        check_pairs(train, val)
        x = train.image().global_array().astype(np.float64)
        y = train.text().global_array().astype(np.float64)
        self.mean_v, self.std_v = standardiser(x)
        self.mean_t, self.std_t = standardiser(y)
        d = max(x.shape[1], y.shape[1])
        self.R, rank = orthogonal_map((x - self.mean_v) / self.std_v, (y - self.mean_t) / self.std_t)
        notes = []
        if len(train) <= d:
            notes.append(f"N = {len(train)} <= d = {d}: X̃ᵀỸ has rank < d, so R is not unique "
                         "(SVD's choice on the null space)")
        if rank < min(x.shape[1], y.shape[1]):
            notes.append(f"X̃ᵀỸ has rank {rank} < min(d_v, d_t) = {min(x.shape[1], y.shape[1])} (constant "
                         "dimensions or few pairs): part of the block of R that embeddings use is the SVD's choice")
        self.space = self.config.space
        info: dict[str, Any] = {"n_train": len(train), "n_val": len(val) if val is not None else 0, "d": d,
                                "rank": rank}
        if self.config.space == "auto":
            self.space, info["space_scores"] = self._choose_space(val)
        info.update(space=self.space, notes=notes, deviations=[])
        self.fit_info = info

    def _choose_space(self, val: Pairs | None) -> tuple[str, dict[str, float]]:
        """The scoring space with the higher validation text→image MRR (raw without validation)."""
        if val is None or len(val) < 2:
            return "raw", {}
        from alignbench.cca_fit import text_to_image_mrr

        uniq, text_image = np.unique(val.image_index, return_inverse=True)  # a gallery of distinct images
        scores = {}
        for space in ("raw", "standardised"):
            self.space = space
            sim = self.similarity(self.embed_image(val.images.subset(uniq)), self.embed_text(val.text()))
            scores[space] = text_to_image_mrr(sim.double().numpy(), text_image.reshape(-1))
        best = max(scores, key=lambda s: (scores[s], s == "raw"))
        log.info("procrustes: validation MRR %s → space=%s", scores, best)
        return best, scores

    # -- embedding ---------------------------------------------------------------------
    def _rotate(self, x: np.ndarray) -> np.ndarray:
        """Standardise, pad, rotate, keep the text columns: the image in the standardised text space."""
        d = self.R.shape[0]
        z = pad_columns((x - self.mean_v) / self.std_v, d) @ self.R
        return z[:, : self.d_text]

    def embed_image(self, f: ImageFeatures) -> torch.Tensor:
        check_dim(f, self.d_image, "image")
        f.validate("image features")
        z = self._rotate(f.global_array().astype(np.float64))
        if self.space == "raw":
            z = z * self.std_t + self.mean_t
        return torch.from_numpy(z).float()

    def embed_text(self, f: TextFeatures) -> torch.Tensor:
        check_dim(f, self.d_text, "text")
        f.validate("text features")
        y = f.global_array().astype(np.float64)
        if self.space == "standardised":
            y = (y - self.mean_t) / self.std_t
        return torch.from_numpy(y).float()

    # -- persistence ---------------------------------------------------------------------
    _ARRAYS = ("R", "mean_v", "std_v", "mean_t", "std_t")

    def state_dict(self) -> dict[str, Any]:
        if self.R is None:
            return {}
        out: dict[str, Any] = {k: torch.from_numpy(np.array(getattr(self, k))) for k in self._ARRAYS}
        out["space"] = self.space
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in self._ARRAYS:
            setattr(self, k, state[k].double().numpy().copy())
        self.space = state["space"]

    def num_parameters(self) -> int:
        """Stored numbers: d² (R) + 2·d_v + 2·d_t (standardisation statistics); none is trained."""
        return 0 if self.R is None else int(self.R.size + 2 * self.d_image + 2 * self.d_text)
