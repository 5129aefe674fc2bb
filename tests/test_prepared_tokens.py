"""PAL's prepared tokens (normalised once per fit, captions in length blocks) give the per-step path's numbers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from alignbench.cap import DenseTokens, Workspace, cap_profiles, cap_reference, saved_numel
from alignbench.prepared_tokens import PreparedImages, PreparedTexts
from alignbench.registry import METHODS
from alignbench.training import info_nce
from alignbench.token_rows import training_token_means
from synthetic import make_pairs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pairs():
    # fp16 tokens as in the cache; captions of 2..12 tokens so length blocks differ from padding to the longest
    return make_pairs(300, seed=3, captions_per_image=3, min_T_t=2, max_T_t=12, dtype=np.float16)


def _steps(m, train, batches):
    """(loss, grad A_v, grad A_t) of one training step per batch, as fit's step_loss computes it."""
    out = []
    for idx in batches:
        m.A_v.grad = m.A_t.grad = None
        Av, At = m.anchors()
        pv, pt = m._pair_profiles(train, idx, Av, At)
        loss = info_nce(pv, pt, m.config.temperature)
        loss.backward()
        out.append((float(loss.detach()), m.A_v.grad.clone(), m.A_t.grad.clone()))
    return out


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("dtype,tol", [("fp32", 1e-5), ("bf16", 2e-2)])
@pytest.mark.parametrize("center", ["none", "both"])
def test_prepared_step_equals_the_per_step_path(pairs, dtype, tol, center):
    m = METHODS.get("pal")(K=16, dtype=dtype, center=center, compile="off", chunk_elems=7 * 16 * 5)
    m.mu_v, m.mu_t = training_token_means(pairs, m.config.pool, m.config.center, m.device)
    m._init_anchors(pairs.images.token_dim, pairs.texts.token_dim, seed=0)
    m._workspace = Workspace()
    rng = np.random.default_rng(0)
    # all pairs (consecutive image rows: views) and a random half (gathered rows)
    batches = [np.arange(len(pairs)), np.sort(rng.choice(len(pairs), 150, replace=False))]
    old = _steps(m, pairs, batches)
    assert "train images, train texts" in m._prepare_tokens(pairs, None)
    new = _steps(m, pairs, batches)
    for (l0, gv0, gt0), (l1, gv1, gt1) in zip(old, new):
        assert abs(l1 - l0) <= 1e-5 * abs(l0)  # profiles agree to float rounding in both dtypes
        assert _rel(gv1, gv0) <= tol and _rel(gt1, gt0) <= tol


def test_ragged_caption_blocks_equal_the_formula_with_fewer_similarities(pairs):
    texts = pairs.texts
    rows = np.arange(len(texts))
    prep = PreparedTexts(texts.tokens, texts.offsets, rows, torch.float32)
    idx = np.random.default_rng(1).permutation(len(texts))[:120]
    src, order = prep.source(texts.tokens, idx)
    assert np.all(np.diff(src.lens) >= 0)  # sorted by length
    tokens, mask = texts.token_batch(idx)
    A0 = torch.nn.functional.normalize(torch.randn(16, texts.token_dim, generator=torch.Generator().manual_seed(2)), dim=-1)
    A1, A2 = A0.clone().requires_grad_(True), A0.double().requires_grad_(True)
    chunk = 16 * 12 * 10
    got = cap_profiles(src, torch.nn.functional.normalize(A1, dim=-1), 0.03, chunk_elems=chunk)[torch.from_numpy(np.argsort(order))]
    ref = cap_reference(tokens.double(), mask, A2, 0.03)  # float64: the formula, not another fp32 rounding of it
    np.testing.assert_allclose(got.detach().numpy(), ref.detach().numpy(), rtol=1e-5, atol=1e-6)
    w = torch.linspace(-1, 1, ref.numel(), dtype=torch.float64).view_as(ref)
    (got * w.float()).sum().backward()
    (ref * w).sum().backward()
    # fp32 sums over every token of 120 captions: absolute error relative to the gradient's scale
    g_ref = A2.grad.numpy()
    np.testing.assert_allclose(A1.grad.numpy(), g_ref, rtol=1e-4, atol=1e-5 * np.abs(g_ref).max())
    padded = saved_numel(DenseTokens(tokens, mask), 16, chunk)
    assert saved_numel(src, 16, chunk) < 0.8 * padded  # blocks padded to their own longest, not the batch's


def test_prepared_images_hold_only_their_rows(pairs):
    imgs = pairs.images
    prep = PreparedImages(imgs.tokens, np.array([0, 2, 3, 5]), torch.float32)
    assert prep.source(imgs.tokens, np.array([2, 3])) is not None
    assert prep.source(imgs.tokens, np.array([2, 4])) is None  # row 4 not prepared: the caller streams it
    assert prep.source(imgs.tokens.copy(), np.array([2, 3])) is None  # another array
    z, _ = prep.source(imgs.tokens, np.array([0, 3, 5])).block(0, 3)
    ref = torch.nn.functional.normalize(torch.from_numpy(imgs.tokens[[0, 3, 5]]).float(), dim=-1)
    np.testing.assert_allclose(z.numpy(), ref.numpy(), rtol=1e-6, atol=1e-7)


def test_fit_records_prepared_tokens_and_streams_when_memory_is_short(pairs, monkeypatch):
    import alignbench.prepared_tokens as pt

    kw = dict(K=16, max_epochs=2, batch_size=128, lr=1e-2, compile="off", dtype="fp32")
    a = METHODS.get("pal")(**kw)
    a.fit(pairs, pairs.subset(np.arange(60)), seed=0)
    assert a.fit_info["prepared_tokens"].startswith("train images, train texts, val images, val texts")
    assert a.fit_info["token_source"].startswith("prepared")
    monkeypatch.setattr(pt, "PREPARED_SHARE", 0.0)
    b = METHODS.get("pal")(**kw)
    b.fit(pairs, pairs.subset(np.arange(60)), seed=0)
    assert b.fit_info["prepared_tokens"].startswith("none")
    assert b.fit_info["token_source"].startswith("streamed")
    np.testing.assert_allclose(a.A_v.detach().numpy(), b.A_v.detach().numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(a.A_t.detach().numpy(), b.A_t.detach().numpy(), rtol=1e-4, atol=1e-6)
