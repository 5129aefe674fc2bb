"""Closed-form regularised CCA in float64, shared by the ``cca`` and ``csa`` methods.

Why closed form: CSA's score needs the canonical correlations ρ exactly, and a
whitening + SVD solution is deterministic (no iterative solver tolerance).
Recipe (METHODS.md): centre with the training means; covariances in float64
with a ridge ``ε·trace(Σ)/d``; whiten each side with Σ^{-1/2} (eigh); the SVD
of the whitened cross-covariance gives the canonical directions and its
singular values are the canonical correlations.

Why ε matters: with N not ≫ d (1,280-d image features, 1k pairs) a tiny ridge
lets every canonical correlation reach ≈ 1 on the training pairs, a degenerate
fit that retrieves near chance.  Adding ``c·I`` to Σ keeps its eigenvectors and
shifts its eigenvalues, so one eigendecomposition per side serves a whole grid
of ε values; :func:`select_eps` picks ε on held-out pairs with that trick, and
:func:`ledoit_wolf_eps` gives the standard shrinkage estimate when there is no
validation split.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from alignbench.errors import ConfigError, FeatureError

log = logging.getLogger(__name__)

DEFAULT_EPS_GRID: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)
_CHUNK = 8192


@dataclass
class CCAFit:
    """A fitted CCA: ``(x - mean_x) @ wx`` and ``(y - mean_y) @ wy`` are the canonical variates.

    Columns are ordered by decreasing canonical correlation ``rho``; on the
    training data each variate has unit (regularised) variance.
    """

    mean_x: np.ndarray  # (d_x,)
    mean_y: np.ndarray  # (d_y,)
    wx: np.ndarray  # (d_x, k)
    wy: np.ndarray  # (d_y, k)
    rho: np.ndarray  # (k,)
    eps_x: float
    eps_y: float

    @property
    def dim(self) -> int:
        return int(self.rho.shape[0])

    def project_x(self, x: np.ndarray, k: int | None = None) -> np.ndarray:
        """Canonical variates of x (float64), the first ``k`` of them."""
        w = self.wx if k is None else self.wx[:, :k]
        return (np.asarray(x, dtype=np.float64) - self.mean_x) @ w

    def project_y(self, y: np.ndarray, k: int | None = None) -> np.ndarray:
        w = self.wy if k is None else self.wy[:, :k]
        return (np.asarray(y, dtype=np.float64) - self.mean_y) @ w


def default_latent_dim(d_x: int, d_y: int, n: int, cap: int = 512) -> int:
    """min(cap, d_x, d_y, N − 1) (METHODS.md), at least 1."""
    return max(1, min(cap, d_x, d_y, n - 1))


@dataclass
class _Moments:
    """Training means, covariances and the eigendecompositions of the auto-covariances."""

    mean_x: np.ndarray
    mean_y: np.ndarray
    evals_x: np.ndarray
    evecs_x: np.ndarray
    evals_y: np.ndarray
    evecs_y: np.ndarray
    cross_eig: np.ndarray  # Q_xᵀ Σ_xy Q_y, the cross-covariance in both eigenbases
    trace_x: float
    trace_y: float


def _moments(x: np.ndarray, y: np.ndarray) -> _Moments:
    """Float64 means and covariances, accumulated in chunks (inputs may be float32 memmaps)."""
    n = len(x)
    if n != len(y):
        raise FeatureError(f"CCA needs as many x as y rows ({n} vs {len(y)})")
    if n < 1:
        raise FeatureError("CCA needs at least 1 pair, got 0")
    mx = np.zeros(x.shape[1])
    my = np.zeros(y.shape[1])
    for s in range(0, n, _CHUNK):
        mx += np.asarray(x[s : s + _CHUNK], dtype=np.float64).sum(0)
        my += np.asarray(y[s : s + _CHUNK], dtype=np.float64).sum(0)
    mx /= n
    my /= n
    cxx = np.zeros((x.shape[1], x.shape[1]))
    cyy = np.zeros((y.shape[1], y.shape[1]))
    cxy = np.zeros((x.shape[1], y.shape[1]))
    for s in range(0, n, _CHUNK):
        xc = np.asarray(x[s : s + _CHUNK], dtype=np.float64) - mx
        yc = np.asarray(y[s : s + _CHUNK], dtype=np.float64) - my
        cxx += xc.T @ xc
        cyy += yc.T @ yc
        cxy += xc.T @ yc
    dof = max(n - 1, 1)
    cxx /= dof
    cyy /= dof
    cxy /= dof
    if not (np.isfinite(cxx).all() and np.isfinite(cyy).all() and np.isfinite(cxy).all()):
        raise FeatureError("CCA covariances are not finite (NaN/inf features?)")
    ex, qx = np.linalg.eigh(cxx)
    ey, qy = np.linalg.eigh(cyy)
    return _Moments(mx, my, ex, qx, ey, qy, qx.T @ cxy @ qy, float(np.trace(cxx)), float(np.trace(cyy)))


def _inv_sqrt(evals: np.ndarray, ridge: float) -> np.ndarray:
    """(λ + ridge)^{-1/2}; eigenvalues that are zero up to rounding are floored.

    Constant features (all eigenvalues 0, e.g. a single pair) get an identity
    whitening instead of an infinite one.
    """
    lam = np.clip(evals, 0.0, None) + ridge
    top = float(lam.max())
    if not top > 0:
        return np.ones_like(lam)
    return 1.0 / np.sqrt(np.maximum(lam, top * 1e-12))


def _solve(m: _Moments, eps_x: float, eps_y: float, k: int) -> CCAFit:
    dx, dy = len(m.mean_x), len(m.mean_y)
    ax = _inv_sqrt(m.evals_x, eps_x * m.trace_x / dx)
    ay = _inv_sqrt(m.evals_y, eps_y * m.trace_y / dy)
    # Whitened cross-covariance in the eigenbases: diag(ax) Qxᵀ Σxy Qy diag(ay).
    u, s, vt = np.linalg.svd(ax[:, None] * m.cross_eig * ay[None, :], full_matrices=False)
    k = min(k, len(s))
    wx = m.evecs_x @ (ax[:, None] * u[:, :k])
    wy = m.evecs_y @ (ay[:, None] * vt[:k].T)
    return CCAFit(m.mean_x, m.mean_y, wx, wy, np.clip(s[:k], 0.0, 1.0), float(eps_x), float(eps_y))


def _check_eps(eps: float) -> None:
    if not (np.isfinite(eps) and eps >= 0):
        raise ConfigError(f"CCA ridge eps must be a finite number >= 0, got {eps}")


def fit_cca(
    x: np.ndarray,
    y: np.ndarray,
    *,
    latent_dim: int | None = None,
    eps: float | tuple[float, float] = 1e-4,
) -> CCAFit:
    """Fit CCA on paired rows of ``x`` (N, d_x) and ``y`` (N, d_y).

    ``eps`` is the relative ridge (one value, or one per side): Σ + ε·tr(Σ)/d·I.
    ``latent_dim`` defaults to min(512, d_x, d_y, N − 1).
    """
    ex, ey = (eps, eps) if np.isscalar(eps) else eps  # type: ignore[misc]
    _check_eps(ex)
    _check_eps(ey)
    k = latent_dim or default_latent_dim(x.shape[1], y.shape[1], len(x))
    if k < 1:
        raise ConfigError(f"latent_dim must be >= 1, got {k}")
    return _solve(_moments(x, y), float(ex), float(ey), k)


def ledoit_wolf_eps(x: np.ndarray, y: np.ndarray, max_rows: int = 20000) -> tuple[float, float]:
    """Per-side relative ridge from the Ledoit–Wolf shrinkage intensity α.

    Ledoit–Wolf shrinks to (1−α)Σ + α·tr(Σ)/d·I, which is (1−α)(Σ + ε·tr(Σ)/d·I)
    with ε = α/(1−α); the common factor (1−α) does not change the whitened
    directions, so that ε is the ridge with the same shape.
    """
    from sklearn.covariance import ledoit_wolf_shrinkage

    out = []
    for a in (x, y):
        a = np.asarray(a[:max_rows], dtype=np.float64)
        alpha = float(ledoit_wolf_shrinkage(a - a.mean(0), assume_centered=True))
        alpha = min(max(alpha, 1e-8), 0.999)
        out.append(alpha / (1.0 - alpha))
    return out[0], out[1]


def select_eps(
    x: np.ndarray,
    y: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    score: Callable[[CCAFit, np.ndarray, np.ndarray], float],
    *,
    latent_dim: int | None = None,
    grid: Sequence[float] = DEFAULT_EPS_GRID,
) -> tuple[CCAFit, float, dict[float, float]]:
    """Fit on (x, y) for every ε in ``grid``; keep the one whose ``score`` on the val pairs is highest.

    ``score(fit, x_val, y_val)`` returns higher-is-better (e.g. validation
    retrieval MRR).  Ties go to the larger ε (the more regularised fit).
    Returns (best fit, best ε, {ε: score}).
    """
    if not grid:
        raise ConfigError("eps grid is empty")
    for e in grid:
        _check_eps(e)
    m = _moments(x, y)
    k = latent_dim or default_latent_dim(x.shape[1], y.shape[1], len(x))
    scores: dict[float, float] = {}
    best: tuple[float, float, CCAFit] | None = None
    for e in sorted(grid):
        fit = _solve(m, e, e, k)
        s = float(score(fit, x_val, y_val))
        scores[float(e)] = s
        if best is None or not s < best[0]:  # >= : prefer larger ε on ties
            best = (s, float(e), fit)
    assert best is not None
    log.info("CCA ridge chosen on validation: eps=%.3g (scores %s)", best[1], {k_: round(v, 4) for k_, v in scores.items()})
    return best[2], best[1], scores


def text_to_image_mrr(sim: np.ndarray, text_image: np.ndarray) -> float:
    """Mean reciprocal rank of each text's own image among the gallery images.

    ``sim`` is (n_images, n_texts); ``text_image[j]`` is the gallery row of text
    j's image.  A gallery of unique images avoids the duplicated-gallery bug.
    """
    own = sim[text_image, np.arange(sim.shape[1])]
    rank = (sim > own[None, :]).sum(0) + 1
    return float((1.0 / rank).mean())
