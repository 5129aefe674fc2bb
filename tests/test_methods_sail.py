"""SAIL computes what METHODS.md says: inputs, star head, sigmoid loss, segmentation, parameter count."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy.special import expit

from alignbench.errors import ConfigError, FeatureError
from alignbench.features import ImageFeatures, Pairs, TextFeatures
from alignbench.methods.sail import SAIL, StarHead, sigmoid_loss
from alignbench.training import info_nce
from synthetic import make_pairs, recall_at_1, split_pairs

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FAST = {"max_epochs": 40, "patience": 10, "batch_size": 128, "lr": 3e-3, "expansion": 2}


@pytest.fixture(scope="module")
def data():
    """Synthetic pairs whose image tokens need the final norm (as ViT tokens stored before it do)."""
    pairs = make_pairs(700, seed=3)
    rng = np.random.default_rng(0)
    w, b = rng.uniform(0.5, 2.0, 48).astype(np.float32), rng.normal(0, 0.3, 48).astype(np.float32)
    images = dataclasses.replace(pairs.images, final_norm=(w, b, 1e-6))
    pairs = Pairs(images, pairs.texts, pairs.image_index, pairs.text_index)
    return split_pairs(pairs, 400, 100, 200, seed=0)


def layer_norm64(x: np.ndarray, w, b, eps: float) -> np.ndarray:
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def star64(head: StarHead, u: np.ndarray) -> np.ndarray:
    """g(ReLU6(f₁h) ⊙ f₂h), h = LN(u), in float64."""
    p = {k: v.detach().double().numpy() for k, v in head.state_dict().items()}
    h = layer_norm64(u, p["norm.weight"], p["norm.bias"], head.norm.eps)
    a = np.clip(h @ p["f1.weight"].T + p["f1.bias"], 0, 6)
    return (a * (h @ p["f2.weight"].T + p["f2.bias"])) @ p["g.weight"].T + p["g.bias"]


def inputs64(f: ImageFeatures) -> np.ndarray:
    """[CLS ; mean of the final-normed patch tokens] per image, float64."""
    w, b, eps = f.final_norm
    rows = f.rows if f.rows is not None else np.arange(len(f.pooled))
    tok = np.asarray(f.tokens[rows], dtype=np.float64)[:, f.n_prefix :]
    return np.concatenate([np.asarray(f.pooled[rows], np.float64), layer_norm64(tok, w, b, eps).mean(1)], 1)


def unit(z: np.ndarray) -> np.ndarray:
    return z / np.linalg.norm(z, axis=-1, keepdims=True)


def test_sail_image_input_is_cls_and_mean_normed_patch(data):
    train, _, _ = data
    m = SAIL()
    got = m.image_inputs(train.image())
    np.testing.assert_allclose(got.numpy(), inputs64(train.image()), atol=1e-4)
    assert got.shape == (len(train), 2 * 48)


def test_sail_star_head_matches_the_formula_and_init():
    torch.manual_seed(0)
    head = StarHead(10, 7, expansion=8)
    assert (head.f1.out_features, head.f2.out_features, head.g.in_features) == (80, 80, 80)
    for lin in (head.f1, head.f2, head.g):
        assert torch.count_nonzero(lin.bias) == 0
        bound = math.sqrt(6 / (lin.in_features + lin.out_features))  # Xavier-uniform
        assert lin.weight.abs().max() <= bound and lin.weight.abs().max() > 0.8 * bound
    u = np.random.default_rng(1).normal(0, 3, (20, 10))
    for lin in (head.f1, head.f2, head.g):  # non-trivial biases so they are checked too
        torch.nn.init.normal_(lin.bias)
    np.testing.assert_allclose(head(torch.from_numpy(u).float()).detach().numpy(), star64(head, u), atol=1e-4)


def test_sigmoid_loss_matches_an_independent_float64_computation():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(9, 5)), rng.normal(size=(9, 5))
    s, bias = math.log(13.0), -4.0
    cos = unit(a) @ unit(b).T
    y = 2 * np.eye(9) - 1
    want = -np.mean(np.log(expit(y * (np.exp(s) * cos + bias))))
    got = sigmoid_loss(torch.tensor(a), torch.tensor(b), torch.tensor(s), torch.tensor(bias))
    assert float(got) == pytest.approx(want, rel=1e-6)


def test_sail_parameter_count_matches_the_formula(data):
    train, val, _ = data
    for loss, extra in (("sigmoid", 2), ("infonce", 0)):
        m = SAIL(max_epochs=1, expansion=8, loss=loss)
        m.fit(train, val)
        per_head = lambda a: 16 * a * a + 18 * a + 8 * a * 512 + 512  # noqa: E731
        assert m.num_parameters() == per_head(2 * 48) + per_head(32) + extra


def test_sail_fit_uses_the_sigmoid_loss_with_clamped_learnable_scale(data):
    train, val, test = data
    m = SAIL(**FAST)
    m.fit(train, val, seed=0)
    s = m.logits.log_scale.detach()
    assert 0 <= float(s) <= math.log(100) and float(s) != pytest.approx(math.log(20))
    assert float(m.logits.bias.detach()) != pytest.approx(-10.0)
    assert m.fit_info["logit_scale"] == pytest.approx(math.exp(float(s)))
    x, y = m.image_inputs(test.image()), test.text().global_tensor()
    m._train_mode(False)
    want = sigmoid_loss(m.image_head(x), m.text_head(y), m.logits.log_scale, m.logits.bias)
    assert float(m.val_batch_loss(x, y).detach()) == pytest.approx(float(want.detach()))
    # a scale pushed out of range is brought back before it is used
    with torch.no_grad():
        m.logits.log_scale.fill_(9.0)
    m.val_batch_loss(x, y)
    assert float(m.logits.log_scale.detach()) == pytest.approx(math.log(100))
    with torch.no_grad():
        m.logits.log_scale.fill_(-3.0)
    m.val_batch_loss(x, y)
    assert float(m.logits.log_scale.detach()) == 0.0
    img = m.embed_image(test.image())
    np.testing.assert_allclose(img.numpy(), unit(star64(m.image_head, inputs64(test.image()))), atol=1e-4)
    assert recall_at_1(m.similarity(img, m.embed_text(test.text())).numpy()) > 10 / len(test)


def test_sail_infonce_is_pals_baseline_loss(data):
    train, val, test = data
    m = SAIL(**FAST, loss="infonce")
    m.fit(train, val, seed=0)
    assert m.logits is None and "logits" not in {k.split(".")[0] for k in m.state_dict()}
    x, y = m.image_inputs(test.image()), test.text().global_tensor()
    m._train_mode(False)
    want = info_nce(m.image_head(x), m.text_head(y), 0.05)
    assert float(m.batch_loss(x, y, 0).detach()) == pytest.approx(float(want.detach()))
    assert any("loss='infonce'" in d for d in m.fit_info["deviations"])


def test_sail_patch_scores_put_each_patch_beside_the_cls(data):
    train, val, test = data
    m = SAIL(**{**FAST, "max_epochs": 3})
    m.fit(train, val)
    imgs = test.image().subset(np.arange(3))
    classes = m.class_embeddings(test.text().subset(np.arange(8)), n_classes=4, n_templates=2)
    w, b, eps = imgs.final_norm
    tok = np.asarray(imgs.tokens[imgs.rows], np.float64)[:, 1:]
    patches = layer_norm64(tok, w, b, eps)
    cls = np.asarray(imgs.pooled[imgs.rows], np.float64)
    u = np.concatenate([np.repeat(cls[:, None], patches.shape[1], 1), patches], -1)
    want = unit(star64(m.image_head, u.reshape(-1, u.shape[-1]))) @ classes.double().numpy().T
    np.testing.assert_allclose(m.patch_scores(imgs, classes).numpy(), want.reshape(3, patches.shape[1], 4), atol=1e-4)


def test_sail_bad_loss_is_a_config_error_with_a_suggestion():
    with pytest.raises(ConfigError, match="loss must be one of sigmoid, infonce, got 'foo'"):
        SAIL(loss="foo")
    with pytest.raises(ConfigError, match="did you mean sigmoid"):
        SAIL(loss="sigmod")


def test_sail_needs_image_tokens(data):
    train, val, _ = data
    bare = Pairs(ImageFeatures(pooled=np.asarray(train.images.pooled)), TextFeatures(pooled=train.texts.pooled),
                 train.image_index, train.text_index)
    with pytest.raises(FeatureError, match="tokens"):
        SAIL(**FAST).fit(bare, None)


def test_sail_validation_runs_the_image_head_once_per_distinct_image(data):
    """Dev pairs repeat images (5 captions each on Flickr8k): the early-stopping value is the per-pair
    ``validation_loss`` while the (wide) image head sees each distinct image once."""
    train, val, _ = data
    val = val.subset(np.repeat(np.arange(len(val)), 3))  # every image three times
    for loss in ("sigmoid", "infonce"):
        m = SAIL(**{**FAST, "max_epochs": 1}, loss=loss, dtype="fp32")
        m.fit(train, None, seed=0)
        rows = []
        m.image_head.register_forward_hook(lambda mod, inp, out: rows.append(len(inp[0])))
        got = m.make_val_loss(val, 64)()
        assert sum(rows) == len(np.unique(val.image_index))
        want = m.validation_loss(m.image_inputs(val.image()), m.text_inputs(val.text()), 64)
        assert got == pytest.approx(want, rel=1e-5)


def test_sail_takes_the_fast_matmul_path_by_default_and_records_it(data):
    train, val, _ = data
    m = SAIL(**{**FAST, "max_epochs": 2})
    m.fit(train, val, seed=0)
    from alignbench.devices import matmul_dtype

    assert SAIL.Config().dtype == "auto"
    assert (m.fit_info["dtype"], m.fit_info["dtype_reason"]) == matmul_dtype("auto", "cpu")
    assert m.fit_info["optimizer"] == ("adamw-fused" if m.fit_info["dtype"] == "bf16" else "adamw")
