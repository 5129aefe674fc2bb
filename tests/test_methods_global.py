"""Fidelity of Linear, FuseMix, STRUCTURE and the random control to METHODS.md."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon

from alignbench.errors import ConfigError, TrainingDivergedError
from alignbench.methods.fusemix import FuseMix, ResidualBlock, latent_mixup
from alignbench.methods.linear import Linear
from alignbench.methods.random_map import RandomMap
from alignbench.methods.structure import Structure, js_divergence, structure_regulariser, transition_matrix
from alignbench.training import info_nce
from synthetic import make_pairs, recall_at_1, split_pairs


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data():
    return split_pairs(make_pairs(700, seed=1), 400, 100, 200, seed=1)


# -- Linear ------------------------------------------------------------------------
def test_linear_is_one_biased_linear_map_per_modality_with_normalised_outputs(data):
    train, val, test = data
    m = Linear(max_epochs=3)
    m.fit(train, val, seed=0)
    assert isinstance(m.image_head, torch.nn.Linear) and m.image_head.bias is not None
    assert (m.image_head.in_features, m.image_head.out_features) == (48, 512)
    assert (m.text_head.in_features, m.text_head.out_features) == (32, 512)
    assert m.num_parameters() == (48 + 1) * 512 + (32 + 1) * 512
    img = m.embed_image(test.image())
    assert img.shape == (200, 512) and torch.allclose(img.norm(dim=1), torch.ones(200), atol=1e-5)
    x = test.image().global_tensor()
    expected = torch.nn.functional.normalize(m.image_head(x), dim=-1)
    assert torch.allclose(img, expected, atol=1e-6)


def test_linear_defaults_follow_the_shared_trainer_recipe():
    c = Linear().config
    assert (c.dim, c.temperature, c.weight_decay, c.batch_size, c.grad_clip) == (512, 0.05, 1e-4, 4096, 1.0)
    tc = c.train_config()
    assert tc.betas == (0.9, 0.95) and tc.lr == c.lr


def test_fit_info_records_training_and_every_deviation(data):
    train, val, _ = data
    m = Linear(lr=3e-3, max_epochs=4)
    m.fit(train, val, seed=0)
    info = m.fit_info
    for key in ("epochs", "steps", "best_epoch", "best_val_loss", "lr", "n_train"):
        assert key in info
    assert info["lr"] == 3e-3 and info["n_train"] == 400
    assert any(d.startswith("lr=0.003") for d in info["deviations"])
    assert any(d.startswith("trainer max_epochs=4 (reference 1000)") for d in info["deviations"])
    m.fit(train, None, seed=0)
    assert any("no early stopping" in d for d in m.fit_info["deviations"])


def test_cli_style_string_overrides_are_coerced():
    m = Linear(lr="1e-2", max_epochs="7", lr_range_test="true")
    assert m.config.lr == 0.01 and m.config.max_epochs == 7 and m.config.lr_range_test is True
    with pytest.raises(ConfigError, match="did you mean"):
        Linear(lrr=1e-3)
    with pytest.raises(ConfigError):
        Linear(lr=-1.0)


def test_lr_range_test_is_the_default_and_a_given_lr_turns_it_off(data):
    """METHODS.md: the range test picks every fit's lr; `lr=…` fixes it instead (and says so)."""
    train, val, _ = data
    m = Linear(max_epochs=2)
    assert m.config.lr_range_test is True
    m.fit(train, val, seed=0)
    rt = m.fit_info["lr_range_test"]
    assert m.fit_info["lr_source"] == "range_test" and not rt["fallback"]
    assert m.fit_info["lr"] == rt["lr"] == max(rt["lr_steep"] / 5, 1e-6)
    assert 2 <= len(rt["curve"]["losses"]) <= 100 and rt["n_rows"] == rt["batch"] == len(train)
    assert not any("lr_range_test" in d for d in m.fit_info["deviations"])
    fixed = Linear(lr=3e-3, max_epochs=2)
    assert fixed.config.lr_range_test is False
    fixed.fit(train, val, seed=0)
    assert fixed.fit_info["lr_source"] == "fixed" and "lr_range_test" not in fixed.fit_info
    assert any(d.startswith("trainer lr_range_test=False") for d in fixed.fit_info["deviations"])


def test_diverging_training_raises_a_clear_error(data):
    train, val, _ = data
    with pytest.raises(TrainingDivergedError, match=r"linear: training diverged at step \d+.*learning rate"):
        Linear(lr=1e6, max_epochs=50).fit(train, val, seed=0)


def test_validation_loss_drives_early_stopping(data):
    train, val, _ = data
    assert Linear().config.patience >= 20  # one step per epoch at small budgets: short patience stops too soon
    m = Linear(lr=3e-2, max_epochs=200, patience=3, batch_size=64)
    m.fit(train, val, seed=0)
    assert m.fit_info["early_stopped"] and m.fit_info["epochs"] < 200
    assert m.fit_info["epochs"] - m.fit_info["best_epoch"] == 3
    # the restored state is the best one: its validation loss is the recorded best
    xv, yv = val.image().global_tensor(), val.text().global_tensor()
    assert m.validation_loss(xv, yv, 64) == pytest.approx(m.fit_info["best_val_loss"], rel=1e-5)


# -- random control ---------------------------------------------------------------------
def test_random_is_untrained_seeded_linear_of_the_same_shapes(data):
    train, val, test = data
    r0, r0b, r1 = RandomMap(), RandomMap(), RandomMap()
    r0.fit(train, val, seed=0)
    r0b.fit(train.subset(np.arange(10)), None, seed=0)  # data do not matter, only the seed
    r1.fit(train, val, seed=1)
    lin = Linear()
    assert r0.num_parameters() == (48 + 1) * 512 + (32 + 1) * 512  # Linear's shapes
    torch.manual_seed(0)
    fresh_image = torch.nn.Linear(48, 512)
    assert torch.equal(r0.image_head.weight, fresh_image.weight)  # PyTorch default init, seed 0
    e0, e0b, e1 = (m.embed_image(test.image()) for m in (r0, r0b, r1))
    assert torch.equal(e0, e0b) and not torch.equal(e0, e1)
    assert r0.fit_info["epochs"] == 0 and r0.fit_info["trained"] is False
    sim = r0.similarity(e0, r0.embed_text(test.text())).numpy()
    assert recall_at_1(sim) < 0.05  # chance is 0.005
    assert lin.level == r0.level == "global"


# -- FuseMix -------------------------------------------------------------------------------
def test_latent_mixup_uses_one_lambda_and_one_partner_for_both_modalities():
    x = torch.randn(16, 5)
    y = torch.randn(16, 3)
    xm, ym, lam, perm = latent_mixup(x, y, np.random.default_rng(0), alpha=1.0)
    p = torch.from_numpy(perm)
    assert torch.allclose(xm, lam * x + (1 - lam) * x[p]) and torch.allclose(ym, lam * y + (1 - lam) * y[p])
    assert 0 <= lam <= 1 and sorted(perm.tolist()) == list(range(16))
    # recover λ independently from each modality: they agree
    lam_x = float(((xm - x[p]) / (x - x[p])).nanmedian())  # NaN where a sample is its own partner
    lam_y = float(((ym - y[p]) / (y - y[p])).nanmedian())
    assert lam_x == pytest.approx(lam, abs=1e-5) and lam_y == pytest.approx(lam, abs=1e-5)
    # λ ~ Beta(1, 1) = Uniform(0, 1): mean ≈ 0.5 over many batches
    rng = np.random.default_rng(1)
    lams = [latent_mixup(x, y, rng)[2] for _ in range(2000)]
    assert np.mean(lams) == pytest.approx(0.5, abs=0.03) and np.std(lams) == pytest.approx(math.sqrt(1 / 12), abs=0.02)


def test_fusemix_batch_loss_is_infonce_of_the_mixed_pair(data):
    train, val, _ = data
    m = FuseMix(max_epochs=1, n_blocks=1, dropout=0.0, lr_range_test=False)
    m.fit(train, val, seed=0)
    x, y = train.image().global_tensor()[:32], train.text().global_tensor()[:32]
    m._mix_rng = np.random.default_rng(5)
    got = m.batch_loss(x, y, 0)
    xm, ym, _, _ = latent_mixup(x, y, np.random.default_rng(5), 1.0)
    want = info_nce(m.image_head(xm), m.text_head(ym), m.temperature())
    assert torch.allclose(got, want)


def test_fusemix_architecture_and_temperature():
    m = FuseMix()
    c = m.config
    assert (c.n_blocks, c.expansion, c.dropout, c.weight_decay, c.lr, c.temperature) == (4, 4, 0.6, 0.1, 1e-3, 0.07)
    assert (c.tau_min, c.tau_max, c.min_lr) == (0.001, 0.5, 1e-6)
    img, txt = m.build_heads(20, 12)
    blocks = [b for b in img if isinstance(b, ResidualBlock)]
    assert len(blocks) == 4 and blocks[0].fc1.out_features == 80 and blocks[0].drop.p == 0.6
    assert isinstance(img[-2], torch.nn.LayerNorm) and img[-1].out_features == 512
    assert float(m.tau().detach()) == pytest.approx(0.07)
    with torch.no_grad():
        m.tau.log_tau.fill_(10.0)
    assert float(m.tau().detach()) == pytest.approx(0.5)
    with torch.no_grad():
        m.tau.log_tau.fill_(-20.0)
    assert float(m.tau().detach()) == pytest.approx(0.001)
    with pytest.raises(ConfigError):
        FuseMix(dropout=1.5)


def test_residual_block_order_matches_the_spec():
    torch.manual_seed(0)
    blk = ResidualBlock(6, 4, dropout=0.0).eval()
    x = torch.randn(3, 6)
    ref = x + blk.fc2(torch.nn.functional.gelu(blk.fc1(torch.nn.functional.layer_norm(
        x, (6,), blk.norm.weight, blk.norm.bias, blk.norm.eps))))
    assert torch.allclose(blk(x), ref, atol=1e-6)


def test_fusemix_learns_its_temperature_and_warms_up(data):
    train, val, _ = data
    m = FuseMix(max_epochs=3, n_blocks=1, expansion=1, batch_size=100, lr_range_test=False)
    m.fit(train, val, seed=0)
    assert m.fit_info["temperature"] != pytest.approx(0.07, abs=1e-9)
    assert m.train_config(400).warmup_steps == m.config.warmup_epochs * 4
    groups = m.param_groups()
    assert groups[1]["weight_decay"] == 0.0 and any(p is m.tau.log_tau for p in groups[1]["params"])


# -- STRUCTURE -----------------------------------------------------------------------------
def test_structure_regulariser_is_zero_when_geometry_is_kept():
    x = torch.randn(32, 10)
    assert float(structure_regulariser(x, x.clone())) == pytest.approx(0.0, abs=1e-7)
    assert float(structure_regulariser(x, 5 * x)) == pytest.approx(0.0, abs=1e-7)  # normalised first
    assert float(structure_regulariser(x, x + 3.0, levels=1)) > 0  # an offset changes cosine geometry
    q = torch.linalg.qr(torch.randn(10, 10))[0]
    assert float(structure_regulariser(x, x @ q, levels=3)) == pytest.approx(0.0, abs=1e-6)  # rotations keep it
    # unrelated features: clearly positive (small in absolute terms: at τ=0.05 each row's own
    # similarity dominates the softmax, as in the reference implementation)
    assert float(structure_regulariser(x, torch.randn(32, 10))) > 1e-3


def test_transition_matrix_normalises_then_centres():
    x = torch.randn(8, 4) + 2.0
    u = torch.nn.functional.normalize(x, dim=-1)
    u = u - u.mean(0)
    ref = torch.softmax(u @ u.T / 0.05, dim=-1)
    assert torch.allclose(transition_matrix(x, 0.05), ref, atol=1e-6)
    assert torch.allclose(ref.sum(1), torch.ones(8))


def test_js_divergence_matches_scipy():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(6), size=5)
    q = rng.dirichlet(np.ones(6), size=5)
    ref = np.mean([jensenshannon(p[i], q[i]) ** 2 for i in range(5)])  # scipy returns the sqrt, natural log
    assert float(js_divergence(torch.tensor(p), torch.tensor(q))) == pytest.approx(ref, rel=1e-6)


def test_structure_levels_use_matrix_powers():
    x, y = torch.randn(12, 5), torch.randn(12, 7)
    p, q = transition_matrix(x, 0.05), transition_matrix(y, 0.05)
    want = js_divergence(p, q) + js_divergence(p @ p, q @ q)
    got = structure_regulariser(x, y, levels=2, temperature=0.05)
    assert torch.allclose(got, want, atol=1e-6)


def test_structure_lambda_warmup_and_loss(data):
    s = Structure()
    assert (s.config.lam, s.config.lambda_warmup_steps, s.config.levels, s.config.structure_temperature) == (
        10.0, 1000, 1, 0.05)
    assert s.lambda_at(0) == 0 and s.lambda_at(500) == pytest.approx(5.0) and s.lambda_at(5000) == 10.0
    train, val, _ = data
    s = Structure(max_epochs=1, lr_range_test=False)
    s.fit(train, val, seed=0)
    x, y = train.image().global_tensor()[:50], train.text().global_tensor()[:50]
    fx, gy = s.image_head(x), s.text_head(y)
    reg = 0.5 * (structure_regulariser(x, fx) + structure_regulariser(y, gy))
    assert torch.allclose(s.batch_loss(x, y, 1000), info_nce(fx, gy, 0.05) + 10 * reg, atol=1e-5)
    assert torch.allclose(s.batch_loss(x, y, 0), info_nce(fx, gy, 0.05), atol=1e-6)
    # early stopping: the validation InfoNCE (METHODS.md) by default; the full-λ objective as an option
    s._train_mode(False)
    assert torch.allclose(s.val_batch_loss(x, y), info_nce(fx, gy, 0.05), atol=1e-6)
    s.config.early_stop_on = "total"
    assert torch.allclose(s.val_batch_loss(x, y), info_nce(fx, gy, 0.05) + 10 * reg, atol=1e-5)
    with pytest.raises(ConfigError):
        Structure(early_stop_on="train")


def test_structure_warmup_in_epochs_or_a_fraction_lets_lambda_act(data):
    """At one step per epoch, 1,000 warm-up steps outlast early stopping; epochs/fractions scale with the budget."""
    train, val, _ = data  # 400 pairs, batch 100: 4 steps per epoch
    kw = dict(max_epochs=3, batch_size=100, lr=3e-3, lam=2.0)
    steps = Structure(**kw)
    steps.fit(train, val, seed=0)
    info = steps.fit_info
    assert info["lambda_warmup_steps_used"] == 1000 and info["lambda_at_end"] == pytest.approx(2.0 * 12 / 1000)
    epochs = Structure(lambda_warmup_epochs=2, **kw)
    epochs.fit(train, val, seed=0)
    assert epochs.fit_info["lambda_warmup_steps_used"] == 8 and epochs.fit_info["lambda_at_end"] == 2.0
    assert epochs.fit_info["lambda_at_best_epoch"] == pytest.approx(2.0 * min(1, 4 * epochs.fit_info["best_epoch"] / 8))
    assert any("lambda_warmup_epochs=2" in d for d in epochs.fit_info["deviations"])
    assert Structure(lambda_warmup_fraction=0.5, **kw).config.warmup_steps_for(400) == 6  # half of 3 epochs × 4
    assert Structure(lambda_warmup_fraction=0.5).config.warmup_steps_for(1000) == 500  # 1000 epochs × 1 step
    for bad in ({"lambda_warmup_epochs": -1}, {"lambda_warmup_fraction": 1.5},
                {"lambda_warmup_epochs": 1, "lambda_warmup_fraction": 0.1}):
        with pytest.raises(ConfigError, match="lambda_warmup"):
            Structure(**bad)


def test_structure_mlp_head_option(data):
    train, val, test = data
    s = Structure(head="mlp", max_epochs=2, lr_range_test=False)
    s.fit(train, val, seed=0)
    assert isinstance(s.image_head, torch.nn.Sequential) and len(s.image_head) == 3
    assert s.embed_text(test.text()).shape == (200, 512)
    with pytest.raises(ConfigError):
        Structure(head="transformer")


def test_structure_regulariser_keeps_more_of_the_image_geometry(data):
    """With a strong λ the aligned image space keeps the original neighbourhoods better."""
    train, val, test = data
    kw = dict(max_epochs=30, batch_size=128, lr=3e-3, lambda_warmup_steps=10)
    plain = Structure(lam=0.0, **kw)
    reg = Structure(lam=50.0, **kw)
    plain.fit(train, val, seed=0)
    reg.fit(train, val, seed=0)
    x = test.image().global_tensor()
    r_plain = float(structure_regulariser(x, plain.embed_image(test.image())))
    r_reg = float(structure_regulariser(x, reg.embed_image(test.image())))
    assert r_reg < r_plain
