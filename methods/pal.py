"""PAL — Projection-free Anchor Learning (Kim & Park, arXiv 2605.16834).

The only trainable parameters are K anchors per modality (A_v: K×d_v,
A_t: K×d_t), unit-norm rows.  A sample is described by its anchor profile:
cross-attention pooling (CAP) of its tokens against the anchors, each anchor
pooling the tokens independently with a sharp softmax (τ_p = 0.03).  Anchor k
of the image side and anchor k of the text side come to mean the same thing
only through the symmetric InfoNCE between image and text profiles.

Speed/memory: CAP is the fused, chunked kernel in :mod:`alignbench.cap`;
image tokens stream from the fp16 memmap chunk by chunk, each distinct image
of a batch is pooled once (Flickr has 5 captions per image), and text tokens
are padded to the batch's longest caption only.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import fields
from typing import Any, ClassVar

import numpy as np
import torch

from alignbench.cap import DenseTokens, Workspace, cap_profiles, chunk_rows
from alignbench.cap_kernels import compile_failed, kernel_backend
from alignbench.errors import FeatureError
from alignbench.features import ImageFeatures, Pairs, TextFeatures
from alignbench.methods.base import (Method, MethodConfig, check_dim, check_pairs, register_method,
                                     validation_rows)
from alignbench.pal_config import PALConfig
from alignbench.search_space import Choice, FloatRange
from alignbench.token_stream import place_training_tokens
from alignbench.token_rows import absolute_rows, mean_unit_tokens, training_token_means
from alignbench.training import REFERENCE_TRAINER, info_nce, train_contrastive, trainer_deviations

log = logging.getLogger(__name__)

TEXT_EMBED_ROWS = 1024  # captions per padded group when embedding
# compile=auto: compiling takes ~10–60 s once per process (less with a warm on-disk cache) and
# saves ~0.5 s per 1e8 similarities (forward + backward), so a fit pays it back from ~1e10
# similarities (budget × max_epochs × tokens × K); a forward-only embedding call from ~1e9.
COMPILE_MIN_SIMS_FIT = 10**10
COMPILE_MIN_SIMS_EMBED = 10**9


@register_method("pal")
class PAL(Method):
    """Projection-free Anchor Learning: K learned anchors per modality, cross-attention pooled profiles."""

    version = 1  # bump when this method's numbers change (alignbench.identity: old results go stale)

    level = "token"
    Config: ClassVar[type[MethodConfig]] = PALConfig
    search_space: ClassVar[dict[str, Any]] = {
        "lr": FloatRange(1e-4, 1e-1, log=True), "tau_p": FloatRange(0.01, 0.3, log=True),
        "K": Choice((64, 128, 256, 512, 1024)), "center": Choice(("none", "both")), "pool": Choice(("cap", "mean")),
    }
    test_overrides: ClassVar[dict[str, Any]] = {"K": 64, "max_epochs": 40, "batch_size": 128, "lr": 1e-2,
                                                "compile": "off"}

    def __init__(self, config: MethodConfig | None = None, **overrides: Any):
        super().__init__(config, **overrides)
        self.A_v: torch.nn.Parameter | None = None
        self.A_t: torch.nn.Parameter | None = None
        self.mu_v: torch.Tensor | None = None  # mean training token subtracted before the cosines (center option)
        self.mu_t: torch.Tensor | None = None
        self._workspace: Workspace | None = None  # reused similarity buffers, only while fitting
        self._resident: tuple[Any, Any] | None = None  # (token array, ResidentTokens) on the GPU while fitting
        self._prepared: list[Any] = []  # PreparedImages / PreparedTexts (normalised once per fit) while fitting
        self._compile_fit: bool | None = None  # compile decision for the whole fit (None: per call)

    # -- anchors ------------------------------------------------------------------
    def _init_anchors(self, d_v: int, d_t: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        K = self.config.K
        av = torch.nn.functional.normalize(torch.randn(K, d_v, generator=g), dim=-1)
        at = torch.nn.functional.normalize(torch.randn(K, d_t, generator=g), dim=-1)
        self.A_v = torch.nn.Parameter(av.to(self.device))
        self.A_t = torch.nn.Parameter(at.to(self.device))

    def anchors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Row-normalised (A_v, A_t), differentiable (re-normalised on every forward)."""
        if self.A_v is None or self.A_t is None:
            raise FeatureError("the method is not fitted yet: call fit() or load_state_dict() before embedding")
        return torch.nn.functional.normalize(self.A_v, dim=-1), torch.nn.functional.normalize(self.A_t, dim=-1)

    # -- profiles (unnormalised; callers normalise) ---------------------------------
    def _use_compile(self, rows: int, tokens: int, min_sims: int = COMPILE_MIN_SIMS_EMBED) -> bool:
        """``auto``: compile when the work is ≥ ``min_sims`` similarities (a deterministic rule, so a
        given call always runs the same kernels)."""
        c = self.config.compile
        return c in ("on", "inductor") or (c == "auto" and rows * tokens * self.config.K >= min_sims)

    def matmul_dtype(self) -> tuple[torch.dtype, str, str]:
        """(torch dtype, name, why) of CAP's token–anchor matmuls on this method's device (``dtype`` option)."""
        from alignbench.devices import matmul_dtype

        name, why = matmul_dtype(self.config.dtype, self.device)
        return (torch.bfloat16 if name == "bf16" else torch.float32), name, why

    def _cap(self, src, anchors: torch.Tensor, name: str) -> torch.Tensor:
        c = self.config
        compile = self._compile_fit if self._compile_fit is not None else self._use_compile(src.n, src.T)
        return cap_profiles(src, anchors, c.tau_p, chunk_elems=c.chunk_elems, dtype=self.matmul_dtype()[0],
                            compile=compile, native=c.compile != "inductor",
                            workspace=self._workspace, name=name)

    def _image_profiles(self, f: ImageFeatures, rows: np.ndarray, A: torch.Tensor) -> torch.Tensor:
        """Profiles of images at absolute ``rows`` (sorted for memmap reads by the caller)."""
        pool = self.config.pool
        if pool == "cap":
            return self._cap(self._image_tokens(f, rows), A, "image")
        if pool == "mean":
            return self._mean_tokens_images(f, rows).to(self.device) @ A.T
        x = torch.from_numpy(np.asarray(f.pooled[rows], dtype=np.float32)).to(self.device)
        return torch.nn.functional.normalize(x, dim=-1) @ A.T

    def _image_tokens(self, f: ImageFeatures, rows: np.ndarray):
        """The image tokens of ``rows`` for CAP: gathered on the device when the training tokens are resident
        there, else streamed from the memmap with the next block read ahead (alignbench.token_stream)."""
        from alignbench.token_stream import PrefetchTokens

        for prep in self._prepared:
            src = prep.source(f.tokens, rows) if hasattr(prep, "tokens") else None
            if src is not None:
                return src
        res = self._resident
        if res is not None and res[0] is f.tokens and res[1].holds(f.tokens, rows):
            return res[1].source(rows, self.mu_v)
        return PrefetchTokens(f.tokens, rows, self.device, shift=self.mu_v)

    def _mean_tokens_images(self, f: ImageFeatures, rows: np.ndarray) -> torch.Tensor:
        """Mean of the L2-normalised tokens per image (pool=mean), streamed in chunks."""
        mu_v = None if self.mu_v is None else self.mu_v.cpu()
        return mean_unit_tokens(f.tokens, rows, mu_v, chunk_rows(f.n_tokens, f.token_dim, self.config.chunk_elems))

    def _text_profiles(self, f: TextFeatures, idx: np.ndarray, A: torch.Tensor) -> torch.Tensor:
        """Profiles of texts ``idx`` of the view ``f``, padded to their own longest."""
        pool = self.config.pool
        if pool == "cls":
            x = torch.from_numpy(np.asarray(f.pooled[absolute_rows(f, idx)], dtype=np.float32)).to(self.device)
            return torch.nn.functional.normalize(x, dim=-1) @ A.T
        if pool == "cap":
            for prep in self._prepared:
                hit = prep.source(f.tokens, absolute_rows(f, idx)) if hasattr(prep, "flat") else None
                if hit is not None:  # prepared captions, sorted by length: back to the order of idx
                    src, order = hit
                    return self._cap(src, A, "text")[torch.from_numpy(np.argsort(order)).to(self.device)]
        tok_dtype = torch.float16 if f.tokens.dtype == np.float16 else torch.float32
        tokens, mask = f.token_batch(idx, dtype=tok_dtype)
        if self.mu_t is not None:  # shift real tokens only: padding stays zero (and masked)
            tokens = (tokens.float() - self.mu_t) * mask.unsqueeze(-1)
        if pool == "cap":
            return self._cap(DenseTokens(tokens, mask), A, "text")
        zn = torch.nn.functional.normalize(tokens.float(), dim=-1) * mask.unsqueeze(-1)
        mean = zn.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return mean.to(self.device) @ A.T

    def _pair_profiles(self, pairs: Pairs, idx: np.ndarray, Av: torch.Tensor, At: torch.Tensor):
        """(image, text) profiles of pairs ``idx``; each distinct image is pooled once."""
        img_rows = absolute_rows(pairs.images, pairs.image_index[idx])
        uniq, inverse = np.unique(img_rows, return_inverse=True)
        pv = self._image_profiles(pairs.images, uniq, Av)[torch.from_numpy(inverse.reshape(-1)).to(self.device)]
        pt = self._text_profiles(pairs.texts, pairs.text_index[idx], At)
        return pv, pt

    # -- fitting ------------------------------------------------------------------
    def fit(self, train: Pairs, val: Pairs | None = None, *, seed: int = 0) -> None:
        cfg = self.config
        check_pairs(train, val, tokens=cfg.pool != "cls")
        if cfg.pool == "cls":
            d_v, d_t = train.images.dim, train.texts.dim
        else:
            d_v, d_t = train.images.token_dim, train.texts.token_dim
        self.mu_v, self.mu_t = training_token_means(train, self.config.pool, self.config.center, self.device)
        self._init_anchors(d_v, d_t, seed)
        _, matmul, why = self.matmul_dtype()
        info: dict[str, Any] = {"n_train": len(train), "K": cfg.K, "pool": cfg.pool,
                                "n_params": cfg.K * (d_v + d_t), "center": cfg.center}

        steps_per_epoch = math.ceil(len(train) / min(cfg.batch_size, len(train)))
        epoch_starts: list[float] = []

        def step_loss(idx: np.ndarray, step: int) -> torch.Tensor:
            if step == 0:  # training restarts at step 0 after an LR range test
                epoch_starts.clear()
            if step % steps_per_epoch == 0:
                epoch_starts.append((time.perf_counter(), time.process_time()))
            Av, At = self.anchors()
            pv, pt = self._pair_profiles(train, np.sort(idx), Av, At)
            return info_nce(pv, pt, cfg.temperature)

        val_loss = None
        if val is not None and len(val) >= 2:
            vidx = validation_rows(len(val), cfg.val_max_pairs, seed)
            if len(vidx) < len(val):
                info["val_pairs_used"] = cfg.val_max_pairs
            info["val_pairs"] = len(val)

            def _val_loss() -> float:
                Av, At = self.anchors()
                pv, pt = self._pair_profiles(val, vidx, Av, At)
                return float(info_nce(pv, pt, cfg.temperature))

            val_loss = _val_loss

        self._workspace = Workspace()
        if cfg.pool == "cap":
            self._resident, info["token_source"] = place_training_tokens(
                train.images, absolute_rows(train.images, train.image_index), self.device)
            if self.device.type == "cpu":
                info["prepared_tokens"] = self._prepare_tokens(train, val.subset(vidx) if val_loss else None)
                if info["prepared_tokens"].startswith("train images"):
                    info["token_source"] = "prepared in memory (normalised once per fit)"
        n_tok = train.images.n_tokens if cfg.pool == "cap" else 0
        self._compile_fit = cfg.pool == "cap" and self._use_compile(len(train) * max(cfg.max_epochs, 1), n_tok,
                                                                       COMPILE_MIN_SIMS_FIT)
        try:
            result = train_contrastive(
                [self.A_v, self.A_t], step_loss, len(train), val_loss=val_loss, config=cfg.train_config(),
                seed=seed, desc="pal",
            )
        finally:
            self._workspace = self._resident = None
            self._prepared = []
            compiled, self._compile_fit = self._compile_fit, None
        info.update(result)
        # the trainer reports its own (fp32) InfoNCE dtype; PAL's record is CAP's matmul dtype
        info.update(dtype=matmul if cfg.pool == "cap" else "fp32", dtype_reason=why if cfg.pool == "cap" else
                    "pool without token-anchor matmuls", infonce_dtype=result.get("dtype"))
        ends = epoch_starts[1:] + [(time.perf_counter(), time.process_time())]
        # wall and process-CPU time of each epoch (training steps + its validation check), for speed reports
        info["epoch_times_s"] = [round(e[0] - s_[0], 4) for s_, e in zip(epoch_starts, ends)]
        info["epoch_cpu_s"] = [round(e[1] - s_[1], 4) for s_, e in zip(epoch_starts, ends)]
        with torch.no_grad():  # store exactly unit-norm rows (what every forward used)
            self.A_v.copy_(torch.nn.functional.normalize(self.A_v, dim=-1))
            self.A_t.copy_(torch.nn.functional.normalize(self.A_t, dim=-1))
        info["deviations"] = self._deviations()
        if cfg.pool == "cap":
            info["compiled_cap"] = bool(compiled and not compile_failed())
            info["cap_kernels"] = kernel_backend(bool(compiled), cfg.compile != "inductor", self.device)
        self.fit_info = info

    def _prepare_tokens(self, train: Pairs, val: Pairs | None) -> str:
        """Normalise the fit's tokens once, in the matmul dtype, where memory allows (alignbench.prepared_tokens)."""
        from alignbench.prepared_tokens import prepare_pairs

        dtype, name, _ = self.matmul_dtype()
        self._prepared, what = prepare_pairs({"train": train, "val": val}, dtype, name, self.mu_v, self.mu_t)
        return what

    def _deviations(self) -> list[str]:
        default = PALConfig()
        out = []
        for f in fields(self.config):
            v, d = getattr(self.config, f.name), getattr(default, f.name)
            if v != d and f.name not in ("chunk_elems", "compile", "val_max_pairs", *REFERENCE_TRAINER):
                out.append(f"{f.name}={v!r} (faithful default {d!r})")
        return out + trainer_deviations(self.config)

    # -- embedding ------------------------------------------------------------------
    def _finish(self, prof: torch.Tensor, side: str) -> torch.Tensor:
        prof = prof.detach().float().cpu()
        if not torch.isfinite(prof).all():
            raise FeatureError(f"{side} features contain non-finite values (NaN or inf); re-encode or clean them")
        return torch.nn.functional.normalize(prof, dim=-1)

    @torch.no_grad()
    def embed_image(self, f: ImageFeatures) -> torch.Tensor:
        Av, _ = self.anchors()
        check_dim(f, Av.shape[1], "image", what="dim" if self.config.pool == "cls" else "token_dim")
        rows = absolute_rows(f)
        order = np.argsort(rows, kind="stable")
        prof = torch.empty(len(rows), self.config.K)
        if len(rows):
            prof[torch.from_numpy(order)] = self._image_profiles(f, rows[order], Av).float().cpu()
        return self._finish(prof, "image")

    @torch.no_grad()
    def embed_text(self, f: TextFeatures) -> torch.Tensor:
        _, At = self.anchors()
        check_dim(f, At.shape[1], "text", what="dim" if self.config.pool == "cls" else "token_dim")
        n = len(f)
        prof = torch.empty(n, self.config.K)
        # Group captions of similar length so padding stays short (results do not depend on it).
        order = np.argsort(f.lengths(), kind="stable") if self.config.pool != "cls" else np.arange(n)
        for s in range(0, n, TEXT_EMBED_ROWS):
            idx = order[s : s + TEXT_EMBED_ROWS]
            prof[torch.from_numpy(idx)] = self._text_profiles(f, idx, At).float().cpu()
        return self._finish(prof, "text")

    @torch.no_grad()
    def patch_scores(self, f: ImageFeatures, classes: torch.Tensor) -> torch.Tensor:
        """Anchor codebook: S = cos(patch, A_v) (P×K, not normalised over K), scores S·Cᵀ.

        Patches are the tokens after the prefix, as PAL was trained on them (not
        final-normed); with pool=cls the anchors live in the global feature's
        space, so the patches go through the final norm instead.
        """
        Av, _ = self.anchors()
        C = classes.float().to(self.device)
        if self.config.pool == "cls":
            patches = f.patch_tensor(normed=True)
            S = torch.nn.functional.normalize(patches.to(self.device), dim=-1) @ Av.T
            return (S @ C.T).cpu()
        check_dim(f, Av.shape[1], "image", what="token_dim")
        P = f.n_tokens - f.n_prefix
        out = torch.empty(len(f), P, C.shape[0])
        step = chunk_rows(P, self.config.K, self.config.chunk_elems)
        for s in range(0, len(f), step):
            z = f.patch_tensor(np.arange(s, min(s + step, len(f)))).to(self.device)
            if self.mu_v is not None:
                z = z - self.mu_v
            S = torch.nn.functional.normalize(z, dim=-1) @ Av.T
            out[s : s + len(z)] = (S @ C.T).cpu()
        return out

    # -- persistence ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.A_v is None:
            return {}
        # The parameters themselves (unit-norm rows after fit); re-normalising here would
        # change the last bits and break exact round trips.
        out = {"A_v": self.A_v.detach().cpu().clone(), "A_t": self.A_t.detach().cpu().clone()}
        for name in ("mu_v", "mu_t"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name).detach().cpu().clone()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.A_v = torch.nn.Parameter(state["A_v"].float().to(self.device))
        self.A_t = torch.nn.Parameter(state["A_t"].float().to(self.device))
        self.mu_v = state["mu_v"].float().to(self.device) if "mu_v" in state else None
        self.mu_t = state["mu_t"].float().to(self.device) if "mu_t" in state else None

    def num_parameters(self) -> int:
        """K·(d_v + d_t): the anchors are the only parameters."""
        return 0 if self.A_v is None else int(self.A_v.numel() + self.A_t.numel())

    def to(self, device: str | torch.device) -> "PAL":
        super().to(device)
        if self.A_v is not None:
            self.A_v = torch.nn.Parameter(self.A_v.detach().to(self.device))
            self.A_t = torch.nn.Parameter(self.A_t.detach().to(self.device))
        self.mu_v = None if self.mu_v is None else self.mu_v.to(self.device)
        self.mu_t = None if self.mu_t is None else self.mu_t.to(self.device)
        return self
