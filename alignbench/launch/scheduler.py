"""Scheduler queries (squeue / sacct on SLURM) and process checks (the local executor)."""
from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess

from alignbench.errors import AlignbenchError

log = logging.getLogger("alignbench.launch")


# Scheduler queries (slurm) and process checks (local)
def _run_cmd(cmd: list[str], timeout: float = 30) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AlignbenchError(f"{cmd[0]} failed: {exc}") from None
    if out.returncode != 0:
        raise AlignbenchError(f"{' '.join(cmd)} failed: {(out.stderr or out.stdout).strip()}")
    return out.stdout


def slurm_live_jobs() -> dict[str, tuple[str, str]]:
    """{job id ('123' or '123_4'): (state, reason)} for this user's jobs still in the queue."""
    import getpass

    out = _run_cmd(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T|%r"])
    live = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            live[parts[0]] = (parts[1], parts[2])
    return live


def slurm_final_states(job_ids: list[str]) -> dict[str, str]:
    """{job id: 'STATE exit X:Y elapsed T'} from sacct (accounting), for jobs no longer queued."""
    if not job_ids or not shutil.which("sacct"):
        return {}
    mains = sorted({j.split("_")[0] for j in job_ids})
    try:
        out = _run_cmd(["sacct", "-n", "-P", "-X", "-j", ",".join(mains), "-o", "JobID,State,ExitCode,Elapsed"])
    except AlignbenchError as exc:
        log.debug("sacct: %s", exc)
        return {}
    states = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 4:
            states[parts[0]] = f"{parts[1]} (exit {parts[2]}, ran {parts[3]})"
    return states


def slurm_jobs_named(name: str) -> list[str]:
    """Job ids of a job name, queued (squeue) or finished (sacct): recovers a half-recorded submission."""
    ids = set()
    with contextlib.suppress(AlignbenchError):
        ids |= {x.strip() for x in _run_cmd(["squeue", "-h", "-r", "-n", name, "-o", "%i"]).split()}
    if shutil.which("sacct"):
        with contextlib.suppress(AlignbenchError):
            ids |= {x.strip() for x in _run_cmd(["sacct", "-n", "-X", "-P", "--name", name, "-o", "JobID"]).split()}
    return sorted(i for i in ids if i and "[" not in i)


def local_alive(job_id: str) -> bool:
    """A local job is a submitit controller process (its pid is the job id)."""
    import psutil

    try:
        p = psutil.Process(int(job_id))
        return p.status() != psutil.STATUS_ZOMBIE and "submitit" in " ".join(p.cmdline())
    except (psutil.Error, ValueError):
        return False
