"""Ctrl-C and SIGTERM never land inside a write: held through ``shielded()`` blocks, raised as they end."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from alignbench.interrupts import Terminated, shielded, signals_as_interrupts


@pytest.fixture(autouse=True)
def default_handlers():
    """As in a terminal: a job started in the background (``cmd &``, nohup) inherits SIGINT ignored."""
    previous = {s: signal.signal(s, h) for s, h in ((signal.SIGINT, signal.default_int_handler),
                                                   (signal.SIGTERM, signal.SIG_DFL))}
    yield
    for s, h in previous.items():
        signal.signal(s, h)


def _kill_self(sig: int = signal.SIGTERM) -> None:
    os.kill(os.getpid(), sig)
    for _ in range(1000):  # the Python-level handler runs at the next bytecode boundary
        pass


def test_a_signal_inside_a_shielded_block_is_raised_as_the_block_ends():
    done = []
    with signals_as_interrupts(), pytest.raises(Terminated):
        with shielded():
            _kill_self()
            done.append("rest of the write")
        done.append("after the block")
    assert done == ["rest of the write"]


def test_nested_blocks_hold_the_signal_until_the_outermost_ends_and_ctrl_c_is_held_too():
    done = []
    with signals_as_interrupts(), pytest.raises(KeyboardInterrupt) as caught:
        with shielded():
            with shielded():
                _kill_self(signal.SIGINT)
            done.append("outer write")
    assert done == ["outer write"] and type(caught.value) is KeyboardInterrupt


def test_a_second_signal_while_one_is_held_is_raised_at_once():
    """A write that hangs (a lock another process holds) can still be interrupted."""
    done = []
    with signals_as_interrupts(), pytest.raises(KeyboardInterrupt):
        with shielded():
            _kill_self(signal.SIGTERM)
            done.append("held")
            _kill_self(signal.SIGINT)
            done.append("never")
    assert done == ["held"]


def test_unshielded_code_is_interrupted_at_once_and_handlers_are_restored_after():
    done = []
    with signals_as_interrupts(), pytest.raises(Terminated):
        _kill_self()
        done.append("never")
    assert done == []
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_host_applications_own_handler_is_left_alone():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
    try:
        with signals_as_interrupts():
            _kill_self()
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_signal_mid_commit_of_the_study_file_lets_the_commit_finish(tmp_path, monkeypatch):
    """Raised inside SQLite's commit it would leave the write undone (and, at worse moments, the lock held)."""
    import optuna
    from sqlalchemy.engine.default import DefaultDialect

    from alignbench.studies import _storage

    storage = _storage(tmp_path / "s.db")
    study_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "s")
    trial_id = storage.create_new_trial(study_id)
    real_commit = DefaultDialect.do_commit

    def commit_with_a_signal(self, dbapi_connection):
        _kill_self()
        return real_commit(self, dbapi_connection)

    monkeypatch.setattr(DefaultDialect, "do_commit", commit_with_a_signal)
    with signals_as_interrupts(), pytest.raises(Terminated):
        storage.set_trial_intermediate_value(trial_id, 3, 0.5)
    monkeypatch.setattr(DefaultDialect, "do_commit", real_commit)
    assert _storage(tmp_path / "s.db").get_trial(trial_id).intermediate_values == {3: 0.5}


def test_a_signal_inside_a_checkpoints_torch_save_leaves_a_whole_checkpoint(tmp_path, monkeypatch, one_torch_thread):
    """Unshielded, the interrupt surfaced as torch's zip-writer error ("unexpected pos"): exit 1, not 143."""
    import builtins

    import alignbench.fit_checkpoint as fit_checkpoint
    from alignbench.fit_checkpoint import checkpoint_path, checkpointing
    from alignbench.registry import METHODS
    from synthetic import make_pairs, split_pairs

    train, val, _ = split_pairs(make_pairs(300, seed=1), 200, 50, 50, seed=1)

    class SignalOnSecondWrite:
        def __init__(self, f):
            self.f, self.writes = f, 0

        def write(self, data):
            self.writes += 1
            if self.writes == 2:
                _kill_self()
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(fit_checkpoint, "open", lambda *a, **k: SignalOnSecondWrite(builtins.open(*a, **k)),
                        raising=False)
    cls = METHODS.get("linear")
    with signals_as_interrupts(), pytest.raises(Terminated), checkpointing(tmp_path, "fit-t", interval_s=0):
        cls(**{**getattr(cls, "test_overrides", {}), "max_epochs": 5, "patience": 100}).fit(train, val, seed=0)
    saved = torch.load(checkpoint_path(tmp_path, "fit-t"), weights_only=False)
    assert saved["fit_id"] == "fit-t" and saved["epoch"] >= 1
    assert [p.name for p in Path(tmp_path).iterdir()] == [checkpoint_path(tmp_path, "fit-t").name]  # no temp left
