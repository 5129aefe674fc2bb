"""Submitting jobs: one backend per executor (slurm, local, debug), and the ledger records around sbatch."""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from alignbench.errors import AlignbenchError, ConfigError
from alignbench.launch.ledger import Ledger, now
from alignbench.launch.profiles import DEFAULTS, Profile
from alignbench.launch.scheduler import local_alive, slurm_jobs_named, slurm_live_jobs
from alignbench.sweep_config import SweepConfig

log = logging.getLogger("alignbench.launch")


# Backends
class _Backend:
    """Submit jobs and say which are alive; one per executor kind."""

    name = ""

    def __init__(self, cfg: SweepConfig, profile: Profile, logs: Path):
        self.cfg, self.profile, self.logs = cfg, profile, logs

    def threads(self) -> int | None:
        return None

    def executor(self, params: dict[str, Any], job_name: str, n_jobs: int):
        import submitit

        ex = submitit.AutoExecutor(folder=self.logs / "%j", cluster=self.name,
                                   **{f"{self.name}_max_num_timeout": self.profile.max_num_timeout})
        merged = {**DEFAULTS.get(self.name, {}), **params, "name": job_name}
        try:
            ex.update_parameters(**merged)
        except (NameError, AssertionError, ValueError, TypeError) as exc:
            raise ConfigError(f"profile {self.profile.path or '(defaults)'}: {exc}") from None
        return ex

    def alive(self, job_ids: list[str]) -> set[str]:
        return set()


class _SlurmBackend(_Backend):
    name = "slurm"

    def executor(self, params, job_name, n_jobs):
        params = dict(params)
        if "slurm_array_parallelism" not in params and self.profile.parallel_jobs:
            params["slurm_array_parallelism"] = self.profile.parallel_jobs
        return super().executor(params, job_name, n_jobs)

    def alive(self, job_ids):
        live = slurm_live_jobs()
        return {j for j in job_ids if j in live}


class _LocalBackend(_Backend):
    name = "local"

    def parallel(self) -> int:
        return self.profile.parallel_jobs or max(1, os.cpu_count() or 1)

    def threads(self) -> int | None:
        return max(1, (os.cpu_count() or 1) // self.parallel())

    def alive(self, job_ids):
        return {j for j in job_ids if local_alive(j)}


def _submit(backend: _Backend, params: dict[str, Any], name: str, calls: list[tuple], led: Ledger, *,
            kind: str, run_ids: list[list[str]] | None) -> list[Any]:
    """Record the intent, submit (one array on slurm; throttled processes locally), record job ids."""
    token = uuid.uuid4().hex[:8]
    job_name = f"{name}-{token}"
    sub = {"token": token, "job_name": job_name, "kind": kind, "packs": run_ids, "state": "submitting",
           "executor": backend.name, "folder": str(backend.logs), "submitted_at": now(),
           "submitted_ts": time.time()}
    led.data["submissions"].append(sub)
    led.save()
    ex = backend.executor(params, job_name, len(calls))
    try:
        if isinstance(backend, _LocalBackend):
            jobs = _submit_local(backend, ex, calls, led, sub, run_ids)
        else:
            with ex.batch():  # one sbatch: a job array (a plain job when there is one call)
                jobs = [ex.submit(fn, *args, **kwargs) for fn, args, kwargs in calls]
    except AlignbenchError:
        raise
    except Exception as exc:
        sub["state"], sub["error"] = "failed", str(exc)
        led.save()
        msg = str(exc).strip()
        raise AlignbenchError(f"the scheduler refused the {kind} jobs:\n{msg}") from None
    for i, job in enumerate(jobs):
        _record(led, job, i, sub, run_ids)
    with contextlib.suppress(OSError):  # submitit leaves an empty literal "%j" folder behind
        (backend.logs / "%j").rmdir()
    sub["state"] = "submitted"
    led.save()
    return jobs


def _record(led: Ledger, job: Any, index: int, sub: dict[str, Any], run_ids: list[list[str]] | None) -> None:
    info = {"kind": sub["kind"], "executor": sub["executor"], "array_index": index, "token": sub["token"],
            "job_name": sub["job_name"], "submitted_ts": sub["submitted_ts"], "submitted_at": sub["submitted_at"],
            "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr),
            "run_ids": run_ids[index] if run_ids else []}
    led.record_job(job.job_id, info)


def _submit_local(backend: _LocalBackend, ex: Any, calls: list[tuple], led: Ledger, sub: dict[str, Any],
                  run_ids: list[list[str]] | None) -> list[Any]:
    """The local executor has no queue: keep at most ``parallel_jobs`` processes running."""
    jobs: list[Any] = []
    running: list[Any] = []
    limit = backend.parallel()
    for i, (fn, args, kwargs) in enumerate(calls):
        while len(running) >= limit:
            running = [j for j in running if not j.done()]
            if len(running) >= limit:
                time.sleep(0.1)
        job = ex.submit(fn, *args, **kwargs)
        jobs.append(job)
        running.append(job)
        _record(led, job, i, sub, run_ids)
        led.save()
    return jobs


def _recover_submissions(led: Ledger, executor: str) -> None:
    """A submitter killed between sbatch and the ledger update: find its jobs by their unique name."""
    for sub in led.data.get("submissions", []):
        if sub.get("state") != "submitting" or sub.get("executor") != "slurm" or executor != "slurm":
            continue
        found = slurm_jobs_named(sub["job_name"]) if shutil.which("squeue") else []
        if not found:
            sub["state"] = "abandoned"
            continue
        from submitit.core.utils import JobPaths

        for jid in found:
            index = int(jid.split("_")[1]) if "_" in jid else 0
            paths = JobPaths(Path(sub["folder"]) / "%j", job_id=jid, task_id=0)
            info = {"kind": sub["kind"], "executor": "slurm", "array_index": index, "token": sub["token"],
                    "job_name": sub["job_name"],
                    "stdout": str(paths.stdout), "stderr": str(paths.stderr), "submitted_at": sub["submitted_at"],
                    "submitted_ts": sub.get("submitted_ts"),
                    "run_ids": sub["packs"][index] if sub.get("packs") else [], "recovered": True}
            led.record_job(jid, info)
        sub["state"] = "submitted"
        log.info("recovered %d jobs of interrupted submission %s", len(found), sub["job_name"])
