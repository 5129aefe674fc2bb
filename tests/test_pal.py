"""PAL: CAP equals its formula, invariances, gradients, parameter count, anchors, bad input, analysis."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from alignbench.cap import ArrayTokens, DenseTokens, cap_profiles, cap_reference
from alignbench.errors import ConfigError, FeatureError
from alignbench.features import Pairs
from alignbench.pal_analysis import anchor_consistency, mismatched_partners, pal_consistency, soft_dice, topk_overlap
from alignbench.registry import METHODS
from synthetic import make_pairs, split_pairs

TAU_P = 0.03


def naive_cap(tokens: np.ndarray, mask: np.ndarray | None, anchors: np.ndarray, tau: float) -> np.ndarray:
    """CAP with explicit loops in float64: per sample, per anchor, softmax over valid tokens."""
    B, T, _ = tokens.shape
    K = anchors.shape[0]
    out = np.zeros((B, K))
    for b in range(B):
        valid = [t for t in range(T) if mask is None or mask[b, t]]
        for k in range(K):
            a = anchors[k] / math.sqrt(sum(v * v for v in anchors[k]))
            sims = []
            for t in valid:
                z = tokens[b, t] / math.sqrt(sum(v * v for v in tokens[b, t]))
                sims.append(sum(z[i] * a[i] for i in range(len(a))))
            m = max(sims)
            e = [math.exp((s - m) / tau) for s in sims]
            out[b, k] = sum(ei * si for ei, si in zip(e, sims)) / sum(e)
    return out


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((4, 6, 5)).astype(np.float32)
    mask = np.ones((4, 6), bool)
    mask[1, 4:] = False
    mask[3, 2:] = False
    anchors = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((3, 5)).astype(np.float32)), dim=-1)
    return tokens, mask, anchors


@pytest.fixture(scope="module")
def data():
    pairs = make_pairs(700, seed=1, captions_per_image=2)
    return split_pairs(pairs, 400, 150, 150, seed=0)


def make_pal(**kw):
    cls = METHODS.get("pal")
    return cls(**{**cls.test_overrides, **kw})


@pytest.fixture(scope="module")
def fitted(data):
    m = make_pal(dtype="fp32")  # the exact path: compared with float64 below
    m.fit(data[0], data[1], seed=0)
    return m


# -- CAP kernel ---------------------------------------------------------------------------
@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("chunk", [1, 2 * 6 * 3, 1 << 20])
def test_cap_equals_naive_float64_formula(small, use_mask, chunk):
    tokens, mask, anchors = small
    m = mask if use_mask else None
    want = naive_cap(tokens.astype(np.float64), m, anchors.double().numpy(), TAU_P)
    src = DenseTokens(torch.from_numpy(tokens), None if m is None else torch.from_numpy(m))
    got = cap_profiles(src, anchors, TAU_P, chunk_elems=chunk)
    np.testing.assert_allclose(got.numpy(), want, atol=2e-6)
    np.testing.assert_allclose(cap_reference(torch.from_numpy(tokens), None if m is None else torch.from_numpy(m),
                                             anchors, TAU_P).numpy(), want, atol=2e-6)


@pytest.mark.parametrize("use_mask", [False, True])
def test_cap_gradient_equals_autograd_of_the_formula(small, use_mask):
    tokens, mask, anchors = small
    m = torch.from_numpy(mask) if use_mask else None
    z = torch.from_numpy(tokens)
    g = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    raw1 = (anchors * 1.3).clone().requires_grad_(True)
    (cap_profiles(DenseTokens(z, m), torch.nn.functional.normalize(raw1, dim=-1), TAU_P, chunk_elems=12) * g).sum().backward()
    raw2 = (anchors * 1.3).clone().requires_grad_(True)
    (cap_reference(z, m, raw2, TAU_P) * g).sum().backward()
    np.testing.assert_allclose(raw1.grad.numpy(), raw2.grad.numpy(), atol=1e-5)


@pytest.mark.parametrize("use_mask", [False, True])
def test_cap_backward_writes_its_gradients_into_the_reused_workspace_buffer(small, use_mask):
    """Training steps reuse one gradient buffer per name (no chunk-sized allocation per call), and the
    gradient of every step, written chunk after chunk into that buffer, is still the formula's."""
    from alignbench.cap import Workspace

    tokens, mask, anchors = small
    m = torch.from_numpy(mask) if use_mask else None
    z = torch.from_numpy(tokens)
    ws, ptrs = Workspace(), []
    for step in range(2):
        g = torch.randn(4, 3, generator=torch.Generator().manual_seed(step))
        raw1 = (anchors * (1.3 + step)).clone().requires_grad_(True)
        p = cap_profiles(DenseTokens(z, m), torch.nn.functional.normalize(raw1, dim=-1), TAU_P, chunk_elems=12,
                         workspace=ws, name="image")
        (p * g).sum().backward()
        ptrs.append(ws._bufs["image/grad"].data_ptr())
        raw2 = (anchors * (1.3 + step)).clone().requires_grad_(True)
        (cap_reference(z, m, raw2, TAU_P) * g).sum().backward()
        np.testing.assert_allclose(raw1.grad.numpy(), raw2.grad.numpy(), atol=1e-5)
    assert ptrs[0] == ptrs[1]


def test_cap_gradient_float64_gradcheck_through_reference(small):
    """The closed-form backward agrees with finite differences of the naive formula (float64)."""
    tokens, mask, anchors = small
    A = anchors.double().clone().requires_grad_(True)
    g = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    prof = cap_profiles(DenseTokens(torch.from_numpy(tokens), torch.from_numpy(mask)), A.float(), TAU_P)
    (prof.double() * g).sum().backward()
    eps = 1e-6
    fd = torch.zeros_like(A)
    for k in range(A.shape[0]):
        for i in range(A.shape[1]):
            Ap, Am = A.detach().clone(), A.detach().clone()
            Ap[k, i] += eps
            Am[k, i] -= eps
            # Anchors enter CAP unnormalised here (already unit-norm at the base point).
            fp = _cap_unnormalised_anchor(tokens, mask, Ap)
            fm = _cap_unnormalised_anchor(tokens, mask, Am)
            fd[k, i] = ((fp - fm) * g).sum() / (2 * eps)
    np.testing.assert_allclose(A.grad.numpy(), fd.numpy(), atol=2e-4)


def _cap_unnormalised_anchor(tokens, mask, A: torch.Tensor) -> torch.Tensor:
    zn = torch.nn.functional.normalize(torch.from_numpy(tokens).double(), dim=-1)
    sim = zn @ A.T
    logits = (sim / TAU_P).masked_fill(~torch.from_numpy(mask).unsqueeze(-1), float("-inf"))
    return (torch.softmax(logits, 1) * sim).sum(1)


def test_cap_bf16_is_close_to_fp32(small):
    tokens, mask, anchors = small
    src = DenseTokens(torch.from_numpy(tokens), torch.from_numpy(mask))
    a = cap_profiles(src, anchors, TAU_P)
    b = cap_profiles(src, anchors, TAU_P, dtype=torch.bfloat16)
    assert b.dtype == torch.float32
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=2e-2)


def test_cap_is_invariant_to_token_order(small):
    tokens, mask, anchors = small
    perm = np.random.default_rng(3).permutation(tokens.shape[1])
    a = cap_profiles(DenseTokens(torch.from_numpy(tokens)), anchors, TAU_P)
    b = cap_profiles(DenseTokens(torch.from_numpy(tokens[:, perm].copy())), anchors, TAU_P)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
    am = cap_profiles(DenseTokens(torch.from_numpy(tokens), torch.from_numpy(mask)), anchors, TAU_P)
    bm = cap_profiles(DenseTokens(torch.from_numpy(tokens[:, perm].copy()), torch.from_numpy(mask[:, perm].copy())),
                      anchors, TAU_P)
    np.testing.assert_allclose(am.numpy(), bm.numpy(), atol=1e-6)


def test_cap_is_invariant_to_padding_length(small):
    tokens, mask, anchors = small
    garbage = np.full((4, 5, 5), 7.0, np.float32)  # padded positions hold junk, masked out
    padded = np.concatenate([tokens, garbage], 1)
    pmask = np.concatenate([mask, np.zeros((4, 5), bool)], 1)
    a = cap_profiles(DenseTokens(torch.from_numpy(tokens), torch.from_numpy(mask)), anchors, TAU_P)
    b = cap_profiles(DenseTokens(torch.from_numpy(padded), torch.from_numpy(pmask)), anchors, TAU_P)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
    # and the gradients too
    A1 = anchors.clone().requires_grad_(True)
    A2 = anchors.clone().requires_grad_(True)
    cap_profiles(DenseTokens(torch.from_numpy(tokens), torch.from_numpy(mask)), A1, TAU_P).sum().backward()
    cap_profiles(DenseTokens(torch.from_numpy(padded), torch.from_numpy(pmask)), A2, TAU_P).sum().backward()
    np.testing.assert_allclose(A1.grad.numpy(), A2.grad.numpy(), atol=1e-5)


def test_array_tokens_stream_fp16_memmap(tmp_path, small):
    tokens, _, anchors = small
    path = tmp_path / "tok.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=tokens.shape)
    mm[:] = tokens
    mm.flush()
    arr = np.load(path, mmap_mode="r")
    rows = np.array([0, 2, 3])
    got = cap_profiles(ArrayTokens(arr, rows), anchors, TAU_P, chunk_elems=1)
    want = naive_cap(tokens.astype(np.float16).astype(np.float64)[rows], None, anchors.double().numpy(), TAU_P)
    np.testing.assert_allclose(got.numpy(), want, atol=2e-6)


# -- the method ------------------------------------------------------------------------------
def test_pal_embeddings_are_normalised_cap_profiles(fitted, data):
    test = data[2]
    img = test.image().subset(np.arange(5))
    Av, At = (a.detach() for a in fitted.anchors())
    want = naive_cap(img.token_array().astype(np.float64), None, Av.double().numpy(), TAU_P)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(fitted.embed_image(img).numpy(), want, atol=2e-6)
    txt = test.text().subset(np.arange(4))
    tok, mask = txt.token_batch()
    want_t = naive_cap(tok.double().numpy(), mask.numpy(), At.double().numpy(), TAU_P)
    want_t /= np.linalg.norm(want_t, axis=1, keepdims=True)
    np.testing.assert_allclose(fitted.embed_text(txt).numpy(), want_t, atol=2e-6)


def test_pal_beats_chance_and_records_fit_info(fitted, data):
    test = data[2]
    sim = fitted.similarity(fitted.embed_image(test.image()), fitted.embed_text(test.text())).numpy()
    # 2 captions per image: count a hit on any caption of the right image
    img_of_text = test.image_index
    uniq, inv = np.unique(img_of_text, return_inverse=True)
    sim_img = fitted.similarity(fitted.embed_image(test.images.subset(uniq)), fitted.embed_text(test.text())).numpy()
    t2i = float((sim_img.argmax(0) == inv).mean())
    assert t2i > 10 / len(uniq)
    assert sim.shape == (len(test), len(test))
    info = fitted.fit_info
    assert info["n_params"] == 64 * (48 + 32) == fitted.num_parameters()
    assert info["pool"] == "cap" and info["epochs"] >= 1 and "deviations" in info


def test_parameter_count_is_k_times_dims(data):
    m = make_pal(K=16, max_epochs=1)
    m.fit(data[0], None, seed=0)
    d_v, d_t = data[0].images.token_dim, data[0].texts.token_dim
    assert m.num_parameters() == 16 * (d_v + d_t)
    assert set(m.state_dict()) == {"A_v", "A_t"}


def test_anchors_stay_unit_norm(fitted, data):
    s = fitted.state_dict()
    for k in ("A_v", "A_t"):
        np.testing.assert_allclose(torch.linalg.vector_norm(s[k], dim=1).numpy(), 1.0, atol=1e-6)
    # and during training: every forward re-normalises, whatever the raw parameter's norm
    m = make_pal(K=8, max_epochs=1)
    m.fit(data[0], None, seed=0)
    with torch.no_grad():
        m.A_v.mul_(3.0)
    Av, _ = m.anchors()
    np.testing.assert_allclose(torch.linalg.vector_norm(Av, dim=1).detach().numpy(), 1.0, atol=1e-6)


def test_initialisation_is_normal_then_row_normalised(data):
    m = make_pal(K=2000, max_epochs=1)
    m._init_anchors(48, 32, seed=0)
    Av = m.A_v.detach()
    np.testing.assert_allclose(torch.linalg.vector_norm(Av, dim=1).numpy(), 1.0, atol=1e-6)
    # isotropic directions: coordinates have mean ≈ 0 and variance ≈ 1/d
    assert abs(float(Av.mean())) < 0.01 and abs(float(Av.var()) * 48 - 1) < 0.05


def test_duplicate_images_in_a_batch_are_pooled_once_with_the_same_result(fitted, data):
    train = data[0]
    idx = np.arange(12)  # 2 captions per image: pairs (0,1), (2,3), … share images
    Av, At = fitted.anchors()
    pv, _ = fitted._pair_profiles(train, idx, Av.detach(), At.detach())
    direct = cap_profiles(DenseTokens(train.image().token_tensor(idx)), Av.detach(), TAU_P)
    np.testing.assert_allclose(pv.numpy(), direct.numpy(), atol=1e-6)


def test_text_embedding_ignores_padding_and_order(fitted, data):
    texts = data[2].text()
    full = fitted.embed_text(texts)
    lengths = texts.lengths()
    short = int(np.argmin(lengths))
    alone = fitted.embed_text(texts.subset([short]))[0]
    np.testing.assert_allclose(full[short].numpy(), alone.numpy(), atol=1e-6)
    rev = np.arange(len(texts))[::-1].copy()
    np.testing.assert_allclose(fitted.embed_text(texts.subset(rev)).numpy(), full[rev].numpy(), atol=1e-6)


def test_patch_scores_are_the_anchor_codebook(fitted, data):
    imgs = data[2].image().subset(np.arange(3))
    # A final norm that would change the patches: PAL must NOT apply it (anchors live in the raw token space).
    d = imgs.token_dim
    imgs = dataclasses.replace(imgs, final_norm=(np.full(d, 2.0, np.float32), np.ones(d, np.float32), 1e-6))
    classes = fitted.class_embeddings(data[2].text().subset(np.arange(6)), n_classes=3, n_templates=2)
    Av, _ = fitted.anchors()
    patches = imgs.token_tensor()[:, imgs.n_prefix:]
    S = torch.nn.functional.normalize(patches, dim=-1) @ Av.detach().T
    want = S @ classes.T
    got = fitted.patch_scores(imgs, classes)
    assert got.shape == (3, imgs.grid[0] * imgs.grid[1], 3)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)


def test_class_embeddings_average_normalised_template_profiles(fitted, data):
    prompts = data[2].text().subset(np.arange(6))
    e = fitted.embed_text(prompts).reshape(3, 2, -1)
    want = torch.nn.functional.normalize(e.mean(1), dim=-1)
    np.testing.assert_allclose(fitted.class_embeddings(prompts, 3, 2).numpy(), want.numpy(), atol=1e-6)


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_pool_variants(pool, data):
    m = make_pal(pool=pool, K=8, max_epochs=2)
    m.fit(data[0], data[1], seed=0)
    imgs = data[2].image().subset(np.arange(4))
    Av, _ = m.anchors()
    if pool == "mean":
        zn = torch.nn.functional.normalize(imgs.token_tensor(), dim=-1)
        want = (zn @ Av.detach().T).mean(1)
    else:
        want = torch.nn.functional.normalize(imgs.global_tensor(), dim=-1) @ Av.detach().T
    want = torch.nn.functional.normalize(want, dim=-1)
    np.testing.assert_allclose(m.embed_image(imgs).numpy(), want.numpy(), atol=1e-5)
    txt = data[2].text().subset(np.arange(5))
    assert torch.isfinite(m.embed_text(txt)).all()


def test_chunk_size_does_not_change_training(data):
    a = make_pal(K=8, max_epochs=2, dtype="fp32")  # exact path: bf16 matmuls may block rows differently
    b = make_pal(K=8, max_epochs=2, chunk_elems=500, dtype="fp32")
    a.fit(data[0], data[1], seed=0)
    b.fit(data[0], data[1], seed=0)
    np.testing.assert_allclose(a.state_dict()["A_v"].numpy(), b.state_dict()["A_v"].numpy(), atol=1e-5)


def test_bf16_option_trains(data):
    m = make_pal(K=8, max_epochs=2, dtype="bf16")
    m.fit(data[0], data[1], seed=0)
    assert m.fit_info["dtype"] == "bf16"
    assert torch.isfinite(m.embed_image(data[2].image())).all()


# -- center option ---------------------------------------------------------------------------
def _offset_pairs(pairs: Pairs, dv: np.ndarray, dt: np.ndarray) -> Pairs:
    """The same pairs with a constant vector added to every image / real text token."""
    im = dataclasses.replace(pairs.images, tokens=(pairs.images.tokens + dv).astype(np.float32))
    tx = dataclasses.replace(pairs.texts, tokens=(pairs.texts.tokens + dt).astype(np.float32))
    return Pairs(im, tx, pairs.image_index, pairs.text_index)


def test_center_removes_a_common_token_offset(data):
    """center=both makes PAL blind to a shared offset (dinov2's outlier channels), which otherwise
    dominates every cosine; the means are fitted state and survive a state-dict round trip."""
    rng = np.random.default_rng(3)
    dv = 8 * rng.standard_normal(data[0].images.token_dim).astype(np.float32)
    dt = 8 * rng.standard_normal(data[0].texts.token_dim).astype(np.float32)
    shifted = [_offset_pairs(p, dv, dt) for p in data]
    plain, centred = make_pal(K=16, max_epochs=3, dtype="fp32"), make_pal(K=16, max_epochs=3, center="both",
                                                                          dtype="fp32")
    plain.fit(data[0], data[1], seed=0)
    centred.fit(shifted[0], shifted[1], seed=0)
    np.testing.assert_allclose(centred.mu_v.numpy(), data[0].images.tokens[np.unique(data[0].image_index)]
                               .reshape(-1, len(dv)).mean(0) + dv, rtol=1e-4, atol=1e-4)
    # Centring the shifted data ≈ centring the original: compare against a centred fit on the original.
    ref = make_pal(K=16, max_epochs=3, center="both", dtype="fp32")
    ref.fit(data[0], data[1], seed=0)
    test = shifted[2]
    np.testing.assert_allclose(centred.embed_image(test.image()).numpy(), ref.embed_image(data[2].image()).numpy(),
                               atol=2e-4)
    np.testing.assert_allclose(centred.embed_text(test.text()).numpy(), ref.embed_text(data[2].text()).numpy(),
                               atol=2e-4)
    assert "center='both' (faithful default 'none')" in centred.fit_info["deviations"]
    assert centred.fit_info["center"] == "both" and plain.mu_v is None
    again = make_pal(K=16, center="both", dtype="fp32")
    again.load_state_dict(centred.state_dict())
    np.testing.assert_array_equal(again.embed_image(test.image()).numpy(), centred.embed_image(test.image()).numpy())
    patches = centred.patch_scores(test.image().subset(np.arange(3)), torch.eye(16)[:4])
    assert patches.shape[-1] == 4 and torch.isfinite(patches).all()


# -- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [{"K": 0}, {"K": -3}, {"tau_p": 0.0}, {"pool": "max"}, {"dtype": "fp8"},
                                {"center": "tokens"}, {"center": "image", "pool": "cls"}])
def test_bad_config_is_a_config_error(kw):
    with pytest.raises(ConfigError):
        make_pal(**kw)


def test_nan_tokens_are_a_feature_error(data):
    train = data[0]
    tokens = np.array(train.images.tokens, copy=True)
    tokens[int(train.image_index[3]), 2, 1] = np.nan  # pooled features stay finite
    bad = Pairs(dataclasses.replace(train.images, tokens=tokens), train.texts, train.image_index, train.text_index)
    with pytest.raises(FeatureError, match="(?i)nan|finite"):
        make_pal().fit(bad, None)
    ttok = np.array(train.texts.tokens, copy=True)
    ttok[int(train.texts.offsets[int(train.text_index[0])]), 0] = np.inf
    bad_t = Pairs(train.images, dataclasses.replace(train.texts, tokens=ttok), train.image_index, train.text_index)
    with pytest.raises(FeatureError, match="(?i)nan|finite"):
        make_pal().fit(bad_t, None)


def test_features_without_tokens_are_a_feature_error(data):
    train = data[0]
    no_tok = Pairs(dataclasses.replace(train.images, tokens=None), train.texts, train.image_index, train.text_index)
    with pytest.raises(FeatureError, match="tokens"):
        make_pal().fit(no_tok, None)


# -- anchor consistency analysis -------------------------------------------------------------------
def test_topk_overlap_and_soft_dice_by_hand():
    a = torch.tensor([[5.0, 4.0, 3.0, 0.0, -1.0]])
    b = torch.tensor([[5.0, 0.0, 3.0, 4.0, -2.0]])
    # top-3: a → {0,1,2}, b → {0,3,2}; shared {0,2}
    assert topk_overlap(a, b, k=3).item() == pytest.approx(2 / 3)
    # truncated: a → [5,4,3,0,0], b → [5,0,3,4,0]; Σmin = 5+0+3 = 8; Σa = Σb = 12
    assert soft_dice(a, b, k=3).item() == pytest.approx(2 * 8 / 24)
    assert soft_dice(a, a, k=3).item() == pytest.approx(1.0)
    assert topk_overlap(a, a, k=5).item() == 1.0


def test_mismatched_partners_have_a_different_image():
    ids = np.repeat(np.arange(10), 5)
    p = mismatched_partners(ids, seed=0)
    assert (p >= 0).all() and (ids[p] != ids).all()


def test_anchor_consistency_matched_beats_mismatched(fitted, data):
    out = pal_consistency(fitted, data[2], k=5)
    assert out["overlap_matched"]["mean"] > out["overlap_mismatched"]["mean"]
    assert out["dice_matched"]["mean"] > out["dice_mismatched"]["mean"]
    assert out["n_params"] == fitted.num_parameters()
    same = anchor_consistency(torch.eye(4), torch.eye(4), k=1)
    assert same["overlap_matched"]["mean"] == 1.0 and same["overlap_mismatched"]["mean"] == 0.0


# -- torch.compile'd kernels ---------------------------------------------------------------------
@pytest.mark.slow
def test_compiled_kernels_match_eager(small):
    """The fused (torch.compile) kernels compute the same profiles and gradients (compiles: slow)."""
    tokens, mask, anchors = small
    src = DenseTokens(torch.from_numpy(tokens), torch.from_numpy(mask))
    out = {}
    for compile in (False, True):
        A = anchors.clone().requires_grad_(True)
        p = cap_profiles(src, A, TAU_P, chunk_elems=12, compile=compile)
        p.pow(2).sum().backward()
        out[compile] = (p.detach(), A.grad)
    np.testing.assert_allclose(out[True][0].numpy(), out[False][0].numpy(), atol=1e-6)
    np.testing.assert_allclose(out[True][1].numpy(), out[False][1].numpy(), atol=1e-5)


@pytest.mark.parametrize("tau", [TAU_P, 0.01])  # 0.01: the per-anchor max shift instead of the fixed one
@pytest.mark.parametrize("use_mask", [False, True])
def test_compiled_forward_form_equals_the_eager_statistics(small, tau, use_mask):
    """The form handed to torch.compile (exponential once per sum) computes the eager forward's numbers."""
    from alignbench.cap_kernels import _fwd_stats, _fwd_stats_fused

    tokens, mask, anchors = small
    zn = torch.nn.functional.normalize(torch.from_numpy(tokens), dim=-1)
    s = zn @ anchors.T
    valid = torch.from_numpy(mask) if use_mask else None
    for got, want in zip(_fwd_stats_fused(s, valid, 1 / tau), _fwd_stats(s, valid, 1 / tau)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-7)


def test_compile_failure_falls_back_to_eager(small, monkeypatch, caplog):
    import alignbench.cap_kernels as cap

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(cap, "_COMPILED", {k: broken for k in cap._EAGER})
    monkeypatch.setattr(cap, "_COMPILE_FAILED", False)
    tokens, mask, anchors = small
    src = DenseTokens(torch.from_numpy(tokens), torch.from_numpy(mask))
    with caplog.at_level("WARNING", logger="alignbench.cap_kernels"):
        got = cap_profiles(src, anchors, TAU_P, compile=True)
    assert cap.compile_failed() and "eager" in caplog.text
    np.testing.assert_allclose(got.numpy(), cap_profiles(src, anchors, TAU_P).numpy(), atol=0)


def test_compile_option_values():
    assert make_pal(compile=True).config.compile == "on"
    assert make_pal(compile="off").config.compile == "off"
    assert METHODS.get("pal")().config.compile == "auto"
    with pytest.raises(ConfigError):
        make_pal(compile="sometimes")


# -- dtype=auto: the CPU's fastest faithful matmul ----------------------------------------------------
@pytest.mark.parametrize("flags,chosen", [(frozenset({"avx2"}), "fp32"), (frozenset({"avx2", "amx_bf16"}), "bf16"),
                                          (frozenset({"avx512_bf16"}), "bf16")])
def test_auto_dtype_follows_the_cpu_and_is_recorded(data, monkeypatch, flags, chosen):
    from alignbench import devices

    monkeypatch.setattr(devices, "cpu_flags", lambda: flags)
    m = make_pal(K=8, max_epochs=1)
    assert m.config.dtype == "auto"
    m.fit(data[0], None, seed=0)
    assert m.fit_info["dtype"] == chosen and m.fit_info["dtype_reason"].startswith("auto: this CPU has")
    assert m.fit_info["infonce_dtype"] == "fp32"
    forced = make_pal(K=8, max_epochs=1, dtype="fp32")
    forced.fit(data[0], None, seed=0)
    assert forced.fit_info["dtype"] == "fp32" and forced.fit_info["dtype_reason"] == "asked"


def test_bf16_path_keeps_fp32_anchors_and_stays_close_to_fp32(data):
    a, b = make_pal(K=16, max_epochs=2, dtype="fp32"), make_pal(K=16, max_epochs=2, dtype="bf16")
    a.fit(data[0], None, seed=0)
    b.fit(data[0], None, seed=0)
    assert all(t.dtype == torch.float32 for t in b.anchors())  # master weights stay fp32
    img = data[2].image()
    ea, eb = a.embed_image(img), b.embed_image(img)
    assert eb.dtype == torch.float32
    assert float((ea * eb).sum(1).min()) > 0.98  # same embeddings up to bf16 rounding
