"""Plan, submit and track a sweep: encode jobs first, then ONE job array of runs.

Why this shape (after submitit's and dinov2's launchers):

* Stage 1 submits one encode job per feature set still missing from the
  feature store, and waits for them, so hundreds of array tasks do not all
  queue on the same encode lock.  Stage 2 submits every missing run as one
  job array (capped parallelism); several cheap closed-form runs can share an
  array task ("packs"), which amortises job start-up.
* Workers write their own result files (``run_one``); nothing here reads
  ``job.result()``.  Done = the result JSON exists.
* A ledger per sweep (``results/sweeps/<sweep_id>.json``, beside ``results/runs``; written
  atomically) maps run id → job id, array index and log paths.  It makes
  ``--status`` possible (done / running / failed / lost / missing) and makes a
  re-run submit only what is missing or failed: runs whose job is still alive
  (squeue) are left alone, so killing the submitter and re-running neither
  duplicates nor loses a run.  A submission is recorded *before* sbatch with a
  unique job name, so even a kill between sbatch and the ledger update is
  recovered by looking the name up in squeue/sacct.
* Imports stay lazy: re-running a finished sweep only scans names and checks
  files (no torch, no submitit) and returns in well under 5 s.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from alignbench.config import RunSpec
from alignbench.errors import AlignbenchError, ConfigError
from alignbench.sweep_config import SweepConfig, expand

if TYPE_CHECKING:
    from alignbench.feature_kinds import FeatureSet

log = logging.getLogger(__name__)

LEDGER_VERSION = 1
CHEAP_METHODS = ("cca", "csa", "asif", "random")  # closed-form: seconds each, worth packing
REPO_SLURM_DIR = Path(__file__).resolve().parents[1] / "slurm"

# Our profile keys (everything else must be a submitit AutoExecutor parameter).
OUR_PROFILE_KEYS = {
    "description": "free text shown nowhere; document the profile",
    "pack": "closed-form runs per array task (default 4; 1 = one run per task)",
    "pack_methods": f"methods that count as cheap for packing (default {list(CHEAP_METHODS)})",
    "parallel_jobs": "local executor: concurrent jobs (default: CPU count); slurm: default array parallelism",
    "encode": "mapping of executor parameters overriding these ones for stage-1 encode jobs",
    "poll_seconds": "how often --wait polls the scheduler (default 1)",
    "max_num_timeout": "times a timed-out job is requeued before it is given up (submitit; default 3)",
}
DEFAULTS = {"slurm": {"timeout_min": 60, "cpus_per_task": 1}, "local": {"timeout_min": 24 * 60}, "debug": {}}


# ======================================================================================
# Profiles
@dataclass
class Profile:
    """Executor parameters for submitit plus our packing/parallelism options."""

    path: str | None = None
    params: dict[str, Any] = field(default_factory=dict)  # AutoExecutor.update_parameters(**params)
    encode_params: dict[str, Any] = field(default_factory=dict)
    pack: int = 4
    pack_methods: tuple[str, ...] = CHEAP_METHODS
    parallel_jobs: int | None = None
    poll_seconds: float = 1.0
    max_num_timeout: int = 3
    description: str = ""


def valid_executor_keys() -> set[str]:
    """Keys submitit's AutoExecutor accepts: generic ones plus ``<executor>_<parameter>``."""
    from submitit.auto.auto import AutoExecutor
    from submitit.core import plugins

    keys = set(AutoExecutor._valid_parameters())
    for name, ex in plugins.get_executors().items():
        keys |= {f"{name}_{p}" for p in ex._valid_parameters()}
        keys |= {f"{name}_{p}" for p in AutoExecutor._valid_parameters()}
    return keys


def resolve_profile_path(name: str) -> Path:
    """A path, or a bare name looked up in the repository's ``slurm/`` folder (``local`` → slurm/local.yaml)."""
    p = Path(name).expanduser()
    if p.exists():
        return p
    for cand in (REPO_SLURM_DIR / name, REPO_SLURM_DIR / f"{name}.yaml"):
        if cand.exists():
            return cand
    known = sorted(x.stem for x in REPO_SLURM_DIR.glob("*.yaml")) if REPO_SLURM_DIR.is_dir() else []
    where = f"; profiles in {REPO_SLURM_DIR}: {', '.join(known)}" if known else ""
    raise ConfigError(f"profile {name!r} not found{where}")


def load_profile(name: str | None) -> Profile:
    """Read and validate a profile YAML (ConfigError naming unknown keys); None → built-in defaults."""
    if not name:
        return Profile()
    import yaml

    path = resolve_profile_path(name)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"profile {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"profile {path} must be a mapping of executor parameters")
    return profile_from_dict(raw, path=str(path))


def profile_from_dict(raw: dict[str, Any], *, path: str | None = None) -> Profile:
    where = f"profile {path}" if path else "profile"
    valid = valid_executor_keys()
    params = {k: v for k, v in raw.items() if k not in OUR_PROFILE_KEYS}
    _check_keys(params, valid, where)
    encode = raw.get("encode") or {}
    if not isinstance(encode, dict):
        raise ConfigError(f"{where}: 'encode' must be a mapping of executor parameters")
    _check_keys(encode, valid, f"{where} (encode:)")
    prof = Profile(path=path, params=params, encode_params=dict(encode), description=str(raw.get("description", "")))
    try:
        if "pack" in raw:
            prof.pack = int(raw["pack"])
        if "pack_methods" in raw:
            prof.pack_methods = tuple(str(m) for m in raw["pack_methods"] or ())
        if raw.get("parallel_jobs") is not None:
            prof.parallel_jobs = int(raw["parallel_jobs"])
        if "poll_seconds" in raw:
            prof.poll_seconds = float(raw["poll_seconds"])
        if "max_num_timeout" in raw:
            prof.max_num_timeout = int(raw["max_num_timeout"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if prof.pack < 1 or (prof.parallel_jobs is not None and prof.parallel_jobs < 1):
        raise ConfigError(f"{where}: pack and parallel_jobs must be at least 1")
    return prof


def _check_keys(params: dict[str, Any], valid: set[str], where: str) -> None:
    import difflib

    unknown = sorted(k for k in params if k not in valid)
    if not unknown:
        return
    parts = []
    for k in unknown:
        close = difflib.get_close_matches(k, sorted(valid | set(OUR_PROFILE_KEYS)), n=1)
        parts.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    generic = sorted(k for k in valid if "_" not in k or not k.split("_", 1)[0] in ("slurm", "local", "debug"))
    raise ConfigError(
        f"unknown key(s) in {where}: {', '.join(parts)}. Use submitit's parameters — generic "
        f"({', '.join(generic)}) or slurm_<sbatch option> such as slurm_partition, slurm_gres, "
        f"slurm_array_parallelism, slurm_additional_parameters — or ours: {', '.join(sorted(OUR_PROFILE_KEYS))}"
    )


# ======================================================================================
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


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _atomic_write(path: Path, obj: Any) -> None:
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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
            led = cls(path, {"version": LEDGER_VERSION, "sweep_id": sweep, "created_at": _now(), "runs": {},
                             "jobs": {}, "submissions": [], "encodes": {}})
        led.data["config"] = cfg.to_dict()
        led.data["runs_dir"] = str(cfg.runs_dir)
        for s in specs:
            led.data["runs"].setdefault(s.run_id, {"spec": s.to_dict(), "job_id": None, "attempts": []})
        return led

    def save(self) -> None:
        self.data["updated_at"] = _now()
        _atomic_write(self.path, self.data)

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
def _exclusive(lock_path: Path) -> Iterator[None]:
    """One submitter per sweep at a time (a second one would duplicate submissions)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlignbenchError(f"another 'alignbench sweep' is submitting this sweep (lock {lock_path}); "
                                  "wait for it or use --status") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ======================================================================================
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


# ======================================================================================
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

    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in ("done", "running", "pending", "failed", "lost", "missing")}
        for r in self.runs:
            out[r.state] = out.get(r.state, 0) + 1
        return out

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


def _done(ledger: Ledger, specs: list[RunSpec] | None, run_ids: list[str]) -> set[str]:
    """Ledger keys whose current, valid result is stored (alignbench.planning: stale/damaged ones are not)."""
    from alignbench.planning import sweep_done

    cfg = ledger.data.get("config") or {}
    specs = specs if specs is not None else [RunSpec.from_dict(ledger.runs[r]["spec"]) for r in run_ids]
    return sweep_done(specs, ledger.data["runs_dir"], store_root=cfg.get("cache"), data_root=cfg.get("data_root"))[0]


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


# ======================================================================================
# Planning helpers
def group_packs(specs: list[RunSpec], profile: Profile) -> list[list[RunSpec]]:
    """Expensive runs one per task (first: they set the makespan), cheap ones ``pack`` at a time."""
    cheap = [s for s in specs if s.method in profile.pack_methods]
    heavy = [s for s in specs if s.method not in profile.pack_methods]
    packs = [[s] for s in heavy]
    for i in range(0, len(cheap), profile.pack):
        packs.append(cheap[i : i + profile.pack])
    return packs


def check_results_writable(cfg: SweepConfig) -> None:
    """Fail before submitting anything if results cannot be written (a job would fail later, silently)."""
    for d in (cfg.runs_dir, cfg.sweeps_dir):
        try:
            d.mkdir(parents=True, exist_ok=True)
            probe = d / f".write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"results folder {d} is not writable ({exc.strerror or exc}); "
                              "choose another with --results DIR") from None


def check_executor_available(executor: str) -> None:
    if executor == "slurm" and not shutil.which("sbatch"):
        raise ConfigError("--executor slurm needs SLURM's sbatch on PATH, and there is none on this machine; "
                          "use --executor local to run the sweep here (or start a test cluster: "
                          "bash slurm/cluster.sh install && bash slurm/cluster.sh start)")


def feature_needs(specs: list[RunSpec]) -> list["FeatureSet"]:
    """Every feature set the runs read (training/validation pairs and task needs), once each."""
    from alignbench import feature_kinds
    from alignbench.registry import TASKS
    from alignbench.runner import EvalSpec, parse_split_ref
    from alignbench.source import split_pair

    needs: dict[str, feature_kinds.FeatureSet] = {}
    tasks: dict[str, Any] = {}

    def add(what: str, spec: RunSpec, dataset: str, split: str | None) -> None:
        for kind in feature_kinds.expand(what):
            fs = feature_kinds.feature_set(kind, split_pair(spec.pair), dataset, split,
                                           image_layer=spec.encoder.image_layer, text_layer=spec.encoder.text_layer,
                                           dtype=spec.encoder.dtype)
            needs.setdefault(fs.key, fs)

    for spec in specs:
        for ref, default in ((spec.train, "train"), (spec.val, "dev")):
            if ref:
                add("pairs", spec, *parse_split_ref(ref, default))
        for text in spec.evals:
            ev = EvalSpec.parse(text).resolved()
            task = tasks.setdefault(ev.task, TASKS.get(ev.task)())
            for need in task.needs(ev.dataset, ev.split):
                add(need.what, spec, need.dataset, need.split)
    return list(needs.values())


def missing_features(needs: list["FeatureSet"], store_root: Path | None, data_root: Path | None) -> list["FeatureSet"]:
    """The feature sets not (validly) in the store; nothing is encoded."""
    from alignbench.store import FeatureStore

    store = FeatureStore(store_root)
    return [n for n in needs if not n.spec.has(store, n, data_root=data_root)]


# ======================================================================================
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


# ======================================================================================
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
    return SweepReport(sid, path, executor, collect_status(led, specs, executor=executor))


def all_ledgers_status(results: str | Path) -> list[SweepReport]:
    """Status of every sweep whose results go to ``results`` (ledgers in the ``sweeps`` folder beside it)."""
    from alignbench.sweep_config import sweeps_dir_for

    out = []
    for path in sorted(sweeps_dir_for(results).glob("*.json")):
        led = Ledger.load(path)
        executor = led.data.get("executor", "local")
        status = collect_status(led, executor=executor)
        out.append(SweepReport(led.data.get("sweep_id", path.stem), path, executor, status))
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
    with _exclusive(cfg.sweeps_dir / f".{sid}.lock"):
        led = Ledger.open(path, sweep=sid, cfg=cfg, specs=specs)
        prev_executor = led.data.get("executor")
        led.data["executor"] = cfg.executor
        led.data["profile"] = profile.path
        _recover_submissions(led, cfg.executor)
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

    needs = feature_needs(specs)
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
        jobs = _submit(backend, params, name, [
            (EncodeJob(), (n,),
             {"store_root": _s(cfg.store_root), "data_root": _s(cfg.data_path), "threads": backend.threads(),
              "device": cfg.device})
            for n in to_submit], led, kind="encode", run_ids=None)
        for n, job in zip(to_submit, jobs):
            encodes[n.key] = {"job_id": job.job_id, "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr),
                              "submitted_at": _now(), **n.__dict__}
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
    _submit(backend, profile.params, name, calls, led, kind="runs", run_ids=[[s.run_id for s in p] for p in packs])
    log.info("stage 2: %d runs submitted as %d array tasks", len(specs), len(packs))
    return len(specs)


def _submit(backend: _Backend, params: dict[str, Any], name: str, calls: list[tuple], led: Ledger, *,
            kind: str, run_ids: list[list[str]] | None) -> list[Any]:
    """Record the intent, submit (one array on slurm; throttled processes locally), record job ids."""
    token = uuid.uuid4().hex[:8]
    job_name = f"{name}-{token}"
    sub = {"token": token, "job_name": job_name, "kind": kind, "packs": run_ids, "state": "submitting",
           "executor": backend.name, "folder": str(backend.logs), "submitted_at": _now(),
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
