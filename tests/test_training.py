"""The shared contrastive trainer: loss, schedule, batching, early stopping, divergence, LR range test."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from alignbench.errors import BudgetError, ConfigError, TrainingDivergedError
from alignbench.progress import progress_scope
from alignbench.training import (
    TrainConfig,
    _schedule,
    epoch_batches,
    info_nce,
    train_contrastive,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """2 shared cores: one intra-op thread avoids oversubscription stalls."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def naive_info_nce(a, b, tau):
    a = a / a.norm(dim=1, keepdim=True)
    b = b / b.norm(dim=1, keepdim=True)
    s = (a @ b.T) / tau
    i2t = -torch.log(torch.exp(s).diag() / torch.exp(s).sum(1)).mean()
    t2i = -torch.log(torch.exp(s).diag() / torch.exp(s).sum(0)).mean()
    return 0.5 * (i2t + t2i)


def test_info_nce_matches_naive_formula_and_is_symmetric():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    assert torch.allclose(info_nce(a, b, 0.3), naive_info_nce(a, b, 0.3), atol=1e-5)
    assert torch.allclose(info_nce(a, b, 0.3), info_nce(b, a, 0.3), atol=1e-6)
    # inputs are normalised inside: scaling rows changes nothing
    assert torch.allclose(info_nce(3 * a, b * 0.1, 0.3), info_nce(a, b, 0.3), atol=1e-5)
    # perfectly aligned orthogonal pairs at low temperature → loss ≈ 0; shuffled → large
    e = torch.eye(6)
    assert float(info_nce(e, e, 0.01)) < 1e-6
    assert float(info_nce(e, e[torch.tensor([1, 0, 3, 2, 5, 4])], 0.01)) > 10


def test_info_nce_accepts_tensor_temperature_with_gradient():
    tau = torch.tensor(0.07, requires_grad=True)
    loss = info_nce(torch.randn(4, 3), torch.randn(4, 3), tau)
    loss.backward()
    assert tau.grad is not None and torch.isfinite(tau.grad)


def test_epoch_batches_cover_every_index_once_in_near_equal_batches():
    rng = np.random.default_rng(0)
    batches = epoch_batches(10_000, 4096, rng)
    assert len(batches) == 3
    assert sorted(np.concatenate(batches).tolist()) == list(range(10_000))
    assert max(map(len, batches)) - min(map(len, batches)) <= 1
    assert [len(b) for b in epoch_batches(20, 4096, rng)] == [20]  # budget below the batch size


def test_schedule_warmup_then_cosine_to_min_lr():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, min_lr=0.1)
    f = _schedule(cfg, total_steps=110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    steps = [f(s) for s in range(10, 111)]
    assert all(x >= y - 1e-12 for x, y in zip(steps, steps[1:]))  # monotone after warmup


def _regression_problem(n=64, d=6, seed=0):
    """A tiny alignable problem: b = a·W* + noise; learn W so that (a·W, b) pair up."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g)
    b = a @ torch.randn(d, d, generator=g) + 0.05 * torch.randn(n, d, generator=g)
    return a, b


def _fit(seed=0, n=64, **cfg):
    a, b = _regression_problem(n)
    torch.manual_seed(123)
    w = torch.nn.Linear(6, 6)
    seen = []

    def step_loss(idx, step):
        seen.append(len(idx))
        i = torch.from_numpy(idx)
        return info_nce(w(a[i]), b[i], 0.1)

    val = (lambda: float(info_nce(w(a), b, 0.1))) if cfg.pop("with_val", True) else None
    info = train_contrastive(w.parameters(), step_loss, n, val_loss=val, config=TrainConfig(**{"lr_range_test": False, **cfg}), seed=seed)
    return w, info, seen


def test_training_reduces_loss_and_is_deterministic():
    w1, info1, _ = _fit(lr=0.05, max_epochs=15, batch_size=16)
    w2, info2, _ = _fit(lr=0.05, max_epochs=15, batch_size=16)
    assert torch.equal(w1.weight, w2.weight) and torch.equal(w1.bias, w2.bias)
    assert info1["best_val_loss"] == info2["best_val_loss"]
    assert info1["best_val_loss"] < math.log(64) * 0.5  # chance InfoNCE is log(64)
    assert info1["steps"] == info1["epochs"] * 4
    for key in ("epochs", "steps", "best_epoch", "best_val_loss", "final_train_loss", "lr", "time_s"):
        assert key in info1
    w3, _, _ = _fit(seed=1, lr=0.05, max_epochs=15, batch_size=16)
    assert not torch.equal(w1.weight, w3.weight)  # seed changes batch order


def test_without_bars_a_fit_logs_where_it_is(monkeypatch, caplog):
    """--no-progress (or a log file): the range test and the epochs still say how far they are."""
    monkeypatch.setattr("alignbench.progress.HEARTBEAT_S", 0.0)  # a line at every step / epoch
    with progress_scope(False), caplog.at_level(logging.INFO, logger="alignbench"):
        _fit(lr=0.05, max_epochs=3, batch_size=32, patience=7, lr_range_test=True)
    text = caplog.text
    assert "train: LR range test step 1 of 100 (lr 1e-07, loss " in text
    assert "train: epoch 1 of at most 3, train loss " in text
    assert "train: epoch 3 of at most 3, train loss " in text and " of 7 without improvement)" in text
    caplog.clear()
    with progress_scope(True), caplog.at_level(logging.INFO, logger="alignbench"):  # a bar shows it: no lines
        _fit(lr=0.05, max_epochs=3, batch_size=32, lr_range_test=True)
    assert "LR range test step" not in caplog.text and "of at most" not in caplog.text
    caplog.clear()
    monkeypatch.setattr("alignbench.progress.HEARTBEAT_S", 3600.0)  # the default cadence: nothing in a short fit
    with progress_scope(False), caplog.at_level(logging.INFO, logger="alignbench"):
        _fit(lr=0.05, max_epochs=3, batch_size=32, lr_range_test=True)
    assert "of at most" not in caplog.text and "LR range test: steepest" in caplog.text


def test_budget_smaller_than_batch_size_uses_one_batch_per_epoch():
    _, info, seen = _fit(n=20, lr=0.05, max_epochs=3, batch_size=4096)
    assert seen == [20, 20, 20] and info["batch_size"] == 20


def test_early_stopping_restores_the_best_state():
    p = torch.nn.Parameter(torch.zeros(3))
    vals = iter([5.0, 4.0, 3.0, 3.5, 3.6, 3.7, 3.8, 9.9, 9.9])
    snapshots = {}

    def step_loss(idx, step):
        return (p - 1.0).pow(2).sum() + 0 * float(step)

    def val_loss():
        v = next(vals)
        snapshots[v] = p.detach().clone()
        return v

    info = train_contrastive([p], step_loss, 8, val_loss=val_loss, seed=0,
                             config=TrainConfig(lr=0.1, max_epochs=20, patience=4, batch_size=8, lr_range_test=False))
    assert info["best_epoch"] == 3 and info["best_val_loss"] == 3.0
    assert info["epochs"] == 7 and info["early_stopped"]
    assert torch.equal(p.detach(), snapshots[3.0])  # parameters rolled back to epoch 3


def test_without_validation_runs_all_epochs_and_says_so():
    _, info, _ = _fit(lr=0.05, max_epochs=4, batch_size=32, with_val=False)
    assert info["epochs"] == 4 and info["best_val_loss"] is None
    assert "no early stopping" in info["note"]


def test_val_every_checks_less_often():
    calls = []
    p = torch.nn.Parameter(torch.ones(2))
    train_contrastive([p], lambda idx, s: p.pow(2).sum(), 4, val_loss=lambda: calls.append(1) or 1.0,
                      config=TrainConfig(max_epochs=7, val_every=3, patience=100, lr_range_test=False), seed=0)
    assert len(calls) == 3  # epochs 3, 6 and the last one (7)


def test_param_groups_with_their_own_weight_decay_are_accepted():
    a = torch.nn.Parameter(torch.ones(3))
    b = torch.nn.Parameter(torch.ones(3))
    groups = [{"params": [a]}, {"params": [b], "weight_decay": 0.0}]
    train_contrastive(groups, lambda idx, s: 0 * (a.sum() + b.sum()), 4, val_loss=None,
                      config=TrainConfig(lr=0.1, weight_decay=0.5, max_epochs=5, lr_range_test=False), seed=0)
    assert float(a.detach().max()) < 1.0  # decayed
    assert torch.equal(b.detach(), torch.ones(3))  # no decay, zero gradient


def test_nan_loss_raises_diverged_error_naming_step_and_lr():
    p = torch.nn.Parameter(torch.ones(2))

    def step_loss(idx, step):
        return p.sum() * (math.nan if step == 3 else 1.0)

    # min_lr = lr keeps the rate constant, so the message's lr is exactly the configured one
    with pytest.raises(TrainingDivergedError, match=r"step 3 \(epoch 4\) with learning rate 0\.01:.*linear:lr="):
        train_contrastive([p], step_loss, 4, val_loss=None, desc="linear",
                          config=TrainConfig(lr=0.01, min_lr=0.01, max_epochs=10, lr_range_test=False), seed=0)


def test_huge_learning_rate_diverges_with_a_clear_message():
    with pytest.raises(TrainingDivergedError, match="Lower the learning rate"):
        _fit(lr=1e6, max_epochs=200, batch_size=16)


def test_bad_inputs():
    p = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(BudgetError):
        train_contrastive([p], lambda i, s: p.sum(), 0, val_loss=None, config=TrainConfig(), seed=0)
    with pytest.raises(ConfigError):
        train_contrastive([p], lambda i, s: p.sum(), 4, val_loss=None, config=TrainConfig(dtype="fp8"), seed=0)
    with pytest.raises(ConfigError):
        train_contrastive([], lambda i, s: p.sum(), 4, val_loss=None, config=TrainConfig(), seed=0)


def test_bf16_autocast_trains():
    _, info, _ = _fit(lr=0.05, max_epochs=3, batch_size=32, dtype="bf16")
    assert math.isfinite(info["best_val_loss"])


def test_method_configs_hand_their_trainer_settings_to_the_trainer():
    """Trainer settings are declared once (TrainerSettings); each trained method's config passes its
    values — including changed defaults — to the trainer, and a TrainConfig copies itself whole."""
    from alignbench.methods.global_head import HeadConfig
    from alignbench.methods.pal import PALConfig
    from alignbench.training import TrainConfig

    head = HeadConfig().update({"lr": "0.02", "warmup_steps": "5"}).train_config()
    assert (head.lr, head.warmup_steps, head.max_epochs, head.patience) == (0.02, 5, 1000, 50)
    pal = PALConfig(dtype="bf16", temperature=0.1).train_config()
    assert (pal.temperature, pal.max_epochs, pal.dtype) == (0.1, 200, "fp32")  # bf16 stays inside CAP
    custom = TrainConfig(lr=0.5, betas=(0.8, 0.9))
    assert custom.train_config() == custom


def test_info_nce_stays_fp32_inside_a_bf16_autocast():
    """As PAL's B×B InfoNCE: the heads' matmuls may run in bf16, the loss's logits do not."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 32, generator=g), torch.randn(64, 32, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = info_nce(a, b, 0.05)
    assert low.dtype == torch.float32
    assert torch.equal(low, info_nce(a, b, 0.05))


def test_bf16_path_uses_the_fused_adamw_and_validates_under_the_same_autocast():
    """The fast path (dtype bf16) steps with fused AdamW (fp32 keeps the loop) and its validation
    sees the fit's matmul dtype; the fused and loop AdamW agree to float rounding."""
    seen = []
    a, b = _regression_problem()
    w = torch.nn.Linear(6, 6)

    def val():
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return float(info_nce(w(a), b, 0.1))

    cfg = TrainConfig(lr=0.05, max_epochs=2, batch_size=32, lr_range_test=False, dtype="bf16")
    info = train_contrastive(w.parameters(), lambda i, s: info_nce(w(a[torch.from_numpy(i)]), b[i], 0.1), 64,
                             val_loss=val, config=cfg, seed=0)
    assert info["optimizer"] == "adamw-fused" and seen == [True, True]
    assert _fit(lr=0.05, max_epochs=2, batch_size=32)[1]["optimizer"] == "adamw"

    from alignbench.training import adamw

    ws = []
    for dtype in ("bf16", "fp32"):  # one fused and one loop AdamW on the same parameters and gradients
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(300, 40))
        opt = adamw([p], 1e-2, TrainConfig(dtype=dtype))
        for step in range(5):
            p.grad = torch.sin(p.detach() * (step + 1))
            opt.step()
        ws.append(p.detach())
    torch.testing.assert_close(ws[0], ws[1], rtol=1e-6, atol=1e-7)
