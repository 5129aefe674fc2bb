"""PAL's cross-attention pooling (CAP) as one fused, chunked autograd function.

CAP per modality (METHODS.md): ``sim = norm(Z)·norm(A)ᵀ`` (B×T×K),
``w = softmax_over_tokens(sim/τ_p)`` with padded tokens excluded,
``profile = Σ_t w ⊙ sim``.

Why a hand-written backward: the B×T×K similarity tensor is the only large
thing in PAL (4096 images × 257 tokens × 512 anchors = 2.1 GB in fp32), and
written as plain autograd ops every elementwise step (divide, max, exp, sum,
multiply, …) stores another tensor of that size and streams it through main
memory, which made an epoch ≈ 3× the cost of the matmuls alone.  Here:

* the forward writes each chunk of similarities straight into one saved buffer
  and does the softmax-weighted sum while the chunk is still in cache; only
  the similarities and a B×K log-normaliser are kept for the backward;
* the backward uses the closed form ``∂p/∂s_t = w_t (1 + (s_t − p)/τ_p)``,
  recomputing ``w`` from the saved similarities chunk by chunk, and
  accumulates ``∂L/∂A = Σ g_sᵀ·norm(Z)`` with one matmul per chunk;
* tokens are fetched (and normalised) per chunk through a :class:`TokenSource`,
  so image tokens stream from the fp16 memmap and never exist in float32 all at
  once.

The result equals the naive formula (tests/test_pal.py checks it against an
explicit float64 loop and against autograd of the plain expression).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch

# Similarity written at padded token positions: exp((PAD - max)/τ_p) underflows
# to exactly 0 for any τ_p ≤ 1, so padded tokens get zero weight (the −∞ of the
# formula) while the backward stays finite (no 0·∞).
PAD_SIM = -1.0e4


class TokenSource(Protocol):
    """Rows of L2-normalised tokens, fetched a chunk at a time."""

    n: int  # rows
    T: int  # tokens per row (padded length for text)
    d: int

    def block(self, start: int, stop: int, out: torch.Tensor) -> torch.Tensor | None:
        """Fill ``out`` (stop−start, T, d) with normalised tokens; return the pad mask (True = pad) or None."""


def normalise_(z: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last dim in place (zero vectors, i.e. padding, stay zero)."""
    n = torch.linalg.vector_norm(z, dim=-1, keepdim=True)
    return z.div_(n.clamp_(min=1e-12))


@dataclass
class DenseTokens:
    """A TokenSource over tokens already in memory: (n, T, d) plus optional (n, T) True = real mask."""

    tokens: torch.Tensor
    mask: torch.Tensor | None = None
    normalised: bool = False

    def __post_init__(self) -> None:
        self.n, self.T, self.d = (int(s) for s in self.tokens.shape)
        self._pad = None if self.mask is None else ~self.mask.bool()

    def block(self, start: int, stop: int, out: torch.Tensor) -> torch.Tensor | None:
        out.copy_(self.tokens[start:stop])
        if not self.normalised:
            normalise_(out)
        return None if self._pad is None else self._pad[start:stop]


@dataclass
class ArrayTokens:
    """A TokenSource reading rows of a (possibly memory-mapped, fp16) (N, T, d) array.

    ``rows`` are absolute row indices; sorted rows read a memmap faster.
    """

    array: np.ndarray
    rows: np.ndarray

    def __post_init__(self) -> None:
        self.n = len(self.rows)
        self.T, self.d = int(self.array.shape[1]), int(self.array.shape[2])

    def block(self, start: int, stop: int, out: torch.Tensor) -> torch.Tensor | None:
        out.copy_(torch.from_numpy(np.ascontiguousarray(self.array[self.rows[start:stop]])))
        normalise_(out)
        return None


def chunk_rows(T: int, K: int, chunk_elems: int) -> int:
    """Rows per chunk so one chunk of similarities holds about ``chunk_elems`` values."""
    return max(1, chunk_elems // max(1, T * K))


def _forward_chunks(
    src: TokenSource,
    anchors: torch.Tensor,
    tau: float,
    chunk_elems: int,
    dtype: torch.dtype,
    saved: torch.Tensor | None,
    lse_out: torch.Tensor | None,
) -> torch.Tensor:
    """Profiles (n, K) float32; fills ``saved`` (n, T, K) and ``lse_out`` (n, K) when given."""
    n, T, d = src.n, src.T, src.d
    K = anchors.shape[0]
    dev = anchors.device
    rows = chunk_rows(T, K, chunk_elems)
    A = anchors.detach().to(dtype)
    prof = torch.empty(n, K, device=dev)
    z = torch.empty(min(rows, n), T, d, device=dev)
    zc = z if dtype == torch.float32 else torch.empty(z.shape, dtype=dtype, device=dev)
    sims = None if saved is not None else torch.empty(min(rows, n), T, K, dtype=dtype, device=dev)
    s32_buf = None if dtype == torch.float32 else torch.empty(min(rows, n), T, K, device=dev)
    work = torch.empty(min(rows, n), T, K, device=dev)
    inv_tau = 1.0 / tau
    for s0 in range(0, n, rows):
        s1 = min(s0 + rows, n)
        m = s1 - s0
        pad = src.block(s0, s1, z[:m])
        if zc is not z:
            zc[:m].copy_(z[:m])
        sc = saved[s0:s1] if saved is not None else sims[:m]  # type: ignore[index]
        torch.mm(zc[:m].view(m * T, d), A.t(), out=sc.view(m * T, K))
        if pad is not None:
            sc.masked_fill_(pad.unsqueeze(-1), PAD_SIM)
        s32 = sc if s32_buf is None else s32_buf[:m].copy_(sc)
        mx = s32.amax(dim=1)  # (m, K)
        w = work[:m]
        torch.sub(s32, mx.unsqueeze(1), out=w)
        w.mul_(inv_tau).exp_()
        norm = w.sum(dim=1)
        w.mul_(s32)
        torch.div(w.sum(dim=1), norm, out=prof[s0:s1])
        if lse_out is not None:
            torch.add(norm.log_(), mx, alpha=inv_tau, out=lse_out[s0:s1])
    return prof


class _CAPFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, anchors, src, tau, chunk_elems, dtype):  # type: ignore[override]
        K = anchors.shape[0]
        saved = torch.empty(src.n, src.T, K, dtype=dtype, device=anchors.device)
        lse = torch.empty(src.n, K, device=anchors.device)
        with torch.autocast(anchors.device.type, enabled=False):
            prof = _forward_chunks(src, anchors, tau, chunk_elems, dtype, saved, lse)
        ctx.src, ctx.tau, ctx.chunk_elems, ctx.dtype = src, tau, chunk_elems, dtype
        ctx.saved_sims = saved
        ctx.save_for_backward(anchors, lse, prof)
        return prof

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        anchors, lse, prof = ctx.saved_tensors
        src, tau, dtype, S = ctx.src, ctx.tau, ctx.dtype, ctx.saved_sims
        n, T, d, K = src.n, src.T, src.d, anchors.shape[0]
        dev = anchors.device
        inv_tau = 1.0 / tau
        grad = grad.float()
        # ∂p/∂s_t = w_t (1 + (s_t − p)/τ)  ⇒  g_s = w ⊙ (a + b·s) with a = g(1 − p/τ), b = g/τ.
        a = grad * (1.0 - prof * inv_tau)
        b = grad * inv_tau
        rows = chunk_rows(T, K, ctx.chunk_elems)
        z = torch.empty(min(rows, n), T, d, device=dev)
        zc = z if dtype == torch.float32 else torch.empty(z.shape, dtype=dtype, device=dev)
        s32_buf = None if dtype == torch.float32 else torch.empty(min(rows, n), T, K, device=dev)
        w_buf = torch.empty(min(rows, n), T, K, device=dev)
        g_buf = torch.empty(min(rows, n), T, K, device=dev)
        gc_buf = g_buf if dtype == torch.float32 else torch.empty(g_buf.shape, dtype=dtype, device=dev)
        gA = torch.zeros(K, d, device=dev)
        with torch.autocast(dev.type, enabled=False):
            for s0 in range(0, n, rows):
                s1 = min(s0 + rows, n)
                m = s1 - s0
                src.block(s0, s1, z[:m])
                s32 = S[s0:s1] if s32_buf is None else s32_buf[:m].copy_(S[s0:s1])
                w = w_buf[:m]
                torch.mul(s32, inv_tau, out=w)
                w.sub_(lse[s0:s1].unsqueeze(1)).exp_()  # padded tokens: exactly 0
                g = g_buf[:m]
                torch.mul(s32, b[s0:s1].unsqueeze(1), out=g)
                g.add_(a[s0:s1].unsqueeze(1)).mul_(w)
                if gc_buf is g_buf:
                    gA.addmm_(g.view(m * T, K).t(), z[:m].view(m * T, d))
                else:
                    gc_buf[:m].copy_(g)
                    zc[:m].copy_(z[:m])
                    gA.add_(torch.mm(gc_buf[:m].view(m * T, K).t(), zc[:m].view(m * T, d)).float())
        ctx.saved_sims = None
        return gA.to(anchors.dtype), None, None, None, None


def cap_profiles(
    src: TokenSource,
    anchors: torch.Tensor,
    tau: float,
    *,
    chunk_elems: int = 1 << 22,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """CAP profiles (n, K), float32, NOT yet L2-normalised; differentiable w.r.t. ``anchors``.

    ``anchors`` must already be row-normalised (K, d).  ``dtype`` is the dtype
    of the token–anchor matmuls and of the saved similarities (fp32 or bf16);
    the softmax and sums run in fp32.  Without grad, nothing is saved.
    """
    if torch.is_grad_enabled() and anchors.requires_grad:
        return _CAPFunction.apply(anchors, src, float(tau), int(chunk_elems), dtype)
    with torch.autocast(anchors.device.type, enabled=False):
        return _forward_chunks(src, anchors, float(tau), int(chunk_elems), dtype, None, None)


def cap_reference(tokens: torch.Tensor, mask: torch.Tensor | None, anchors: torch.Tensor, tau: float) -> torch.Tensor:
    """The CAP formula in plain autograd ops (unnormalised profiles): reference for tests and small inputs."""
    zn = torch.nn.functional.normalize(tokens, dim=-1)
    an = torch.nn.functional.normalize(anchors, dim=-1)
    sim = zn @ an.T  # (B, T, K)
    logits = sim / tau
    if mask is not None:
        logits = logits.masked_fill(~mask.bool().unsqueeze(-1), float("-inf"))
    w = torch.softmax(logits, dim=1)
    return (w * sim).sum(1)


Pool = Callable[[TokenSource, torch.Tensor], torch.Tensor]
