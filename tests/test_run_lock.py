"""Two processes given the same runs never fit one twice: a busy fit is taken up after the others.

The locks are real file locks (flock): "the other process" is a thread holding its own
FileLock on the same file (a conflict even inside one process) or, where the holder
dies, a subprocess.
"""
from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from filelock import FileLock

from alignbench.cli import main as cli
from alignbench.config import RunSpec
from alignbench.identity import Resolver
from alignbench.results import ResultStore
from alignbench.run_lock import RunBusy, lock_path
from alignbench.runner import run_one
from tiny_data import PAIR

EVAL = "retrieval:flickr8k:test"


def _spec(seed: int) -> RunSpec:
    return RunSpec(method="csa", pair=PAIR, budget=30, seed=seed, train="flickr8k:train", val="flickr8k:dev",
                   evals=(EVAL,))


def _resolved(dirs, seed: int):
    return Resolver(dirs["cache"], dirs["data"]).resolve(_spec(seed))


def _cli_run(dirs, seeds: str) -> int:
    return cli(["run", "--pair", PAIR, "--data-root", str(dirs["data"]), "--cache", str(dirs["cache"]),
                "--results", str(dirs["results"]), "--no-progress", "--device", "cpu", "--methods", "csa",
                "--budget", "30", "--seeds", seeds, "--evals", EVAL])  # fmt: skip


def _wait_for(path: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _holder(dirs, fit_id: str, then) -> threading.Thread:
    """A thread that takes fit ``fit_id``'s lock, calls ``then()`` and lets go; started, lock held."""
    got = threading.Event()

    def hold():
        with FileLock(str(lock_path(dirs["results"], fit_id))):
            got.set()
            then()

    t = threading.Thread(target=hold)
    t.start()
    assert got.wait(30)
    return t


def _elsewhere(dirs, tmp_path, seed: int) -> Path:
    """Seed ``seed``'s result computed in another folder: what "the other process" writes."""
    return run_one(_spec(seed), results_dir=tmp_path / "other", store_root=dirs["cache"], data_root=dirs["data"],
                   progress=False)


def test_a_busy_run_is_taken_up_after_the_others_and_its_result_is_the_other_process_s(dirs, tmp_path, capsys):
    theirs = _elsewhere(dirs, tmp_path, 0)
    r0, r1 = _resolved(dirs, 0), _resolved(dirs, 1)
    store = ResultStore(dirs["results"])

    def other_process():  # finishes seed 0 once this command has done seed 1, then lets go
        _wait_for(store.path_for(r1))
        shutil.copyfile(theirs, store.path_for(r0))

    helper = _holder(dirs, r0.fit_id, other_process)
    try:
        assert _cli_run(dirs, "0,1") == 0
    finally:
        helper.join()
    err = capsys.readouterr().err
    assert "another process is running its fit; back to it after the others" in err
    assert "waiting for the other process" in err and "done by another process" in err
    assert store.path_for(r0).read_bytes() == theirs.read_bytes()  # not fitted again here
    assert store.load(r1) is not None and store.load(r0) is not None
    assert not list(dirs["results"].glob(".*.lock"))  # no lock files left behind


def test_when_the_other_process_dies_without_the_result_this_one_runs_it(dirs, tmp_path, capsys):
    r0, r1 = _resolved(dirs, 0), _resolved(dirs, 1)
    store = ResultStore(dirs["results"])
    dirs["results"].mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import os, sys, time; from filelock import FileLock\n"
        f"lock = FileLock({str(lock_path(dirs['results'], r0.fit_id))!r}); lock.acquire(); print('held', flush=True)\n"
        f"while not os.path.exists({str(store.path_for(r1))!r}): time.sleep(0.05)\n"
        "os._exit(9)  # dies holding it: the OS frees the lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert _cli_run(dirs, "0,1") == 0
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert "another process is running its fit" in err and "done by another process" not in err
    assert "[1/2]" in err and err.count(": done in") == 2
    assert store.load(r0) is not None and store.load(r1) is not None
    assert store.path_for(r1).stat().st_mtime_ns <= store.path_for(r0).stat().st_mtime_ns  # seed 0 came last
    assert not list(dirs["results"].glob(".*.lock"))


def test_run_one_waits_for_the_other_process_or_raises_when_asked_not_to(dirs, tmp_path):
    theirs = _elsewhere(dirs, tmp_path, 0)
    r0 = _resolved(dirs, 0)
    store = ResultStore(dirs["results"])
    kw = dict(results_dir=dirs["results"], store_root=dirs["cache"], data_root=dirs["data"], progress=False)
    go = threading.Event()

    def other_process():  # holds the fit until told, then writes its result and lets go
        assert go.wait(60)
        time.sleep(0.5)
        shutil.copyfile(theirs, store.path_for(r0))

    helper = _holder(dirs, r0.fit_id, other_process)
    with pytest.raises(RunBusy, match="another process is running fit"):
        run_one(r0, **kw, wait_if_busy=False)
    assert not store.failures() and not store.path_for(r0).exists()  # busy is not a failure
    go.set()
    t = time.monotonic()
    path = run_one(r0, **kw, overwrite=True)  # what a SLURM worker does: wait, then take the fresh result
    helper.join()
    assert time.monotonic() - t >= 0.4
    assert path.read_bytes() == theirs.read_bytes()


def test_a_run_another_command_stores_after_this_one_planned_is_not_redone(dirs, tmp_path, capsys, monkeypatch):
    theirs = _elsewhere(dirs, tmp_path, 1)
    time.sleep(1.1)  # started_at is to the second: theirs started before this command
    r1 = _resolved(dirs, 1)
    store = ResultStore(dirs["results"])
    import alignbench.planning as planning

    real_plan = planning.plan_runs

    def plan_then_the_other_command_finishes_seed_1(*a, **kw):
        plan = real_plan(*a, **kw)
        store.root.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(theirs, store.path_for(r1))
        return plan

    monkeypatch.setattr(planning, "plan_runs", plan_then_the_other_command_finishes_seed_1)
    assert _cli_run(dirs, "0,1") == 0
    err = capsys.readouterr().err
    assert "2 run(s): 2 to do" in err and "seed 1: done by another process" in err
    assert store.path_for(r1).read_bytes() == theirs.read_bytes()


def test_overwrite_redoes_older_results_but_not_what_a_concurrent_command_wrote(dirs):
    from alignbench.runner import now_iso

    r0 = _resolved(dirs, 0)
    kw = dict(results_dir=dirs["results"], store_root=dirs["cache"], data_root=dirs["data"], progress=False)
    path = run_one(r0, **kw)
    first = path.read_bytes()
    # a command that started before this result was written leaves it alone, even with overwrite
    assert run_one(r0, **kw, overwrite=True, fresh_since="2000-01-01T00:00:00+00:00").read_bytes() == first
    time.sleep(1.1)  # started_at is to the second
    assert run_one(r0, **kw, overwrite=True, fresh_since=now_iso()).read_bytes() != first  # older: redone


def test_a_waiter_whose_lock_file_was_removed_locks_the_new_one(tmp_path, caplog):
    """The holder removes the file before letting go; a waiter blocked on the old file must not think it holds the lock."""
    from alignbench.run_lock import holding_fit

    inside = threading.Event()
    leave = threading.Event()
    order = []

    def first():
        with holding_fit(tmp_path, "f", wait=False):
            inside.set()
            assert leave.wait(60)
            order.append("first out")

    def second():
        with holding_fit(tmp_path, "f", wait=True) as waited:
            order.append(("second in", waited))
            try:  # the lock second holds must be the one at the path: a third process is refused
                with holding_fit(tmp_path, "f", wait=False):
                    order.append("a third process got in too")
            except RunBusy:
                order.append("a third process is refused")

    a = threading.Thread(target=first)
    a.start()
    assert inside.wait(30)
    b = threading.Thread(target=second)
    with caplog.at_level(logging.INFO, logger="alignbench.run_lock"):
        b.start()
        deadline = time.monotonic() + 60
        while "waiting for it" not in caplog.text:  # second found it busy and now blocks on first's file
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.2)
        leave.set()
    a.join(), b.join()
    assert order == ["first out", ("second in", True), "a third process is refused"]
    assert not (tmp_path / ".f.lock").exists()
