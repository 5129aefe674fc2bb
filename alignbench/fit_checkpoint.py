"""Mid-fit checkpoints: a trained method's fit, killed or interrupted, resumes from its last saved epoch.

Why: some faithful-default fits take hours on a CPU (Freeze-Align or SAIL at 10k pairs), longer
than a session or a SLURM time limit, and a fit restarted from scratch never ends.  While
``alignbench run`` fits a run, :func:`checkpointing` makes the shared trainer
(:func:`alignbench.training.train_contrastive`) save everything the next epoch depends on —
parameters, optimiser and schedule, the best state so far, early-stopping counters, every
random generator (torch's, the batch order's, a method's own such as FuseMix's mixup), the LR
range test's outcome (or, while it runs, the sweep so far) — at most every ``interval_s`` seconds, into
``<results>/<fit_id>.ckpt.pt``.  Rerunning the same command resumes there, and the fit ends
with the same numbers as one that was never interrupted (tests/test_fit_checkpoint.py).
A fit resumed on another machine (the checkpoint copied with the results folder) lists each
machine with its share of the seconds (:meth:`Checkpointer.machines`): its wall time mixes them.
The file is removed once the fitted state is stored.  A checkpoint that does not load, or
belongs to another fit, is moved aside (never deleted) and the fit starts over.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from alignbench.interrupts import shielded

log = logging.getLogger(__name__)

SUFFIX = ".ckpt.pt"
FORMAT = 1
#: Seconds between two saves: a save writes the parameters three times over (weights, Adam's
#: two moments) plus the best state, so it is rationed by time, not done every epoch.
DEFAULT_INTERVAL_S = 300.0


def this_machine() -> dict[str, Any]:
    """The machine this process fits on, as a resumed fit's record lists it (host, CPU model, torch threads)."""
    from alignbench.provenance import cpu_info, device_info

    return {"hostname": socket.gethostname(), "cpu": cpu_info()["model"],
            "torch_threads": device_info().get("torch_threads")}


def checkpoint_path(results_dir: str | os.PathLike, fit_id: str) -> Path:
    return Path(results_dir) / f"{fit_id}{SUFFIX}"


@dataclass
class Checkpointer:
    """Where one fit's checkpoint lives, what it must belong to, and when it was last written."""

    path: Path
    fit_id: str
    interval_s: float = DEFAULT_INTERVAL_S
    last_save: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.monotonic)
    #: Wall seconds the fit ran in earlier processes, up to the checkpoint it resumed from (0: not
    #: resumed; None: resumed from a checkpoint that did not record it).
    earlier_s: float | None = 0.0
    #: The machines of those earlier processes, each with its share of ``earlier_s`` (:func:`this_machine`).
    earlier_machines: list[dict[str, Any]] = field(default_factory=list)

    def machines(self, now: float | None = None) -> list[dict[str, Any]]:
        """Where the fit has run so far: the earlier processes' machines, then this one, each with its seconds."""
        here = (time.monotonic() if now is None else now) - self.started
        return [*self.earlier_machines, {**this_machine(), "wall_s": here}]

    def wall_s(self, now: float | None = None) -> float | None:
        """The fit's wall seconds so far, earlier processes included (None where their share is unknown)."""
        here = (time.monotonic() if now is None else now) - self.started
        return None if self.earlier_s is None else self.earlier_s + here

    def load(self, desc: str, n_train: int) -> dict[str, Any] | None:
        """The saved training state of this fit, or None (none yet, or unusable: moved aside)."""
        if not self.path.is_file():
            return None
        import torch

        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=False)
            why = None
            if payload.get("format") != FORMAT:
                why = f"format {payload.get('format')!r}, not {FORMAT}"
            elif (payload.get("fit_id"), payload.get("desc"), payload.get("n_train")) != (self.fit_id, desc, n_train):
                why = f"it belongs to another fit ({payload.get('fit_id')}, {payload.get('desc')})"
        except Exception as exc:  # noqa: BLE001 - a truncated or foreign file must not stop the fit
            why = f"it does not load ({type(exc).__name__}: {exc})"
        if why is None:
            where = (f"step {payload['step']} of its LR range test" if payload.get("phase")
                     else f"epoch {payload['epoch']}")
            log.info("%s: resuming from the checkpoint after %s (%s)", desc, where, self.path.name)
            self.earlier_s = payload.get("fit_wall_s")
            self.earlier_machines = list(payload.get("machines") or
                                         [{"hostname": None, "cpu": None, "wall_s": self.earlier_s}])
            return payload
        aside = self.path.with_name(f"{self.path.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(self.path, aside)
        log.warning("%s: checkpoint %s not used: %s; moved to %s, fitting from the start", desc, self.path, why,
                    aside.name)
        return None

    def due(self) -> bool:
        return time.monotonic() - self.last_save >= self.interval_s

    def save(self, payload: dict[str, Any]) -> None:
        """Write ``payload`` (with this fit's id) atomically; a failed write is logged, the fit goes on."""
        with shielded():  # an interrupt inside torch.save's zip writer would surface as the writer's own error
            self._save(payload)

    def _save(self, payload: dict[str, Any]) -> None:
        import torch

        from alignbench.atomic import fsync_dir, temp_path_beside

        tmp = None
        try:  # straight to a file beside it (no in-memory copy: a large head's checkpoint is GBs), then renamed
            tmp = temp_path_beside(self.path)
            with open(tmp, "wb") as f:
                now = time.monotonic()
                torch.save({"format": FORMAT, "fit_id": self.fit_id, "fit_wall_s": self.wall_s(now),
                            "machines": self.machines(now), **payload}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            fsync_dir(self.path.parent)
        except OSError as exc:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    tmp.unlink()
            log.warning("checkpoint %s not written (%s); an interruption now would restart this fit", self.path, exc)
        self.last_save = time.monotonic()

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


_CURRENT: contextvars.ContextVar[Checkpointer | None] = contextvars.ContextVar("alignbench_checkpoint", default=None)


def current() -> Checkpointer | None:
    """The checkpointer of the fit running now (None outside :func:`checkpointing`: tuning trials, the API)."""
    return _CURRENT.get()


@contextlib.contextmanager
def checkpointing(results_dir: str | os.PathLike, fit_id: str, *,
                  interval_s: float | None = None) -> Iterator[Checkpointer]:
    """Checkpoint the fit run inside the block; the file goes when the block ends without an error."""
    if interval_s is None:
        interval_s = float(os.environ.get("ALIGNBENCH_CHECKPOINT_S", DEFAULT_INTERVAL_S))
    ck = Checkpointer(checkpoint_path(results_dir, fit_id), fit_id, interval_s)
    token = _CURRENT.set(ck)
    try:
        yield ck
    finally:
        _CURRENT.reset(token)
    ck.remove()  # reached only when the block raised nothing: the fit is done (and stored)


def rng_states(rngs: list[Any]) -> list[dict[str, Any]]:
    """The states of numpy Generators, to save."""
    return [g.bit_generator.state for g in rngs]


def restore_rngs(rngs: list[Any], states: list[dict[str, Any]]) -> None:
    for g, s in zip(rngs, states, strict=True):
        g.bit_generator.state = s


def torch_rng_state() -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_torch_rng(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


