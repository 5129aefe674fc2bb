"""The one checking pass over training tokens: every non-finite value is caught, finite extremes are not."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from alignbench.errors import FeatureError
from alignbench.token_rows import scan_tokens


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("want_mean", [False, True])
def test_scan_catches_nan_and_inf_and_keeps_the_exact_mean(dtype, want_mean):
    rng = np.random.default_rng(0)
    arr = rng.standard_normal((40, 5, 8)).astype(dtype)
    rows = np.arange(3, 37)
    mean = scan_tokens(arr, rows, "image tokens", want_mean=want_mean, chunk_bytes=arr[:1].nbytes * 4)
    if want_mean:
        exact = torch.from_numpy(arr[rows]).double().reshape(-1, 8).mean(0).float()
        assert torch.equal(mean, exact)
    for bad in ([np.nan], [np.inf], [np.inf, -np.inf]):  # +inf and -inf in one block sum to NaN: still caught
        broken = arr.copy()
        for j, v in enumerate(bad):
            broken[20, j, 3] = v
        with pytest.raises(FeatureError, match="image tokens contain non-finite"):
            scan_tokens(broken, rows, "image tokens", want_mean=want_mean, chunk_bytes=arr[:1].nbytes * 4)
        scan_tokens(broken, np.arange(3), "image tokens", want_mean=want_mean)  # rows outside the fit: not read


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_scan_accepts_the_largest_finite_values(dtype):
    big = np.full((64, 9, 16), np.finfo(dtype).max, dtype=dtype)  # their sum overflows the dtype itself
    assert scan_tokens(big, np.arange(64), "image tokens", want_mean=False) is None
    assert torch.isfinite(scan_tokens(big, np.arange(64), "image tokens", want_mean=True)).all()
