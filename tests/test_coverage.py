"""``alignbench report --coverage``: which default / tuned rows a results folder holds, with their seeds."""
from __future__ import annotations

import copy
from pathlib import Path

from alignbench.cli import main as cli
from alignbench.coverage import coverage
from alignbench.identity import fit_id_of, run_id_of
from alignbench.results import ResultStore

RESULTS = Path(__file__).parent / "golden" / "results"


def test_coverage_counts_the_seeds_of_default_and_tuned_rows_per_group_and_lists_methods_never_run(tmp_path):
    records = ResultStore(RESULTS).load_all()
    store = ResultStore(tmp_path)
    for r in records:
        store.write(r)
        if r["spec"]["method"] == "pal" and r["budget"]["pairs"] == 1000 and r["spec"]["seed"] in (0, 1):
            t = copy.deepcopy(r)  # a tuned pal row with two seeds at 1k
            t["spec"]["method_options"] = {"lr": 0.02}
            t["spec"]["tuned"] = {"study": "pal|recall|seeds=0", "trial": 1, "n_trials": 20, "objective": "recall"}
            if "resolved" in t:
                t["resolved"]["method"]["config"]["lr"] = 0.02
                t["run_id"], t["fit_id"] = run_id_of(t["resolved"]), fit_id_of(t["resolved"])
            else:
                t["run_id"] = t["run_id"] + "-tuned"
            store.write(t)
    header, rows = coverage(store.load_all(), by="budget")
    assert header == ["method", "1k effnet-lite0+minilm-l6", "10k effnet-lite0+minilm-l6", "10k dinov2-s14+minilm-l6"]
    by_method = {r[0]: r[1:] for r in rows}
    assert by_method["pal"] == ["3 / 2†", "3 / –", "3 / –"]
    assert by_method["asif"] == ["3 / –", "3 / –", "– / –"]
    assert by_method["random"] == ["2 / n/a", "2 / n/a", "– / n/a"]  # no search space: never tuned
    assert by_method["sail"] == ["– / –"] * 3  # built in, never run here: listed all the same
    assert rows[-1][0] == "random"


def test_coverage_is_a_report_option_and_not_with_compare(capsys):
    assert cli(["report", "--results", str(RESULTS), "--coverage"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| method") and "Seeds of each method's faithful-default row" in out
    assert cli(["report", "--results", str(RESULTS), "--coverage", "--compare", "pal,asif"]) == 2
    assert "pass one" in capsys.readouterr().err
    assert cli(["report", "--results", str(RESULTS), "--coverage", "--format", "latex"]) == 2
    assert "--coverage prints a Markdown table" in capsys.readouterr().err
