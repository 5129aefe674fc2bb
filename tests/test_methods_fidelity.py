"""CCA, CSA and ASIF compute what METHODS.md says, checked against independent computations."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from sklearn.cross_decomposition import CCA as SkCCA

from alignbench.cca_fit import fit_cca, ledoit_wolf_eps, select_eps, text_to_image_mrr
from alignbench.errors import ConfigError, FeatureError
from alignbench.features import ImageFeatures, Pairs, TextFeatures
from alignbench.registry import METHODS
from synthetic import make_pairs, recall_at_1, split_pairs


def correlated(n: int, d_x: int, d_y: int, seed: int = 0, n_shared: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Two views sharing ``n_shared`` latent dims with decreasing strength, non-centred."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, n_shared)) * np.linspace(2.0, 0.7, n_shared)
    x = z @ rng.standard_normal((n_shared, d_x)) + rng.standard_normal((n, d_x)) + 3.0
    y = z @ rng.standard_normal((n_shared, d_y)) + rng.standard_normal((n, d_y)) - 1.0
    return x, y


def direct_canonical_correlations(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """ρ² are the eigenvalues of Σxx⁻¹ Σxy Σyy⁻¹ Σyx (textbook CCA), float64, no ridge."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    sxx, syy, sxy = xc.T @ xc, yc.T @ yc, xc.T @ yc
    m = np.linalg.solve(sxx, sxy) @ np.linalg.solve(syy, sxy.T)
    ev = np.sort(np.real(scipy.linalg.eigvals(m)))[::-1]
    return np.sqrt(np.clip(ev[: min(x.shape[1], y.shape[1])], 0, 1))


def pairs_from_arrays(x: np.ndarray, y: np.ndarray) -> Pairs:
    n = len(x)
    return Pairs(ImageFeatures(pooled=x.astype(np.float32)), TextFeatures(pooled=y.astype(np.float32)),
                 np.arange(n), np.arange(n))


# -- CCA ------------------------------------------------------------------------------
def test_canonical_correlations_match_the_direct_eigen_solution():
    x, y = correlated(4000, 7, 5)
    fit = fit_cca(x, y, eps=0.0)
    assert fit.dim == 5
    np.testing.assert_allclose(fit.rho, direct_canonical_correlations(x, y), atol=1e-10)
    assert np.all(np.diff(fit.rho) <= 1e-12), "ρ sorted decreasing"


def test_canonical_correlations_match_scikit_learn():
    x, y = correlated(3000, 6, 4, seed=1)
    ours = fit_cca(x, y, eps=0.0, latent_dim=2)
    sk = SkCCA(n_components=2, max_iter=5000, tol=1e-12).fit(x, y)
    u, v = sk.transform(x, y)
    sk_rho = [abs(np.corrcoef(u[:, i], v[:, i])[0, 1]) for i in range(2)]
    np.testing.assert_allclose(ours.rho, sk_rho, atol=1e-6)
    # Same directions up to sign: our variates correlate ±1 with scikit-learn's.
    px, py = ours.project_x(x), ours.project_y(y)
    for i in range(2):
        assert abs(np.corrcoef(px[:, i], u[:, i])[0, 1]) > 1 - 1e-6
        assert abs(np.corrcoef(py[:, i], v[:, i])[0, 1]) > 1 - 1e-6


def test_canonical_variates_are_whitened_and_diagonally_correlated():
    x, y = correlated(2000, 6, 5, seed=2)
    fit = fit_cca(x, y, eps=0.0)
    px, py = fit.project_x(x), fit.project_y(y)
    n = len(x)
    np.testing.assert_allclose(px.mean(0), 0, atol=1e-10)
    np.testing.assert_allclose(px.T @ px / (n - 1), np.eye(fit.dim), atol=1e-8)
    np.testing.assert_allclose(py.T @ py / (n - 1), np.eye(fit.dim), atol=1e-8)
    np.testing.assert_allclose(px.T @ py / (n - 1), np.diag(fit.rho), atol=1e-8)


def test_ridge_is_relative_to_the_trace():
    """ε is scale-free: scaling the features leaves the canonical correlations unchanged."""
    x, y = correlated(500, 6, 5, seed=3)
    a = fit_cca(x, y, eps=0.1)
    b = fit_cca(100 * x, 0.01 * y, eps=0.1)
    np.testing.assert_allclose(a.rho, b.rho, atol=1e-10)
    assert np.all(a.rho < fit_cca(x, y, eps=0.0).rho + 1e-12), "a ridge can only shrink ρ"


def test_latent_dim_default_and_small_budget():
    x, y = correlated(10, 20, 15, seed=4)
    fit = fit_cca(x, y, eps=1e-3)
    assert fit.dim == 9  # N − 1
    assert np.isfinite(fit.wx).all() and np.isfinite(fit.rho).all()


def test_tiny_eps_is_degenerate_when_n_is_not_much_larger_than_d_and_validation_fixes_it():
    """METHODS.md: with d close to N, ε = 1e-4 gives ρ ≈ 1 everywhere; choosing ε on val does not."""
    pairs = make_pairs(700, d_v=160, d_t=96, seed=5, noise=1.0)
    train, val, test = split_pairs(pairs, 200, 250, 250, seed=0)
    x, y = train.image().global_array(), train.text().global_array()
    degenerate = fit_cca(x, y, eps=1e-4)
    assert degenerate.rho[:20].min() > 0.99
    fixed = METHODS.get("cca")(eps=1e-4)
    fixed.fit(train, val)
    chosen = METHODS.get("cca")()
    chosen.fit(train, val)
    assert chosen.fit_info["eps_image"] > 1e-4
    assert chosen.fit_info["eps_source"].startswith("validation")
    assert chosen.fit_info["rho_mean"] < 0.9
    r = lambda m: recall_at_1(m.similarity(m.embed_image(test.image()), m.embed_text(test.text())).numpy())  # noqa: E731
    assert r(chosen) > r(fixed) + 0.1


def test_select_eps_picks_the_best_validation_score():
    x, y = correlated(300, 8, 6, seed=6)
    xv, yv = correlated(100, 8, 6, seed=7)
    grid = (1e-3, 1e-2, 0.1, 1.0)
    fit, eps, scores = select_eps(x, y, xv, yv, lambda f, a, b: -abs(f.eps_x - 0.1), grid=grid)
    assert eps == 0.1 and fit.eps_x == 0.1 and set(scores) == set(grid)
    np.testing.assert_allclose(fit.rho, fit_cca(x, y, eps=0.1).rho, atol=1e-12)


def test_ledoit_wolf_eps_without_validation():
    x, y = correlated(200, 30, 20, seed=8)
    ex, ey = ledoit_wolf_eps(x, y)
    assert ex > 0 and ey > 0
    m = METHODS.get("cca")()
    m.fit(pairs_from_arrays(x, y), None)
    assert m.fit_info["eps_source"].startswith("Ledoit-Wolf")
    assert m.fit_info["eps_image"] == pytest.approx(ex) and m.fit_info["eps_text"] == pytest.approx(ey)


def test_cca_method_scores_cosine_of_canonical_variates():
    x, y = correlated(400, 8, 6, seed=9)
    m = METHODS.get("cca")(eps=0.01)
    p = pairs_from_arrays(x, y)
    m.fit(p, None)
    fit = fit_cca(x.astype(np.float32), y.astype(np.float32), eps=0.01)
    px, py = fit.project_x(x[:20].astype(np.float32)), fit.project_y(y[:30].astype(np.float32))
    want = (px / np.linalg.norm(px, axis=1, keepdims=True)) @ (py / np.linalg.norm(py, axis=1, keepdims=True)).T
    got = m.similarity(m.embed_image(p.image().subset(np.arange(20))), m.embed_text(p.text().subset(np.arange(30))))
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)


def test_text_to_image_mrr():
    sim = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.7]])  # 2 images × 3 texts
    # text 0 → image 0 rank 1; text 1 → image 1 rank 1; text 2 → image 0 rank 2 (0.5 < 0.7)
    assert text_to_image_mrr(sim, np.array([0, 1, 0])) == pytest.approx((1 + 1 + 0.5) / 3)


# -- CSA ------------------------------------------------------------------------------
def test_csa_score_is_the_rho_weighted_inner_product_by_hand():
    x, y = correlated(500, 9, 7, seed=10, n_shared=4)
    p = pairs_from_arrays(x, y)
    m = METHODS.get("csa")(eps=0.05, s=4)
    m.fit(p, None)
    fit = fit_cca(x.astype(np.float32), y.astype(np.float32), eps=0.05)
    xi, yj = x[:6].astype(np.float32), y[:5].astype(np.float32)
    want = np.zeros((6, 5))
    for i in range(6):
        u = fit.project_x(xi[i : i + 1])[0, :4]
        u = u / np.linalg.norm(u)
        for j in range(5):
            v = fit.project_y(yj[j : j + 1])[0, :4]
            v = v / np.linalg.norm(v)
            want[i, j] = sum(fit.rho[k] * u[k] * v[k] for k in range(4))
    a = m.embed_image(p.image().subset(np.arange(6)))
    b = m.embed_text(p.text().subset(np.arange(5)))
    assert a.shape == (6, 4)
    np.testing.assert_allclose(torch.linalg.vector_norm(a, dim=1).numpy(), 1, atol=1e-6)
    np.testing.assert_allclose(m.similarity(a, b).numpy(), want, atol=1e-5)
    # The ρ weighting is what distinguishes CSA from plain cosine.
    assert not np.allclose(m.similarity(a, b).numpy(), (a @ b.T).numpy(), atol=1e-3)


def test_csa_default_keeps_min_512_and_rank():
    x, y = correlated(300, 8, 6, seed=11)
    m = METHODS.get("csa")(eps=0.1)
    m.fit(pairs_from_arrays(x, y), None)
    assert m.fit_info["dims_used"] == 6


# -- ASIF -----------------------------------------------------------------------------
def naive_asif(q: np.ndarray, anchors: np.ndarray, k: int, p: float) -> np.ndarray:
    """Relative representation with explicit loops, float64."""
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    an = anchors / np.linalg.norm(anchors, axis=1, keepdims=True)
    out = np.zeros((len(q), len(an)))
    for i in range(len(q)):
        sims = [float(np.dot(qn[i], an[j])) for j in range(len(an))]
        top = sorted(range(len(an)), key=lambda j: -sims[j])[:k]
        for j in top:
            out[i, j] = max(sims[j], 0.0) ** p
        out[i] /= np.linalg.norm(out[i])
    return out


@pytest.mark.parametrize("sparse", [False, True])
def test_asif_relative_representation_matches_naive(sparse):
    rng = np.random.default_rng(12)
    x = np.abs(rng.standard_normal((40, 6))) + 0.1  # non-negative: every top-k similarity > 0
    y = np.abs(rng.standard_normal((40, 5))) + 0.1
    p = pairs_from_arrays(x, y)
    m = METHODS.get("asif")(k=7, p=3.0, chunk=4, sparse=sparse)
    m.fit(p, None)
    q_img, q_txt = np.abs(rng.standard_normal((9, 6))), np.abs(rng.standard_normal((11, 5)))
    a = m.embed_image(ImageFeatures(pooled=q_img.astype(np.float32)))
    b = m.embed_text(TextFeatures(pooled=q_txt.astype(np.float32)))
    ad = a.to_dense() if sparse else a
    bd = b.to_dense() if sparse else b
    assert ((ad != 0).sum(1) == 7).all() and ((bd != 0).sum(1) == 7).all()
    want_a = naive_asif(q_img, x.astype(np.float32), 7, 3.0)
    want_b = naive_asif(q_txt, y.astype(np.float32), 7, 3.0)
    np.testing.assert_allclose(ad.numpy(), want_a, atol=1e-6)
    np.testing.assert_allclose(bd.numpy(), want_b, atol=1e-6)
    np.testing.assert_allclose(m.similarity(a, b).numpy(), want_a @ want_b.T, atol=1e-6)


def test_asif_clamps_negatives_and_caps_k_at_n():
    rng = np.random.default_rng(13)
    x, y = rng.standard_normal((5, 4)), rng.standard_normal((5, 3))
    m = METHODS.get("asif")()  # k = 800 > N = 5
    m.fit(pairs_from_arrays(x, y), None)
    assert m.fit_info["k_used"] == 5
    q = rng.standard_normal((8, 4))
    a = m.embed_image(ImageFeatures(pooled=q.astype(np.float32)))
    np.testing.assert_allclose(a.numpy(), naive_asif(q, x.astype(np.float32), 5, 8.0), atol=1e-6)
    assert (a >= 0).all()


def test_asif_center_option_is_asif_on_mean_centred_features():
    """center=True equals faithful ASIF run on features minus the anchors' means (kept in the state)."""
    rng = np.random.default_rng(16)
    x, y = rng.standard_normal((30, 6)) + 5.0, rng.standard_normal((30, 5)) - 3.0
    m = METHODS.get("asif")(k=6, p=3.0, center=True)
    m.fit(pairs_from_arrays(x, y), None)
    mx, my = x.astype(np.float32).mean(0), y.astype(np.float32).mean(0)
    q_img, q_txt = rng.standard_normal((7, 6)) + 5.0, rng.standard_normal((4, 5)) - 3.0
    a = m.embed_image(ImageFeatures(pooled=q_img.astype(np.float32)))
    b = m.embed_text(TextFeatures(pooled=q_txt.astype(np.float32)))
    np.testing.assert_allclose(a.numpy(), naive_asif(q_img - mx, x.astype(np.float32) - mx, 6, 3.0), atol=1e-5)
    np.testing.assert_allclose(b.numpy(), naive_asif(q_txt - my, y.astype(np.float32) - my, 6, 3.0), atol=1e-5)
    again = METHODS.get("asif")(k=6, p=3.0, center=True)
    again.load_state_dict(m.state_dict())
    np.testing.assert_array_equal(again.embed_image(ImageFeatures(pooled=q_img.astype(np.float32))).numpy(),
                                  a.numpy())
    assert any("center" in d for d in m.fit_info["deviations"])


# -- bad input --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cca", "csa", "asif"])
def test_nan_queries_are_a_feature_error(name):
    x, y = correlated(50, 4, 3, seed=14)
    m = METHODS.get(name)(**({"eps": 0.1} if name != "asif" else {}))
    m.fit(pairs_from_arrays(x, y), None)
    q = np.ones((2, 4), np.float32)
    q[1, 2] = np.nan
    with pytest.raises(FeatureError, match="(?i)nan|finite"):
        m.embed_image(ImageFeatures(pooled=q))


@pytest.mark.parametrize("name,kw", [("cca", {"eps": -1.0}), ("cca", {"latent_dim": 0}), ("csa", {"s": 0}),
                                     ("cca", {"eps_select": "magic"}), ("asif", {"k": 0}), ("asif", {"p": 0.0})])
def test_bad_hyperparameters_are_config_errors(name, kw):
    with pytest.raises(ConfigError):
        METHODS.get(name)(**kw)


def test_eps_grid_from_the_command_line():
    m = METHODS.get("cca")(eps_grid="1e-3, 0.1")
    assert m.config.eps_grid == (1e-3, 0.1)


def test_asif_patch_scores_equal_the_base_recipe():
    pairs = make_pairs(200, seed=15)
    m = METHODS.get("asif")(k=20, chunk=7)
    m.fit(pairs, None)
    imgs = pairs.image().subset(np.arange(5))
    classes = m.class_embeddings(pairs.text().subset(np.arange(6)), n_classes=3, n_templates=2)
    patches = imgs.patch_tensor(normed=True)
    B, P, d = patches.shape
    want = m.similarity(m.embed_image(ImageFeatures(pooled=patches.reshape(B * P, d).numpy())), classes)
    np.testing.assert_allclose(m.patch_scores(imgs, classes).numpy(), want.reshape(B, P, -1).numpy(), atol=1e-6)
