"""The reference LR range test (METHODS.md, "Shared contrastive trainer"), exactly as written there.

Why its own module: the formula (lr grid, smoothing, steepest-point rule) is
checked line by line against METHODS.md on fixed loss curves
(tests/test_lr_range.py), apart from the training loop that calls it once per
fit.  Its quirks are kept on purpose: m = (10/1e-7)^(1/100) with 100 steps, so
the last lr is ≈ 8.3, and a smoothing that barely smooths.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch

from alignbench.fit_checkpoint import restore_torch_rng, torch_rng_state
from alignbench.progress import Heartbeat
from alignbench.training import (
    REFERENCE_BATCH,
    TrainConfig,
    _autocast,
    _clip,
    _deep_clone,
    _param_list,
    _restore,
    _snapshot,
    adamw,
)

log = logging.getLogger(__name__)

#: The ``phase`` of a fit checkpoint written during the range test (an epoch checkpoint has none).
PHASE = "lr_range_test"


@dataclass
class SweepCheckpoint:
    """Where a range test in progress is saved, and what a rerun resumes it from.

    Why: at 10k pairs with a 4096 batch one range test can take 40 minutes on a CPU; a fit
    killed in it would otherwise start it over.  ``save(progress)`` is called after a step
    when ``due()``; ``resume`` is such a ``progress`` from an earlier process.
    """

    due: Callable[[], bool]
    save: Callable[[dict[str, Any]], None]
    resume: dict[str, Any] | None = None


def range_test_lrs(n_steps: int = 100, lr_start: float = 1e-7, lr_end: float = 10.0) -> np.ndarray:
    """lr_i = lr_start · m^i, i = 0..n_steps−1, m = (lr_end/lr_start)^(1/n_steps).

    The reference divides by n_steps (not n_steps − 1), so the last lr is
    lr_end / m ≈ 8.3, not lr_end: a quirk kept on purpose.
    """
    m = (lr_end / lr_start) ** (1.0 / n_steps)
    return lr_start * m ** np.arange(n_steps)


def smooth_losses(losses: list[float], beta: float = 0.05) -> np.ndarray:
    """s_0 = L_0, s_i = beta·s_{i−1} + (1−beta)·L_i (the reference's weights: it barely smooths)."""
    s = np.empty(len(losses))
    for i, value in enumerate(losses):
        s[i] = value if i == 0 else beta * s[i - 1] + (1 - beta) * value
    return s


def choose_lr(lrs: list[float] | np.ndarray, losses: list[float] | np.ndarray, *, divisor: float = 5.0,
              floor: float = 1e-6) -> tuple[float, float, int] | None:
    """(lr, lr_steep, steepest index) from a recorded curve, or None with ≤ 1 point.

    g = numpy.gradient(s, log10 lr); i* = argmin s; steepest = argmin g over
    indices 1 … min(i*, n−1)−1, or max(0, i*−1) when that range is empty;
    lr = lr_steep / divisor, floored at ``floor``.
    """
    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    n = len(losses)
    if n <= 1:
        return None
    s = smooth_losses(list(losses))
    g = np.gradient(s, np.log10(lrs))
    i_min = int(np.argmin(s))
    stop = min(i_min, n - 1)
    steepest = 1 + int(np.argmin(g[1:stop])) if stop > 1 else max(0, i_min - 1)
    lr_steep = float(lrs[steepest])
    return max(lr_steep / divisor, floor), lr_steep, steepest


def lr_range_test(
    params: Iterable[torch.nn.Parameter] | list[dict],
    step_loss: Callable[[np.ndarray, int], torch.Tensor],
    n_train: int,
    *,
    config: TrainConfig,
    seed: int,
    state: Callable[[], dict] | None = None,
    load_state: Callable[[dict], None] | None = None,
    max_samples: int = 5000,
    desc: str = "train",
    checkpoint: SweepCheckpoint | None = None,
) -> dict[str, Any]:
    """The reference LR range test (METHODS.md, "Shared contrastive trainer"), run once per fit.

    A fresh AdamW (same betas, weight decay) sweeps lr_i = 1e-7·m^i over 100
    steps; each step draws a random batch of min(4096, n) rows of a random
    subset of n = min(N, 5000) training rows; the loss is recorded before the
    step; the sweep stops at a non-finite loss (not recorded) or one above 5×
    the best so far (recorded: it cannot move the pick).  Clipping follows the
    training's ``grad_clip``/``clip_mode``.  The model state is restored
    afterwards.  Returns {"lr" (None: fall back), "lr_steep", "steepest_index",
    "fallback", "n_rows", "batch", "stop", "curve"} with the raw losses in the
    curve (the lrs follow from the index: ``range_test_lrs``).

    With ``checkpoint`` the sweep's state (parameters, optimiser, losses so far, both
    random generators, the state to restore) is saved between steps, and a ``resume``
    continues after its last saved step to the same curve as an uninterrupted sweep.
    """
    groups, flat = _param_list(params)
    state = state or _snapshot(flat)
    load_state = load_state or _restore(flat)
    saved = _deep_clone(state())
    rng = np.random.default_rng([seed, 7919])
    n = min(n_train, max_samples)
    subset = rng.permutation(n_train)[:n]
    batch = min(REFERENCE_BATCH, n)
    lrs = range_test_lrs()
    opt = adamw(groups, float(lrs[0]), config)
    # Keep per-group lr ratios (a group may carry its own lr) while sweeping the base lr.
    ratios = [g.get("lr", config.lr) / config.lr if isinstance(g, dict) else 1.0 for g in groups] or [1.0]
    losses: list[float] = []
    best, stop, start = math.inf, "completed", 0
    resume = checkpoint.resume if checkpoint is not None else None
    if resume is not None:
        saved, subset, start = resume["initial_state"], resume["subset"], resume["step"]
        rng.bit_generator.state = resume["sweep_rng"]
        load_state(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        losses, best = list(resume["losses"]), resume["best"]
        log.info("%s: LR range test resumed after step %d of %d", desc, start, len(lrs))
    beat = Heartbeat(log)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if resume is not None:
                restore_torch_rng(resume["torch_rng"])
            for i in range(start, len(lrs)):
                lr = lrs[i]
                for g, r in zip(opt.param_groups, ratios):
                    g["lr"] = float(lr) * r
                idx = rng.choice(subset, size=batch, replace=False)
                opt.zero_grad(set_to_none=True)
                with _autocast(config, flat):
                    loss = step_loss(idx, i)
                value = float(loss.detach())
                if not math.isfinite(value):
                    stop = "non-finite loss"
                    break
                losses.append(value)
                if value > 5 * best:
                    stop = "loss above 5x the best"
                    break
                best = min(best, value)
                loss.backward()
                _clip(flat, config)
                opt.step()
                beat(lambda: f"{desc}: LR range test step {i + 1} of {len(lrs)} (lr {lr:.3g}, loss {value:.4g})")
                if checkpoint is not None and i + 1 < len(lrs) and checkpoint.due():
                    checkpoint.save({"step": i + 1, "losses": losses, "best": best, "initial_state": saved,
                                     "subset": subset, "sweep_rng": rng.bit_generator.state, "model": state(),
                                     "optimizer": opt.state_dict(), "torch_rng": torch_rng_state()})
    finally:
        load_state(saved)
        opt.zero_grad(set_to_none=True)
    picked = choose_lr(lrs[: len(losses)], losses)
    out: dict[str, Any] = {
        "lr": None if picked is None else picked[0],
        "lr_steep": None if picked is None else picked[1],
        "steepest_index": None if picked is None else picked[2],
        "fallback": picked is None,
        "n_rows": n,
        "batch": batch,
        "stop": stop,
        "curve": {"lr_start": float(lrs[0]), "lr_mult": float(lrs[1] / lrs[0]),
                  "losses": [float(f"{v:.4g}") for v in losses]},
    }
    if picked is None:
        log.warning("LR range test recorded %d point(s) (%s): falling back to the fixed lr %.3g",
                    len(losses), stop, config.lr)
    else:
        log.info("LR range test: steepest descent at lr=%.3g -> using lr=%.3g (%d points, %s)",
                 picked[1], picked[0], len(losses), stop)
    return out
