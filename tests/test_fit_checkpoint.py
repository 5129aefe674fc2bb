"""Mid-fit checkpoints: a trained method's fit interrupted after some epochs resumes to exactly the same numbers."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

import alignbench.fit_checkpoint as fit_checkpoint
from alignbench.cli import main as cli
from alignbench.fit_checkpoint import checkpoint_path, checkpointing
from alignbench.registry import METHODS
from alignbench.training import observe_epochs
from synthetic import make_pairs, split_pairs
from tiny_data import PAIR

TRAINED = ["linear", "fusemix", "structure", "mlp", "sail", "freeze-align", "pal"]
EPOCHS = 6

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data():
    pairs = make_pairs(500, seed=1)
    return split_pairs(pairs, 300, 100, 100, seed=1)


def make(name: str, *, range_test: bool = False, **extra):
    cls = METHODS.get(name)
    overrides = {k: v for k, v in getattr(cls, "test_overrides", {}).items() if not (range_test and k == "lr")}
    return cls(**{**overrides, "max_epochs": EPOCHS, "patience": 100, **extra})


def _stop_at(epoch_to_stop: int):
    def observer(epoch: int, loss: float) -> None:
        if epoch == epoch_to_stop:
            raise KeyboardInterrupt  # as a killed session or a SLURM preemption would end it
    return observer


def _same_fit(a, b, name: str) -> None:
    for key in ("epochs", "steps", "best_epoch", "best_val_loss", "final_train_loss", "lr", "lr_source"):
        assert a.fit_info[key] == b.fit_info[key], f"{name}: {key} {a.fit_info[key]} != {b.fit_info[key]}"
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if isinstance(sa[k], torch.Tensor):
            assert torch.equal(sa[k], sb[k]), f"{name}: {k} differs after resuming"
        else:
            assert sa[k] == sb[k], k


@pytest.mark.parametrize("name", TRAINED)
def test_an_interrupted_fit_resumes_to_exactly_the_uninterrupted_numbers(name, data, tmp_path):
    """Killed after epoch 3's validation (the last save holds epoch 2): the rerun redoes epoch 3 on, with the same
    parameters, optimiser moments, schedule, batch order and dropout/mixup draws, and ends bit-identical."""
    train, val, _ = data
    reference = make(name)
    reference.fit(train, val, seed=0)

    with pytest.raises(KeyboardInterrupt), checkpointing(tmp_path, "fit-1", interval_s=0), \
            observe_epochs(_stop_at(3)):
        make(name).fit(train, val, seed=0)
    assert checkpoint_path(tmp_path, "fit-1").is_file()  # kept: the fit did not end

    torch.manual_seed(12345)  # a new process: other global RNG state until the checkpoint restores it
    resumed = make(name)
    with checkpointing(tmp_path, "fit-1", interval_s=0):
        resumed.fit(train, val, seed=0)
    assert resumed.fit_info["resumed_after_epoch"] == 2
    assert not checkpoint_path(tmp_path, "fit-1").exists()  # the fit ended: nothing left behind
    _same_fit(reference, resumed, name)


def test_the_range_test_is_not_rerun_on_resume_and_its_lr_is_kept(data, tmp_path, monkeypatch):
    import alignbench.lr_range as lr_range

    train, val, _ = data
    options = {"range_test": True}  # no lr given: the range test picks it
    reference = make("linear", **options)
    reference.fit(train, val, seed=0)
    assert reference.fit_info["lr_source"] == "range_test"
    with pytest.raises(KeyboardInterrupt), checkpointing(tmp_path, "fit-2", interval_s=0), \
            observe_epochs(_stop_at(4)):
        make("linear", **options).fit(train, val, seed=0)
    calls = []
    real = lr_range.lr_range_test
    monkeypatch.setattr(lr_range, "lr_range_test", lambda *a, **k: calls.append(1) or real(*a, **k))
    resumed = make("linear", **options)
    with checkpointing(tmp_path, "fit-2", interval_s=0):
        resumed.fit(train, val, seed=0)
    assert calls == [] and resumed.fit_info["lr_range_test"] == reference.fit_info["lr_range_test"]
    _same_fit(reference, resumed, "linear")


@pytest.mark.parametrize("name", ["linear", "fusemix"])
def test_a_fit_killed_in_its_first_epoch_keeps_the_range_test_it_ran(name, data, tmp_path, monkeypatch):
    """A checkpoint is written right after the range test (when due), so a fit killed before its first epoch
    ends does not rerun a range test that can take half an hour; it resumes from epoch 0, bit-identical."""
    import alignbench.lr_range as lr_range

    train, val, _ = data
    reference = make(name, range_test=True)
    reference.fit(train, val, seed=0)
    with pytest.raises(KeyboardInterrupt), checkpointing(tmp_path, "fit-6", interval_s=0), \
            observe_epochs(_stop_at(1)):
        make(name, range_test=True).fit(train, val, seed=0)
    assert torch.load(checkpoint_path(tmp_path, "fit-6"), weights_only=False)["epoch"] == 0
    calls = []
    real = lr_range.lr_range_test
    monkeypatch.setattr(lr_range, "lr_range_test", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(999)
    resumed = make(name, range_test=True)
    with checkpointing(tmp_path, "fit-6", interval_s=0):
        resumed.fit(train, val, seed=0)
    assert calls == [] and resumed.fit_info["resumed_after_epoch"] == 0
    _same_fit(reference, resumed, name)


def _adamw_interrupted_at(real, step_index: int):
    """lr_range's optimiser factory whose optimiser raises KeyboardInterrupt instead of taking step ``step_index``."""
    def factory(*args, **kwargs):
        opt = real(*args, **kwargs)
        real_step, calls = opt.step, iter(range(10**6))

        def step(*a, **k):
            if next(calls) == step_index:
                raise KeyboardInterrupt  # a session ending in the middle of the sweep
            return real_step(*a, **k)
        opt.step = step
        return opt
    return factory


@pytest.mark.parametrize("name", TRAINED)
def test_a_fit_killed_in_its_lr_range_test_resumes_the_sweep_to_the_same_numbers(name, data, tmp_path, monkeypatch,
                                                                                    caplog):
    """Killed in the range test's step 31: the last save holds the sweep after 30 steps; the rerun continues it
    there (not from step 1), with the same parameters, moments, batches and dropout/mixup draws, and the whole
    fit ends bit-identical, curve included."""
    import alignbench.lr_range as lr_range

    train, val, _ = data
    reference = make(name, range_test=True)
    reference.fit(train, val, seed=0)
    assert reference.fit_info["lr_range_test"]["stop"] == "completed" or \
        len(reference.fit_info["lr_range_test"]["curve"]["losses"]) > 31
    real = lr_range.adamw
    monkeypatch.setattr(lr_range, "adamw", _adamw_interrupted_at(real, 30))
    with pytest.raises(KeyboardInterrupt), checkpointing(tmp_path, "fit-7", interval_s=0):
        make(name, range_test=True).fit(train, val, seed=0)
    payload = torch.load(checkpoint_path(tmp_path, "fit-7"), weights_only=False)
    assert (payload["phase"], payload["step"], len(payload["losses"])) == ("lr_range_test", 30, 30)
    monkeypatch.setattr(lr_range, "adamw", real)
    torch.manual_seed(4321)  # a new process
    resumed = make(name, range_test=True)
    with caplog.at_level(logging.INFO), checkpointing(tmp_path, "fit-7", interval_s=0):
        resumed.fit(train, val, seed=0)
    assert "after step 30 of its LR range test" in caplog.text
    assert resumed.fit_info["lr_range_test_resumed_after_step"] == 30
    assert "resumed_after_epoch" not in resumed.fit_info
    assert resumed.fit_info["lr_range_test"] == reference.fit_info["lr_range_test"]
    assert not checkpoint_path(tmp_path, "fit-7").exists()
    _same_fit(reference, resumed, name)


def test_a_fit_killed_right_after_a_resumed_range_test_does_not_redo_any_of_it(data, tmp_path, monkeypatch):
    """The sweep's own checkpoint is replaced by an epoch-0 one as soon as the range test ends, whatever the
    interval, so a kill in the first epoch does not send the rerun back into the sweep."""
    import alignbench.lr_range as lr_range

    train, val, _ = data
    real = lr_range.adamw
    monkeypatch.setattr(lr_range, "adamw", _adamw_interrupted_at(real, 30))
    with pytest.raises(KeyboardInterrupt), checkpointing(tmp_path, "fit-8", interval_s=0):
        make("linear", range_test=True).fit(train, val, seed=0)
    monkeypatch.setattr(lr_range, "adamw", real)
    with pytest.raises(KeyboardInterrupt), checkpointing(tmp_path, "fit-8", interval_s=3600), \
            observe_epochs(_stop_at(1)):
        make("linear", range_test=True).fit(train, val, seed=0)
    payload = torch.load(checkpoint_path(tmp_path, "fit-8"), weights_only=False)
    assert "phase" not in payload and payload["epoch"] == 0


def test_a_checkpoint_that_does_not_load_or_belongs_to_another_fit_is_moved_aside(data, tmp_path, caplog):
    train, val, _ = data
    reference = make("linear")
    reference.fit(train, val, seed=0)
    path = checkpoint_path(tmp_path, "fit-3")
    path.write_bytes(b"not a checkpoint")
    m = make("linear")
    with caplog.at_level(logging.WARNING), checkpointing(tmp_path, "fit-3", interval_s=0):
        m.fit(train, val, seed=0)
    assert "does not load" in caplog.text and "fitting from the start" in caplog.text
    assert "resumed_after_epoch" not in m.fit_info
    assert len(list(tmp_path.glob("fit-3.ckpt.pt.bad-*"))) == 1  # kept aside, never deleted
    _same_fit(reference, m, "linear")
    # another fit's checkpoint (e.g. a file renamed by hand) is not used either
    with pytest.raises(KeyboardInterrupt), checkpointing(tmp_path, "fit-4", interval_s=0), \
            observe_epochs(_stop_at(3)):
        make("linear").fit(train, val, seed=0)
    checkpoint_path(tmp_path, "fit-4").rename(checkpoint_path(tmp_path, "fit-5"))
    caplog.clear()
    with caplog.at_level(logging.WARNING), checkpointing(tmp_path, "fit-5", interval_s=0):
        make("linear").fit(train, val, seed=0)
    assert "belongs to another fit (fit-4" in caplog.text


def test_alignbench_run_killed_mid_fit_resumes_when_rerun(dirs, tmp_path, monkeypatch, capsys):
    """End to end: ``alignbench run`` interrupted in a fit keeps its checkpoint; the same command resumes it and
    stores the same metrics as a run never interrupted, then removes the checkpoint."""
    monkeypatch.setenv("ALIGNBENCH_CHECKPOINT_S", "0")
    base = ["run", "--pair", PAIR, "--data-root", str(dirs["data"]), "--cache", str(dirs["cache"]), "--no-progress",
            "--device", "cpu", "--datasets", "flickr8k", "--methods", "linear:lr=0.003:max_epochs=8:patience=100",
            "--budget", "60"]
    assert cli(base + ["--results", str(tmp_path / "whole")]) == 0
    interrupted = tmp_path / "interrupted"
    elsewhere = {"hostname": "elsewhere", "cpu": "another CPU", "torch_threads": 2}
    with observe_epochs(_stop_at(5)), monkeypatch.context() as m:  # killed on one machine, resumed on this one
        m.setattr(fit_checkpoint, "this_machine", lambda: dict(elsewhere))
        assert cli(base + ["--results", str(interrupted)]) == 130  # "interrupted; finished work is kept"
    (ckpt,) = interrupted.glob("*.ckpt.pt")
    assert not list(interrupted.glob("*.json"))
    earlier = torch.load(ckpt, weights_only=False)["fit_wall_s"]  # the fit's seconds up to its last save
    assert earlier > 0
    capsys.readouterr()
    assert cli(base + ["--results", str(interrupted)]) == 0
    assert not list(interrupted.glob("*.ckpt.pt"))
    (whole,) = [json.loads(p.read_text()) for p in (tmp_path / "whole").glob("*.json")]
    (again,) = [json.loads(p.read_text()) for p in interrupted.glob("*.json")]
    assert again["run_id"] == whole["run_id"] and again["metrics"] == whole["metrics"]
    assert again["method"]["fit_info"]["resumed_after_epoch"] == 4
    assert "resumed_after_epoch" not in whole["method"]["fit_info"]
    # the fit's time is the whole fit's: the share before the interruption is added and recorded
    assert again["timings"]["fit_earlier_s"] == pytest.approx(earlier) and again["timings"]["fit"] > earlier
    assert "fit_earlier_s" not in whole["timings"]
    # ... and names the machines it ran on, with their shares: another CPU's seconds are not this one's
    first, second = again["fit"]["machines"]
    assert {k: first[k] for k in elsewhere} == elsewhere and first["wall_s"] == pytest.approx(earlier)
    assert second == {**fit_checkpoint.this_machine(), "wall_s": second["wall_s"]}
    assert first["wall_s"] + second["wall_s"] == pytest.approx(again["timings"]["fit"], abs=0.5)
    assert "machines" not in whole["fit"]
    for key in ("epochs", "best_epoch", "best_val_loss", "lr"):
        assert again["method"]["fit_info"][key] == whole["method"]["fit_info"][key], key


def test_a_fit_resumed_without_its_earlier_time_is_left_out_of_fit_s_and_the_caption_says_so():
    """Records written before checkpoints kept the fit's time count only the last process's share."""
    from alignbench.aggregate import fit_time
    from alignbench.report import build_table, caption
    from alignbench.results import ResultStore

    records = [r for r in ResultStore(Path(__file__).parent / "golden" / "results").load_all()
               if r["spec"]["method"] == "pal" and r["budget"]["pairs"] == 1000]
    assert len(records) == 3 and all(fit_time(r) is not None for r in records)
    before = build_table(records)
    assert "or resumed one without timing" not in caption(before)
    r = records[0]
    r["method"]["fit_info"]["resumed_after_epoch"] = 7  # resumed by old code: timings.fit is a part of the fit
    assert fit_time(r) is None
    r["timings"]["fit_earlier_s"] = 100.0  # resumed by code that records the earlier part: timed
    assert fit_time(r) == r["timings"]["fit"]
    del r["timings"]["fit_earlier_s"]
    table = build_table(records)
    others = sorted(float(x["timings"]["fit"]) for x in records[1:])
    assert table.rows[0].fit_s == pytest.approx(sum(others) / 2)
    assert "runs that reused a stored fit, or resumed one without timing its earlier part, left out" in caption(table)
