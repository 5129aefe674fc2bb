"""CCA: regularised canonical correlation analysis, cosine in the canonical space.

The fit itself lives in :mod:`alignbench.cca_fit` (shared with CSA).  Here:
choosing the ridge ε (on the validation split when there is one, else by
Ledoit–Wolf shrinkage; a fixed ``eps`` overrides both), embedding, persistence.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from alignbench.cca_fit import (
    DEFAULT_EPS_GRID,
    CCAFit,
    default_latent_dim,
    fit_cca,
    ledoit_wolf_eps,
    select_eps,
    text_to_image_mrr,
)
from alignbench.errors import ConfigError, FeatureError
from alignbench.features import ImageFeatures, Pairs, TextFeatures
from alignbench.methods.base import (Method, MethodConfig, check_dim, check_pairs, register_method,
                                     validation_rows)
from alignbench.search_space import Choice, FloatRange

log = logging.getLogger(__name__)


@dataclass
class CCAConfig(MethodConfig):
    """Ridge-regularised CCA (METHODS.md).

    ``latent_dim`` None → min(512, d_v, d_t, N−1).  ``eps`` None → chosen
    automatically: on the validation split by text→image MRR over ``eps_grid``
    (``eps_select="val"``, the default) or by Ledoit–Wolf shrinkage
    (``eps_select="ledoit_wolf"``, also the fallback without a validation split).
    """

    latent_dim: int | None = None
    eps: float | None = None
    eps_select: str = "val"
    eps_grid: tuple[float, ...] = DEFAULT_EPS_GRID
    val_max_pairs: int = 5000

    def __post_init__(self) -> None:
        if isinstance(self.eps_grid, str):  # CLI: eps_grid=1e-3,1e-2,0.1
            try:
                self.eps_grid = tuple(float(v) for v in self.eps_grid.replace(";", ",").split(",") if v.strip())
            except ValueError as exc:
                raise ConfigError(f"eps_grid must be comma-separated numbers, got {self.eps_grid!r}") from exc
        else:
            self.eps_grid = tuple(float(v) for v in self.eps_grid)

    def check(self) -> None:
        if self.latent_dim is not None and self.latent_dim < 1:
            raise ConfigError(f"latent_dim must be >= 1 (or None for the default), got {self.latent_dim}")
        if self.eps is not None and not (np.isfinite(self.eps) and self.eps >= 0):
            raise ConfigError(f"eps must be >= 0 (or None to choose it), got {self.eps}")
        if self.eps_select not in ("val", "ledoit_wolf"):
            raise ConfigError(f"eps_select must be 'val' or 'ledoit_wolf', got {self.eps_select!r}")
        if not self.eps_grid or any(not (np.isfinite(e) and e >= 0) for e in self.eps_grid):
            raise ConfigError(f"eps_grid must be non-empty numbers >= 0, got {self.eps_grid}")
        if self.val_max_pairs < 1:
            raise ConfigError(f"val_max_pairs must be >= 1, got {self.val_max_pairs}")


def val_arrays(val: Pairs, max_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Validation images (each ONCE), texts, and each text's image row; subsampled to ``max_pairs``."""
    info: dict[str, Any] = {"val_pairs": len(val)}
    idx = validation_rows(len(val), max_pairs, seed)
    if len(idx) < len(val):
        val = val.subset(idx)
        info["val_pairs_used"] = max_pairs
    uniq, text_image = np.unique(val.image_index, return_inverse=True)
    x = val.images.subset(uniq).global_array()
    y = val.text().global_array()
    return x, y, text_image.reshape(-1), info


class CanonicalMethod(Method):
    """Shared fit/persistence of CCA and CSA; subclasses define the score."""

    level = "global"
    Config: ClassVar[type[MethodConfig]] = CCAConfig

    def __init__(self, config: MethodConfig | None = None, **overrides: Any):
        super().__init__(config, **overrides)
        self.cca: CCAFit | None = None

    # -- hooks ----------------------------------------------------------------
    def _keep(self) -> int:
        """Number of canonical dimensions used for embedding."""
        assert self.cca is not None
        return self.cca.dim

    def _val_score(self, fit: CCAFit, x_val: np.ndarray, y_val: np.ndarray, text_image: np.ndarray) -> float:
        """Higher-is-better validation score of a candidate fit (text→image MRR with this method's score)."""
        self.cca = fit
        a = self.embed_image(ImageFeatures(pooled=x_val))
        b = self.embed_text(TextFeatures(pooled=y_val))
        return text_to_image_mrr(self.similarity(a, b).numpy(), text_image)

    # -- fitting ----------------------------------------------------------------
    def fit(self, train: Pairs, val: Pairs | None = None, *, seed: int = 0) -> None:
        check_pairs(train, val)
        cfg = self.config
        x = train.image().global_array()
        y = train.text().global_array()
        k = cfg.latent_dim or default_latent_dim(x.shape[1], y.shape[1], len(x))
        info: dict[str, Any] = {"n_train": len(train), "latent_dim": k}
        if cfg.eps is not None:
            self.cca = fit_cca(x, y, latent_dim=k, eps=cfg.eps)
            info["eps_source"] = "fixed"
        elif cfg.eps_select == "val" and val is not None and len(val) > 1:
            xv, yv, ti, vinfo = val_arrays(val, cfg.val_max_pairs, seed)
            fit, _, scores = select_eps(
                x, y, xv, yv, lambda f, a, b: self._val_score(f, a, b, ti), latent_dim=k, grid=cfg.eps_grid
            )
            self.cca = fit
            info.update(vinfo, eps_source="validation text->image MRR over eps_grid", eps_val_mrr=scores)
            if fit.eps_x in (min(cfg.eps_grid), max(cfg.eps_grid)):
                info["eps_note"] = "chosen eps is at the edge of eps_grid; consider widening it"
        else:
            eps = ledoit_wolf_eps(x, y)
            self.cca = fit_cca(x, y, latent_dim=k, eps=eps)
            why = "no validation split" if cfg.eps_select == "val" else "eps_select=ledoit_wolf"
            info["eps_source"] = f"Ledoit-Wolf shrinkage ({why})"
        info.update(
            eps_image=self.cca.eps_x,
            eps_text=self.cca.eps_y,
            rank=self.cca.dim,
            dims_used=self._keep(),
            rho_top5=[round(float(r), 4) for r in self.cca.rho[:5]],
            rho_mean=float(self.cca.rho[: self._keep()].mean()),
        )
        self.fit_info = info
        log.info("%s fitted: eps=(%.3g, %.3g) via %s, %d dims", self.registry_name, self.cca.eps_x, self.cca.eps_y,
                 info["eps_source"], self._keep())

    # -- embedding ----------------------------------------------------------------
    def _project(self, f: ImageFeatures | TextFeatures, side: str) -> torch.Tensor:
        if self.cca is None:
            raise FeatureError(f"the method is not fitted yet: call fit() or load_state_dict() before embedding {side}s")
        expected = len(self.cca.mean_x if side == "image" else self.cca.mean_y)
        check_dim(f, expected, side)
        f.validate(f"{side} features")
        a = f.global_array()
        z = self.cca.project_x(a, self._keep()) if side == "image" else self.cca.project_y(a, self._keep())
        return torch.from_numpy(z.astype(np.float32))

    def embed_image(self, f: ImageFeatures) -> torch.Tensor:
        return self._project(f, "image")

    def embed_text(self, f: TextFeatures) -> torch.Tensor:
        return self._project(f, "text")

    # -- persistence ----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.cca is None:
            return {}
        c = self.cca
        return {
            "mean_x": torch.from_numpy(c.mean_x.copy()),
            "mean_y": torch.from_numpy(c.mean_y.copy()),
            "wx": torch.from_numpy(c.wx.copy()),
            "wy": torch.from_numpy(c.wy.copy()),
            "rho": torch.from_numpy(c.rho.copy()),
            "eps_x": c.eps_x,
            "eps_y": c.eps_y,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        def arr(k: str) -> np.ndarray:
            v = state[k]
            return v.detach().cpu().double().numpy() if isinstance(v, torch.Tensor) else np.asarray(v, np.float64)

        self.cca = CCAFit(arr("mean_x"), arr("mean_y"), arr("wx"), arr("wy"), arr("rho"),
                          float(state["eps_x"]), float(state["eps_y"]))


@register_method("cca")
class CCA(CanonicalMethod):
    """Regularised CCA (float64 closed form), cosine similarity in the canonical space."""

    version = 1  # bump when this method's numbers change (alignbench.identity: old results go stale)

    search_space: ClassVar[dict[str, Any]] = {"eps": FloatRange(1e-5, 10.0, log=True),
                                              "latent_dim": Choice((64, 128, 256, 512))}
