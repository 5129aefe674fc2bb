"""Freeze-Align computes what METHODS.md says: token projectors, pooling, head, temperature, segmentation."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy.special import erf

from alignbench.errors import ConfigError, FeatureError
from alignbench.features import ImageFeatures, Pairs, TextFeatures
from alignbench.methods.freeze_align import FreezeAlign
from synthetic import make_pairs, recall_at_1, split_pairs

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FAST = {"dim": 32, "max_epochs": 30, "patience": 10, "batch_size": 128, "lr": 3e-3}


@pytest.fixture(scope="module")
def data():
    return split_pairs(make_pairs(700, seed=6), 400, 100, 200, seed=0)


@pytest.fixture(scope="module")
def fitted(data):
    train, val, _ = data
    m = FreezeAlign(**FAST)
    m.fit(train, val, seed=0)
    return m


def params(module) -> dict[str, np.ndarray]:
    return {k: v.detach().double().numpy() for k, v in module.state_dict().items()}


def ln64(x, w, b, eps=1e-5):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * w + b


def gelu64(x):
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def proj64(module, x: np.ndarray) -> np.ndarray:
    """Proj_d(x) = L₁(x') + L₃(GELU(L₂(x'))), x' = LN(x) (eval: no dropout)."""
    p = params(module)
    h = ln64(x, p["norm.weight"], p["norm.bias"])
    return h @ p["l1.weight"].T + p["l1.bias"] + gelu64(h @ p["l2.weight"].T + p["l2.bias"]) @ p["l3.weight"].T + p["l3.bias"]


def head64(module, x: np.ndarray) -> np.ndarray:
    p = params(module)
    q = x @ p["proj.weight"].T + p["proj.bias"]
    return ln64(q + gelu64(q) @ p["fc.weight"].T + p["fc.bias"], p["norm.weight"], p["norm.bias"])


def unit(z):
    return z / np.linalg.norm(z, axis=-1, keepdims=True)


def test_image_embedding_is_mean_patch_projection_plus_cls_projection(fitted, data):
    imgs = data[2].image().subset(np.arange(12))
    tok = imgs.token_array().astype(np.float64)
    want = unit(proj64(fitted.mods["local_vision"], tok[:, 1:]).mean(1) + proj64(fitted.mods["cls_vision"], tok[:, 0]))
    np.testing.assert_allclose(fitted.embed_image(imgs).numpy(), want, atol=1e-5)


def test_text_embedding_is_head_of_masked_mean_projection(fitted, data):
    texts = data[2].text().subset(np.arange(15))
    rows = texts.rows
    want = []
    for r in rows:  # each caption alone: no padding anywhere
        y = texts.tokens[texts.offsets[r] : texts.offsets[r + 1]].astype(np.float64)
        want.append(head64(fitted.mods["text_head"], proj64(fitted.mods["local_text"], y).mean(0)))
    np.testing.assert_allclose(fitted.embed_text(texts).numpy(), unit(np.stack(want)), atol=1e-5)


def test_parameter_count_matches_the_formula(fitted):
    E, d_v, d_t = 32, 48, 32
    proj = lambda d: 2 * d + 2 * d * E + E * E + 3 * E  # noqa: E731
    assert fitted.num_parameters() == 2 * proj(d_v) + proj(d_t) + 2 * E * E + 4 * E + 1  # +1: learnable τ


def test_learnable_temperature_moves_within_bounds_and_fixed_stays(fitted, data):
    t = fitted.fit_info["temperature"]
    assert 0.001 <= t <= 0.5 and t != pytest.approx(0.07)
    train, val, test = data
    fixed = FreezeAlign(**FAST, tau="0.05")
    fixed.fit(train, val, seed=0)
    assert "tau" not in fixed.mods and fixed.fit_info["temperature"] == 0.05
    assert any("tau='0.05'" in d for d in fixed.fit_info["deviations"])
    E = 32
    assert fixed.num_parameters() == fitted.num_parameters() - 1
    sim = fixed.similarity(fixed.embed_image(test.image()), fixed.embed_text(test.text())).numpy()
    assert recall_at_1(sim) > 10 / len(test)


def test_patch_scores_are_local_projections_times_normalised_classes(fitted, data):
    imgs = data[2].image().subset(np.arange(3))
    classes = fitted.class_embeddings(data[2].text().subset(np.arange(8)), n_classes=4, n_templates=2)
    tok = imgs.token_array().astype(np.float64)[:, 1:]
    want = proj64(fitted.mods["local_vision"], tok) @ unit(classes.double().numpy()).T
    np.testing.assert_allclose(fitted.patch_scores(imgs, classes).numpy(), want, atol=1e-4)


def test_an_encoder_without_cls_uses_the_mean_token(data):
    train, val, test = data
    def no_prefix(p: Pairs) -> Pairs:
        im = p.images
        return Pairs(dataclasses.replace(im, tokens=np.asarray(im.tokens)[:, 1:], n_prefix=0), p.texts,
                     p.image_index, p.text_index)
    m = FreezeAlign(**{**FAST, "max_epochs": 3})
    m.fit(no_prefix(train), no_prefix(val), seed=0)
    assert any("no CLS" in n for n in m.fit_info["notes"])
    imgs = no_prefix(test).image().subset(np.arange(5))
    tok = imgs.token_array().astype(np.float64)
    want = unit(proj64(m.mods["local_vision"], tok).mean(1) + proj64(m.mods["cls_vision"], tok.mean(1)))
    np.testing.assert_allclose(m.embed_image(imgs).numpy(), want, atol=1e-5)


def test_features_without_tokens_are_a_clear_error(data):
    train, val, _ = data
    bare = Pairs(ImageFeatures(pooled=np.asarray(train.images.pooled)), TextFeatures(pooled=train.texts.pooled),
                 train.image_index, train.text_index)
    with pytest.raises(FeatureError, match="freeze-align projects every token.*no tokens"):
        FreezeAlign(**FAST).fit(bare, None)


@pytest.mark.parametrize("kw", [{"tau": "hot"}, {"tau": "-0.1"}, {"dropout": 1.0}, {"tau_init": 0.9}])
def test_bad_hyperparameters_are_config_errors(kw):
    with pytest.raises(ConfigError):
        FreezeAlign(**kw)


def test_mean_forward_is_the_mean_of_the_per_token_projection_with_the_same_dropout():
    """L₁ and L₃ applied to token means equal the mean of the per-token projector (train mode: one
    dropout draw on the same shape), masked rows included; a row without tokens gives 0."""
    from alignbench.methods.freeze_align import TokenProjector

    torch.manual_seed(0)
    proj = TokenProjector(24, 16, dropout=0.3).train()
    x = torch.randn(5, 9, 24)
    mask = torch.ones(5, 9, dtype=torch.bool)
    mask[1, 4:] = False
    mask[3, :] = False
    for m in (None, mask):
        torch.manual_seed(1)
        z = proj(x)
        w = torch.ones(5, 9, 1) if m is None else m.unsqueeze(-1).float()
        want = (z * w).sum(1) / w.sum(1).clamp(min=1)
        torch.manual_seed(1)
        torch.testing.assert_close(proj.mean_forward(x, m), want, rtol=1e-5, atol=1e-6)
    assert torch.equal(proj.mean_forward(x, mask)[3], torch.zeros(16))


def test_affine_layers_see_one_row_per_image_and_caption_not_per_token(data):
    """Speed: only LN, dropout and L₂ + GELU run per token; L₁ and L₃ get the means."""
    train, val, _ = data
    m = FreezeAlign(**{**FAST, "max_epochs": 1})
    m.fit(train, None, seed=0)
    shapes = []
    for key in ("local_vision", "local_text"):
        for layer in ("l1", "l3"):
            getattr(m.mods[key], layer).register_forward_hook(lambda mod, inp, out: shapes.append(inp[0].dim()))
    m.embed_image(val.image())
    m.embed_text(val.text())
    assert shapes and set(shapes) == {2}


def test_non_finite_tokens_are_a_feature_error_at_fit(data):
    train, _, _ = data
    tokens = np.array(train.images.tokens, copy=True)
    tokens[train.image_index[3], 2, 5] = np.nan
    bad = Pairs(dataclasses.replace(train.images, tokens=tokens), train.texts, train.image_index, train.text_index)
    with pytest.raises(FeatureError, match="image tokens contain non-finite"):
        FreezeAlign(**{**FAST, "max_epochs": 1}).fit(bad, None, seed=0)
