"""``alignbench report --coverage``: which default / tuned rows a results folder holds, with their seeds."""
from __future__ import annotations

import copy
from pathlib import Path

from alignbench.cli import main as cli
from alignbench.coverage import coverage
from alignbench.identity import fit_id_of, run_id_of
from alignbench.results import ResultStore

RESULTS = Path(__file__).parent / "golden" / "results"


def _tuned_copy(record: dict, **tuned) -> dict:
    """The record as if a tuning study had chosen lr 0.02 for it (its identity recomputed)."""
    t = copy.deepcopy(record)
    t["spec"]["method_options"] = {"lr": 0.02}
    t["spec"]["tuned"] = {"study": "pal|recall|seeds=0", "trial": 1, **tuned}
    if "resolved" in t:
        t["resolved"]["method"]["config"]["lr"] = 0.02
        t["run_id"], t["fit_id"] = run_id_of(t["resolved"]), fit_id_of(t["resolved"])
    else:
        t["run_id"] = t["run_id"] + "-tuned"
    return t


def test_coverage_counts_the_seeds_of_default_and_tuned_rows_per_group_and_lists_methods_never_run(tmp_path):
    records = ResultStore(RESULTS).load_all()
    store = ResultStore(tmp_path)
    for r in records:
        store.write(r)
        if r["spec"]["method"] == "pal" and r["budget"]["pairs"] == 1000 and r["spec"]["seed"] in (0, 1):
            store.write(_tuned_copy(r, n_trials=20, objective="recall"))  # a tuned pal row with two seeds at 1k
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


def _parses(command: str) -> None:
    """Every ``alignbench …`` part of a printed command is accepted by the CLI's parser as it stands."""
    import shlex

    from alignbench.cli import build_parser

    for part in command.split(" && "):
        argv = shlex.split(part)
        assert argv[0] == "alignbench"
        build_parser().parse_args(argv[1:])


def test_the_commands_that_fill_the_gaps_name_exactly_the_missing_rows_with_the_folders_evaluations(tmp_path):
    from alignbench.coverage import fill_commands

    records = ResultStore(RESULTS).load_all()
    header, rows = coverage(records, by="budget")
    commands = fill_commands(records, results="results/x")
    assert commands and not any("alignbench tune" in c for c in commands)  # no tuned rows here: defaults only
    one_k = [c for c in commands if "--pair effnet-lite0+minilm-l6 --budget 1000 " in c]
    assert len(one_k) == 1
    listed = one_k[0].split("--methods ")[1].split()[0].split(",")
    short = [r[0] for r in rows if not r[header.index("1k effnet-lite0+minilm-l6")].startswith("3 /")]
    assert listed == sorted(short) and "pal" not in listed and "random" in listed
    evals = {e for r in records for e in r["spec"]["evals"] if r["spec"]["pair"] == "effnet-lite0+minilm-l6"
             and r["spec"]["budget"] == 1000}
    assert set(one_k[0].split("--evals ")[1].split()[0].split(",")) == evals
    assert one_k[0].endswith("--results results/x") and "--seeds 0,1,2" in one_k[0]
    for c in commands:
        _parses(c)


def test_a_folder_of_tuned_rows_also_lists_the_searches_it_lacks_with_its_trials(tmp_path):
    from alignbench.coverage import fill_commands

    store = ResultStore(tmp_path)
    for r in ResultStore(RESULTS).load_all():
        if r["spec"]["method"] == "pal" and r["budget"]["pairs"] == 1000:
            store.write(r)
            if r["spec"]["seed"] in (0, 1):  # a tuned pal row with two seeds, from a 9-trial study
                store.write(_tuned_copy(r, n_trials=9, objective="val_loss",
                                        file="results/mytune/effnet-lite0+minilm-l6-b1000.db"))
    commands = fill_commands(store.load_all(), results=str(tmp_path))
    tune = [c for c in commands if c.startswith("alignbench tune")]
    assert len(tune) == 1
    assert "--trials 9 --objective val_loss" in tune[0] and "--tune-dir results/mytune" in tune[0]
    methods = tune[0].split("--methods ")[1].split()[0].split(",")
    assert "pal" in methods and "random" not in methods  # pal† has 2 of 3 seeds; random has no search space
    assert "pal:tuned" in tune[0].split(" && ")[1]
    for c in commands:
        _parses(c)
