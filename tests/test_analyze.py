"""``alignbench analyze``: PAL's anchor analysis on stored fits through the CLI, and its bad input."""
from __future__ import annotations

import csv
import io

import fixtures_layouts as fx
import pytest

from alignbench.cli import main as cli
from alignbench.fit_loader import FitLoader
from alignbench.registry import TASKS
from alignbench.results import ResultStore

PAIR = "tiny-vit+tiny-text"


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """Two PAL fits with different K, stored by a real `alignbench run`."""
    tmp = tmp_path_factory.mktemp("analyze")
    fx.write_flickr8k(tmp / "data", {"train": 12, "dev": 3, "test": 5}, captions_per_image=2)
    dirs = {"data": tmp / "data", "cache": tmp / "features", "results": tmp / "runs", "tmp": tmp}
    assert cli(["run", "--pair", PAIR, "--data-root", str(dirs["data"]), "--cache", str(dirs["cache"]),
                "--results", str(dirs["results"]), "--methods", "pal:K=4:max_epochs=2,pal:K=8:max_epochs=2",
                "--budget", "16", "--seeds", "0", "--evals", "retrieval:flickr8k:test", "--no-progress",
                "--device", "cpu"]) == 0  # fmt: skip
    return dirs


def _analyze(d, *extra):
    return cli(["analyze", "pal", "--results", str(d["results"]), "--cache", str(d["cache"]),
                "--data-root", str(d["data"]), *extra])


def test_analyze_pal_table_and_figure(stored, capsys):
    out, fig = stored["tmp"] / "pal.csv", stored["tmp"] / "fig"
    assert _analyze(stored, "--format", "csv", "--out", str(out), "--plot-dir", str(fig)) == 0
    err = capsys.readouterr().err
    assert "2 stored pal fit(s)" in err and "refit" not in err  # the fitted states kept beside the results
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    records = {r["run_id"]: r for r in ResultStore(stored["results"]).load_all()}
    assert sorted(int(r["K"]) for r in rows) == [4, 8]
    for r in rows:
        rec = records[r["run_id"]]
        assert int(r["params"]) == rec["method"]["num_parameters"] > 0  # K·(d_v + d_t)
        assert float(r["value"]) == pytest.approx(rec["metrics"]["retrieval/flickr8k"]["i2t_R@1"])
        for name in ("overlap@5 matched", "overlap@5 mismatched", "dice@5 matched", "dice@5 mismatched"):
            assert 0.0 <= float(r[name]) <= 1.0
        assert r["on"] == "flickr8k:test" and int(r["pairs"]) == 10
    assert (fig / "pal_vs_K.png").stat().st_size > 0 and (fig / "pal_vs_K.pdf").stat().st_size > 0


def test_refit_reproduces_the_stored_metrics(stored):
    loader = FitLoader(stored["results"], cache=stored["cache"], data_root=stored["data"])
    rec = ResultStore(stored["results"]).load_all()[0]
    fit = loader.fit(rec)
    source = loader.source_for(fit)
    metrics = TASKS.get("retrieval")().evaluate(fit.method, source, source.dataset("flickr8k"), "test")
    assert metrics == pytest.approx(rec["metrics"]["retrieval/flickr8k"])


def test_filters_select_fits(stored, capsys):
    assert _analyze(stored, "--where", "K=8", "--no-plot") == 0
    out = capsys.readouterr().out
    assert out.count("| pal:K=8") == 1 and "pal:K=4" not in out
    assert _analyze(stored, "--budget", "1k", "--no-plot") == 2
    assert "none of the 2 stored pal runs matches" in capsys.readouterr().err


@pytest.mark.parametrize("method, message", [
    ("asif", "method 'asif' has no analysis (methods with an analysis: pal)"),
    ("pall", "unknown method 'pall'; did you mean 'pal'?"),
])  # fmt: skip
def test_analyze_without_an_analysis_is_a_clear_error(stored, capsys, method, message):
    assert cli(["analyze", method, "--results", str(stored["results"])]) == 2
    assert message in capsys.readouterr().err


def test_analyze_checks_its_paths_first(stored, capsys):
    assert _analyze(stored, "--out", str(stored["tmp"])) == 2
    assert "is a folder" in capsys.readouterr().err


def test_stored_fitted_states_are_used_not_refit(stored):
    from alignbench import fits
    records = ResultStore(stored["results"]).load_all()
    assert all(fits.state_path(stored["results"], r["fit_id"]).is_file() for r in records)
    loader = FitLoader(stored["results"], cache=stored["cache"], data_root=stored["data"])
    for rec in records:
        fit = loader.fit(rec)
        source = loader.source_for(fit)
        metrics = TASKS.get("retrieval")().evaluate(fit.method, source, source.dataset("flickr8k"), "test")
        assert metrics == pytest.approx(rec["metrics"]["retrieval/flickr8k"])
    assert loader.refits == [] and loader.notes == []
