"""Sweeps through a REAL SLURM cluster (bash slurm/cluster.sh start; `make test` does it).

Skipped, with the reason, when ``sinfo`` cannot reach a cluster.  Each test
drives ``alignbench sweep`` as a user would (a fresh process), on tiny
encoders and datasets written in their real layouts, and checks what the
scheduler itself recorded (sacct) besides our own ledger and result files.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sweep_world import EVALS, PAIR, REPO, cli, ledger_of, metrics_by_run, sweep_args, write_tiny_data

pytestmark = pytest.mark.slurm

_DEFAULT_CONF = REPO / "slurm" / ".cluster" / "etc" / "slurm.conf"
if "SLURM_CONF" not in os.environ and _DEFAULT_CONF.is_file():  # a cluster started from this checkout
    os.environ["SLURM_CONF"] = str(_DEFAULT_CONF)


def _cluster_problem() -> str | None:
    if not shutil.which("sinfo"):
        return "SLURM is not installed (bash slurm/cluster.sh install)"
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo timed out"
    if r.returncode != 0 or not r.stdout.strip():
        return f"no SLURM cluster reachable (sinfo: {(r.stderr or r.stdout).strip()[:200]}); " \
               "start one with: bash slurm/cluster.sh start"
    return None


_problem = _cluster_problem()
if _problem:
    pytestmark = [pytest.mark.slurm, pytest.mark.skip(reason=_problem)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm-world")
    data = write_tiny_data(root / "data")
    env = {"ALIGNBENCH_DATA": str(data), "ALIGNBENCH_CACHE": str(root / "features"),
           "SLURM_CONF": os.environ.get("SLURM_CONF", "")}
    return {"root": root, "data": data, "env": env}


def _profile(root: Path, name: str, **overrides) -> Path:
    """The test cluster's profile (slurm/local.yaml) with some keys changed."""
    prof = yaml.safe_load((REPO / "slurm" / "local.yaml").read_text())
    prof.update(overrides)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(prof))
    return path


def _slurm(results: Path, profile: Path, **kw) -> list[str]:
    return sweep_args(results, extra=["--executor", "slurm", "--profile", str(profile), *kw.pop("extra", ())], **kw)


def _sacct(*args: str) -> list[list[str]]:
    r = subprocess.run(["sacct", "-n", "-P", *args], capture_output=True, text=True, timeout=30, check=True)
    return [line.split("|") for line in r.stdout.splitlines() if line.strip()]


_SESSION_START = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 5))


def _jobs_named(prefix: str, expect: int | None = None, timeout: float = 60.0) -> set[str]:
    """Distinct job (array) ids whose name starts with ``prefix``, as SLURM's accounting saw them.

    slurmctld sends job records to slurmdbd asynchronously, so a job that has
    already run may reach ``sacct`` seconds later: with ``expect``, poll until
    that many ids are seen (or ``timeout`` passes) before answering.
    """
    deadline = time.time() + timeout
    while True:
        rows = _sacct("-X", "-a", "-S", _SESSION_START, "-o", "JobID,JobName%100")
        ids = {jid.split("_")[0] for jid, name in rows if name.startswith(prefix)}
        if expect is None or len(ids) >= expect or time.time() > deadline:
            return ids
        time.sleep(1.0)


def _wait_until(pred, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"sweep ended (rc {proc.returncode}) before {what}:\n{out}\n{err}")
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def _ledger_now(results: Path) -> dict:
    paths = list((results / "sweeps").glob("*.json"))
    if not paths:
        return {}
    try:
        return json.loads(paths[0].read_text())
    except ValueError:  # never happens with atomic writes; keep polling if it did
        return {}


# ------------------------------------------------------------------------------------------------------
def test_killed_submitter_resumes_with_no_duplicate_and_no_lost_result(world):
    """Kill the submitter during stage 1 (encodes) and again during stage 2 (array); re-run finishes."""
    results = world["root"] / "killed"
    args = _slurm(results, _profile(world["root"], "p-killed"), extra=["--wait"])
    env = {**os.environ, **world["env"]}
    cmd = [sys.executable, "-m", "alignbench.cli", *args]

    first = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    def encodes_recorded():
        led = _ledger_now(results)
        return led if led.get("encodes") else None

    def runs_recorded():
        led = _ledger_now(results)
        return led if led.get("runs") and all(r["job_id"] for r in led["runs"].values()) else None

    led = _wait_until(encodes_recorded, 180, "stage-1 encode jobs in the ledger", first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    encode_jobs = {e["job_id"] for e in led["encodes"].values()}
    assert encode_jobs

    second = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_until(runs_recorded, 400, "the run array in the ledger", second)
    second.send_signal(signal.SIGKILL)
    second.wait()

    third = cli(args, world["env"])
    assert third.returncode == 0, third.stdout + third.stderr
    led = ledger_of(results)
    assert {e["job_id"] for e in led["encodes"].values()} == encode_jobs  # encodes were not resubmitted
    assert all(len(r["attempts"]) == 1 for r in led["runs"].values())  # each run submitted exactly once
    sid = led["sweep_id"]
    assert len(_jobs_named(f"ab-enc-{sid}", expect=1)) == 1 and len(_jobs_named(f"ab-{sid}", expect=1)) == 1
    assert len(metrics_by_run(results / "runs")) == 8  # no lost result
    assert "all 8 runs are done" in cli(args, world["env"]).stdout


def test_slurm_sweep_gives_the_local_executors_numbers(world):
    """2 methods × 2 budgets × 2 seeds, one run per array task (8 concurrent writers)."""
    slurm_res, local_res = world["root"] / "slurm", world["root"] / "local"
    r = cli(_slurm(slurm_res, _profile(world["root"], "p-pack1", pack=1), extra=["--wait"]), world["env"])
    assert r.returncode == 0, r.stdout + r.stderr
    r = cli(sweep_args(local_res, extra=["--executor", "local"]), world["env"])
    assert r.returncode == 0, r.stdout + r.stderr
    a, b = metrics_by_run(slurm_res / "runs"), metrics_by_run(local_res / "runs")
    assert len(a) == 8 and a == b
    assert not [p for p in (slurm_res / "runs").iterdir() if p.name.startswith(".")]  # no temp files left
    led = ledger_of(slurm_res)
    arrays = {j.split("_")[0] for j in led["jobs"] if j in {r["job_id"] for r in led["runs"].values()}}
    assert len(arrays) == 1  # ONE job array for the runs
    states = {row[0]: row[1] for row in _sacct("-X", "-j", arrays.pop(), "-o", "JobID,State")}
    assert len(states) == 8 and set(states.values()) == {"COMPLETED"}


def test_failing_run_shows_traceback_and_log_while_others_finish(world):
    results = world["root"] / "failing"
    args = _slurm(results, _profile(world["root"], "p-fail"), methods="cca", budgets="20,5000", seeds="0")
    r = cli(args + ["--wait"], world["env"])
    assert r.returncode == 1, r.stdout + r.stderr
    st = cli(args + ["--status"], world["env"])
    assert st.returncode == 1
    assert "done 1" in st.stdout and "failed 1" in st.stdout
    assert "BudgetError" in st.stdout and "Traceback" in st.stdout
    log_line = next(line for line in st.stdout.splitlines() if line.strip().startswith("log:"))
    log_path = Path(log_line.split("log:", 1)[1].strip())
    assert log_path.is_file() and "BudgetError" in log_path.read_text()


def test_run_over_its_time_limit_is_reported(world):
    results = world["root"] / "timeout"
    # SLURM may send the --signal up to 60 s before the time asked ("resolution of event handling", sbatch(1)):
    # with a 1-minute limit it once came 1 s into the job, before the run had started (nothing to report as
    # a time limit). 2 minutes, signal 30 s early: it comes 30-90 s in, while the run trains.
    prof = _profile(world["root"], "p-timeout", timeout_min=2, slurm_signal_delay_s=30, max_num_timeout=0, pack=1)
    args = _slurm(results, prof, methods="linear:max_epochs=1000000,patience=1000000,batch_size=4",
                  budgets="20", seeds="0")
    t0 = time.time()
    r = cli(args + ["--wait"], world["env"], timeout=400)
    assert r.returncode == 1, r.stdout + r.stderr
    assert time.time() - t0 < 300
    st = cli(args + ["--status"], world["env"])
    assert ("failed 1" in st.stdout or "lost 1" in st.stdout), st.stdout
    assert "time limit" in st.stdout or "TIMEOUT" in st.stdout, st.stdout
    assert "log:" in st.stdout


def test_preempted_run_is_requeued_and_finishes(world):
    results = world["root"] / "preempt"
    prof = _profile(world["root"], "p-preempt", timeout_min=10, pack=1)
    args = _slurm(results, prof, methods="linear:max_epochs=20,patience=20,batch_size=4", budgets="20", seeds="0")
    r = cli(args, world["env"])  # submit and return
    assert r.returncode == 0, r.stdout + r.stderr
    led = ledger_of(results)
    ((run_id, run),) = led["runs"].items()
    job_id, log = run["job_id"], Path(led["jobs"][run["job_id"]]["stderr"])
    _wait_until(lambda: log.is_file() and "run linear" in log.read_text(), 180, "the run to start")
    subprocess.run(["scancel", "--signal", "USR2", job_id], check=True)  # what a preempting scheduler sends

    def requeued():
        r = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T|%r"], capture_output=True, text=True)
        return r.stdout.strip().startswith("PENDING")

    _wait_until(requeued, 120, "the job to be requeued")
    # slurmd revokes the first launch's credential at the requeue, to the second: a relaunch within that same second
    # is refused ("Job credential revoked") and the job FAILS, so let a second boundary pass first.
    time.sleep(2)
    # SLURM holds a requeued job ~2 minutes before it is eligible again; skip that wait in the test.
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
    r = cli(args + ["--wait"], world["env"], timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(metrics_by_run(results / "runs")) == 1
    def history():  # the result is written before the job step exits: wait for the scheduler to agree
        states = [row[1] for row in _sacct("-D", "-X", "-j", job_id, "-o", "JobID,State")]
        return states if states and states[-1] not in ("RUNNING", "COMPLETING", "PENDING") else None

    states = _wait_until(history, 60, "the job to leave the queue")
    assert "REQUEUED" in states and states[-1] == "COMPLETED", states
    assert ledger_of(results)["runs"][run_id]["attempts"] == [job_id]  # requeued in place, not resubmitted


def test_gpu_profile_reaches_sbatch_as_a_gres_request(world):
    results = world["root"] / "gpu"
    prof = _profile(world["root"], "p-gpu", slurm_gpus_per_node=1)
    r = cli(_slurm(results, prof, methods="cca", budgets="20", seeds="0", extra=["--wait"]), world["env"])
    assert r.returncode == 0, r.stdout + r.stderr
    led = ledger_of(results)
    (run,) = led["runs"].values()
    job = led["jobs"][run["job_id"]]
    deadline = time.time() + 60  # the job's TRES reach slurmdbd asynchronously, after the job itself
    while True:
        (row,) = _sacct("-X", "-j", run["job_id"], "-o", "JobID,AllocTRES%200")
        if row[1] or time.time() > deadline:
            break
        time.sleep(2)
    assert "gres/gpu=1" in row[1]
    assert "CUDA_VISIBLE_DEVICES=0" in Path(job["stderr"]).read_text()


def test_more_gpus_than_the_cluster_has_is_an_sbatch_error_not_a_hang(world):
    results = world["root"] / "toomany"
    prof = _profile(world["root"], "p-4gpu", slurm_gpus_per_node=4)
    t0 = time.time()
    r = cli(_slurm(results, prof, methods="cca", budgets="20", seeds="0", extra=["--wait"]), world["env"], timeout=300)
    assert r.returncode == 2
    assert "Requested node configuration is not available" in r.stderr
    assert "refused" in r.stderr
    assert time.time() - t0 < 240


def test_submitter_killed_between_sbatch_and_ledger_update_is_recovered(world, monkeypatch):
    """The array was accepted but the ledger never heard of it: the re-run finds it by its unique name."""
    from alignbench import launch
    from alignbench.sweep_config import build_config

    for k, v in world["env"].items():
        monkeypatch.setenv(k, v)
    results = world["root"] / "recover"
    cfg = build_config({}, methods="cca,asif", pairs=PAIR, budgets="20", seeds="0", evals=EVALS,
                       executor="slurm", results=str(results / "runs"))
    profile = launch.load_profile(str(_profile(world["root"], "p-recover")))
    from alignbench.launch import backends

    real_record = backends._record

    def killed(led, job, index, sub, run_ids):
        if sub["kind"] == "runs":
            raise KeyboardInterrupt  # the process dies right after sbatch accepted the run array
        return real_record(led, job, index, sub, run_ids)

    monkeypatch.setattr(backends, "_record", killed)
    with pytest.raises(KeyboardInterrupt):
        launch.run_sweep(cfg, profile)
    led = ledger_of(results)
    assert led["submissions"][-1]["state"] == "submitting"
    assert not any(j["kind"] == "runs" for j in led["jobs"].values())
    monkeypatch.setattr(backends, "_record", real_record)
    rep = launch.run_sweep(cfg, profile, wait=True)
    assert rep.submitted == 0 and rep.ok, rep.format()
    led = ledger_of(results)
    assert all(r["job_id"] and len(r["attempts"]) == 1 for r in led["runs"].values())
    assert len(_jobs_named(f"ab-{led['sweep_id']}", expect=1)) == 1
