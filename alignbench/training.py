"""The one contrastive training loop shared by Linear, FuseMix, STRUCTURE and PAL.

Why one loop: METHODS.md fixes the recipe (symmetric InfoNCE, AdamW with betas
(0.9, 0.95), cosine schedule, gradient clipping at 1.0, early stopping on the
validation loss, the reference LR range test picking the lr of every fit).  Methods differ only in how a batch
becomes a loss, so they hand the trainer a ``step_loss(batch_indices, step)``
closure and load their own batches (global features in memory, or token
batches streamed from a memmap).

Conventions for callers:

* ``step_loss`` is called in training mode; ``val_loss`` should switch its
  modules to eval mode (dropout off) and back itself.  The trainer wraps
  ``val_loss`` in ``torch.no_grad()``.
* ``state``/``load_state`` snapshot and restore everything the best epoch
  needs; without them the trainer snapshots the parameters it optimises.
* Patience counts validation checks (one per ``val_every`` epochs).
"""
from __future__ import annotations

import logging
import math
import time
import dataclasses
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from alignbench.errors import ConfigError, TrainingDivergedError
from alignbench.progress import Heartbeat, progress_enabled
from alignbench.train_settings import (  # re-exported: methods import the settings from here
    CLIP_MODES, REFERENCE_BATCH, REFERENCE_TRAINER, SCHEDULES, TrainConfig, TrainerSettings, trainer_deviations)

__all__ = ["CLIP_MODES", "REFERENCE_BATCH", "REFERENCE_TRAINER", "SCHEDULES", "TrainConfig", "TrainerSettings",
           "trainer_deviations", "info_nce", "epoch_batches", "adamw", "optimizer_name", "observe_epochs",
           "train_contrastive"]

log = logging.getLogger(__name__)


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE ½[CE(S/τ, I) + CE(Sᵀ/τ, I)], S = norm(a)·norm(b)ᵀ (row i of a pairs row i of b).

    Always fp32, also inside a bf16 autocast (as PAL's B×B InfoNCE): bf16 logits at τ = 0.05 would
    carry rounding errors of ~0.05 into a loss whose matmul is small next to the heads'.
    """
    with torch.autocast(a.device.type, enabled=False):
        a = torch.nn.functional.normalize(a.float(), dim=-1)
        b = torch.nn.functional.normalize(b.float(), dim=-1)
        logits = a @ b.T / temperature
        target = torch.arange(len(a), device=a.device)
        ce = torch.nn.functional.cross_entropy
        return 0.5 * (ce(logits, target) + ce(logits.T, target))


def epoch_batches(n_train: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A fresh permutation split into ceil(n / batch) near-equal batches.

    Near-equal rather than "full batches + a remainder": every pair is used each
    epoch and no batch is so small that InfoNCE becomes trivial.
    """
    perm = rng.permutation(n_train)
    n_batches = max(1, math.ceil(n_train / max(1, min(batch_size, n_train))))
    return np.array_split(perm, n_batches)


def _param_list(params: Iterable[torch.nn.Parameter] | list[dict]) -> tuple[list, list[torch.Tensor]]:
    """(what AdamW gets, flat list of the tensors) from parameters or param groups."""
    items = list(params)
    if items and isinstance(items[0], dict):
        flat = [p for g in items for p in g["params"]]
        groups = [dict(g, params=list(g["params"])) for g in items]
        return groups, flat
    return items, items


def _autocast(config: TrainConfig, tensors: list[torch.Tensor]):
    device_type = tensors[0].device.type if tensors else "cpu"
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=config.dtype == "bf16")


def adamw(groups: list, lr: float, config: TrainConfig) -> torch.optim.AdamW:
    """The trainer's AdamW; on the bf16 fast path its fused kernel.

    Why fused there: the loop implementation makes ~8 memory passes over
    every parameter tensor per step, which for a wide head (SAIL's 119M
    parameters) costs more than its bf16 forward and backward; the fused
    kernel makes one and agrees with the loop to float rounding
    (tests/test_training.py).  fp32 fits keep the loop, so their numbers stay
    exactly what they were.
    """
    return torch.optim.AdamW(groups, lr=lr, betas=config.betas, weight_decay=config.weight_decay,
                             fused=True if config.dtype == "bf16" else None)


def optimizer_name(config: TrainConfig) -> str:
    """What ``adamw`` builds, as results record it."""
    return "adamw-fused" if config.dtype == "bf16" else "adamw"


def _schedule(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the base lr at a step: linear warmup, then cosine to min_lr."""
    warm = min(config.warmup_steps, max(total_steps - 1, 0))
    floor = min(config.min_lr / config.lr, 1.0)

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        span = max(total_steps - warm, 1)
        t = min(max(step - warm, 0) / span, 1.0)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

    return factor


def _reference_schedule(n_train: int) -> Callable[[int], float]:
    """CosineAnnealingLR(T_max = 50·max(⌊N/4096⌋, 1)) stepped per batch: 0 at T_max, then climbs back."""
    t_max = 50 * max(n_train // REFERENCE_BATCH, 1)
    return lambda step: 0.5 * (1 + math.cos(math.pi * step / t_max))


def _clip(flat: list[torch.Tensor], config: TrainConfig) -> float:
    """Clip gradients as ``clip_mode`` says; returns the (largest) pre-clip norm, for divergence checks."""
    limit = config.grad_clip if config.grad_clip else math.inf
    if config.clip_mode == "per_tensor":
        norms = [float(torch.nn.utils.clip_grad_norm_([p], limit)) for p in flat if p.grad is not None]
        return max(norms, default=0.0)
    return float(torch.nn.utils.clip_grad_norm_(flat, limit))


_EPOCH_OBSERVER: ContextVar[Callable[[int, float], None] | None] = ContextVar("epoch_observer", default=None)


@contextmanager
def observe_epochs(callback: Callable[[int, float], None]):
    """Call ``callback(epoch, val_loss)`` after every validation check of fits run inside the block.

    Why a context: tuning prunes trials on the per-epoch validation loss without
    every method passing a callback through its ``fit``.  An exception raised by
    the callback (e.g. optuna's TrialPruned) ends the fit and propagates.
    """
    token = _EPOCH_OBSERVER.set(callback)
    try:
        yield
    finally:
        _EPOCH_OBSERVER.reset(token)


def _snapshot(flat: list[torch.Tensor]) -> Callable[[], dict]:
    def state() -> dict:
        return {i: p.detach().clone() for i, p in enumerate(flat)}

    return state


def _restore(flat: list[torch.Tensor]) -> Callable[[dict], None]:
    def load(s: dict) -> None:
        with torch.no_grad():
            for i, p in enumerate(flat):
                p.copy_(s[i])

    return load


def _deep_clone(obj: Any) -> Any:
    """Copy tensors inside a (nested) state so later steps do not mutate the best state."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _deep_clone(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_deep_clone(v) for v in obj)
    return obj


def _diverged(where: str, step: int, epoch: int, lr: float, value: float, desc: str) -> TrainingDivergedError:
    return TrainingDivergedError(
        f"{desc}: training diverged at step {step} (epoch {epoch}) with learning rate {lr:.3g}: "
        f"{where} is {value}. Lower the learning rate (e.g. {desc}:lr={lr / 10:.3g}) "
        f"or let the LR range test pick it (drop {desc}'s lr=… option)."
    )


def train_contrastive(
    params: Iterable[torch.nn.Parameter] | list[dict],
    step_loss: Callable[[np.ndarray, int], torch.Tensor],
    n_train: int,
    *,
    val_loss: Callable[[], float] | None,
    config: TrainConfig,
    seed: int,
    state: Callable[[], dict] | None = None,
    load_state: Callable[[dict], None] | None = None,
    desc: str = "train",
    rngs: Sequence[np.random.Generator] = (),
) -> dict[str, Any]:
    """Train with AdamW + warmup/cosine + clipping, early stopping on ``val_loss``.

    ``step_loss(batch_indices, global_step)`` returns one batch's loss
    (indices into the ``n_train`` training pairs).  The best state by
    validation loss is restored at the end.  Without ``val_loss`` all
    ``max_epochs`` run and the final state is kept.

    With ``config.lr_range_test`` the lr comes from ``lr_range_test`` (``config.lr``
    if it records ≤ 1 point); ``lr_source`` says which.

    Returns {epochs, steps, best_epoch, best_val_loss, final_train_loss, lr, lr_source,
    time_s, early_stopped, batch_size, steps_per_epoch, schedule, clip_mode,
    [lr_range_test], [note]}.
    Raises TrainingDivergedError on a non-finite loss or gradient.

    Inside :func:`alignbench.fit_checkpoint.checkpointing` (``alignbench run``) the loop saves
    what the next epoch needs and resumes from it when rerun; ``rngs`` are the caller's own
    random generators that its ``step_loss`` draws from (FuseMix's mixup), saved with it.
    """
    config.check()
    if n_train < 1:
        from alignbench.errors import BudgetError

        raise BudgetError(f"{desc}: no training pairs (budget 0); use a positive budget")
    t0 = time.perf_counter()
    from alignbench import fit_checkpoint

    ck = fit_checkpoint.current()
    saved = ck.load(desc, n_train) if ck is not None else None
    sweep = None  # a range test interrupted mid-sweep: it resumes, then training starts from epoch 0
    if saved is not None and saved.get("phase") is not None:
        sweep, saved = saved, None
    groups, flat = _param_list(params)
    if not flat:
        raise ConfigError(f"{desc}: nothing to train (no parameters)")
    state = state or _snapshot(flat)
    load_state = load_state or _restore(flat)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    from alignbench.devices import matmul_dtype

    resolved, why = matmul_dtype(config.dtype, flat[0].device)  # auto: the fastest faithful dtype here
    config = dataclasses.replace(config, dtype=resolved)
    info: dict[str, Any] = {"dtype": resolved, "dtype_reason": why, "optimizer": optimizer_name(config)}

    lr = config.lr
    info["lr_source"] = "fixed"
    if saved is not None:  # the range test ran before the interruption: its outcome is in the checkpoint
        lr = saved["lr"]
        info.update(saved["lr_info"])
    elif config.lr_range_test:
        from alignbench.lr_range import PHASE, SweepCheckpoint, lr_range_test

        checkpoint = None
        if ck is not None:
            if sweep is not None:
                fit_checkpoint.restore_rngs(list(rngs), sweep["rngs"])  # a method's own draws in step_loss
                info["lr_range_test_resumed_after_step"] = sweep["step"]
            before = 0.0 if sweep is None else sweep["elapsed_s"]
            checkpoint = SweepCheckpoint(ck.due, lambda progress: ck.save(
                {"phase": PHASE, "desc": desc, "n_train": n_train, "rngs": fit_checkpoint.rng_states(list(rngs)),
                 "elapsed_s": before + time.perf_counter() - t0, **progress}), sweep)
        rt = lr_range_test(groups, step_loss, n_train, config=config, seed=seed, state=state, load_state=load_state,
                           desc=desc, checkpoint=checkpoint)
        info["lr_range_test"] = rt
        if not rt["fallback"]:
            lr = rt["lr"]
        info["lr_source"] = "fallback" if rt["fallback"] else "range_test"
    if "lr_range_test" in info:
        if isinstance(groups[0], dict):  # scale every group's lr by the same factor
            groups = [dict(g, lr=g.get("lr", config.lr) * lr / config.lr) for g in groups]

    opt = adamw(groups, lr, config)
    bs = min(config.batch_size, n_train)
    steps_per_epoch = math.ceil(n_train / bs)
    total = config.max_epochs * steps_per_epoch
    factor = _reference_schedule(n_train) if config.schedule == "reference" else _schedule(config, total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    observer = _EPOCH_OBSERVER.get()

    best_val, best_epoch, best_state, bad = math.inf, 0, None, 0
    step, epoch, train_loss, early, elapsed = 0, 0, math.nan, False, 0.0
    if saved is not None:
        load_state(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["schedule"])
        best_val, best_epoch, best_state, bad = saved["best_val"], saved["best_epoch"], saved["best_state"], saved["bad"]
        step, epoch, train_loss, elapsed = saved["step"], saved["epoch"], saved["train_loss"], saved["elapsed_s"]
        rng.bit_generator.state = saved["batch_rng"]
        fit_checkpoint.restore_rngs(list(rngs), saved["rngs"])
        fit_checkpoint.restore_torch_rng(saved["torch_rng"])
        info["resumed_after_epoch"] = epoch

    def save_checkpoint(done: int) -> None:
        """What the epoch after ``done`` needs (the loop's state as it is now)."""
        ck.save({"desc": desc, "n_train": n_train, "epoch": done, "step": step, "train_loss": train_loss,
                 "best_val": best_val, "best_epoch": best_epoch, "bad": bad, "best_state": best_state,
                 "model": state(), "optimizer": opt.state_dict(), "schedule": sched.state_dict(),
                 "batch_rng": rng.bit_generator.state, "rngs": fit_checkpoint.rng_states(list(rngs)),
                 "torch_rng": fit_checkpoint.torch_rng_state(), "lr": lr,
                 "lr_info": {k: info[k] for k in ("lr_source", "lr_range_test") if k in info},
                 "elapsed_s": elapsed + time.perf_counter() - t0})

    if sweep is not None:
        elapsed = sweep["elapsed_s"]  # the range test's time in earlier processes
    if ck is not None and saved is None and "lr_range_test" in info and (ck.due() or ck.path.is_file()):
        save_checkpoint(0)  # a range test as long as the interval (a large head's can take half an hour) is kept
    show = progress_enabled()
    from tqdm.auto import tqdm

    beat = Heartbeat(log)

    def where() -> str:
        val = "" if val_loss is None else (f", best val {best_val:.4g} at epoch {best_epoch}"
                                           f" ({bad} of {config.patience} without improvement)")
        return (f"{desc}: epoch {epoch} of at most {config.max_epochs}, train loss {train_loss:.4g}{val},"
                f" {elapsed + time.perf_counter() - t0:.0f} s")

    bar = tqdm(total=config.max_epochs, initial=epoch, desc=desc, unit="ep", disable=not show, leave=False)
    try:
        for epoch in range(epoch + 1, config.max_epochs + 1):
            running, count = 0.0, 0
            for idx in epoch_batches(n_train, bs, rng):
                opt.zero_grad(set_to_none=True)
                with _autocast(config, flat):
                    loss = step_loss(idx, step)
                value = float(loss.detach())
                cur_lr = opt.param_groups[0]["lr"]
                if not math.isfinite(value):
                    raise _diverged("the loss", step, epoch, cur_lr, value, desc)
                loss.backward()
                norm = _clip(flat, config)
                if not math.isfinite(norm):
                    raise _diverged("the gradient norm", step, epoch, cur_lr, norm, desc)
                opt.step()
                sched.step()
                step += 1
                running += value * len(idx)
                count += len(idx)
            train_loss = running / count
            post = {"loss": f"{train_loss:.4f}"}
            if val_loss is not None and (epoch % config.val_every == 0 or epoch == config.max_epochs):
                with torch.no_grad(), _autocast(config, flat):  # the fit's matmul dtype, as in training
                    v = float(val_loss())
                if not math.isfinite(v):
                    raise _diverged("the validation loss", step, epoch, opt.param_groups[0]["lr"], v, desc)
                post["val"] = f"{v:.4f}"
                if v < best_val:
                    best_val, best_epoch, bad = v, epoch, 0
                    best_state = _deep_clone(state())
                else:
                    bad += 1
                log.debug("%s epoch %d: train %.4f val %.4f", desc, epoch, train_loss, v)
                if observer is not None:
                    observer(epoch, v)
                if bad >= config.patience:
                    early = True
                    bar.set_postfix(post)
                    bar.update(1)
                    break
            else:
                log.debug("%s epoch %d: train %.4f", desc, epoch, train_loss)
            bar.set_postfix(post)
            bar.update(1)
            beat(where)
            if ck is not None and ck.due() and epoch < config.max_epochs:
                save_checkpoint(epoch)
    finally:
        bar.close()
    if best_state is not None:
        load_state(best_state)
    info.update(
        epochs=epoch,
        steps=step,
        best_epoch=best_epoch if val_loss is not None else epoch,
        best_val_loss=best_val if val_loss is not None else None,
        final_train_loss=train_loss,
        lr=lr,
        time_s=elapsed + time.perf_counter() - t0,
        early_stopped=early,
        batch_size=bs,
        steps_per_epoch=steps_per_epoch,
        schedule=config.schedule,
        clip_mode=config.clip_mode,
    )
    if val_loss is None:
        info["note"] = "no validation split: no early stopping, ran max_epochs and kept the final state"
    log.info(
        "%s: %d epochs (%d steps), best epoch %s, best val %s, lr %.3g, %.1fs",
        desc, epoch, step, info["best_epoch"], info["best_val_loss"], lr, info["time_s"],
    )
    return info
