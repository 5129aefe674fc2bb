"""``alignbench tune`` end to end on the tiny encoders: validation only, resumable studies, clear errors."""
from __future__ import annotations

import logging
import re
import shutil

import pytest

from alignbench.cli import main as cli
from tiny_data import PAIR, make_tiny_data

import optuna  # a dependency of alignbench (pyproject): a missing optuna must fail, not skip

# Tests stand in for another tune process with ``study.ask()`` on a heartbeat storage, which optuna
# warns is meant for ``Study.optimize``; alignbench itself never asks outside ``optimize``.
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")


@pytest.fixture
def dirs(tmp_path, tiny_root, monkeypatch):
    monkeypatch.setenv("ALIGNBENCH_CACHE", str(tmp_path / "features"))
    return {"data": tiny_root, "cache": tmp_path / "features", "tune": tmp_path / "tune"}


@pytest.fixture
def no_test_split(monkeypatch):
    """Fail the moment anything asks for features of a test split (images, texts, pairs, prompts)."""
    from alignbench.source import FeatureSource

    asked = []
    for name in ("images", "dense_images", "texts", "pairs"):
        original = getattr(FeatureSource, name)

        def spy(self, dataset, split, _original=original, _name=name):
            asked.append((_name, dataset, split))
            if split == "test":
                raise AssertionError(f"tuning asked for the test split: {_name}({dataset}, {split})")
            return _original(self, dataset, split)

        monkeypatch.setattr(FeatureSource, name, spy)
    monkeypatch.setattr(FeatureSource, "prompts", lambda self, d: pytest.fail("tuning read class prompts"))
    return asked


def _tune(dirs, *extra):
    return cli(["tune", "--pair", PAIR, "--data-root", str(dirs["data"]), "--cache", str(dirs["cache"]),
                "--tune-dir", str(dirs["tune"]), "--no-progress", "--device", "cpu", "--budget", "40", *extra])


def _study(dirs, name, budget=40):
    from alignbench.studies import study_file

    path = study_file(dirs["tune"], PAIR, budget)
    return optuna.load_study(study_name=name, storage=f"sqlite:///{path}")


def test_tune_searches_on_validation_halves_only_and_reports_status(dirs, no_test_split, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="alignbench.studies"):
        assert _tune(dirs, "--methods", "linear:max_epochs=30,asif", "--trials", "3") == 0
    finished_lines = [r.getMessage() for r in caplog.records if ": trial " in r.getMessage()]
    assert len(finished_lines) == 6  # a -v log names each finished trial as it ends
    assert re.fullmatch(r"linear:max_epochs=30\|recall\|seeds=0: trial 0 "
                        r"(complete [0-9.e+-]+|pruned at epoch \d+ \(dev val loss [0-9.e+-]+\)) in \d+ s, "
                        r"\d+ epoch\(s\): lr=\S+ weight_decay=\S+", finished_lines[0]), finished_lines[0]
    assert re.fullmatch(r"asif\|recall\|seeds=0: trial 2 complete [0-9.e+-]+ in \d+ s: k=\S+ p=\S+ center=\S+",
                        finished_lines[-1]), finished_lines[-1]
    assert {s for _, _, s in no_test_split} == {"train", "dev"}
    lin = _study(dirs, "linear:max_epochs=30|recall|seeds=0")
    done = [t for t in lin.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) == 3 and all(set(t.params) == {"lr", "weight_decay"} for t in lin.trials)
    assert all(t.intermediate_values and t.user_attrs["epochs"] >= 1 for t in done)  # pruner fed per epoch
    assert lin.user_attrs["pair"] == PAIR and lin.user_attrs["budget"] == 40 and "by image" in lin.user_attrs[
        "split_protocol"]
    asif = _study(dirs, "asif|recall|seeds=0")
    assert len(asif.trials) == 3 and all(0 <= t.value <= 100 for t in asif.trials)
    assert all(not t.intermediate_values for t in asif.trials)  # closed form: nothing to prune on
    capsys.readouterr()
    assert _tune(dirs, "--methods", "asif", "--trials", "3") == 0  # finished: nothing re-run
    assert "nothing to do" in capsys.readouterr().err and len(_study(dirs, "asif|recall|seeds=0").trials) == 3
    assert cli(["tune", "--status", "--tune-dir", str(dirs["tune"])]) == 0
    out = capsys.readouterr().out
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("| ")]
    header, rows = rows[0], rows[1:]
    assert header[:4] == ["file", "method", "objective", "seeds"] and "trial s" in header
    assert sorted(r[1:4] for r in rows) == [["asif", "recall", "0"], ["linear:max_epochs=30", "recall", "0"]]
    assert all(len(r) == len(header) for r in rows) and "k=" in out  # no cell holds a '|' (Markdown-safe)
    lin_row = next(r for r in rows if r[1].startswith("linear"))
    assert float(lin_row[header.index("trial s")]) > 0 and int(lin_row[header.index("epochs")]) >= 3


def test_interrupted_tune_resumes_without_losing_a_trial(dirs, monkeypatch, capsys):
    import alignbench.tuning as tuning

    real, calls = tuning.score, []

    def interrupt_third(method, pairs, objective):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(method, pairs, objective)

    monkeypatch.setattr(tuning, "score", interrupt_third)
    assert _tune(dirs, "--methods", "asif", "--trials", "4") == 130
    study = _study(dirs, "asif|recall|seeds=0")
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "COMPLETE", "FAIL"]
    lost = study.trials[2].params
    monkeypatch.setattr(tuning, "score", real)
    assert _tune(dirs, "--methods", "asif", "--trials", "4") == 0
    study = _study(dirs, "asif|recall|seeds=0")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4
    retry = [t for t in complete if t.user_attrs.get("retry_of") == 2]
    assert len(retry) == 1 and retry[0].params == lost  # the interrupted trial ran again, same parameters


def test_a_killed_tune_loses_no_trial(dirs, monkeypatch, capsys):
    """kill -9 in the middle of a trial: that trial stays RUNNING in the study, counted as running elsewhere;
    once its heartbeat is older than the grace period the same command fails it and runs it again."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import alignbench.studies as studies

    # trials long enough to be caught running on a fast machine: no early stop before 2,000 epochs
    name, method = "linear:max_epochs=2000:patience=2000|recall|seeds=0", "linear:max_epochs=2000:patience=2000"
    args = ["tune", "--pair", PAIR, "--data-root", str(dirs["data"]), "--cache", str(dirs["cache"]), "--tune-dir",
            str(dirs["tune"]), "--no-progress", "--device", "cpu", "--budget", "40", "--methods", method,
            "--trials", "6", "--no-prune"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ALIGNBENCH_CACHE": str(dirs["cache"])}
    proc = subprocess.Popen([sys.executable, "-m", "alignbench.cli", *args], cwd=Path(__file__).resolve().parents[1],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    killed, deadline = None, time.monotonic() + 300
    while killed is None and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
        try:
            trials = _study(dirs, name).trials
        except Exception:  # noqa: BLE001 - the study is not created yet
            continue
        running = [t for t in trials if t.state.name == "RUNNING" and t.params]
        if running and any(t.state.name == "COMPLETE" for t in trials):
            time.sleep(0.2)  # its heartbeat is written as the trial starts
            if _study(dirs, name).trials[running[0].number].state.name != "RUNNING":
                continue  # it finished meanwhile (a fast machine): wait for the next trial
            os.killpg(proc.pid, signal.SIGKILL)
            killed = running[0]
    err = proc.communicate()[1].decode()
    assert killed is not None, f"the tune ended before a trial could be killed: {err[-2000:]}"
    assert _study(dirs, name).trials[killed.number].state.name == "RUNNING"  # killed mid-trial

    # straight away: the killed trial may belong to a live process, so it counts as running elsewhere
    # (a grace period of an hour: on a loaded machine the rerun's four trials outlast the real 180 s)
    monkeypatch.setattr(studies, "GRACE_S", 3600)
    assert _tune(dirs, "--methods", method, "--trials", "6", "--no-prune", "--no-wait") == 0
    assert "still running elsewhere" in capsys.readouterr().err
    assert [t.state.name for t in _study(dirs, name).trials].count("RUNNING") == 1

    monkeypatch.setattr(studies, "GRACE_S", 1)  # instead of waiting minutes for the real grace period
    monkeypatch.setattr(studies, "HEARTBEAT_S", 1)
    time.sleep(1.5)
    assert _tune(dirs, "--methods", method, "--trials", "6", "--no-prune") == 0
    trials = _study(dirs, name).trials
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 6 and not [t for t in trials if t.state.name == "RUNNING"]
    assert trials[killed.number].state.name == "FAIL"
    retry = [t for t in complete if t.user_attrs.get("retry_of") == killed.number]
    assert len(retry) == 1 and retry[0].params == killed.params  # the killed trial ran again, same parameters


def test_objective_val_loss_minimises_the_validation_infonce(dirs):
    assert _tune(dirs, "--methods", "linear:max_epochs=10", "--trials", "2", "--objective", "val_loss",
                 "--no-prune") == 0
    study = _study(dirs, "linear:max_epochs=10|val_loss|seeds=0")
    assert study.direction.name == "MINIMIZE" and all(t.value > 0 for t in study.trials)
    # --no-prune: nothing pruned, but the curves a pruner would see are recorded (to replay pruners offline)
    assert all(t.state.name == "COMPLETE" and len(t.intermediate_values) == t.user_attrs["epochs"]
               for t in study.trials)


@pytest.mark.parametrize("args, message", [
    (["--methods", "asif", "--trials", "0"], "--trials must be at least 1"),
    (["--methods", "pal", "--params", "tau"], "did you mean tau_p"),
    (["--methods", "random"], "declares no search space"),
    (["--methods", "linear", "--params", "k"], "linear has no search parameter 'k'"),
    (["--methods", "linear,asif", "--params", "k"], "none of --params k is in linear's search space"),
    (["--methods", "asif", "--objective", "val_loss"], "val_loss needs a trained method"),
    (["--methods", "asif", "--val", "flickr8k:test"], "it is the test split"),
    (["--methods", "asif:kk=3"], "no hyperparameter 'kk'"),
    (["--methods", "pal:tuned"], "':tuned' is for alignbench run"),
])
def test_bad_input_is_a_clear_error(dirs, capsys, args, message):
    assert _tune(dirs, *args) == 2
    assert message in capsys.readouterr().err


def test_validation_split_sharing_images_with_test_is_refused(tmp_path, capsys):
    root = make_tiny_data(tmp_path / "data")
    splits = root / "flickr8k" / "splits"
    test_first = (splits / "test.txt").read_text().split()[0]
    (splits / "dev.txt").write_text((splits / "dev.txt").read_text() + test_first + "\n")
    d = {"data": root, "cache": tmp_path / "features", "tune": tmp_path / "tune"}
    assert _tune(d, "--methods", "asif") == 2
    assert f"shares 1 image(s) with the test split" in capsys.readouterr().err


def test_a_study_file_of_another_pair_or_budget_is_refused(dirs, capsys):
    from alignbench.studies import study_file

    assert _tune(dirs, "--methods", "asif", "--trials", "1") == 0
    shutil.copy(study_file(dirs["tune"], PAIR, 40), study_file(dirs["tune"], PAIR, 50))
    assert _tune(dirs, "--methods", "asif", "--trials", "1", "--budget", "50") == 2
    assert "holds studies of pair tiny-vit+tiny-text budget 40, not pair tiny-vit+tiny-text budget 50" in \
        capsys.readouterr().err


def test_tuned_runs_use_the_best_dev_config_and_get_their_own_marked_rows(dirs, capsys, tmp_path):
    import json

    results = tmp_path / "runs"
    run = ["run", "--pair", PAIR, "--data-root", str(dirs["data"]), "--cache", str(dirs["cache"]), "--results",
           str(results), "--tune-dir", str(dirs["tune"]), "--no-progress", "--device", "cpu", "--budget", "40",
           "--datasets", "flickr8k"]
    assert cli(run + ["--methods", "asif:tuned"]) == 2  # no study yet: the error says how to make it
    err = capsys.readouterr().err
    assert f"make it with: alignbench tune --methods asif --pair {PAIR} --budget 40 --seeds 0 --objective recall" in err
    assert _tune(dirs, "--methods", "asif", "--trials", "2") == 0
    best = _study(dirs, "asif|recall|seeds=0").best_trial
    capsys.readouterr()
    assert cli(run + ["--methods", "asif:tuned,asif"]) == 0
    out = capsys.readouterr().out
    assert "asif†" in out and "| asif " in out.replace("asif†", "") and "† tuned on the validation split" in out
    recs = [json.loads(p.read_text()) for p in results.glob("*.json")]
    tuned = [r for r in recs if r["spec"].get("tuned")]
    assert len(recs) == 2 and len(tuned) == 1
    t = tuned[0]
    assert t["spec"]["tuned"]["study"] == "asif|recall|seeds=0" and t["spec"]["tuned"]["trial"] == best.number
    assert {k: t["method"]["config"][k] for k in best.params} == best.params
    assert cli(run + ["--methods", "asif", "--tuned"]) == 0  # --tuned = every method as METHOD:tuned
    assert "0 to do, 1 already done" in capsys.readouterr().err
    # a trial running in another process: --tuned-now takes the best finished trial at once (no waiting)
    _study(dirs, "asif|recall|seeds=0").ask()
    assert cli(run + ["--methods", "asif", "--tuned", "--tuned-now"]) == 0
    assert "0 to do, 1 already done" in capsys.readouterr().err


# A child `alignbench tune` whose first trial waits until the other child is inside its first trial too,
# so the two processes certainly run trials of one study at the same time.
_CHILD = """
import os, pathlib, sys, time
import alignbench.tuning as tuning
gate, real, seen = pathlib.Path(sys.argv[1]), tuning.score, []
def score(*args, **kwargs):
    if not seen:
        seen.append(1)
        (gate / str(os.getpid())).touch()
        t0 = time.time()
        while len(list(gate.iterdir())) < 2 and time.time() - t0 < 300:
            time.sleep(0.05)
    return real(*args, **kwargs)
tuning.score = score
from alignbench.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_two_tune_processes_share_one_study_without_losing_or_duplicating_a_trial(dirs, tmp_path):
    import os
    import subprocess
    import sys

    assert _tune(dirs, "--methods", "csa", "--trials", "1") == 0  # features cached, the study file exists
    gate = tmp_path / "gate"
    gate.mkdir()
    args = ["tune", "--pair", PAIR, "--data-root", str(dirs["data"]), "--cache", str(dirs["cache"]), "--tune-dir",
            str(dirs["tune"]), "--no-progress", "--device", "cpu", "--budget", "40", "--methods", "asif",
            "--trials", "5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, str(gate), *args], env=env, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert len(list(gate.iterdir())) == 2  # both processes ran a trial, at the same time
    study = _study(dirs, "asif|recall|seeds=0")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 5  # exactly --trials: none lost, none extra
    drawn = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(drawn)) == 5  # no configuration drawn twice (the two samplers are not seeded alike)


# issue 11: what each method's study searches at least (its own file declares the space)
ISSUE_SPACES = {"pal": {"lr", "tau_p", "K", "center", "pool"}, "linear": {"lr", "weight_decay"},
                "cca": {"eps", "latent_dim"}, "csa": {"eps", "s"}, "asif": {"k", "p", "center"},
                "fusemix": {"n_blocks", "dropout", "lr"}, "structure": {"lam", "lambda_warmup_epochs", "levels"}}


@pytest.mark.parametrize("name", sorted(set(ISSUE_SPACES) | {"mlp", "sail", "freeze-align", "procrustes"}))
def test_each_method_declares_a_search_space_over_its_own_config(name):
    """Every value a study can draw builds a valid config: each range's two ends and every choice."""
    import dataclasses

    from alignbench.registry import METHODS
    from alignbench.search_space import Choice

    cls = METHODS.get(name)
    space = cls.search_space
    assert ISSUE_SPACES.get(name, set()) <= set(space) and space, sorted(space)
    assert set(space) <= {f.name for f in dataclasses.fields(cls.Config)}
    for key, param in space.items():
        values = param.values if isinstance(param, Choice) else (param.low, param.high)
        for v in values:
            assert getattr(cls(**{key: v}).config, key) == v


def test_a_resumed_study_keeps_the_pruner_it_was_made_with(tmp_path, monkeypatch):
    """Changing the default pruner must not change how an existing study's remaining trials are pruned."""
    import alignbench.studies as studies

    key = studies.StudyKey(method="linear", pair=PAIR, budget=40)
    path = studies.study_file(tmp_path, PAIR, 40)
    made = studies.open_study(path, key, {"lr": "log 1e-4..1e-1"}, seed=0)
    assert made.user_attrs["pruner"] == {"kind": "median", "warmup_epochs": studies.PRUNE_WARMUP_EPOCHS,
                                         "startup_trials": studies.PRUNE_STARTUP_TRIALS}
    monkeypatch.setattr(studies, "PRUNE_WARMUP_EPOCHS", studies.PRUNE_WARMUP_EPOCHS + 7)
    monkeypatch.setattr(studies, "PRUNE_STARTUP_TRIALS", studies.PRUNE_STARTUP_TRIALS + 2)
    resumed = studies.open_study(path, key, {"lr": "log 1e-4..1e-1"}, seed=0)
    assert (resumed.pruner._n_warmup_steps, resumed.pruner._n_startup_trials) == (
        made.user_attrs["pruner"]["warmup_epochs"], made.user_attrs["pruner"]["startup_trials"])
    fresh = studies.open_study(studies.study_file(tmp_path / "other", PAIR, 40), key, {"lr": "log 1e-4..1e-1"}, seed=0)
    assert (fresh.pruner._n_warmup_steps, fresh.pruner._n_startup_trials) == (
        studies.PRUNE_WARMUP_EPOCHS, studies.PRUNE_STARTUP_TRIALS)


def test_tuned_from_a_study_still_running_warns_that_its_best_may_change(dirs, caplog):
    import logging

    from alignbench.studies import find_tuned

    assert _tune(dirs, "--methods", "asif", "--trials", "2") == 0
    with caplog.at_level(logging.WARNING, logger="alignbench.studies"):
        find_tuned(dirs["tune"], "asif", {}, PAIR, 40)
    assert not [r for r in caplog.records if "still running" in r.getMessage()]
    _study(dirs, "asif|recall|seeds=0").ask()  # another process's trial, in progress
    with caplog.at_level(logging.WARNING, logger="alignbench.studies"):
        record = find_tuned(dirs["tune"], "asif", {}, PAIR, 40, wait=False)  # run --tuned-now
    assert record.n_trials == 2
    assert [r for r in caplog.records if "still running (1 trial(s) in progress, 2 finished)" in r.getMessage()]


def test_tuned_waits_for_the_trials_another_process_is_running_and_takes_the_whole_studys_best(dirs, caplog,
                                                                                                monkeypatch):
    """``run M:tuned`` beside a live ``tune`` waits for its trials (the best may be among them); a trial whose
    process died (stale heartbeat) is not waited for: the best of the finished ones, with a warning naming it."""
    import logging
    import threading
    import time

    from alignbench import studies

    monkeypatch.setattr(studies, "WAIT_POLL_S", 0.2)
    monkeypatch.setattr(studies, "SETTLE_S", 0.2)
    assert _tune(dirs, "--methods", "asif", "--trials", "2") == 0
    name = "asif|recall|seeds=0"
    other = _study(dirs, name).ask()  # a live process's trial (no heartbeat written yet counts as alive)

    def the_other_process_finishes_with_the_best_value():
        time.sleep(1.5)
        _study(dirs, name).tell(other.number, 100.0)  # percent: above any real trial

    thread = threading.Thread(target=the_other_process_finishes_with_the_best_value)
    t0 = time.monotonic()
    thread.start()
    with caplog.at_level(logging.WARNING, logger="alignbench.studies"):
        record = studies.find_tuned(dirs["tune"], "asif", {}, PAIR, 40)
    thread.join()
    assert time.monotonic() - t0 >= 1.5
    assert (record.trial, record.value, record.n_trials) == (other.number, 100.0, 3)
    assert [r for r in caplog.records if "1 trial(s) running in another process" in r.getMessage()]
    # a trial whose process died: not waited for
    caplog.clear()
    monkeypatch.setattr(studies, "GRACE_S", 1)
    path = studies.study_file(dirs["tune"], PAIR, 40)
    storage = studies._storage(path)
    study = optuna.load_study(study_name=name, storage=storage)
    dead = study.ask()
    storage.record_heartbeat(dead._trial_id)
    time.sleep(2.5)
    with caplog.at_level(logging.WARNING, logger="alignbench.studies"):
        record = studies.find_tuned(dirs["tune"], "asif", {}, PAIR, 40)
    assert record.n_trials == 3 and _study(dirs, name).trials[dead.number].state.name == "RUNNING"
    assert [r for r in caplog.records if "1 trial(s) whose tune process died" in r.getMessage()]


def test_tune_ends_only_when_its_study_is_complete_so_tuned_runs_see_every_trial(dirs, capsys, monkeypatch):
    """Two processes share a study: the one that claims the last slot first used to end while the other's last
    trial still ran, and a scripted ``tune && run M:tuned`` took the best of a smaller study. Now tune waits."""
    import threading
    import time

    import alignbench.commands.tune as tune_cmd

    monkeypatch.setattr(tune_cmd, "WAIT_POLL_S", 0.2)
    assert _tune(dirs, "--methods", "asif", "--trials", "2") == 0
    other = _study(dirs, "asif|recall|seeds=0").ask()  # a trial another (live) process is running

    def the_other_process_finishes():
        time.sleep(2.0)
        _study(dirs, "asif|recall|seeds=0").tell(other.number, 0.0)

    thread = threading.Thread(target=the_other_process_finishes)
    capsys.readouterr()
    t0 = time.monotonic()
    thread.start()
    assert _tune(dirs, "--methods", "asif", "--trials", "3") == 0
    took = time.monotonic() - t0
    thread.join()
    assert took >= 2.0 and "waiting for 1 trial(s) running in another process" in capsys.readouterr().err
    assert [t.state.name for t in _study(dirs, "asif|recall|seeds=0").trials] == ["COMPLETE"] * 3
    # --no-wait: ends at once and says what is still running
    _study(dirs, "asif|recall|seeds=0").ask()
    assert _tune(dirs, "--methods", "asif", "--trials", "4", "--no-wait") == 0
    assert "1 trial(s) still running elsewhere" in capsys.readouterr().err


def test_a_killed_trial_resumes_its_fit_from_the_checkpoint_and_ends_as_an_uninterrupted_trial(dirs, monkeypatch,
                                                                                             caplog):
    """The re-run of an interrupted trial continues its fit from the last checkpoint: same value, same curve
    (the epochs before the checkpoint replayed from the first run), same epochs; the time before is counted."""
    from pathlib import Path

    import alignbench.fit_checkpoint as fit_checkpoint

    monkeypatch.setenv("ALIGNBENCH_CHECKPOINT_S", "0")  # a checkpoint after every epoch
    method, name = "linear:max_epochs=12:patience=100", "linear:max_epochs=12:patience=100|recall|seeds=0"
    args = ("--methods", method, "--trials", "2", "--no-prune")
    reference_dirs = {**dirs, "tune": dirs["tune"].with_name("reference")}
    assert _tune(reference_dirs, *args) == 0
    reference = _study(reference_dirs, name).trials

    real_save, saves = fit_checkpoint.Checkpointer.save, []

    def save_then_die_in_the_second_trial(self, payload):
        real_save(self, payload)
        saves.append(payload["epoch"])
        if len(saves) == 12 + 5:  # the first trial's saves, then some of the second's
            raise KeyboardInterrupt

    monkeypatch.setattr(fit_checkpoint.Checkpointer, "save", save_then_die_in_the_second_trial)
    elsewhere = {"hostname": "elsewhere", "cpu": "another CPU", "torch_threads": 2}
    monkeypatch.setattr(fit_checkpoint, "this_machine", lambda: dict(elsewhere))  # the first run's machine
    assert _tune(dirs, *args) == 130
    assert [t.state.name for t in _study(dirs, name).trials] == ["COMPLETE", "FAIL"]
    assert len(list(Path(dirs["tune"]).glob("*.ckpt.pt"))) == 1  # the interrupted fit's; the finished one's is gone

    monkeypatch.setattr(fit_checkpoint.Checkpointer, "save", real_save)
    monkeypatch.setattr(fit_checkpoint, "this_machine", lambda: {"hostname": "here", "cpu": "this CPU",
                                                                 "torch_threads": 1})
    with caplog.at_level("INFO", logger="alignbench.fit_checkpoint"):
        assert _tune(dirs, *args) == 0
    trials = _study(dirs, name).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    retry = trials[2]
    assert retry.user_attrs["retry_of"] == 1 and retry.params == reference[1].params
    assert retry.value == reference[1].value  # bit-identical to the trial that was never interrupted
    assert retry.intermediate_values == reference[1].intermediate_values  # the epochs before the checkpoint replayed, the rest run
    assert retry.user_attrs["epochs"] == reference[1].user_attrs["epochs"] == 12
    assert retry.user_attrs["earlier_s"] > 0
    # resumed on "another machine": the trial lists both, with their shares of the seconds
    first, second = retry.user_attrs["machines"]
    assert {k: first[k] for k in elsewhere} == elsewhere and second["hostname"] == "here"
    assert first["wall_s"] == pytest.approx(retry.user_attrs["earlier_s"]) and second["wall_s"] > 0
    assert "machines" not in trials[0].user_attrs  # never interrupted: nothing to list
    assert not list(Path(dirs["tune"]).glob("*.ckpt.pt"))
    assert 1 < saves[-1] < 12 and f"resuming from the checkpoint after epoch {saves[-1]} " in caplog.text


def test_a_pruned_or_failed_trial_leaves_no_checkpoint(dirs, monkeypatch):
    from pathlib import Path

    monkeypatch.setenv("ALIGNBENCH_CHECKPOINT_S", "0")
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: self.number == 1)
    assert _tune(dirs, "--methods", "linear:max_epochs=6", "--trials", "3") == 0
    states = [t.state.name for t in _study(dirs, "linear:max_epochs=6|recall|seeds=0").trials]
    assert states == ["COMPLETE", "PRUNED", "COMPLETE"]
    assert not list(Path(dirs["tune"]).glob("*.ckpt.pt"))


@pytest.mark.parametrize("delay_s", [0.0, 0.07, 0.19, 0.31, 0.43])
def test_sigterm_ends_a_tune_as_an_interrupt_its_trial_requeued_at_once_and_its_fit_checkpoint_kept(dirs, delay_s):
    """SIGTERM (kill, a SLURM time limit) mid-trial: exit 143 with a message, the trial FAIL (re-run by the next
    tune straight away, no heartbeat grace period to wait for), its fit's checkpoint kept for that re-run.

    At several moments of the epoch loop, which spends much of its time in the study's SQLite commits and the
    checkpoint's torch.save: unshielded, about one signal in four landed inside one of them and either hung the
    process on the SQLite lock it left held or ended it with torch's "unexpected pos" error (exit 1)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    name, method = "linear:max_epochs=100000:patience=100000|recall|seeds=0", "linear:max_epochs=100000:patience=100000"
    args = ["tune", "--pair", PAIR, "--data-root", str(dirs["data"]), "--cache", str(dirs["cache"]), "--tune-dir",
            str(dirs["tune"]), "--no-progress", "--device", "cpu", "--budget", "40", "--methods", method,
            "--trials", "2", "--no-prune"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ALIGNBENCH_CACHE": str(dirs["cache"]), "ALIGNBENCH_CHECKPOINT_S": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "alignbench.cli", *args], cwd=Path(__file__).resolve().parents[1],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        try:
            running = [t for t in _study(dirs, name).trials if t.state.name == "RUNNING" and len(t.intermediate_values) > 3]
        except Exception:  # noqa: BLE001 - the study is not created yet
            continue
        if running and list(Path(dirs["tune"]).glob("*.ckpt.pt")):
            time.sleep(delay_s)
            proc.send_signal(signal.SIGTERM)
            break
    err = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == 143, err[-2000:]
    assert "terminated (SIGTERM); finished work is kept" in err
    assert [t.state.name for t in _study(dirs, name).trials] == ["FAIL"]  # not left RUNNING
    assert len(list(Path(dirs["tune"]).glob("*.ckpt.pt"))) == 1  # the re-run resumes from it


@pytest.mark.parametrize("direction, reported, shown", [("maximize", -6.113, "6.113"), ("minimize", 6.113, "6.113")])
def test_a_pruned_trial_is_logged_with_its_last_val_loss_not_as_a_score(caplog, direction, reported, shown):
    """Optuna keeps a pruned trial's last report as its value: a (negated) val loss that must not read as R@1."""
    from alignbench.studies import log_finished_trial

    study = optuna.create_study(study_name="structure|recall|seeds=0", direction=direction)
    pruned = optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, params={"lam": 0.205},
                                       distributions={"lam": optuna.distributions.FloatDistribution(0.01, 10)},
                                       intermediate_values={14: reported - 1, 15: reported}, value=reported,
                                       user_attrs={"epochs": 15})
    diverged = optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, params={}, distributions={},
                                         intermediate_values={1: reported}, user_attrs={"diverged": "loss nan"})
    study.add_trials([pruned, diverged])
    with caplog.at_level(logging.INFO, logger="alignbench.studies"):
        for trial in study.trials:
            log_finished_trial(study, trial)
    first, second = (r.getMessage() for r in caplog.records if r.name == "alignbench.studies")
    assert re.fullmatch(rf"structure\|recall\|seeds=0: trial 0 pruned at epoch 15 \(dev val loss {shown}\) "
                        r"in \d+ s, 15 epoch\(s\): lam=0.205", first), first
    assert re.fullmatch(r"structure\|recall\|seeds=0: trial 1 pruned \(training diverged\) in \d+ s: ", second), second
