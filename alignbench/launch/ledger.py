"""The sweep ledger (``results/sweeps/<sweep_id>.json``): run id → job id, array index, logs; written atomically."""
from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

from alignbench.atomic import write_json_atomic
from alignbench.config import RunSpec
from alignbench.errors import AlignbenchError
from alignbench.sweep_config import SweepConfig

LEDGER_VERSION = 1


# Ledger
def sweep_id(cfg: SweepConfig, specs: list[RunSpec]) -> str:
    """Readable name + hash of the run ids and results folder: the same sweep always maps to the same ledger.

    The results folder is part of it so that two copies of one sweep (say, a test and a real one) never
    share job names on the scheduler.
    """
    import re

    blob = "\n".join([str(cfg.runs_dir), *sorted(s.run_id for s in specs)])
    h = hashlib.sha256(blob.encode()).hexdigest()[:10]
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", cfg.name or "sweep")[:40]
    return f"{name}-{h}"


def now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Ledger:
    """The sweep's record of what was submitted where; the source of truth for ``--status``."""

    def __init__(self, path: Path, data: dict[str, Any]):
        self.path, self.data = path, data

    @classmethod
    def load(cls, path: Path) -> "Ledger":
        try:
            return cls(path, json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise AlignbenchError(f"no sweep ledger at {path}") from None
        except ValueError as exc:
            raise AlignbenchError(f"sweep ledger {path} is not valid JSON ({exc}); delete it to start over") from None

    @classmethod
    def open(cls, path: Path, *, sweep: str, cfg: SweepConfig, specs: list[RunSpec]) -> "Ledger":
        if path.exists():
            led = cls.load(path)
        else:
            led = cls(path, {"version": LEDGER_VERSION, "sweep_id": sweep, "created_at": now(), "runs": {},
                             "jobs": {}, "submissions": [], "encodes": {}})
        led.data["config"] = cfg.to_dict()
        led.data["runs_dir"] = str(cfg.runs_dir)
        for s in specs:
            led.data["runs"].setdefault(s.run_id, {"spec": s.to_dict(), "job_id": None, "attempts": []})
        return led

    def save(self) -> None:
        self.data["updated_at"] = now()
        write_json_atomic(self.path, self.data, indent=1)

    @property
    def runs(self) -> dict[str, dict[str, Any]]:
        return self.data["runs"]

    @property
    def jobs(self) -> dict[str, dict[str, Any]]:
        return self.data["jobs"]

    def record_job(self, job_id: str, info: dict[str, Any]) -> None:
        self.jobs[job_id] = info
        for rid in info.get("run_ids", ()):
            run = self.runs[rid]
            run["job_id"] = job_id
            if job_id not in run["attempts"]:
                run["attempts"].append(job_id)


@contextlib.contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    """One submitter per sweep at a time (a second one would duplicate submissions)."""
    import filelock

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with filelock.FileLock(str(lock_path), timeout=0):
            yield
    except filelock.Timeout:
        raise AlignbenchError(f"another 'alignbench sweep' is submitting this sweep (lock {lock_path}); "
                              "wait for it or use --status") from None
