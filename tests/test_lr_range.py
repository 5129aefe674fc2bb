"""The reference LR range test, checked line by line against METHODS.md ("Shared contrastive trainer")."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alignbench.lr_range import choose_lr, lr_range_test, range_test_lrs, smooth_losses
from alignbench.training import TrainConfig, info_nce, observe_epochs, train_contrastive

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reference_pick(losses):
    """METHODS.md's recipe written out independently, step by step, for fixed curves."""
    m = (10 / 1e-7) ** (1 / 100)
    lrs = [1e-7 * m**i for i in range(len(losses))]
    s = [losses[0]]
    for value in losses[1:]:
        s.append(0.05 * s[-1] + 0.95 * value)
    g = np.gradient(np.array(s), np.log10(np.array(lrs)))
    i_star = int(np.argmin(s))
    window = list(range(1, min(i_star, len(s) - 1)))  # indices 1 … min(i*, n−1)−1
    steep = min(window, key=lambda j: g[j]) if window else max(0, i_star - 1)
    return max(lrs[steep] / 5, 1e-6), lrs[steep], steep


def test_lr_grid_has_the_reference_quirk():
    lrs = range_test_lrs()
    assert len(lrs) == 100 and lrs[0] == 1e-7
    assert lrs[1] / lrs[0] == pytest.approx((10 / 1e-7) ** (1 / 100))
    assert lrs[-1] == pytest.approx(8.318, rel=1e-3)  # not 10: m is the 100th root, i stops at 99


def test_smoothing_barely_smooths():
    assert smooth_losses([5, 4, 2, 1, 3]).tolist() == pytest.approx([5, 4.05, 2.1025, 1.055125, 2.90275625])


def test_steepest_point_on_a_hand_computed_curve():
    # s = [5, 4.05, 2.1025, 1.055125, 2.90…]: i* = 3, window 1..2, g_1 = −18.1 and g_2 = −18.7 → index 2
    lr, steep, idx = choose_lr(range_test_lrs()[:5], [5, 4, 2, 1, 3])
    assert idx == 2 and steep == pytest.approx(range_test_lrs()[2]) and lr == 1e-6  # 2.9e-8, floored


@pytest.mark.parametrize("seed", range(6))
def test_choose_lr_matches_the_written_recipe_on_fixed_curves(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 101))
    t = np.linspace(0, 1, n)
    curve = 4 - 3 / (1 + np.exp(-(t - rng.uniform(0.2, 0.8)) * 20)) + np.where(t > 0.85, 40 * (t - 0.85), 0)
    losses = (curve + rng.normal(0, 0.05, n)).tolist()
    got = choose_lr(range_test_lrs()[:n], losses)
    want = reference_pick(losses)
    assert got[2] == want[2] and got[0] == pytest.approx(want[0]) and got[1] == pytest.approx(want[1])


@pytest.mark.parametrize("losses, idx", [([3.0, 1.0], 0), ([1.0, 2.0], 0), ([3, 2, 1], 1), ([3, 2, 1.5, 1, 4], 1),
                                          ([1.0, 1.0, 1.0], 0)])
def test_empty_window_falls_to_the_point_before_the_minimum(losses, idx):
    assert choose_lr(range_test_lrs()[: len(losses)], losses)[2] == idx == reference_pick(losses)[2]


def test_floor_and_too_short_curves():
    assert choose_lr(range_test_lrs()[:3], [3, 2, 1])[0] == 1e-6  # lr_steep/5 ≈ 2.4e-8, floored
    assert choose_lr([1e-7], [2.0]) is None and choose_lr([], []) is None


def _problem(n, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g)
    return a, a @ torch.randn(d, d, generator=g) + 0.05 * torch.randn(n, d, generator=g)


def test_range_test_draws_4096_row_batches_from_one_5000_row_subset():
    p = torch.nn.Parameter(torch.full((2,), 3.0))
    batches = []

    def step_loss(idx, step):  # cheap: only the sampling is under test here
        batches.append(np.asarray(idx))
        return (p - 1).pow(2).sum() + 1

    out = lr_range_test([p], step_loss, 6000, config=TrainConfig(batch_size=64), seed=0)
    assert out["n_rows"] == 5000 and out["batch"] == 4096
    assert all(len(bt) == 4096 == len(set(bt.tolist())) for bt in batches)
    assert len(set(np.concatenate(batches).tolist())) == 5000  # one random subset of 5000 rows, not all 6000
    assert len(out["curve"]["losses"]) == len(batches) <= 100 and out["curve"]["lr_start"] == 1e-7
    assert torch.equal(p.detach(), torch.full((2,), 3.0))


def test_range_test_records_the_loss_before_each_step_and_restores_the_model():
    n = 256
    a, b = _problem(n)
    torch.manual_seed(0)
    w = torch.nn.Linear(6, 6)
    before = {k: v.clone() for k, v in w.state_dict().items()}
    first = []

    def step_loss(idx, step):
        i = torch.from_numpy(idx)
        if step == 0:  # the initial model's loss on this batch, computed apart
            w0 = torch.nn.Linear(6, 6)
            w0.load_state_dict(before)
            first.append(float(info_nce(w0(a[i]), b[i], 0.1).detach()))
        return info_nce(w(a[i]), b[i], 0.1)

    out = lr_range_test(list(w.parameters()), step_loss, n, config=TrainConfig(batch_size=64), seed=0)
    assert all(torch.equal(w.state_dict()[k], v) for k, v in before.items())
    assert out["n_rows"] == out["batch"] == n
    losses = out["curve"]["losses"]
    assert losses[0] == pytest.approx(first[0], rel=1e-3)
    assert len(losses) == 100 or losses[-1] > 5 * min(losses[:-1]) or out["stop"] == "non-finite loss"
    assert out["lr"] == pytest.approx(choose_lr(range_test_lrs()[: len(losses)], losses)[0], rel=1e-3)
    assert 1e-5 < out["lr"] < 1.0  # Adam on a well-posed problem: neither tiny nor huge


def test_stops_above_five_times_the_best_and_falls_back_with_one_point():
    p = torch.nn.Parameter(torch.ones(2))
    script = iter([2.0, 1.0, 0.5, 2.6, 9.0])

    def step_loss(idx, step):
        return p.sum() * 0 + next(script)

    out = lr_range_test([p], step_loss, 10, config=TrainConfig(), seed=0)
    assert out["curve"]["losses"] == [2.0, 1.0, 0.5, 2.6] and out["stop"] == "loss above 5x the best"

    calls = []

    def nan_in_the_range_test(idx, step):
        calls.append(step)
        return p.sum() * (math.nan if len(calls) == 2 else 1.0)  # the test's 2nd step; training is finite

    info = train_contrastive([p], nan_in_the_range_test, 4, val_loss=None,
                             config=TrainConfig(lr=0.02, max_epochs=1), seed=0)
    assert info["lr_range_test"]["fallback"] and info["lr_source"] == "fallback"
    assert info["lr_range_test"]["stop"] == "non-finite loss" and info["lr"] == 0.02


def test_reference_schedule_is_torchs_cyclic_cosine_annealing():
    from alignbench.training import _reference_schedule

    for n, t_max in ((1000, 50), (10_000, 100)):
        p = torch.nn.Parameter(torch.ones(1))
        opt = torch.optim.SGD([p], lr=1.0)
        ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t_max)
        f = _reference_schedule(n)
        for step in range(3 * t_max):
            assert f(step) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-9), (n, step)
            opt.step()
            ref.step()
        assert f(t_max) == pytest.approx(0, abs=1e-12) and f(2 * t_max) == pytest.approx(1)


def test_per_tensor_clipping_clips_each_tensor_alone():
    from alignbench.training import _clip

    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    for mode, want_a in (("per_tensor", 1.0), ("global", 3 / math.hypot(3, 0.4))):
        a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([0.4, 0.0])
        _clip([a, b], TrainConfig(clip_mode=mode, grad_clip=1.0))
        assert float(a.grad.norm()) == pytest.approx(want_a, rel=1e-5)
    assert float(b.grad.norm()) == pytest.approx(0.4 / math.hypot(3, 0.4), rel=1e-5)  # global scaled b too


def test_epoch_observer_sees_each_validation_loss_and_can_stop_the_fit():
    p = torch.nn.Parameter(torch.ones(2))
    seen = []

    class Stop(Exception):
        pass

    def observer(epoch, val):
        seen.append((epoch, val))
        if epoch == 3:
            raise Stop

    with observe_epochs(observer), pytest.raises(Stop):
        train_contrastive([p], lambda i, s: p.pow(2).sum(), 4, val_loss=lambda: float(p.pow(2).sum()),
                          config=TrainConfig(lr=0.1, lr_range_test=False, max_epochs=10), seed=0)
    assert [e for e, _ in seen] == [1, 2, 3] and seen[0][1] > seen[2][1]
    train_contrastive([p], lambda i, s: p.pow(2).sum(), 4, val_loss=lambda: 1.0,
                      config=TrainConfig(lr=0.1, lr_range_test=False, max_epochs=2), seed=0)
    assert len(seen) == 3  # outside the block nothing is observed
