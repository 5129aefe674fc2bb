"""CAP's C++ exponential passes (alignbench.cap_native) compute what the eager kernels compute.

The extension is built once per machine (≈ 40 s of one core, cached by torch), so these tests
are slow the first time only.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from alignbench import cap_kernels as cap
from alignbench.cap import DenseTokens, cap_profiles
from alignbench.cap_kernels import _bwd_coef, _fwd_stats, kernel_backend
from alignbench.cap_native import ENV_DISABLE, native_kernels

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def kernels():
    fast = cap._native()
    assert fast is not None, "the C++ CAP kernels did not build here (see the log for the compiler's error)"
    return fast


def _sims(dtype: torch.dtype, m: int = 3, T: int = 7, K: int = 37, seed: int = 0) -> torch.Tensor:
    """Cosine-like similarities; K = 37 is not a multiple of any vector width, so the scalar tail runs too."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(m, T, K, generator=g) * 1.2 - 0.3).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tau", [0.03, 0.01])  # 0.01: above the fixed-shift limit, the per-anchor max shift
@pytest.mark.parametrize("use_mask", [False, True])
def test_forward_equals_the_float64_statistics(kernels, dtype, tau, use_mask):
    s = _sims(dtype)
    valid = torch.rand(s.shape[:2], generator=torch.Generator().manual_seed(1)) > 0.4 if use_mask else None
    if valid is not None:
        valid[:, 0] = True  # every row keeps one token
    prof, lse = kernels["fwd"](s, valid, 1 / tau)
    want_prof, want_lse = _fwd_stats(s.double(), valid, 1 / tau)
    assert prof.dtype == lse.dtype == torch.float32
    np.testing.assert_allclose(prof.numpy(), want_prof.numpy(), rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(lse.numpy(), want_lse.numpy(), rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("use_mask", [False, True])
def test_backward_coefficients_equal_the_eager_ones(kernels, dtype, use_mask):
    s = _sims(dtype)
    m, T, K = s.shape
    g = torch.Generator().manual_seed(2)
    valid = torch.rand(m, T, generator=g) > 0.4 if use_mask else None
    inv_tau = 1 / 0.03
    lse = _fwd_stats(s, valid, inv_tau)[1]
    a, b = torch.randn(m, K, generator=g), torch.randn(m, K, generator=g)
    got, want = torch.full_like(s, 7.0), torch.empty_like(s)
    kernels["bwd"](s, valid, lse, a, b, inv_tau, got)
    _bwd_coef(s, valid, lse, a, b, inv_tau, want)
    if valid is not None:
        assert torch.all(got[~valid] == 0)  # padded tokens get no gradient (and the 7s are overwritten)
    if dtype == torch.float32:
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=2e-6, atol=1e-7)
    else:  # both round the same float32 value to bf16; a 1-ulp float32 difference may flip one rounding
        ulp = torch.finfo(torch.bfloat16).eps * want.float().abs()
        assert torch.all((got.float() - want.float()).abs() <= ulp + 1e-30)
        assert (got == want).float().mean() > 0.99


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cap_profiles_and_gradients_with_native_kernels_match_eager(kernels, dtype):
    g = torch.Generator().manual_seed(3)
    tokens = torch.randn(9, 11, 24, generator=g)
    mask = torch.ones(9, 11, dtype=torch.bool)
    mask[::2, 8:] = False
    anchors = torch.nn.functional.normalize(torch.randn(20, 24, generator=g), dim=-1)
    src = DenseTokens(tokens, mask)
    out = {}
    for compile in (False, True):
        A = anchors.clone().requires_grad_(True)
        p = cap_profiles(src, A, 0.05, chunk_elems=500, dtype=dtype, compile=compile)
        p.pow(2).sum().backward()
        out[compile] = (p.detach(), A.grad)
    tol = 1e-5 if dtype == torch.float32 else 1e-3
    np.testing.assert_allclose(out[True][0].numpy(), out[False][0].numpy(), atol=tol)
    np.testing.assert_allclose(out[True][1].numpy(), out[False][1].numpy(), atol=tol)
    assert kernel_backend(True) == "native" and kernel_backend(True, native=False) == "inductor"
    assert kernel_backend(False) == "eager"


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv(ENV_DISABLE, "0")
    native_kernels.cache_clear()
    try:
        assert native_kernels() is None and cap._native() is None
        assert kernel_backend(True) in ("inductor", "eager")
    finally:
        native_kernels.cache_clear()
