"""The sweep: stage 1 encodes what is missing, stage 2 submits one array of runs; status and waiting."""
from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

from alignbench.config import RunSpec
from alignbench.errors import AlignbenchError, ConfigError
from alignbench.launch import backends
from alignbench.launch.backends import _Backend, _LocalBackend, _SlurmBackend
from alignbench.launch.ledger import Ledger, exclusive, now, sweep_id
from alignbench.launch.planning import (check_executor_available, check_results_writable, feature_needs,
                                        group_packs, missing_features, resolve_for_planning)
from alignbench.launch.profiles import Profile, load_profile
from alignbench.launch.status import RunStatus, SweepReport, collect_status
from alignbench.sweep_config import SweepConfig, expand

log = logging.getLogger("alignbench.launch")


# The sweep
def prepare(cfg: SweepConfig) -> tuple[list[RunSpec], str, Path]:
    specs = expand(cfg)
    if not specs:
        raise ConfigError("the sweep has no runs")
    sid = sweep_id(cfg, specs)
    return specs, sid, cfg.sweeps_dir / f"{sid}.json"


def sweep_status(cfg: SweepConfig) -> SweepReport:
    """Status of the sweep ``cfg`` describes (its ledger must exist, else every run is 'missing')."""
    specs, sid, path = prepare(cfg)
    if path.exists():
        led = Ledger.load(path)
        led.data.setdefault("runs_dir", str(cfg.runs_dir))
        for s in specs:
            led.runs.setdefault(s.run_id, {"spec": s.to_dict(), "job_id": None, "attempts": []})
        executor = led.data.get("executor", cfg.executor)
    else:
        led = Ledger(path, {"runs": {s.run_id: {"spec": s.to_dict(), "job_id": None, "attempts": []} for s in specs},
                            "jobs": {}, "runs_dir": str(cfg.runs_dir)})
        executor = cfg.executor
    return SweepReport(sid, path, executor, collect_status(led, specs, executor=executor),
                       started_at=led.data.get("created_at"))


def all_ledgers_status(results: str | Path) -> list[SweepReport]:
    """Status of every sweep whose results go to ``results`` (ledgers in the ``sweeps`` folder beside it)."""
    from alignbench.sweep_config import sweeps_dir_for

    out = []
    for path in sorted(sweeps_dir_for(results).glob("*.json")):
        led = Ledger.load(path)
        executor = led.data.get("executor", "local")
        status = collect_status(led, executor=executor)
        out.append(SweepReport(led.data.get("sweep_id", path.stem), path, executor, status,
                               started_at=led.data.get("created_at")))
    return out


def run_sweep(cfg: SweepConfig, profile: Profile | None = None, *, wait: bool = False,
              dry_run: bool = False) -> SweepReport:
    """Submit what is missing of the sweep (stage 1 encodes, then one array of runs)."""
    profile = profile or load_profile(cfg.profile)
    specs, sid, path = prepare(cfg)
    runs_dir = cfg.runs_dir
    # Fast path: nothing to do when every result exists (no scheduler, no submitit, no torch).
    from alignbench.planning import sweep_done

    done, why = sweep_done(specs, runs_dir, store_root=cfg.store_root, data_root=cfg.data_path, guard=True)
    if len(done) == len(specs):
        status = [RunStatus(s.run_id, "done") for s in specs]
        return SweepReport(sid, path, cfg.executor, status, dry_run=dry_run)
    check_executor_available(cfg.executor)
    check_results_writable(cfg)
    with exclusive(cfg.sweeps_dir / f".{sid}.lock"):
        led = Ledger.open(path, sweep=sid, cfg=cfg, specs=specs)
        prev_executor = led.data.get("executor")
        led.data["executor"] = cfg.executor
        led.data["profile"] = profile.path
        backends._recover_submissions(led, cfg.executor)
        status = collect_status(led, specs, executor=prev_executor or cfg.executor, final_states=False)
        todo = [s for s, st in zip(specs, status) if st.state in ("missing", "failed", "lost")]
        report = SweepReport(sid, path, cfg.executor, status, dry_run=dry_run)
        report.notes += [f"redoing {k}: {w}" for k, w in why.items()]
        busy = [st for st in status if st.state in ("running", "pending")]
        if busy:
            report.notes.append(f"{len(busy)} runs still queued or running from an earlier submission: left alone")
        if dry_run:
            packs = group_packs(todo, profile)
            report.notes.append(f"dry run: would submit {len(todo)} runs in {len(packs)} array tasks")
            return report
        if not todo:
            led.save()
            if wait:
                return wait_for(cfg, led, specs, profile)
            return report
        from alignbench.runner import validate_spec

        for s in {s.method + repr(sorted(s.method_options.items())) + s.pair: s for s in todo}.values():
            validate_spec(s)  # bad option / wrong dataset kind: one clear error before any job
        logs = cfg.sweeps_dir / sid / "logs"
        backend = {"slurm": _SlurmBackend, "local": _LocalBackend}.get(cfg.executor, _Backend)(cfg, profile, logs)
        led.save()
        if cfg.executor == "debug":
            report.submitted = _run_debug(cfg, todo, profile)
        else:
            report.encodes_submitted = _stage_encodes(cfg, led, backend, todo, profile)
            report.submitted = _stage_runs(cfg, led, backend, todo, profile)
        led.save()
    if wait or cfg.executor in ("local", "debug"):
        return wait_for(cfg, led, specs, profile, submitted=report.submitted,
                        encodes=report.encodes_submitted, notes=report.notes)
    report.runs = collect_status(led, specs, executor=cfg.executor, final_states=False)
    return report


def wait_for(cfg: SweepConfig, led: Ledger, specs: list[RunSpec], profile: Profile, *, submitted: int = 0,
             encodes: int = 0, notes: list[str] | None = None) -> SweepReport:
    """Block until no run of the sweep is queued or running; then report."""
    poll = profile.poll_seconds
    executor = led.data.get("executor", cfg.executor)
    while True:
        status = collect_status(led, specs, executor=executor, final_states=False)
        if all(s.state not in ("running", "pending") for s in status):
            break
        time.sleep(poll)
    status = collect_status(led, specs, executor=executor)
    with contextlib.suppress(OSError):  # local jobs leave an empty literal "%j" folder behind
        (cfg.sweeps_dir / led.data["sweep_id"] / "logs" / "%j").rmdir()
    return SweepReport(led.data["sweep_id"], led.path, executor, status, submitted=submitted,
                       encodes_submitted=encodes, notes=list(notes or []))


# -- stage 1 --------------------------------------------------------------------------
def _stage_encodes(cfg: SweepConfig, led: Ledger, backend: _Backend, specs: list[RunSpec], profile: Profile) -> int:
    """Encode missing feature sets in jobs and wait for them; refuse to go on if one failed."""
    from alignbench.sweep_jobs import EncodeJob

    needs = feature_needs(resolve_for_planning(cfg, specs))
    missing = missing_features(needs, cfg.store_root, cfg.data_path)
    if not missing:
        return 0
    encodes = led.data.setdefault("encodes", {})
    live_ids = backend.alive([e["job_id"] for n in missing if (e := encodes.get(n.key)) and e.get("job_id")])
    to_submit = [n for n in missing if not (encodes.get(n.key) or {}).get("job_id") in live_ids]
    submitted = 0
    if to_submit:
        params = {**profile.params, **profile.encode_params}
        name = f"ab-enc-{led.data['sweep_id']}"
        jobs = backends._submit(backend, params, name, [
            (EncodeJob(), (n,),
             {"store_root": _s(cfg.store_root), "data_root": _s(cfg.data_path), "threads": backend.threads(),
              "device": cfg.device})
            for n in to_submit], led, kind="encode", run_ids=None)
        for n, job in zip(to_submit, jobs):
            encodes[n.key] = {"job_id": job.job_id, "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr),
                              "submitted_at": now(), **n.__dict__}
        led.save()
        submitted = len(jobs)
        log.info("stage 1: %d encode jobs submitted (%s)", submitted, ", ".join(j.job_id for j in jobs))
    waiting = [encodes[n.key]["job_id"] for n in missing]
    while backend.alive(waiting):
        time.sleep(profile.poll_seconds)
    still = missing_features(missing, cfg.store_root, cfg.data_path)
    if still:
        lines = [f"  {n.label()} (job {encodes[n.key]['job_id']}, "
                 f"log {encodes[n.key]['stderr']})" for n in still]
        raise AlignbenchError("stage 1: encoding failed for\n" + "\n".join(lines)
                              + "\nno runs were submitted; fix the cause and re-run the same sweep")
    return submitted


# -- stage 2 --------------------------------------------------------------------------
def _stage_runs(cfg: SweepConfig, led: Ledger, backend: _Backend, specs: list[RunSpec], profile: Profile) -> int:
    from alignbench.sweep_jobs import RunPack

    packs = group_packs(specs, profile)
    name = f"ab-{led.data['sweep_id']}"
    calls = [(RunPack(), ([s.to_dict() for s in pack], str(cfg.runs_dir)),
              {"store_root": _s(cfg.store_root), "data_root": _s(cfg.data_path), "threads": backend.threads(),
               "device": cfg.device})
             for pack in packs]
    backends._submit(backend, profile.params, name, calls, led, kind="runs", run_ids=[[s.run_id for s in p] for p in packs])
    log.info("stage 2: %d runs submitted as %d array tasks", len(specs), len(packs))
    return len(specs)


def _run_debug(cfg: SweepConfig, specs: list[RunSpec], profile: Profile) -> int:
    """In-process, one pack after another (for debugging with pdb); same job function as the cluster."""
    from alignbench.sweep_jobs import RunPack

    saved = os.environ.get("ALIGNBENCH_CACHE")
    try:
        for pack in group_packs(specs, profile):
            try:
                RunPack()([s.to_dict() for s in pack], str(cfg.runs_dir), _s(cfg.store_root), _s(cfg.data_path),
                          device=cfg.device)
            except RuntimeError as exc:  # failures are recorded per run
                log.warning("%s", exc)
    finally:
        if saved is None:
            os.environ.pop("ALIGNBENCH_CACHE", None)
        else:
            os.environ["ALIGNBENCH_CACHE"] = saved
    return len(specs)


def _s(p: Path | None) -> str | None:
    return str(p) if p is not None else None
