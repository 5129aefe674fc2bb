"""SAIL (Zhang, Yang, Agrawal, CVPR 2025): gated "star" heads on frozen features, sigmoid loss.

Inputs: the image side sees ``u = [CLS ; mean(patches)]`` (the global feature
and the mean of the final-normed patch tokens, 2·d_v wide), the text side its
global feature (the masked mean of its tokens).  Each head is
``g(ReLU6(f₁ LN(u)) ⊙ f₂ LN(u))`` with f₁, f₂: a → 8a and g: 8a → 512,
Xavier-uniform weights and zero biases.

Loss (``loss``): ``sigmoid`` is the official SigLIP loss, logits
``e^s·cos + b`` with learnable s (init ln 20, kept in [0, ln 100]) and b
(init −10), ``L = −mean log σ(y·logit)`` over all B² pairs (y = +1 on the
diagonal, −1 elsewhere; the mean, as the official code writes it).
``infonce`` is the shared symmetric InfoNCE at τ = 0.05, which is how PAL's
reference runs SAIL as a baseline.  The official optimiser (Lion, lr 1e-5,
batch 32k, 23M pairs) does not apply to small budgets: the shared trainer
fits both.  Early stopping watches the validation value of the training loss.

Speed: ``dtype=auto`` (the default, as PAL's) runs the heads' matmuls in bf16
where the CPU/GPU has native bf16 (fp32 master weights and loss, the fused
AdamW; embeddings in fp32), and validation runs the image head once per
distinct image.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from alignbench.errors import ConfigError, FeatureError
from alignbench.features import ImageFeatures, Pairs
from alignbench.methods.base import register_method
from alignbench.methods.global_head import EMBED_CHUNK, GlobalHeadMethod, HeadConfig
from alignbench.search_space import FloatRange
from alignbench.training import info_nce

LOSSES = ("sigmoid", "infonce")
PATCH_CHUNK = 256  # images per chunk when reading patch tokens


class StarHead(nn.Module):
    """out = g(ReLU6(f₁h) ⊙ f₂h), h = LN(u); f₁, f₂: a → e·a, g: e·a → d_out; Xavier weights, zero biases."""

    def __init__(self, d_in: int, d_out: int, expansion: int = 8):
        super().__init__()
        self.norm = nn.LayerNorm(d_in)
        self.f1 = nn.Linear(d_in, expansion * d_in)
        self.f2 = nn.Linear(d_in, expansion * d_in)
        self.g = nn.Linear(expansion * d_in, d_out)
        for lin in (self.f1, self.f2, self.g):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        h = self.norm(u)
        return self.g(nn.functional.relu6(self.f1(h)) * self.f2(h))


class SigmoidLogits(nn.Module):
    """Learnable SigLIP logit scale s (used as e^s, kept in [0, s_max]) and bias b."""

    def __init__(self, scale_init: float, scale_max: float, bias_init: float):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale_init)))
        self.bias = nn.Parameter(torch.tensor(float(bias_init)))
        self.log_scale_max = math.log(scale_max)

    @torch.no_grad()
    def clamp_(self) -> None:
        """Keep s in [0, ln scale_max] (the official code clamps after every step)."""
        self.log_scale.clamp_(0.0, self.log_scale_max)


def sigmoid_loss(a: torch.Tensor, b: torch.Tensor, log_scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """−mean over all B² pairs of log σ(y·(e^s·cos(a_i, b_j) + bias)), y = +1 iff i = j; fp32 as ``info_nce``."""
    with torch.autocast(a.device.type, enabled=False):
        a = nn.functional.normalize(a.float(), dim=-1)
        b = nn.functional.normalize(b.float(), dim=-1)
        logits = log_scale.exp() * (a @ b.T) + bias
        labels = 2 * torch.eye(len(a), device=a.device) - 1
        return -nn.functional.logsigmoid(labels * logits).mean()


def cls_and_mean_patch(f: ImageFeatures, chunk: int = PATCH_CHUNK) -> torch.Tensor:
    """(N, d + d_tok) ``[global ; mean of the final-normed patch tokens]``; each distinct image read once."""
    rows = np.arange(len(f.pooled)) if f.rows is None else np.asarray(f.rows)
    uniq, inverse = np.unique(rows, return_inverse=True)
    base = dataclasses.replace(f, rows=uniq)
    means = torch.empty(len(uniq), f.token_dim)
    for s in range(0, len(uniq), chunk):
        means[s : s + chunk] = base.patch_tensor(np.arange(s, min(s + chunk, len(uniq))), normed=True).mean(1)
    u = torch.cat([f.global_tensor(), means[torch.from_numpy(inverse.reshape(-1))]], dim=1)
    if not torch.isfinite(u).all():
        raise FeatureError("image features or tokens contain non-finite values (NaN or inf); re-encode or clean them")
    return u


@dataclass
class SAILConfig(HeadConfig):
    """METHODS.md: star heads (expansion 8) to 512-d, sigmoid loss (s init ln 20 ≤ ln 100, b init −10)."""

    expansion: int = 8
    loss: str = "sigmoid"
    # The heads' matmuls (~119M parameters at the default pair) in bf16 where the hardware has native bf16
    # (AMX / AVX-512 bf16, GPUs), fp32 master weights and losses; the result records the dtype chosen and why.
    dtype: str = "auto"
    scale_init: float = 20.0
    scale_max: float = 100.0
    bias_init: float = -10.0

    def check(self) -> None:
        super().check()
        if self.loss not in LOSSES:
            import difflib

            close = difflib.get_close_matches(str(self.loss), LOSSES, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}{hint}")
        if self.expansion < 1:
            raise ConfigError(f"expansion must be >= 1, got {self.expansion}")
        if not 1 <= self.scale_init <= self.scale_max:
            raise ConfigError("need 1 <= scale_init <= scale_max (s = ln scale is kept in [0, ln scale_max])")


@register_method("sail")
class SAIL(GlobalHeadMethod):
    """SAIL: gated star heads on [CLS; mean patch] and text features, SigLIP loss (loss=infonce: PAL's baseline)."""

    version = 2  # bump when this method's numbers change (alignbench.identity: old results go stale)

    Config = SAILConfig
    inherent_deviations = (
        "shared trainer (AdamW, cosine, early stopping) instead of the official Lion lr 1e-5 / batch 32k / 100 epochs",
    )
    search_space = {"lr": FloatRange(1e-4, 1e-2, log=True), "weight_decay": FloatRange(1e-6, 1e-1, log=True)}
    test_overrides = {"max_epochs": 60, "patience": 10, "batch_size": 256, "lr": 3e-3, "expansion": 2}

    def image_inputs(self, f: ImageFeatures) -> torch.Tensor:
        return cls_and_mean_patch(f)

    def build_heads(self, d_image: int, d_text: int) -> tuple[nn.Module, nn.Module]:
        c = self.config
        self.logits = SigmoidLogits(c.scale_init, c.scale_max, c.bias_init) if c.loss == "sigmoid" else None
        return StarHead(d_image, c.dim, c.expansion), StarHead(d_text, c.dim, c.expansion)

    def extra_modules(self) -> dict[str, nn.Module]:
        logits = getattr(self, "logits", None)
        return {"logits": logits} if logits is not None else {}

    def param_groups(self) -> list[dict]:
        # LayerNorm parameters, biases and the logit scale/bias take no weight decay (CLIP/SigLIP practice).
        decay, no_decay = [], []
        for m in self.modules().values():
            for p in m.parameters():
                (decay if p.ndim >= 2 else no_decay).append(p)
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.output_loss(self.image_head(x), self.text_head(y))

    def output_loss(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The loss of a batch from the heads' outputs (row i of ``a`` pairs row i of ``b``)."""
        if self.logits is None:
            return info_nce(a, b, self.temperature())
        self.logits.clamp_()  # = clamping after the previous step: every forward sees s in range
        return sigmoid_loss(a, b, self.logits.log_scale, self.logits.bias)

    def batch_loss(self, x: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        return self.loss(x, y)

    def val_batch_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss(x, y)

    def make_val_loss(self, val: Pairs, batch_size: int) -> Callable[[], float]:
        """``validation_loss``'s value with the image head run once per distinct validation image.

        Why: Flickr8k's dev split pairs each image with 5 captions, and the
        image head is the cost (16a² weights at a = 2·d_v); heads in eval mode
        map rows independently, so gathering the distinct images' outputs gives
        the per-pair value (tests/test_methods_sail.py) at a fifth of the cost.
        """
        uniq, inverse = np.unique(val.image_index, return_inverse=True)
        xu = self.image_inputs(val.images.subset(uniq)).to(self.device)
        yv = self.text_inputs(val.text()).to(self.device)
        inv = torch.from_numpy(inverse.reshape(-1)).to(self.device)
        return lambda: self._distinct_validation_loss(xu, inv, yv, batch_size)

    @torch.no_grad()
    def _distinct_validation_loss(self, xu: torch.Tensor, inv: torch.Tensor, yv: torch.Tensor,
                                  batch_size: int) -> float:
        self._train_mode(False)
        try:
            a = torch.cat([self.image_head(xu[i : i + EMBED_CHUNK]) for i in range(0, len(xu), EMBED_CHUNK)])
            b = torch.cat([self.text_head(yv[i : i + EMBED_CHUNK]) for i in range(0, len(yv), EMBED_CHUNK)])
            total, n = 0.0, len(yv)
            bs = min(batch_size, n)
            for c in np.array_split(np.arange(n), max(1, -(-n // bs))):  # validation_loss's batches
                if len(c) >= 2:
                    i = torch.from_numpy(c).to(self.device)
                    total += float(self.output_loss(a[inv[i]], b[i])) * len(c)
            return total / n
        finally:
            self._train_mode(True)

    def fit(self, train: Pairs, val: Pairs | None = None, *, seed: int = 0) -> None:
        super().fit(train, val, seed=seed)
        if self.logits is not None:
            self.logits.clamp_()
            self.fit_info["logit_scale"] = float(self.logits.log_scale.detach().exp())
            self.fit_info["logit_bias"] = float(self.logits.bias.detach())
        if train.images.n_prefix == 0:
            self.fit_info["notes"] = ["the image encoder has no CLS token: its global feature stands in for it"]

    @torch.no_grad()
    def patch_scores(self, f: ImageFeatures, classes: torch.Tensor) -> torch.Tensor:
        """Per patch p, ``u_p = [CLS ; patch_p]`` (final-normed patch) through the image head; cosine to classes."""
        if self.d_image is None:
            raise FeatureError("the method is not fitted yet: call fit() or load_state_dict() before embedding")
        f.validate("image features")
        self.image_head.eval()
        C = nn.functional.normalize(classes.float(), dim=-1).to(self.device)
        P = f.n_tokens - f.n_prefix
        out = torch.empty(len(f), P, len(C))
        step = max(1, EMBED_CHUNK // max(P, 1))
        for s in range(0, len(f), step):
            idx = np.arange(s, min(s + step, len(f)))
            patches = f.patch_tensor(idx, normed=True)
            cls = f.subset(idx).global_tensor()
            u = torch.cat([cls[:, None].expand(-1, P, -1), patches], dim=-1)
            if u.shape[-1] != self.d_image:
                raise FeatureError(f"image features give {u.shape[-1]}-d patch inputs but the method was fitted on "
                                   f"{self.d_image}-d image inputs (same encoder and layer as at fit time?)")
            z = nn.functional.normalize(self.image_head(u.reshape(-1, u.shape[-1]).to(self.device)).float(), dim=-1)
            out[s : s + len(idx)] = (z @ C.T).reshape(len(idx), P, -1).cpu()
        return out
