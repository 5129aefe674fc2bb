"""ASIF (Norelli et al., NeurIPS 2023): training-free relative representations.

"Fitting" stores the N training pairs as anchors.  A query is described by its
cosine similarity to every anchor of its own modality; keeping the top-k,
clamping negatives to 0 and raising them to the power p makes the description
sparse and peaked, and since anchor i of the image side and anchor i of the
text side are the same pair, image and text descriptions live in one
N-dimensional space where a dot product compares them.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from alignbench.errors import ConfigError, FeatureError
from alignbench.features import ImageFeatures, Pairs, TextFeatures
from alignbench.methods.base import Method, MethodConfig, check_dim, check_pairs, register_method
from alignbench.search_space import Choice, FloatRange, IntRange

log = logging.getLogger(__name__)


@dataclass
class ASIFConfig(MethodConfig):
    """Top-``k`` anchors per query (capped at N), exponent ``p``; ``chunk`` queries per block.

    ``sparse=True`` returns sparse COO embeddings (k non-zeros per row) instead
    of dense (len × N) tensors, for large anchor sets.

    ``center=True`` (not in METHODS.md, recorded as a deviation) subtracts the
    anchors' mean feature of each modality before normalising anchors and
    queries.  Why: dinov2-s14's global features have mean pairwise cosine 0.73,
    so every query is near every anchor and top-k selection carries little.
    """

    k: int = 800
    p: float = 8.0
    chunk: int = 1024
    sparse: bool = False
    center: bool = False

    def check(self) -> None:
        if self.k < 1:
            raise ConfigError(f"k must be >= 1, got {self.k}")
        if not (np.isfinite(self.p) and self.p > 0):
            raise ConfigError(f"p must be > 0, got {self.p}")
        if self.chunk < 1:
            raise ConfigError(f"chunk must be >= 1, got {self.chunk}")


def relative_rep(
    queries: torch.Tensor, anchors: torch.Tensor, k: int, p: float, *, chunk: int = 1024, sparse: bool = False
) -> torch.Tensor:
    """ASIF relative representation of ``queries`` (M, d) w.r.t. normalised ``anchors`` (N, d).

    Per row: cosine to every anchor, keep the top-k, clamp at 0, raise to p,
    zero the rest, L2-normalise.  Computed ``chunk`` rows at a time so the
    (M, N) similarity matrix never exists in full.
    """
    n = anchors.shape[0]
    k = min(k, n)
    q = torch.nn.functional.normalize(queries.float(), dim=-1)
    rows, cols, vals = [], [], []
    dense = None if sparse else torch.zeros(len(q), n)
    for s in range(0, len(q), chunk):
        sim = q[s : s + chunk] @ anchors.T
        v, i = sim.topk(k, dim=1)
        v = v.clamp_(min=0).pow_(p)
        v = torch.nn.functional.normalize(v, dim=-1)
        if dense is not None:
            dense[s : s + chunk].scatter_(1, i, v)
        else:
            rows.append(torch.arange(s, s + len(v)).repeat_interleave(k))
            cols.append(i.reshape(-1))
            vals.append(v.reshape(-1))
    if dense is not None:
        return dense
    if not rows:
        return torch.sparse_coo_tensor(torch.zeros(2, 0, dtype=torch.long), torch.zeros(0), (0, n), check_invariants=False).coalesce()
    idx = torch.stack([torch.cat(rows), torch.cat(cols)])
    return torch.sparse_coo_tensor(idx, torch.cat(vals), (len(q), n), check_invariants=False).coalesce()


@register_method("asif")
class ASIF(Method):
    """Training-free ASIF: sparse relative representations over the training pairs as anchors."""

    version = 1  # bump when this method's numbers change (alignbench.identity: old results go stale)

    level = "global"
    Config = ASIFConfig
    search_space = {"k": IntRange(50, 2000, log=True), "p": FloatRange(1.0, 16.0), "center": Choice((False, True))}

    def __init__(self, config: MethodConfig | None = None, **overrides: Any):
        super().__init__(config, **overrides)
        self.image_anchors: torch.Tensor | None = None
        self.text_anchors: torch.Tensor | None = None
        self.image_mean: torch.Tensor | None = None  # subtracted before normalising (center option)
        self.text_mean: torch.Tensor | None = None

    def fit(self, train: Pairs, val: Pairs | None = None, *, seed: int = 0) -> None:
        """Store normalised anchors; ``val`` and ``seed`` are unused (nothing is trained)."""
        check_pairs(train, val)
        norm = torch.nn.functional.normalize
        x, y = train.image().global_tensor(), train.text().global_tensor()
        self.image_mean = x.mean(0) if self.config.center else None
        self.text_mean = y.mean(0) if self.config.center else None
        self.image_anchors = norm(self._centred(x, self.image_mean), dim=-1).contiguous()
        self.text_anchors = norm(self._centred(y, self.text_mean), dim=-1).contiguous()
        n = len(train)
        self.fit_info = {
            "n_anchors": n,
            "k_used": min(self.config.k, n),
            "note": "training-free; validation split unused",
        }
        if self.config.center:
            self.fit_info["deviations"] = ["center=True (faithful default False): anchor means subtracted"]
        if self.config.k > n:
            self.fit_info["deviation"] = f"k={self.config.k} > N={n} anchors: kept all N"

    @staticmethod
    def _centred(x: torch.Tensor, mean: torch.Tensor | None) -> torch.Tensor:
        return x if mean is None else x - mean

    def _embed(self, f: ImageFeatures | TextFeatures, anchors: torch.Tensor | None, side: str) -> torch.Tensor:
        if anchors is None:
            raise FeatureError(f"the method is not fitted yet: call fit() or load_state_dict() before embedding {side}s")
        check_dim(f, anchors.shape[1], side)
        f.validate(f"{side} features")
        c = self.config
        mean = self.image_mean if side == "image" else self.text_mean
        return relative_rep(self._centred(f.global_tensor(), mean), anchors, c.k, c.p, chunk=c.chunk, sparse=c.sparse)

    def embed_image(self, f: ImageFeatures) -> torch.Tensor:
        return self._embed(f, self.image_anchors, "image")

    def embed_text(self, f: TextFeatures) -> torch.Tensor:
        return self._embed(f, self.text_anchors, "text")

    def similarity(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Dot product (rows are unit-norm already; averaged class embeddings are re-normalised)."""
        if a.is_sparse or b.is_sparse:
            with warnings.catch_warnings():  # "sparse CSR support is in beta", raised inside sparse.mm
                warnings.simplefilter("ignore", UserWarning)
                return self._sparse_similarity(a, b)
        return a.float() @ b.float().T

    @staticmethod
    def _sparse_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.is_sparse and b.is_sparse:
            return torch.sparse.mm(a, b.t().coalesce()).to_dense()
        if a.is_sparse:
            return torch.sparse.mm(a, b.float().T.contiguous())
        return torch.sparse.mm(b, a.float().T.contiguous()).T

    def class_embeddings(self, prompts: TextFeatures, n_classes: int, n_templates: int) -> torch.Tensor:
        e = self.embed_text(prompts)
        e = e.to_dense() if e.is_sparse else e
        e = e.reshape(n_classes, n_templates, -1).mean(1)
        return torch.nn.functional.normalize(e, dim=-1)

    @torch.no_grad()
    def patch_scores(self, f: ImageFeatures, classes: torch.Tensor) -> torch.Tensor:
        """Patches (final-normed, like the global feature) → relative reps → class scores, a chunk at a time.

        Same as the base recipe, but never holds the (B·P, N) relative representation of all patches.
        """
        if self.image_anchors is None:
            raise FeatureError("the method is not fitted yet: call fit() or load_state_dict() before embedding images")
        c = self.config
        C = classes.to_dense() if classes.is_sparse else classes
        P = f.n_tokens - f.n_prefix
        step = max(1, c.chunk // max(P, 1))
        out = torch.empty(len(f), P, C.shape[0])
        for s in range(0, len(f), step):
            patches = f.patch_tensor(np.arange(s, min(s + step, len(f))), normed=True)
            B = patches.shape[0]
            flat = ImageFeatures(pooled=patches.reshape(B * P, -1).numpy())
            rel = relative_rep(self._centred(flat.global_tensor(), self.image_mean), self.image_anchors, c.k, c.p,
                               chunk=c.chunk)
            out[s : s + B] = (rel @ C.float().T).reshape(B, P, -1)
        return out

    def state_dict(self) -> dict[str, Any]:
        if self.image_anchors is None:
            return {}
        out = {"image_anchors": self.image_anchors, "text_anchors": self.text_anchors}
        if self.image_mean is not None:
            out.update(image_mean=self.image_mean, text_mean=self.text_mean)
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.image_anchors = state["image_anchors"].float().contiguous()
        self.text_anchors = state["text_anchors"].float().contiguous()
        self.image_mean = state["image_mean"].float() if "image_mean" in state else None
        self.text_mean = state["text_mean"].float() if "text_mean" in state else None
