"""The result store: atomic writes, skip/keep rules, validation and the tidy frame."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from alignbench.config import RunSpec
from alignbench.errors import DataError
from alignbench.identity import Resolver
from alignbench.results import SCHEMA_VERSION, ResultStore, atomic_write_json, method_label, require_results
from alignbench.runner import EvalSpec, plan

GOLDEN = Path(__file__).parent / "golden" / "results"


EV = ("retrieval:flickr8k:test",)


def _spec(method: str, **kw) -> RunSpec:
    return RunSpec(method=method, evals=EV, **kw)


def _resolved(spec: RunSpec):
    return Resolver().resolve(spec, data=False)  # what the code decides; no data needed


def _record(spec: RunSpec, **metrics) -> dict:
    run = _resolved(spec)
    return {
        "schema_version": SCHEMA_VERSION, "status": "ok", "run_id": run.run_id, "fit_id": run.fit_id,
        "spec_key": spec.spec_key, "spec": spec.to_dict(), "resolved": run.to_dict(),
        "budget": {"requested": spec.budget, "pairs": spec.budget, "available": 100},
        "evals": [{"key": "retrieval/flickr8k", "task": "retrieval", "dataset": "flickr8k", "split": "test"}],
        "metrics": {"retrieval/flickr8k": metrics},
    }  # fmt: skip


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    store = ResultStore(tmp_path)
    spec = _spec("asif", budget=50)
    path = store.write(_record(spec, i2t_R1=1.0))
    assert path == store.path_for(_resolved(spec)) and store.exists(_resolved(spec))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    assert json.loads(path.read_text())["metrics"]["retrieval/flickr8k"]["i2t_R1"] == 1.0


def test_nan_becomes_null_and_is_left_out_of_the_frame(tmp_path):
    store = ResultStore(tmp_path)
    store.write(_record(_spec("asif"), a=float("nan"), b=2.0))
    text = next(tmp_path.glob("*.json")).read_text()
    assert "NaN" not in text and '"a": null' in text
    frame = store.to_frame()
    assert frame["metric"].tolist() == ["b"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    path = tmp_path / "r.json"
    atomic_write_json(path, {"v": 1})
    class Unprintable:
        def __str__(self):
            raise ValueError("cannot serialise")

    with pytest.raises(ValueError, match="cannot serialise"):
        atomic_write_json(path, {"v": 2, "x": Unprintable()})  # fails half-way through the dump
    assert json.loads(path.read_text()) == {"v": 1}
    assert not list(tmp_path.glob(".*.tmp"))


def test_failure_record_is_listed_and_cleared_by_success(tmp_path):
    store = ResultStore(tmp_path)
    spec = _spec("pal", seed=3)
    store.write_failure({"schema_version": 1, "status": "failed", "run_id": spec.run_id, "spec": spec.to_dict()})
    assert store.load_all() == [] and [f["run_id"] for f in store.failures()] == [spec.run_id]
    store.write(_record(spec, x=1.0))
    assert store.failures() == [] and not store.failed_path_for(spec).exists()
    assert len(store.load_all()) == 1


def test_load_all_skips_bad_files_with_a_named_warning(tmp_path, caplog):
    store = ResultStore(tmp_path)
    good = _spec("asif")
    store.write(_record(good, x=1.0))
    (tmp_path / "truncated.json").write_text('{"schema_version": 1, "run_')
    (tmp_path / "foreign.json").write_text('{"hello": "world"}')
    newer = _record(_spec("csa"), x=2.0) | {"schema_version": SCHEMA_VERSION + 1}
    (tmp_path / "newer.json").write_text(json.dumps(newer))
    (tmp_path / "sub").mkdir()
    store_sub = ResultStore(tmp_path / "sub")
    store_sub.write(_record(_spec("cca"), x=3.0))  # sub-folders are read too
    with caplog.at_level(logging.WARNING, logger="alignbench.results"):
        records = store.load_all()
    assert sorted(r["spec"]["method"] for r in records) == ["asif", "cca"]
    warned = caplog.text
    assert "truncated.json" in warned and "damaged" in warned
    assert "foreign.json" in warned and "not an alignbench result" in warned
    assert "newer.json" in warned and "newer alignbench" in warned
    assert {p.name for p, _ in store.skipped} == {"truncated.json", "foreign.json", "newer.json"}


def test_require_results_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        require_results(tmp_path / "missing")
    with pytest.raises(DataError, match="has no result files"):
        require_results(tmp_path)


def test_frame_has_one_row_per_run_and_metric():
    store = ResultStore(GOLDEN)
    records = store.load_all()
    frame = store.to_frame(records)
    expected = sum(sum(len(m) for m in r["metrics"].values()) for r in records)
    assert len(frame) == expected == len(frame.drop_duplicates(["run_id", "eval", "metric"]))
    row = frame[(frame.method_label == "csa:latent_dim=64") & (frame.metric == "t2i_R@1")].iloc[0]
    assert (row.task, row.dataset, row.split, row.budget, row.seed) == ("retrieval", "flickr8k", "test", 10000, 0)


def test_plan_splits_done_from_todo(tmp_path):
    store = ResultStore(tmp_path)
    a, b = _spec("asif", seed=0), _spec("asif", seed=1)
    store.write(_record(a, x=1.0))
    ra, rb = _resolved(a), _resolved(b)
    assert plan([ra, rb, rb], tmp_path) == ([rb], [ra])


def test_labels_and_eval_keys():
    assert method_label("pal", {"K": 128, "tau_p": 0.05}) == "pal:K=128:tau_p=0.05"
    assert EvalSpec.parse("segmentation:voc:val").key == "segmentation/voc:val"
    assert EvalSpec.parse("retrieval:flickr8k:test").key == "retrieval/flickr8k"
    assert EvalSpec.parse("retrieval:flickr8k").resolved().split == "test"
