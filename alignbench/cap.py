"""PAL's cross-attention pooling (CAP) as one fused, chunked autograd function.

CAP per modality (METHODS.md): ``sim = norm(Z)·norm(A)ᵀ`` (B×T×K),
``w = softmax_over_tokens(sim/τ_p)`` with padded tokens excluded,
``profile = Σ_t w ⊙ sim``.

Why a hand-written backward: the B×T×K similarity tensor is the only large
thing in PAL (4096 images × 257 tokens × 512 anchors = 2.1 GB in fp32), and
written as plain autograd ops every elementwise step (divide, max, exp, sum,
multiply, …) stores another tensor of that size and streams it through main
memory, which made an epoch cost several times the matmuls alone.  Here:

* the forward writes each chunk of similarities straight into one saved buffer
  and does the softmax-weighted sum while the chunk is still in cache; only
  the similarities and a B×K log-normaliser are kept for the backward;
* the backward uses the closed form ``∂p/∂s_t = w_t (1 + (s_t − p)/τ_p)``,
  recomputing ``w`` from the saved similarities chunk by chunk into one
  reused gradient buffer (no chunk-sized allocation per call), and
  accumulates ``∂L/∂A = Σ g_sᵀ·norm(Z)`` with one matmul per chunk;
* tokens are fetched (and normalised) per chunk through a :class:`TokenSource`,
  so image tokens stream from the fp16 memmap and never exist in float32 all at
  once (they are fetched again in the backward rather than kept);
* the three elementwise steps (normalise tokens; softmax-weighted sum; the
  gradient coefficients) are plain functions that ``torch.compile`` fuses into
  one loop each (faster than eager ops on CPU, benchmarks/bench_pal.py; optional, with an eager
  fallback), and the saved-similarity buffer can be reused across steps
  (:class:`Workspace`) so it is not page-faulted in again every step;
* on the CPU the two exponential passes run in C++ with ATen's cheaper ``exp_u20``
  (:mod:`alignbench.cap_native`) where that extension builds.

The result equals the naive formula (tests/test_pal.py checks it against an
explicit float64 loop and against autograd of the plain expression).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from alignbench.cap_kernels import _call, _use_native
from alignbench.mapped_rows import take_rows


class TokenSource(Protocol):
    """Rows of raw (un-normalised) tokens, fetched a chunk at a time."""

    n: int  # rows
    T: int  # tokens per row (padded length for text)
    d: int

    def block(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tokens (stop−start, T, d) of any float dtype, and the (stop−start, T) bool mask (True = real) or None.

        Optional, for sources that know better (alignbench.prepared_tokens): ``normalized = True`` says
        blocks are already L2-normalised in the matmul dtype (CAP skips its normalising step), and
        ``blocks(K, chunk_elems)`` lists (start, stop, tokens per row) when rows differ in length
        (captions sorted by length, each block padded to its own longest).
        """


@dataclass
class DenseTokens:
    """A TokenSource over tokens already in memory: (n, T, d) plus an optional (n, T) True = real mask."""

    tokens: torch.Tensor
    mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.n, self.T, self.d = (int(s) for s in self.tokens.shape)
        if self.mask is not None:
            self.mask = self.mask.bool()

    def block(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.tokens[start:stop], None if self.mask is None else self.mask[start:stop]


@dataclass
class ArrayTokens:
    """A TokenSource reading rows of a (possibly memory-mapped, fp16) (N, T, d) array.

    ``rows`` are absolute row indices; sorted rows read a memmap faster.
    """

    array: np.ndarray
    rows: np.ndarray
    shift: torch.Tensor | None = None  # (d,) subtracted from every token (PAL's ``center`` option)

    def __post_init__(self) -> None:
        self.n = len(self.rows)
        self.T, self.d = int(self.array.shape[1]), int(self.array.shape[2])

    def block(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = torch.from_numpy(take_rows(self.array, self.rows[start:stop]))
        return (z if self.shift is None else z.float() - self.shift), None


def chunk_rows(T: int, K: int, chunk_elems: int) -> int:
    """Rows per chunk so one chunk of similarities holds about ``chunk_elems`` values."""
    return max(1, chunk_elems // max(1, T * K))


def _blocks(src: TokenSource, K: int, chunk_elems: int) -> list[tuple[int, int, int]]:
    """(start, stop, tokens per row) of each chunk: the source's own plan, else ``src.T`` for every row."""
    plan = getattr(src, "blocks", None)
    if plan is not None:
        return plan(K, chunk_elems)
    rows = chunk_rows(src.T, K, chunk_elems)
    return [(s, min(s + rows, src.n), src.T) for s in range(0, src.n, rows)]


def _normalised_block(src: TokenSource, start: int, stop: int, dtype: torch.dtype, dev: torch.device,
                      compile: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Block ``start:stop`` as L2-normalised tokens in ``dtype`` on ``dev`` (prepared sources: as they are)."""
    z, valid = src.block(start, stop)
    z = z.to(dev, non_blocking=True)
    zn = z.to(dtype) if getattr(src, "normalized", False) else _call("prep", compile, z, dtype)
    return zn, None if valid is None else valid.to(dev)


def _forward_chunks(
    src: TokenSource,
    anchors: torch.Tensor,
    tau: float,
    chunk_elems: int,
    dtype: torch.dtype,
    compile: bool,
    saved: torch.Tensor | None,
    lse_out: torch.Tensor | None,
    native: bool = True,
) -> torch.Tensor:
    """Profiles (n, K) float32; fills ``saved`` (flat, block after block) and ``lse_out`` (n, K) when given."""
    n, d = src.n, src.d
    K = anchors.shape[0]
    dev = anchors.device
    blocks = _blocks(src, K, chunk_elems)
    A_t = anchors.detach().to(dtype).t()
    prof = torch.empty(n, K, device=dev)
    biggest = max(((s1 - s0) * Tb for s0, s1, Tb in blocks), default=0)
    scratch = None if saved is not None else torch.empty(biggest, K, dtype=dtype, device=dev)
    inv_tau = 1.0 / tau
    native = _use_native(native, dev)
    off = 0
    for s0, s1, Tb in blocks:
        m = s1 - s0
        zn, valid = _normalised_block(src, s0, s1, dtype, dev, compile)
        sc = saved[off : off + m * Tb * K].view(m * Tb, K) if saved is not None else scratch[: m * Tb]  # type: ignore[index]
        off += m * Tb * K
        torch.mm(zn.reshape(m * Tb, d), A_t, out=sc)
        p, lse = _call("fwd", compile, sc.view(m, Tb, K), valid, inv_tau, native=native)
        prof[s0:s1] = p
        if lse_out is not None:
            lse_out[s0:s1] = lse
    return prof


def saved_numel(src: TokenSource, K: int, chunk_elems: int) -> int:
    """Similarities CAP saves for the backward of ``src`` (Σ rows × tokens per row × K over its blocks)."""
    return sum((s1 - s0) * Tb for s0, s1, Tb in _blocks(src, K, chunk_elems)) * K


class Workspace:
    """Reusable buffers for the saved similarities, one per name.

    Why: a fresh 2 GB buffer every step costs ~0.2 s/GB of page faults on the
    CPU.  Only safe when each name's forward is followed by its backward before
    the next forward with that name (a training loop).
    """

    def __init__(self) -> None:
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        numel = int(np.prod(shape))
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != device:
            self._bufs.pop(name, None)
            buf = self._bufs[name] = torch.empty(numel, dtype=dtype, device=device)
        return buf[:numel].view(shape)


class _CAPFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, anchors, src, tau, chunk_elems, dtype, compile, workspace, name, native):  # type: ignore[override]
        K = anchors.shape[0]
        shape = (saved_numel(src, K, chunk_elems),)
        if workspace is not None:
            saved = workspace.get(name, shape, dtype, anchors.device)
        else:
            saved = torch.empty(shape, dtype=dtype, device=anchors.device)
        lse = torch.empty(src.n, K, device=anchors.device)
        with torch.autocast(anchors.device.type, enabled=False):
            prof = _forward_chunks(src, anchors, tau, chunk_elems, dtype, compile, saved, lse, native)
        ctx.src, ctx.tau, ctx.chunk_elems, ctx.dtype, ctx.compile = src, tau, chunk_elems, dtype, compile
        ctx.native = _use_native(native, anchors.device)
        ctx.workspace, ctx.name = workspace, name
        ctx.saved_sims = saved
        ctx.save_for_backward(anchors, lse, prof)
        return prof

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        anchors, lse, prof = ctx.saved_tensors
        src, tau, dtype, S, compile = ctx.src, ctx.tau, ctx.dtype, ctx.saved_sims, ctx.compile
        d, K = src.d, anchors.shape[0]
        dev = anchors.device
        inv_tau = 1.0 / tau
        grad = grad.float()
        # ∂p/∂s_t = w_t (1 + (s_t − p)/τ)  ⇒  g_s = w ⊙ (a + b·s) with a = g(1 − p/τ), b = g/τ.
        a = grad * (1.0 - prof * inv_tau)
        b = grad * inv_tau
        gA = torch.zeros(K, d, device=dev)
        blocks = _blocks(src, K, ctx.chunk_elems)
        shape = (max(((s1 - s0) * Tb for s0, s1, Tb in blocks), default=0) * K,)
        ws = ctx.workspace
        g_buf = ws.get(ctx.name + "/grad", shape, dtype, dev) if ws is not None else torch.empty(shape, dtype=dtype, device=dev)
        with torch.autocast(dev.type, enabled=False):
            off = 0
            for s0, s1, Tb in blocks:
                m = s1 - s0
                zn, valid = _normalised_block(src, s0, s1, dtype, dev, compile)
                Sb = S[off : off + m * Tb * K].view(m, Tb, K)
                off += m * Tb * K
                g = g_buf[: m * Tb * K].view(m, Tb, K)
                _call("bwd", compile, Sb, valid, lse[s0:s1], a[s0:s1], b[s0:s1], inv_tau, g, native=ctx.native)
                if dtype == torch.float32:
                    gA.addmm_(g.view(m * Tb, K).t(), zn.reshape(m * Tb, d))
                else:
                    gA.add_(torch.mm(g.view(m * Tb, K).t(), zn.reshape(m * Tb, d)).float())
        ctx.saved_sims = ctx.workspace = None
        return gA.to(anchors.dtype), None, None, None, None, None, None, None, None


def cap_profiles(
    src: TokenSource,
    anchors: torch.Tensor,
    tau: float,
    *,
    chunk_elems: int = 1 << 22,
    dtype: torch.dtype = torch.float32,
    compile: bool = False,
    workspace: Workspace | None = None,
    name: str = "cap",
    native: bool = True,
) -> torch.Tensor:
    """CAP profiles (n, K), float32, NOT yet L2-normalised; differentiable w.r.t. ``anchors``.

    ``anchors`` must already be row-normalised (K, d).  ``dtype`` is the dtype
    of the token–anchor matmuls and of the saved similarities (fp32 or bf16);
    the softmax and sums run in fp32.  ``compile`` fuses the elementwise steps
    with torch.compile (falls back to eager if that fails), the two exponential passes in C++ on
    the CPU unless ``native`` is False (:mod:`alignbench.cap_native`).  Without grad,
    nothing is saved.  ``workspace``/``name``: reuse the buffer of saved
    similarities across training steps (see :class:`Workspace`).
    """
    if torch.is_grad_enabled() and anchors.requires_grad:
        return _CAPFunction.apply(anchors, src, float(tau), int(chunk_elems), dtype, bool(compile), workspace, name,
                                  bool(native))
    with torch.autocast(anchors.device.type, enabled=False):
        return _forward_chunks(src, anchors, float(tau), int(chunk_elems), dtype, bool(compile), None, None,
                               bool(native))


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


