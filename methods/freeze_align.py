"""Freeze-Align (Maniparambil et al., CVPR 2025): token-level projectors on frozen encoders.

Every token goes through a projector ``Proj_d(x) = L₁(x') + L₃(GELU(L₂(x')))``
with ``x' = Dropout₀.₁(LN(x))`` (L₁, L₂: d → E, L₃: E → E).  The image
embedding is ``norm(mean_p local_vision_proj(patch_p) + cls_vision_proj(CLS))``
(two separate projectors; the mean excludes CLS), the text embedding
``norm(Head(masked_mean(local_text_proj(tokens))))`` with
``Head(x) = LN(p + Dropout₀.₁(fc(GELU(p))))``, ``p = Linear(x)``.  Symmetric
InfoNCE with a learnable temperature (official: init 0.07 in [0.001, 0.5]) or
a fixed one (``tau=0.05``, PAL's reference).  The trainer's ``temperature``
field is not used: ``tau`` says which.

Tokens are what the feature store keeps (image tokens before the encoder's
final norm, text hidden states of the chosen layer); each distinct image of a
batch is projected once.  An image encoder without a CLS token (a CNN) gets
the mean of its tokens in CLS's place, and the result says so.

Speed (same numbers up to float rounding): the affine L₁ and L₃ are applied to
token means rather than to every token (``TokenProjector.mean_forward``), and
``dtype=auto`` (the default, as PAL's) runs the projectors' matmuls in bf16
where the CPU/GPU has native bf16, with fp32 master weights, means and loss;
embeddings are computed in fp32.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from alignbench.errors import ConfigError, FeatureError
from alignbench.features import ImageFeatures, Pairs, TextFeatures
from alignbench.methods.base import (Method, MethodConfig, check_dim, check_pairs, register_method,
                                     validation_rows)
from alignbench.methods.fusemix import LearnableTemperature
from alignbench.methods.global_head import HeadConfig
from alignbench.search_space import FloatRange
from alignbench.training import REFERENCE_TRAINER, info_nce, train_contrastive, trainer_deviations

log = logging.getLogger(__name__)

IMAGE_CHUNK = 256  # images per forward when embedding
TEXT_CHUNK = 1024  # captions per padded group when embedding


class TokenProjector(nn.Module):
    """Proj_d(x) = L₁(x') + L₃(GELU(L₂(x'))), x' = Dropout(LN(x)), applied to every token."""

    def __init__(self, d: int, E: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)
        self.l1 = nn.Linear(d, E)
        self.l2 = nn.Linear(d, E)
        self.l3 = nn.Linear(E, E)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.norm(x))
        return self.l1(x) + self.l3(nn.functional.gelu(self.l2(x)))

    def mean_forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, d) tokens → (B, E) (masked) mean over tokens of ``forward``, computed as L₁(mean x') + L₃(mean GELU(L₂x')).

        Why: L₁ and L₃ are affine, so they commute with the mean; only LN, dropout
        and L₂ + GELU must run per token, which cuts the per-token matmul work
        by (dE + E²)/(2dE + E²), more than half.  Same dropout draw as
        ``forward`` (one call on the same shape); means are taken in fp32.  A
        row without tokens gives 0, as the masked mean of ``forward`` does.
        """
        h = self.drop(self.norm(x))
        g = nn.functional.gelu(self.l2(h)).float()
        h = h.float()
        if mask is None:
            return self.l1(h.mean(1)) + self.l3(g.mean(1))
        w = mask.to(h.dtype).unsqueeze(-1)
        count = w.sum(1)
        out = self.l1((h * w).sum(1) / count.clamp(min=1)) + self.l3((g * w).sum(1) / count.clamp(min=1))
        return out * (count > 0)


class TextHead(nn.Module):
    """Head(x) = LN(p + Dropout(fc(GELU(p)))), p = Linear(x)."""

    def __init__(self, E: int, dropout: float):
        super().__init__()
        self.proj = nn.Linear(E, E)
        self.fc = nn.Linear(E, E)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(E)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.proj(x)
        return self.norm(p + self.drop(self.fc(nn.functional.gelu(p))))


def _checked(out: torch.Tensor, tokens: torch.Tensor, side: str) -> torch.Tensor:
    """``out``, or FeatureError when it is non-finite because ``tokens`` are (tokens are scanned only then)."""
    if not torch.isfinite(out).all() and not torch.isfinite(tokens).all():
        raise FeatureError(f"{side} tokens contain non-finite values (NaN or inf); re-encode or clean them")
    return out


@dataclass
class FreezeAlignConfig(HeadConfig):
    """METHODS.md: E = 512, dropout 0.1, learnable τ (init 0.07, [0.001, 0.5]); ``tau=0.05`` fixes it."""

    dropout: float = 0.1
    tau: str = "learnable"  # learnable | a fixed temperature such as 0.05
    tau_init: float = 0.07
    tau_min: float = 0.001
    tau_max: float = 0.5
    val_max_pairs: int = 1000
    # The token projectors' matmuls in bf16 where the hardware has native bf16 (AMX / AVX-512 bf16,
    # GPUs), fp32 master weights, means and loss; the result records the dtype chosen and why.
    dtype: str = "auto"

    def fixed_tau(self) -> float | None:
        """The fixed temperature, or None when it is learnable."""
        return None if str(self.tau).strip().lower() == "learnable" else float(self.tau)

    def check(self) -> None:
        super().check()
        try:
            fixed = self.fixed_tau()
        except ValueError:
            raise ConfigError(f"tau must be 'learnable' or a positive number such as 0.05, got {self.tau!r}") from None
        if fixed is not None and not (math.isfinite(fixed) and fixed > 0):
            raise ConfigError(f"a fixed tau must be > 0, got {self.tau!r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 < self.tau_min <= self.tau_init <= self.tau_max:
            raise ConfigError("need 0 < tau_min <= tau_init <= tau_max")
        if self.val_max_pairs < 2:
            raise ConfigError(f"val_max_pairs must be >= 2, got {self.val_max_pairs}")


@register_method("freeze-align", aliases=("freezealign", "freeze_align"))
class FreezeAlign(Method):
    """Freeze-Align: token-level projectors (image: mean patch + CLS projections; text: masked mean + head)."""

    version = 2  # bump when this method's numbers change (alignbench.identity: old results go stale)

    level = "token"
    Config: ClassVar[type[MethodConfig]] = FreezeAlignConfig
    search_space: ClassVar[dict[str, Any]] = {"lr": FloatRange(1e-4, 1e-2, log=True),
                                              "weight_decay": FloatRange(1e-6, 1e-1, log=True),
                                              "dropout": FloatRange(0.0, 0.5)}
    test_overrides: ClassVar[dict[str, Any]] = {"dim": 32, "max_epochs": 40, "patience": 10, "batch_size": 128,
                                                "lr": 3e-3}

    def __init__(self, config: MethodConfig | None = None, **overrides: Any):
        super().__init__(config, **overrides)
        self.d_image: int | None = None  # token widths seen at fit time
        self.d_text: int | None = None
        self.mods: dict[str, nn.Module] = {}

    # -- modules ----------------------------------------------------------------------
    def _init(self, d_image: int, d_text: int, seed: int) -> None:
        c = self.config
        self.d_image, self.d_text = int(d_image), int(d_text)
        torch.manual_seed(seed)
        self.mods = {
            "local_vision": TokenProjector(d_image, c.dim, c.dropout),
            "cls_vision": TokenProjector(d_image, c.dim, c.dropout),
            "local_text": TokenProjector(d_text, c.dim, c.dropout),
            "text_head": TextHead(c.dim, c.dropout),
        }
        if c.fixed_tau() is None:
            self.mods["tau"] = LearnableTemperature(c.tau_init, c.tau_min, c.tau_max)
        for m in self.mods.values():
            m.to(self.device)

    def _train_mode(self, on: bool) -> None:
        for m in self.mods.values():
            m.train(on)

    def temperature(self) -> float | torch.Tensor:
        fixed = self.config.fixed_tau()
        return fixed if fixed is not None else self.mods["tau"]()

    # -- forward ----------------------------------------------------------------------
    def _image_forward(self, tokens: torch.Tensor, n_prefix: int) -> torch.Tensor:
        """(B, T, d) tokens → (B, E) unnormalised image embeddings."""
        tokens = tokens.to(self.device)
        cls = tokens[:, 0] if n_prefix >= 1 else tokens.mean(1)
        out = self.mods["local_vision"].mean_forward(tokens[:, n_prefix:]) + self.mods["cls_vision"](cls)
        return _checked(out, tokens, "image")

    def _text_forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Padded (B, L, d) tokens and (B, L) mask → (B, E) unnormalised text embeddings."""
        tokens, mask = tokens.to(self.device), mask.to(self.device)
        out = self.mods["text_head"](self.mods["local_text"].mean_forward(tokens, mask))
        return _checked(out, tokens, "text")

    def _pair_embeddings(self, pairs: Pairs, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        uniq, inverse = np.unique(pairs.image_index[idx], return_inverse=True)
        img = self._image_forward(pairs.images.token_tensor(uniq), pairs.images.n_prefix)
        img = img[torch.from_numpy(inverse.reshape(-1)).to(self.device)]
        txt = self._text_forward(*pairs.texts.token_batch(pairs.text_index[idx]))
        return img, txt

    # -- fitting ------------------------------------------------------------------------
    def fit(self, train: Pairs, val: Pairs | None = None, *, seed: int = 0) -> None:
        try:
            check_pairs(train, val, tokens=True)
        except FeatureError as exc:
            if "no tokens" in str(exc):
                raise FeatureError(f"freeze-align projects every token, but {exc}; "
                                   "use an encoder pair whose features keep tokens") from None
            raise
        c = self.config
        self._init(train.images.token_dim, train.texts.token_dim, seed)
        self._train_mode(True)

        def step_loss(idx: np.ndarray, step: int) -> torch.Tensor:
            img, txt = self._pair_embeddings(train, np.sort(idx))
            return info_nce(img, txt, self.temperature())

        info: dict[str, Any] = {"n_train": len(train), "n_val": len(val) if val is not None else 0}
        val_loss = None
        if val is not None and len(val) >= 2:
            vidx = validation_rows(len(val), c.val_max_pairs, seed)
            if len(vidx) < len(val):
                info["val_pairs_used"] = c.val_max_pairs
            val_loss = lambda: self._validation_loss(val, vidx)  # noqa: E731

        params = [p for m in self.mods.values() for p in m.parameters()]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]  # norms, biases, temperature
        result = train_contrastive(
            [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], step_loss, len(train),
            val_loss=val_loss, config=c.train_config(), seed=seed,
            state=lambda: {k: m.state_dict() for k, m in self.mods.items()},
            load_state=lambda s: [m.load_state_dict(s[k]) for k, m in self.mods.items()], desc="freeze-align",
        )
        self._train_mode(False)
        info.update(result)
        fixed = c.fixed_tau()
        info["temperature"] = fixed if fixed is not None else float(self.mods["tau"]().detach())
        info["deviations"] = self._deviations() + ([result["note"]] if "note" in result else [])
        if train.images.n_prefix == 0:
            info["notes"] = ["the image encoder has no CLS token: cls_vision_proj took the mean token"]
        self.fit_info = info

    @torch.no_grad()
    def _validation_loss(self, val: Pairs, vidx: np.ndarray) -> float:
        self._train_mode(False)
        try:
            bs = min(self.config.batch_size, len(vidx))
            total = 0.0
            for chunk in np.array_split(vidx, max(1, -(-len(vidx) // bs))):
                if len(chunk) >= 2:
                    img, txt = self._pair_embeddings(val, chunk)
                    total += float(info_nce(img, txt, self.temperature())) * len(chunk)
            return total / len(vidx)
        finally:
            self._train_mode(True)

    def _deviations(self) -> list[str]:
        default = FreezeAlignConfig()
        out = ["shared contrastive trainer instead of the official training script"]
        for f in fields(self.config):
            v, d = getattr(self.config, f.name), getattr(default, f.name)
            if v != d and f.name not in ("val_max_pairs", *REFERENCE_TRAINER):
                out.append(f"{f.name}={v!r} (faithful default {d!r})")
        return out + trainer_deviations(self.config)

    # -- embedding ------------------------------------------------------------------------
    def _fitted(self) -> None:
        if not self.mods:
            raise FeatureError("the method is not fitted yet: call fit() or load_state_dict() before embedding")

    @torch.no_grad()
    def embed_image(self, f: ImageFeatures) -> torch.Tensor:
        self._fitted()
        check_dim(f, self.d_image, "image", what="token_dim")
        self._train_mode(False)
        out = torch.empty(len(f), self.config.dim)
        for s in range(0, len(f), IMAGE_CHUNK):
            idx = np.arange(s, min(s + IMAGE_CHUNK, len(f)))
            out[s : s + len(idx)] = self._image_forward(f.token_tensor(idx), f.n_prefix).float().cpu()
        return nn.functional.normalize(out, dim=-1)

    @torch.no_grad()
    def embed_text(self, f: TextFeatures) -> torch.Tensor:
        self._fitted()
        check_dim(f, self.d_text, "text", what="token_dim")
        self._train_mode(False)
        out = torch.empty(len(f), self.config.dim)
        order = np.argsort(f.lengths(), kind="stable")  # similar lengths together: short padding
        for s in range(0, len(f), TEXT_CHUNK):
            idx = order[s : s + TEXT_CHUNK]
            out[torch.from_numpy(idx)] = self._text_forward(*f.token_batch(idx)).float().cpu()
        return nn.functional.normalize(out, dim=-1)

    @torch.no_grad()
    def patch_scores(self, f: ImageFeatures, classes: torch.Tensor) -> torch.Tensor:
        """``local_vision_proj(patch_p) · norm(class)`` (P×C; the patch side is not normalised), as PAL's reference."""
        self._fitted()
        check_dim(f, self.d_image, "image", what="token_dim")
        self._train_mode(False)
        C = nn.functional.normalize(classes.float(), dim=-1).to(self.device)
        P = f.n_tokens - f.n_prefix
        out = torch.empty(len(f), P, len(C))
        for s in range(0, len(f), IMAGE_CHUNK):
            idx = np.arange(s, min(s + IMAGE_CHUNK, len(f)))
            patches = f.patch_tensor(idx)
            if not torch.isfinite(patches).all():
                raise FeatureError("image tokens contain non-finite values (NaN or inf); re-encode or clean them")
            out[s : s + len(idx)] = (self.mods["local_vision"](patches.to(self.device)) @ C.T).float().cpu()
        return out

    # -- persistence ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if not self.mods:
            return {}
        out: dict[str, Any] = {"d_image": self.d_image, "d_text": self.d_text}
        for k, m in self.mods.items():
            for name, t in m.state_dict().items():
                out[f"{k}.{name}"] = t.detach().cpu().clone()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._init(int(state["d_image"]), int(state["d_text"]), seed=0)
        for k, m in self.mods.items():
            prefix = f"{k}."
            m.load_state_dict({n[len(prefix):]: v for n, v in state.items() if n.startswith(prefix)})
            m.eval()

    def num_parameters(self) -> int:
        """2·Proj_{d_v} + Proj_{d_t} + 2E² + 4E (+1 for a learnable temperature)."""
        return int(sum(p.numel() for m in self.mods.values() for p in m.parameters()))

    def to(self, device: str | torch.device) -> "FreezeAlign":
        super().to(device)
        for m in self.mods.values():
            m.to(self.device)
        return self
