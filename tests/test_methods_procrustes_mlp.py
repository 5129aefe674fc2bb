"""Procrustes and MLP compute what METHODS.md says, checked against independent float64 computations."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.stats import ortho_group

from alignbench.errors import ConfigError
from alignbench.features import ImageFeatures, Pairs, TextFeatures
from alignbench.methods.mlp import MLP
from alignbench.methods.procrustes import Procrustes
from synthetic import make_pairs, recall_at_1, split_pairs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def arrays_pairs(x: np.ndarray, y: np.ndarray) -> Pairs:
    n = len(x)
    return Pairs(ImageFeatures(pooled=x.astype(np.float32)), TextFeatures(pooled=y.astype(np.float32)),
                 np.arange(n), np.arange(n))


def related(n: int, d_v: int, d_t: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Non-centred, unequally scaled views of one latent."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 6))
    x = z @ rng.standard_normal((6, d_v)) * rng.uniform(0.5, 3, d_v) + rng.standard_normal((n, d_v)) + 2.0
    y = z @ rng.standard_normal((6, d_t)) * rng.uniform(0.5, 3, d_t) + 0.5 * rng.standard_normal((n, d_t)) - 1.0
    return x, y


def standardised_padded(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Independent float64 standardisation (unbiased std) and zero padding to max(d_v, d_t)."""
    d = max(x.shape[1], y.shape[1])
    xs = (x - x.mean(0)) / x.std(0, ddof=1)
    ys = (y - y.mean(0)) / y.std(0, ddof=1)
    return np.pad(xs, ((0, 0), (0, d - x.shape[1]))), np.pad(ys, ((0, 0), (0, d - y.shape[1])))


# -- Procrustes ---------------------------------------------------------------------------
@pytest.mark.parametrize("d_v,d_t", [(7, 5), (4, 9), (6, 6)])
def test_procrustes_r_is_scipys_orthogonal_procrustes_and_orthogonal(d_v, d_t):
    x, y = related(300, d_v, d_t, seed=d_v)
    m = Procrustes()
    m.fit(arrays_pairs(x, y))
    xs, ys = standardised_padded(x.astype(np.float32).astype(np.float64), y.astype(np.float32).astype(np.float64))
    want, _ = scipy.linalg.orthogonal_procrustes(xs, ys)
    d = max(d_v, d_t)
    assert m.R.dtype == np.float64 and m.R.shape == (d, d)
    np.testing.assert_allclose(m.R.T @ m.R, np.eye(d), atol=1e-12)
    # The block every embedding uses is unique (C = X̃ᵀỸ has full rank here); the padded rows/columns
    # span the null space of the padded X̃ᵀỸ, where any SVD (scipy's included) makes an arbitrary choice.
    np.testing.assert_allclose(m.R[:d_v, :d_t], want[:d_v, :d_t], atol=1e-9)
    assert np.linalg.norm(xs @ m.R - ys) <= np.linalg.norm(xs @ want - ys) + 1e-9


@pytest.mark.parametrize("d_v,d_t", [(40, 12), (12, 40), (16, 16)])
def test_procrustes_fit_takes_the_svd_of_the_unpadded_block_only(d_v, d_t, monkeypatch):
    """Speed: a d×d SVD of the zero-padded X̃ᵀỸ costs ~15 s at d = 1280; the d_v×d_t block's is what R needs."""
    from threadpoolctl import threadpool_info, threadpool_limits

    x, y = related(400, d_v, d_t, seed=d_v + d_t)
    shapes, threads = [], []
    svd = np.linalg.svd

    def spy(a, *args, **kw):
        shapes.append(a.shape)
        threads.append({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})
        return svd(a, *args, **kw)

    monkeypatch.setattr(np.linalg, "svd", spy)
    m = Procrustes()
    p = arrays_pairs(x, y)
    with threadpool_limits(limits=2, user_api="blas"):  # as on the 2-core machine
        m.fit(p)
    assert shapes == [(d_v, d_t)] and m.fit_info["rank"] == min(d_v, d_t)
    assert threads == [{1}]  # LAPACK's barrier-bound SVD on one BLAS thread (oversubscription on shared CPUs)
    monkeypatch.setattr(np.linalg, "svd", svd)
    xs, ys = standardised_padded(x.astype(np.float32).astype(np.float64), y.astype(np.float32).astype(np.float64))
    want, _ = scipy.linalg.orthogonal_procrustes(xs, ys)  # the full padded SVD
    np.testing.assert_allclose(m.R.T @ m.R, np.eye(max(d_v, d_t)), atol=1e-12)
    np.testing.assert_allclose(m.R[:d_v, :d_t], want[:d_v, :d_t], atol=1e-9)
    img = (xs @ want)[:, :d_t] * y.astype(np.float32).std(0, ddof=1) + y.astype(np.float32).mean(0)
    np.testing.assert_allclose(m.embed_image(p.image()).numpy(), img, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n,dead", [(400, 2), (10, 0)])
def test_procrustes_rank_deficient_cross_covariance_keeps_what_the_data_determine(n, dead, monkeypatch):
    """Constant text dimensions (MiniLM-L6 has two) or few pairs make C = X̃ᵀỸ rank deficient: R is still an
    orthogonal minimiser from C's SVD alone, maps C's right singular vectors to its left ones as every SVD's
    R does, and the result says which part is the SVD's choice."""
    x, y = related(n, 30, 20, seed=1)
    y[:, :dead] = 0.25  # constant dimensions: std 0 → 1, all-zero columns after standardising
    shapes = []
    svd = np.linalg.svd
    monkeypatch.setattr(np.linalg, "svd", lambda a, *args, **kw: shapes.append(a.shape) or svd(a, *args, **kw))
    m = Procrustes()
    m.fit(arrays_pairs(x, y))
    monkeypatch.setattr(np.linalg, "svd", svd)
    with np.errstate(invalid="ignore"):  # the constant columns are 0/0 here; standardising makes them 0
        xs, ys = standardised_padded(x.astype(np.float32).astype(np.float64), y.astype(np.float32).astype(np.float64))
    ys[:, :dead] = 0.0
    c = xs[:, :30].T @ ys[:, :20]
    u, s, vt = np.linalg.svd(c)
    r = int((s > s[0] * 30 * np.finfo(float).eps).sum())
    assert shapes == [(30, 20)] and m.fit_info["rank"] == r == min(20 - dead, n - 1)
    assert any("rank" in note and "SVD's choice" in note for note in m.fit_info["notes"])
    np.testing.assert_allclose(m.R.T @ m.R, np.eye(30), atol=1e-12)
    full = scipy.linalg.orthogonal_procrustes(xs, ys)[0]  # a d×d SVD's R
    assert np.linalg.norm(xs @ m.R - ys) == pytest.approx(np.linalg.norm(xs @ full - ys), rel=1e-9)
    np.testing.assert_allclose(m.R[:30, :20] @ vt[:r].T, u[:, :r], atol=1e-9)
    np.testing.assert_allclose(full[:30, :20] @ vt[:r].T, u[:, :r], atol=1e-9)


def test_procrustes_r_minimises_the_residual_against_brute_force():
    x, y = related(200, 5, 4, seed=3)
    m = Procrustes()
    m.fit(arrays_pairs(x, y))
    xs, ys = standardised_padded(x.astype(np.float32).astype(np.float64), y.astype(np.float32).astype(np.float64))
    best = np.linalg.norm(xs @ m.R - ys)
    rng = np.random.default_rng(0)
    others = [np.linalg.norm(xs @ q - ys) for q in ortho_group.rvs(5, size=2000, random_state=rng)]
    assert best < min(others)
    # and no nearby rotation does better (R is a local minimum on the orthogonal group)
    for _ in range(200):
        a = rng.standard_normal((5, 5)) * 1e-3
        q = m.R @ scipy.linalg.expm(a - a.T)
        assert np.linalg.norm(xs @ q - ys) >= best - 1e-12


@pytest.mark.parametrize("d_v,d_t", [(7, 5), (4, 9)])
def test_procrustes_scores_are_cosines_in_the_raw_text_space(d_v, d_t):
    x, y = related(250, d_v, d_t, seed=11)
    x32, y32 = x.astype(np.float32).astype(np.float64), y.astype(np.float32).astype(np.float64)
    m = Procrustes()
    p = arrays_pairs(x, y)
    m.fit(p)
    xs, ys = standardised_padded(x32, y32)
    r, _ = scipy.linalg.orthogonal_procrustes(xs, ys)
    img = (xs @ r)[:, :d_t] * y32.std(0, ddof=1) + y32.mean(0)  # de-standardised with the text statistics
    want = (img / np.linalg.norm(img, axis=1, keepdims=True)) @ (y32 / np.linalg.norm(y32, axis=1, keepdims=True)).T
    got = m.similarity(m.embed_image(p.image()), m.embed_text(p.text())).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    s = Procrustes(space="standardised")
    s.fit(p)
    img_s, txt_s = (xs @ r)[:, :d_t], ys[:, :d_t]
    want_s = ((img_s / np.linalg.norm(img_s, axis=1, keepdims=True))
              @ (txt_s / np.linalg.norm(txt_s, axis=1, keepdims=True)).T)
    np.testing.assert_allclose(s.similarity(s.embed_image(p.image()), s.embed_text(p.text())).numpy(), want_s,
                               atol=1e-5)


def test_procrustes_constant_dimension_keeps_std_one_and_small_budget_is_noted():
    x, y = related(30, 40, 8, seed=5)
    x[:, 3] = 7.0  # a dead dimension: std 0 → 1, no NaN
    m = Procrustes()
    m.fit(arrays_pairs(x, y))
    assert m.std_v[3] == 1.0 and np.isfinite(m.R).all()
    assert any("not unique" in n for n in m.fit_info["notes"])
    big = Procrustes()
    big.fit(arrays_pairs(*related(100, 5, 4)))
    assert big.fit_info["notes"] == []


def test_procrustes_auto_space_chooses_on_validation_and_counts_its_numbers():
    pairs = make_pairs(900, d_v=24, d_t=16, seed=2)
    train, val, test = split_pairs(pairs, 500, 200, 200, seed=0)
    m = Procrustes(space="auto")
    m.fit(train, val)
    scores = m.fit_info["space_scores"]
    assert set(scores) == {"raw", "standardised"} and m.space == max(scores, key=scores.get)
    assert m.num_parameters() == 24 * 24 + 2 * 24 + 2 * 16
    sim = m.similarity(m.embed_image(test.image()), m.embed_text(test.text())).numpy()
    assert recall_at_1(sim) > 10 / len(test)


def test_procrustes_bad_space_is_a_config_error():
    with pytest.raises(ConfigError, match="space"):
        Procrustes(space="whitened")


def test_procrustes_patch_scores_map_each_patch_token():
    pairs = make_pairs(300, seed=4)
    m = Procrustes()
    m.fit(pairs)
    imgs = pairs.image().subset(np.arange(4))
    classes = m.class_embeddings(pairs.text().subset(np.arange(6)), n_classes=3, n_templates=2)
    patches = imgs.patch_tensor(normed=True).double().numpy()
    B, P, d = patches.shape
    flat = patches.reshape(B * P, d)
    z = np.pad((flat - m.mean_v) / m.std_v, ((0, 0), (0, m.R.shape[0] - d))) @ m.R
    z = z[:, : m.d_text] * m.std_t + m.mean_t
    want = (z / np.linalg.norm(z, axis=1, keepdims=True)) @ classes.double().numpy().T
    np.testing.assert_allclose(m.patch_scores(imgs, classes).numpy(), want.reshape(B, P, -1), atol=1e-5)


# -- MLP ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data():
    return split_pairs(make_pairs(700, seed=1), 400, 100, 200, seed=1)


def mlp_forward64(head, x: np.ndarray) -> np.ndarray:
    """z = P·x + sigmoid(ℓ)·W₂·GELU(W₁·x) in float64 (eval mode: no dropout)."""
    from scipy.special import erf, expit

    w = lambda t: t.detach().double().numpy()  # noqa: E731
    h = x @ w(head.down.weight).T
    gelu = 0.5 * h * (1 + erf(h / np.sqrt(2)))
    return x @ w(head.proj.weight).T + expit(float(head.gate_logit.detach())) * gelu @ w(head.up.weight).T


def test_mlp_parameter_count_matches_the_formula(data):
    train, val, _ = data
    m = MLP(max_epochs=2)
    m.fit(train, val)
    d_v, d_t = 48, 32
    assert m.num_parameters() == (d_v + d_t) * (512 + 64) + 2 * 64 * 512 + 2


def test_mlp_init_is_orthogonal_zero_and_bias_free():
    m = MLP()
    with torch.no_grad():
        img, txt = m.build_heads(48, 600)
    img.requires_grad_(False), txt.requires_grad_(False)
    for head in (img, txt):
        assert head.proj.bias is None and head.down.bias is None and head.up.bias is None
        assert torch.count_nonzero(head.up.weight) == 0
    np.testing.assert_allclose((img.proj.weight.T @ img.proj.weight).numpy(), np.eye(48), atol=1e-5)  # 512×48
    np.testing.assert_allclose((txt.proj.weight @ txt.proj.weight.T).numpy(), np.eye(512), atol=1e-5)  # 512×600
    np.testing.assert_allclose((img.down.weight.T @ img.down.weight).numpy(), np.eye(48), atol=1e-5)  # 64×48
    np.testing.assert_allclose((txt.down.weight @ txt.down.weight.T).numpy(), np.eye(64), atol=1e-5)  # 64×600
    assert float(img.gate()) == 0.0 and float(img.gate_logit) == -np.inf


def test_mlp_faithful_gate_zero_trains_only_the_linear_map(data):
    train, val, test = data
    torch.manual_seed(0)
    m = MLP(max_epochs=30, patience=30, batch_size=128, lr=3e-3)
    m.fit(train, val, seed=0)
    m0 = MLP()
    m0._init(48, 32, seed=0)  # the same initial weights
    for trained, init in ((m.image_head, m0.image_head), (m.text_head, m0.text_head)):
        assert float(trained.gate_logit.detach()) == -np.inf and torch.count_nonzero(trained.up.weight) == 0
        # W₁ got no gradient: only the decoupled weight decay touched it (a uniform shrink)
        ratio = trained.down.weight / init.down.weight
        assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), rtol=1e-4)
        assert not torch.allclose(trained.proj.weight, init.proj.weight)
    x = test.image().global_array().astype(np.float64)
    z = x @ m.image_head.proj.weight.detach().double().numpy().T  # bias-free linear map
    np.testing.assert_allclose(m.embed_image(test.image()).numpy(), z / np.linalg.norm(z, axis=1, keepdims=True),
                               atol=1e-5)
    assert m.fit_info["gates"] == {"image": 0.0, "text": 0.0} and m.fit_info["notes"]


def test_mlp_open_gate_is_a_real_mlp_matching_the_formula(data):
    train, val, test = data
    m = MLP(max_epochs=20, patience=20, batch_size=128, lr=3e-3, gate_init=0.1)
    m.fit(train, val, seed=0)
    head = m.image_head
    assert torch.count_nonzero(head.up.weight) > 0 and float(head.gate().detach()) != pytest.approx(0.1, abs=1e-9)
    x = test.image().global_array().astype(np.float64)
    z = mlp_forward64(head, x)
    np.testing.assert_allclose(m.embed_image(test.image()).numpy(), z / np.linalg.norm(z, axis=1, keepdims=True),
                               atol=1e-5)
    assert any("gate_init=0.1" in d for d in m.fit_info["deviations"])
    sim = m.similarity(m.embed_image(test.image()), m.embed_text(test.text())).numpy()
    assert recall_at_1(sim) > 10 / len(test)


@pytest.mark.parametrize("kw", [{"gate_init": 1.0}, {"gate_init": -0.1}, {"rank": 0}, {"dropout": 1.0}])
def test_mlp_bad_hyperparameters_are_config_errors(kw):
    with pytest.raises(ConfigError):
        MLP(**kw)


def test_mlp_patch_scores_use_the_head_without_dropout(data):
    train, val, test = data
    m = MLP(max_epochs=3, gate_init=0.1, dropout=0.5)
    m.fit(train, val)
    imgs = test.image().subset(np.arange(3))
    classes = m.class_embeddings(test.text().subset(np.arange(8)), n_classes=4, n_templates=2)
    patches = imgs.patch_tensor(normed=True).double().numpy()
    B, P, d = patches.shape
    z = mlp_forward64(m.image_head, patches.reshape(B * P, d))
    want = (z / np.linalg.norm(z, axis=1, keepdims=True)) @ classes.double().numpy().T
    np.testing.assert_allclose(m.patch_scores(imgs, classes).numpy(), want.reshape(B, P, -1), atol=1e-5)


def test_ls_says_what_the_faithful_shut_gate_means(capsys):
    """Issue 13: `alignbench ls methods` states the consequence of the faithful gate_init=0, and the way out."""
    from alignbench.cli import main as cli

    assert cli(["ls", "methods"]) == 0
    (line,) = [ln for ln in capsys.readouterr().out.splitlines() if ln.split()[:1] == ["mlp"]]
    assert "gate_init=0" in line and "linear map" in line and "gate_init=0.1" in line
