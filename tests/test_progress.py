"""``--no-progress`` silences every bar (training included); long commands print an overall ETA."""
from __future__ import annotations

import pytest

from alignbench.cli import main as cli
from alignbench.progress import format_eta, progress_enabled, progress_scope
from tiny_data import PAIR


def _run(dirs, *extra):  # noqa: F811
    return cli([
        "run", "--pair", PAIR, "--data-root", str(dirs["data"]), "--cache", str(dirs["cache"]),
        "--results", str(dirs["results"]), "--device", "cpu", "--datasets", "flickr8k",
        "--evals", "retrieval:flickr8k:test", "--methods", "linear:lr=1e-3:max_epochs=3", "--budget", "40", *extra,
    ])  # fmt: skip


def test_progress_scope_overrides_the_environment(monkeypatch):
    monkeypatch.setenv("ALIGNBENCH_PROGRESS", "1")
    assert progress_enabled()
    with progress_scope(False):
        assert not progress_enabled()
        with progress_scope(None):  # None keeps the default rule
            assert progress_enabled()
    assert progress_enabled()


@pytest.mark.parametrize("flag, bars", [((), True), (("--no-progress",), False)])
def test_no_progress_silences_training_bars(dirs, capsys, monkeypatch, flag, bars):  # noqa: F811
    monkeypatch.setenv("ALIGNBENCH_PROGRESS", "1")  # bars forced on, as on a terminal
    assert _run(dirs, *flag) == 0
    err = capsys.readouterr().err
    assert ("ep/s" in err or "s/ep" in err) is bars, err[-2000:]


def test_format_eta_scales_its_unit():
    assert format_eta(42) == "~42 s"
    assert format_eta(7 * 60) == "~7 min"
    assert format_eta(2.3 * 3600) == "~2.3 h"


def test_run_prints_an_overall_eta_after_each_run_but_the_last(dirs, capsys):  # noqa: F811
    assert _run(dirs, "--no-progress", "--seeds", "0,1,2") == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ": done in " in ln]
    assert len(lines) == 3
    assert "2 left, ETA ~" in lines[0] and "1 left, ETA ~" in lines[1] and "ETA" not in lines[2]


def test_run_eta_counts_each_kind_of_run_at_its_own_pace():
    """A PAL fit takes minutes and ASIF a second: runs are estimated from finished runs of their own kind."""
    from types import SimpleNamespace

    from alignbench.commands.run import _eta, _kind

    def run(method, seed=0):
        return SimpleNamespace(method=SimpleNamespace(label=method), pair="p", budget=10_000, seed=seed)

    took = {_kind(run("pal")): [600.0, 400.0]}
    assert _eta(took, [run("pal", 2)]) == "; 1 left, ETA ~8 min"  # the mean of pal's own runs, not of all
    assert _eta(took, [run("pal", 2), run("asif"), run("csa")]) == "; 3 left, ETA ~8 min + 2 run(s) of kinds not timed yet"
    assert _eta(took, [run("asif")]) == "; 1 left, none of a kind timed yet"
    assert _eta(took, []) == ""
    took[_kind(run("asif"))] = [1.0]
    assert _eta(took, [run("pal", 2), run("asif", 1)]) == "; 2 left, ETA ~8 min"


def test_sweep_status_shows_an_eta_at_the_pace_of_the_runs_done():
    from datetime import datetime, timedelta, timezone

    from alignbench.launch.status import RunStatus, SweepReport

    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    runs = [RunStatus("a", "done"), RunStatus("b", "done"), RunStatus("c", "running"), RunStatus("d", "pending"),
            RunStatus("e", "missing")]
    report = SweepReport("s", None, "local", runs, started_at=start.isoformat())
    now = (start + timedelta(minutes=10)).timestamp()
    assert report.eta(now=now) == "~10 min"  # 2 runs in 10 min, 2 left
    assert "ETA ~" in report.format()
    assert SweepReport("s", None, "local", runs[:2], started_at=start.isoformat()).eta(now=now) is None  # all done
    assert SweepReport("s", None, "local", runs).eta(now=now) is None  # no start time known
