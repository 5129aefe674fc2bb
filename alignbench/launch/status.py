"""Sweep status: each run done / running / pending / failed / lost / missing, from files and the scheduler."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignbench.config import RunSpec
from alignbench.launch.ledger import Ledger
from alignbench.launch.scheduler import local_alive, slurm_final_states, slurm_live_jobs


# Status
@dataclass
class RunStatus:
    run_id: str
    state: str  # done | running | pending | failed | lost | missing
    job_id: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    detail: str = ""


@dataclass
class SweepReport:
    sweep_id: str
    ledger: Path
    executor: str
    runs: list[RunStatus]
    submitted: int = 0  # runs submitted by this call
    encodes_submitted: int = 0
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)
    started_at: str | None = None  # the ledger's created_at (ISO, UTC): the clock the ETA runs on

    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in ("done", "running", "pending", "failed", "lost", "missing")}
        for r in self.runs:
            out[r.state] = out.get(r.state, 0) + 1
        return out

    def eta(self, now: float | None = None) -> str | None:
        """'~12 min' for the queued and running runs, at the pace of the runs done since the sweep started."""
        import time
        from datetime import datetime

        from alignbench.progress import format_eta

        c = self.counts()
        left = c["running"] + c["pending"]
        if not (self.started_at and c["done"] and left):
            return None
        try:
            elapsed = (now if now is not None else time.time()) - datetime.fromisoformat(self.started_at).timestamp()
        except ValueError:
            return None
        return format_eta(elapsed / c["done"] * left) if elapsed > 0 else None

    @property
    def finished(self) -> bool:
        return all(r.state in ("done", "failed", "lost") for r in self.runs)

    @property
    def ok(self) -> bool:
        return all(r.state == "done" for r in self.runs)

    def format(self, *, verbose: bool = False, tail: int = 12, max_lines: int = 30) -> str:
        """Counts, then one line per unfinished run (all when few or ``verbose``); failures always in full."""
        c = self.counts()
        lines = [f"sweep {self.sweep_id}: {len(self.runs)} runs ({self.executor}); ledger {self.ledger}",
                 "  " + "  ".join(f"{k} {v}" for k, v in c.items() if v or k in ("done", "missing"))]
        eta = self.eta()
        if eta:
            lines.append(f"  ETA {eta} for the {c['running'] + c['pending']} queued/running runs "
                         "(at the pace of the runs done so far)")
        lines += [f"  {n}" for n in self.notes]
        quiet = {"done"} if verbose else {"done", "running", "pending", "missing"}
        if not verbose and c["running"] + c["pending"] + c["missing"] <= max_lines:
            quiet = {"done"}
        for r in self.runs:
            if r.state in quiet:
                continue
            job = f" job {r.job_id}" if r.job_id else ""
            note = f"  [{r.detail.splitlines()[0]}]" if r.detail and r.state != "failed" else ""
            lines.append(f"{r.state:<8} {r.run_id}{job}{note}")
            if r.state in ("failed", "lost"):
                if r.stderr:
                    lines.append(f"         log: {r.stderr}")
                if r.stdout and r.stdout != r.stderr:
                    lines.append(f"         out: {r.stdout}")
            if r.state == "failed" and r.detail:
                lines += [f"         | {t}" for t in r.detail.rstrip().splitlines()[-tail:]]
        hidden = sum(c[k] for k in quiet - {"done"})
        if hidden:
            lines.append(f"  ({hidden} queued/running/missing runs not listed; --all lists every run)")
        return "\n".join(lines)


def _older_than_job(path: Path, job: dict[str, Any]) -> bool:
    """A failure record left by an earlier attempt (the latest job ended without writing anything)."""
    ts = job.get("submitted_ts")
    try:
        return ts is not None and path.stat().st_mtime < float(ts)
    except OSError:
        return False


def _failure_detail(path: Path) -> str:
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"(unreadable failure record {path})"
    err = rec.get("error") or {}
    tb = err.get("traceback") or f"{err.get('type', 'Error')}: {err.get('message', '')}"
    hint = ""
    if err.get("type") == "UncompletedJobError":  # raised by submitit's signal handler inside the run
        hint = ("\nthe job reached its time limit (or was preempted) and was not requeued: raise timeout_min "
                "or max_num_timeout in the profile")
    return f"{tb.rstrip()}{hint}\n(failure record: {path})"


def _done(ledger: Ledger, specs: list[RunSpec] | None, run_ids: list[str]) -> set[str]:
    """Ledger keys whose current, valid result is stored (alignbench.planning: stale/damaged ones are not)."""
    from alignbench.planning import sweep_done

    cfg = ledger.data.get("config") or {}
    specs = specs if specs is not None else [RunSpec.from_dict(ledger.runs[r]["spec"]) for r in run_ids]
    return sweep_done(specs, ledger.data["runs_dir"], store_root=cfg.get("cache"), data_root=cfg.get("data_root"))[0]


def collect_status(ledger: Ledger, specs: list[RunSpec] | None = None, *, executor: str | None = None,
                   final_states: bool = True) -> list[RunStatus]:
    """The state of every run of the ledger (or of ``specs``), from files + the scheduler."""
    runs_dir = Path(ledger.data["runs_dir"])
    executor = executor or ledger.data.get("executor", "local")
    run_ids = [s.run_id for s in specs] if specs is not None else list(ledger.runs)
    live = _live_jobs(ledger, executor, run_ids)
    done = _done(ledger, specs, run_ids)
    out: list[RunStatus] = []
    for rid in run_ids:
        info = ledger.runs.get(rid, {})
        job_id = info.get("job_id")
        job = ledger.jobs.get(job_id, {}) if job_id else {}
        st = RunStatus(rid, "missing", job_id, job.get("stdout"), job.get("stderr"))
        failed = runs_dir / f"{rid}.failed.json"
        if rid in done:
            st.state = "done"
        elif job_id and job_id in live:
            state, reason = live[job_id]
            st.state = "pending" if state.upper() in ("PENDING", "REQUEUED", "CONFIGURING") else "running"
            st.detail = f"{state}" + (f", {reason}" if reason and reason not in ("None", "(null)") else "")
        elif failed.is_file() and not _older_than_job(failed, job):
            st.state, st.detail = "failed", _failure_detail(failed)
        elif job_id:
            st.state, st.detail = "lost", "the job ended without writing a result"
        out.append(st)
    if final_states:
        lost = [r.job_id for r in out if r.state in ("lost", "failed") and r.job_id
                and ledger.jobs.get(r.job_id, {}).get("executor", executor) == "slurm"]
        states = slurm_final_states(lost) if lost else {}
        for r in out:
            if r.job_id in states:
                if r.state == "lost":
                    r.detail = f"job {states[r.job_id]} without writing a result"
                else:
                    r.detail = f"{r.detail}\n(job {states[r.job_id]})"
    return out


def _live_jobs(ledger: Ledger, executor: str, run_ids: list[str]) -> dict[str, tuple[str, str]]:
    """Jobs of these runs still queued/running, asked of the executor each job was submitted to."""
    ids = {ledger.runs[r]["job_id"] for r in run_ids if r in ledger.runs and ledger.runs[r].get("job_id")}
    by_exec: dict[str, list[str]] = {}
    for j in ids:
        by_exec.setdefault(ledger.jobs.get(j, {}).get("executor", executor), []).append(j)
    out: dict[str, tuple[str, str]] = {}
    if by_exec.get("slurm") and shutil.which("squeue"):
        live = slurm_live_jobs()
        out.update({j: live[j] for j in by_exec["slurm"] if j in live})
    out.update({j: ("RUNNING", "") for j in by_exec.get("local", []) if local_alive(j)})
    return out
