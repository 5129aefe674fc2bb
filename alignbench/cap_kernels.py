"""CAP's three elementwise kernels (normalise tokens; softmax-weighted sums; gradient coefficients).

Why a module: :mod:`alignbench.cap` is the chunked autograd function; these are the per-chunk
loops it calls, in three implementations chosen here — eager PyTorch ops (the reference),
torch.compile'd (each fused into one loop) and, on the CPU, the two exponential passes in C++
(:mod:`alignbench.cap_native`) — with the fallback to eager when compiling fails.
"""
from __future__ import annotations

import logging
import warnings
from typing import Any, Callable

import torch

log = logging.getLogger(__name__)

# exp((s − 1)/τ) ≥ exp(−2/τ) stays a normal float32 (> 1e-38) while 2/τ < 87.
_FIXED_SHIFT_MAX_INV_TAU = 40.0


# -- the elementwise parts, written so torch.compile can fuse each into one loop ----------
def _prep(z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Raw tokens → L2-normalised tokens in the matmul dtype (zero/padding rows stay zero)."""
    z = z.float()
    return (z / torch.linalg.vector_norm(z, dim=-1, keepdim=True).clamp(min=1e-12)).to(dtype)


def _fwd_stats(s: torch.Tensor, valid: torch.Tensor | None, inv_tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Profile Σ_t softmax_t(s/τ)·s and the log-normaliser, over valid tokens; (m, K) each.

    Cosines are ≤ 1, so 1 is a safe softmax shift (no max pass) as long as
    exp(−2/τ) does not underflow; for very small τ the per-anchor max is used.
    """
    s = s.float()
    if valid is not None:
        s = s.masked_fill(~valid.unsqueeze(-1), float("-inf"))
    if inv_tau <= _FIXED_SHIFT_MAX_INV_TAU:
        shift = torch.ones_like(s[:, :1])
    else:
        shift = s.amax(dim=1, keepdim=True)
    e = torch.exp((s - shift) * inv_tau)
    norm = e.sum(dim=1)
    if valid is not None:
        s = s.masked_fill(~valid.unsqueeze(-1), 0.0)
    prof = (e * s).sum(dim=1) / norm
    return prof, norm.log() + shift.squeeze(1) * inv_tau


def _fwd_stats_fused(s: torch.Tensor, valid: torch.Tensor | None, inv_tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_fwd_stats` written for torch.compile: the exponential appears once per sum.

    Why: with one shared ``e``, inductor stores ``e`` as a full float32 tensor and reads it back
    (three passes over the chunk); written twice, both sums fuse into one pass over ``s`` that
    computes each exponential once.  Eager, this form would compute them twice: it is only compiled.
    """
    s = s.float()
    s_in = s if valid is None else s.masked_fill(~valid.unsqueeze(-1), float("-inf"))
    s_out = s if valid is None else s.masked_fill(~valid.unsqueeze(-1), 0.0)
    if inv_tau <= _FIXED_SHIFT_MAX_INV_TAU:
        shift = torch.ones_like(s[:, :1])
    else:
        shift = s_in.amax(dim=1, keepdim=True)
    norm = torch.exp((s_in - shift) * inv_tau).sum(dim=1)
    prof = (torch.exp((s_in - shift) * inv_tau) * s_out).sum(dim=1) / norm
    return prof, norm.log() + shift.squeeze(1) * inv_tau


def _bwd_coef(
    s: torch.Tensor, valid: torch.Tensor | None, lse: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
    inv_tau: float, out: torch.Tensor,
) -> None:
    """``out`` (the matmul dtype) ← ∂L/∂s = w ⊙ (a + b·s), w = exp(s/τ − lse) recomputed; padded tokens get 0.

    Why into ``out``: one reused buffer; a fresh chunk-sized tensor per call is page-faulted in again each time.
    """
    s = s.float()
    w = torch.exp(s * inv_tau - lse.unsqueeze(1))
    g = w * (a.unsqueeze(1) + b.unsqueeze(1) * s)
    if valid is not None:
        g = g.masked_fill(~valid.unsqueeze(-1), 0.0)
    out.copy_(g)


_EAGER = {"prep": _prep, "fwd": _fwd_stats, "bwd": _bwd_coef}
_COMPILED: dict[str, Callable] | None = None
_COMPILE_FAILED = False


def _kernels(compile: bool, native: bool = True) -> dict[str, Callable]:
    """The three elementwise kernels: eager, or (``compile``) torch.compile'd with the two exponential
    passes in C++ where ``native`` and the extension builds here (:mod:`alignbench.cap_native`)."""
    global _COMPILED
    if not compile or _COMPILE_FAILED:
        return _EAGER
    if _COMPILED is None:
        fused = {**_EAGER, "fwd": _fwd_stats_fused}
        _COMPILED = {k: torch.compile(f, dynamic=True) for k, f in fused.items()}
    fast = _native() if native else None
    return _COMPILED if fast is None else {**_COMPILED, **fast}


def _native() -> dict[str, Callable] | None:
    from alignbench.cap_native import cap_kernels

    return cap_kernels(_FIXED_SHIFT_MAX_INV_TAU)


def kernel_backend(compile: bool, native: bool = True, device: Any = "cpu") -> str:
    """Which kernels CAP runs with these settings on ``device``: ``native`` (C++ exponential passes +
    torch.compile; CPU only), ``inductor`` (torch.compile) or ``eager`` — for the result's record."""
    if not compile or _COMPILE_FAILED:
        return "eager"
    return "native" if _use_native(native, device) and _native() is not None else "inductor"


def _use_native(native: bool, device: Any) -> bool:
    return native and torch.device(device).type == "cpu"


def _call(name: str, compile: bool, *args, native: bool = True):
    """Run a kernel; if compiling fails (no C++ compiler, unsupported backend), fall back to eager for good."""
    global _COMPILE_FAILED
    fn = _kernels(compile, native)[name]
    if fn is _EAGER[name]:
        return fn(*args)
    try:
        with warnings.catch_warnings():  # inductor: "bf16 and fp16 are mixed in the scheduler node" (harmless)
            warnings.filterwarnings("ignore", message="bf16 and fp16 are mixed")
            return fn(*args)
    except Exception as exc:  # noqa: BLE001 - any compiler failure means "use eager"
        _COMPILE_FAILED = True
        log.warning("torch.compile of the CAP kernels failed (%s: %s); using eager PyTorch ops",
                    type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return _EAGER[name](*args)


def compile_failed() -> bool:
    """True once the compiled kernels failed and eager ops are used instead."""
    return _COMPILE_FAILED
