"""Token sources for fits: streamed from the memmap with read-ahead (CPU and GPU), resident on the device."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from alignbench.cap import ArrayTokens, cap_profiles
from alignbench.token_stream import PrefetchTokens, ResidentTokens, fits_on_device


@pytest.fixture
def memmap(tmp_path):
    rng = np.random.default_rng(0)
    arr = np.lib.format.open_memmap(tmp_path / "t.npy", mode="w+", dtype=np.float16, shape=(40, 9, 16))
    arr[:] = (rng.standard_normal(arr.shape) + 0.2).astype(np.float16)
    arr.flush()
    return np.load(tmp_path / "t.npy", mmap_mode="r")


def _grad(src, anchors):
    A = anchors.clone().requires_grad_(True)
    p = cap_profiles(src, A, 0.05, chunk_elems=9 * 8 * 3)  # 3 rows per block: many blocks
    (p * torch.arange(p.numel()).view_as(p).float()).sum().backward()
    return p.detach(), A.grad


def test_prefetched_blocks_equal_direct_reads_and_are_read_ahead(memmap):
    rows = np.array([1, 3, 4, 8, 9, 15, 20, 21, 30, 39])
    shift = torch.linspace(-0.1, 0.1, 16)
    anchors = torch.nn.functional.normalize(torch.randn(8, 16, generator=torch.Generator().manual_seed(1)), dim=-1)
    pre = PrefetchTokens(memmap, rows, "cpu", shift=shift)
    p1, g1 = _grad(pre, anchors)
    p0, g0 = _grad(ArrayTokens(memmap, rows, shift=shift), anchors)
    assert torch.equal(p1, p0) and torch.equal(g1, g0)  # same bits: the same rows, read earlier
    assert pre.blocks_prefetched >= 6  # forward and backward blocks after the first came from the read-ahead
    z, _ = pre.block(0, 4)  # an out-of-order request is read directly
    assert torch.equal(z, torch.from_numpy(memmap[rows[:4]].astype(np.float32)) - shift)
    pre.close()


def test_resident_tokens_gather_the_same_rows(memmap):
    rows = np.arange(0, 40, 3)
    res = ResidentTokens(memmap, rows, "cpu", chunk=4)
    assert res.nbytes == len(rows) * 9 * 16 * 2
    batch = rows[[1, 2, 5, 7]]
    assert res.holds(memmap, batch) and not res.holds(memmap, np.array([1]))
    z, _ = res.source(batch).block(1, 3)
    assert torch.equal(z, torch.from_numpy(np.asarray(memmap[batch[1:3]])))
    assert not fits_on_device(1, "cpu")  # the CPU path always streams


def test_pal_on_the_cpu_streams_and_says_so(monkeypatch):
    import alignbench.prepared_tokens as prepared
    from alignbench.features import ImageFeatures, Pairs, TextFeatures
    from alignbench.registry import METHODS

    rng = np.random.default_rng(0)
    n = 24
    images = ImageFeatures(rng.standard_normal((n, 8), dtype=np.float32),
                           tokens=rng.standard_normal((n, 5, 8)).astype(np.float16), grid=(2, 2), n_prefix=1)
    offsets = np.arange(0, 3 * n + 1, 3)
    texts = TextFeatures(rng.standard_normal((n, 8), dtype=np.float32),
                         tokens=rng.standard_normal((3 * n, 8)).astype(np.float16), offsets=offsets)
    m = METHODS.get("pal")(K=4, max_epochs=2, batch_size=8, lr=1e-2, lr_range_test=False, compile="off")
    monkeypatch.setattr(prepared, "PREPARED_SHARE", 0.0)  # no room to keep normalised tokens: they stream
    m.fit(Pairs(images, texts, np.arange(n), np.arange(n)), None, seed=0)
    assert m.fit_info["token_source"].startswith("streamed (memmap, next block prefetched")
