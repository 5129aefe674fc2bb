"""``alignbench run`` end to end on the tiny encoders over small generated datasets.

The datasets are written in exactly the layouts of the real loaders
(Flickr8k CSV + split lists, CIFAR-10 ImageFolder, CamVid SegNet folders) so
the whole path — loaders, feature store, methods, tasks, result store,
summary table and ``alignbench report`` — runs for real in seconds.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from alignbench.cli import main as cli
from alignbench.config import RunSpec
from alignbench.errors import BudgetError
from alignbench.identity import Resolver
from alignbench.outcomes import Outcomes
from alignbench.registry import TASKS
from alignbench.runner import plan, run_one, subsample_indices
from tiny_data import PAIR


def _run(dirs, *extra):
    return cli([
        "run", "--pair", PAIR, "--data-root", str(dirs["data"]), "--cache", str(dirs["cache"]),
        "--results", str(dirs["results"]), "--no-progress", "--device", "cpu",
        "--datasets", "flickr8k,cifar10,camvid", *extra,
    ])  # fmt: skip


def test_run_then_report_end_to_end(dirs, capsys):
    assert _run(dirs, "--methods", "asif,random", "--budget", "40,max", "--seeds", "0,1") == 0
    out = capsys.readouterr()
    assert "8 run(s): 8 to do" in out.err
    assert "| budget" in out.out and "asif" in out.out and "random" in out.out  # the summary table
    files = sorted(dirs["results"].glob("*.json"))
    assert len(files) == 8
    rec = json.loads(files[0].read_text())
    assert rec["status"] == "ok" and rec["schema_version"] == 2
    assert rec["resolved"]["method"]["version"] >= 1 and rec["fit_id"] != rec["run_id"]
    assert set(rec["metrics"]) == {"retrieval/flickr8k", "classification/cifar10", "segmentation/camvid"}
    assert rec["budget"]["available"] == 18 * 5
    assert rec["provenance"]["packages"]["torch"] and "dtype" in rec["provenance"]
    # the CPU it ran on and the bits of every feature entry it read: a rerun elsewhere can tell what moved
    assert rec["provenance"]["cpu"]["capability"] and isinstance(rec["provenance"]["cpu"]["bf16"], list)
    assert rec["features"] and all(re.fullmatch(r"[0-9a-f]{32}", f["digest"]) for f in rec["features"])
    assert {"encode", "fit", "eval", "total"} <= set(rec["timings"])
    for key, metrics in rec["metrics"].items():
        assert all(0.0 <= v <= 100.0 for k, v in metrics.items()), key
    # per-query / per-image outcomes are stored, and every stored metric recomputes from them exactly
    for f in files:
        rec = json.loads(f.read_text())
        assert set(rec["outcomes"]) == set(rec["metrics"])
        for key, stored in rec["outcomes"].items():
            task = TASKS.get(key.split("/")[0])()
            again = task.metrics_from_outcomes(Outcomes.from_json(stored))
            assert {k: None if v != v else v for k, v in again.items()} == rec["metrics"][key], key  # NaN is stored as null

    # a second identical command skips every run (nothing is lost or redone)
    mtimes = {f: f.stat().st_mtime_ns for f in files}
    assert _run(dirs, "--methods", "asif,random", "--budget", "40,max", "--seeds", "0,1") == 0
    assert "8 run(s): 0 to do, 8 already done" in capsys.readouterr().err
    assert {f: f.stat().st_mtime_ns for f in files} == mtimes

    out_md = dirs["results"].parent / "table.md"
    assert cli(["report", "--results", str(dirs["results"]), "--out", str(out_md)]) == 0
    table = out_md.read_text()
    assert "flickr8k I→T R@1" in table and "camvid mIoU" in table and "± " in table
    assert cli(["report", "--results", str(dirs["results"]), "--plot", "--plot-dir", str(dirs["results"].parent / "fig"),
                "--format", "csv"]) == 0
    assert (dirs["results"].parent / "fig" / "budget_curves.png").stat().st_size > 0


def test_run_one_directly_and_failure_record(dirs):
    spec = RunSpec(method="csa", pair=PAIR, budget=30, seed=0, train="flickr8k:train", val="flickr8k:dev",
                   evals=("retrieval:flickr8k:test",))
    path = run_one(spec, results_dir=dirs["results"], store_root=dirs["cache"], data_root=dirs["data"], progress=False)
    todo, done = plan([spec], dirs["results"], resolver=Resolver(dirs["cache"], dirs["data"]))
    assert path.exists() and todo == [] and [d.spec for d in done] == [spec]

    # a budget above what exists fails before encoding, says how many exist, and leaves a failure record
    big = RunSpec(method="csa", pair=PAIR, budget=1000, seed=0, evals=("retrieval:flickr8k:test",))
    with pytest.raises(BudgetError, match="90 pairs available"):
        run_one(big, results_dir=dirs["results"], store_root=dirs["cache"], data_root=dirs["data"], progress=False)
    failed = json.loads((dirs["results"] / f"{big.run_id}.failed.json").read_text())
    assert failed["status"] == "failed" and "BudgetError" in failed["error"]["traceback"]
    assert not (dirs["results"] / f"{big.run_id}.json").exists()


def test_subsample_is_nested_by_seed():
    small, large = subsample_indices(1000, 100, seed=3), subsample_indices(1000, 400, seed=3)
    assert set(small) <= set(large) and len(set(large)) == 400
    assert not np.array_equal(subsample_indices(1000, 100, seed=4), small)
    assert len(subsample_indices(1000, "max", seed=0)) == 1000


@pytest.mark.parametrize(
    "args, message",
    [
        (["--budget", "10q"], "cannot read budget '10q'"),
        (["--budget", "0"], "positive number of pairs"),
        (["--budget", "-1"], "cannot read budget '-1'"),
        (["--budget", "200"], "more than the 90 pairs available"),
        (["--methods", "asiff"], "did you mean 'asif'"),
        (["--methods", "asif:kk=3"], "no hyperparameter 'kk'"),
        (["--tasks", "retrievl"], "did you mean 'retrieval'"),
        (["--datasets", "flickr8"], "did you mean 'flickr8k'"),
        (["--tasks", "segmentation", "--datasets", "flickr8k"], "flickr8k has no segmentation masks"),
        (["--evals", "segmentation:flickr8k"], "flickr8k has no segmentation masks"),
        (["--evals", "segmentation:camvid:protocol=slyde"], "unknown segmentation protocol 'slyde'; did you mean 'slide'"),
        (["--evals", "segmentation:camvid:protocol=slide:threshold=2"], "threshold 2 is not a probability in [0, 1]"),
        (["--evals", "segmentation:camvid:protocol=slide:crop=500"], "crop 500 is larger than the short side 448"),
        (["--evals", "segmentation:camvid:protocol=slide:threshold=0.5"], "camvid has no background class"),
        (["--pair", "tiny-vit+tiny-txt"], "did you mean"),
    ],
)
def test_bad_input_is_refused_before_any_encoding(dirs, capsys, args, message):
    base = ["run", "--pair", PAIR, "--data-root", str(dirs["data"]), "--cache", str(dirs["cache"]),
            "--results", str(dirs["results"]), "--methods", "asif", "--budget", "10"]
    assert cli(base + args) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not dirs["cache"].exists() or not any(dirs["cache"].rglob("meta.json"))  # nothing was encoded
    assert not dirs["results"].exists() or not any(dirs["results"].glob("*.json"))
