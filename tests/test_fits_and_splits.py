"""Fitted models kept (state beside the result, reused by new evaluations) and splits guarded on image identity.

Real runs through the CLI on the tiny encoders over the tiny on-disk datasets
of tests/sweep_world.py.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from alignbench.cli import main as cli
from alignbench.datasets.flickr8k import Flickr8k
from alignbench.fits import load_fitted
from alignbench.registry import DATASETS, METHODS
from alignbench.results import ResultStore
from sweep_world import PAIR, write_tiny_data

PAL = "pal:K=8:max_epochs=2"
RETRIEVAL, CIFAR = "retrieval:flickr8k:test", "classification:cifar10:test"


@pytest.fixture
def dirs(sweep_dirs):
    return sweep_dirs


def _run(dirs, evals: str, *extra, methods=PAL) -> int:
    return cli(["run", "--pair", PAIR, "--methods", methods, "--budget", "20", "--evals", evals,
                "--data-root", str(dirs["data"]), "--cache", str(dirs["cache"]), "--results", str(dirs["results"]),
                "--no-progress", "--device", "cpu", *extra])


def _records(dirs) -> list[dict]:
    return sorted(ResultStore(dirs["results"]).load_all(), key=lambda r: len(r["metrics"]))


def _fit_forbidden(monkeypatch, method="pal"):
    def no_fit(self, *a, **k):
        raise AssertionError("fit was called although a stored fit exists")

    monkeypatch.setattr(METHODS.get(method), "fit", no_fit)


# -- fitted models kept ------------------------------------------------------------------------
def test_new_evaluation_reuses_the_stored_fit_with_identical_metrics(dirs, monkeypatch, capsys):
    assert _run(dirs, RETRIEVAL) == 0
    (first,) = _records(dirs)
    state = dirs["results"] / f"{first['fit_id']}.state.pt"
    assert state.is_file() and first["fit"] == {"state": state.name, "reused": False}

    _fit_forbidden(monkeypatch)  # an eval-only rerun must not fit
    capsys.readouterr()
    assert _run(dirs, f"{RETRIEVAL},{CIFAR}") == 0
    assert "stale" not in capsys.readouterr().err  # new evaluations of a kept fit, not a stale result
    first_again, second = _records(dirs)
    assert second["fit_id"] == first["fit_id"] and second["run_id"] != first["run_id"]
    assert second["fit"]["reused"] is True and second["timings"]["fit"] == 0.0
    assert second["metrics"]["retrieval/flickr8k"] == first["metrics"]["retrieval/flickr8k"]  # the round trip is exact
    assert second["method"]["fit_info"] == first["method"]["fit_info"]
    assert first_again == first

    method = load_fitted(second)  # the public loader ("alignbench analyze" reads fits with it)
    assert method.A_v.shape[0] == 8 and torch.equal(method.A_v, load_fitted(first["fit_id"], dirs["results"]).A_v)


@pytest.mark.parametrize("damage", ["truncated", "other-version"])
def test_unusable_state_is_refit_with_a_warning_and_kept_aside(dirs, caplog, damage):
    assert _run(dirs, RETRIEVAL) == 0
    (first,) = _records(dirs)
    state = dirs["results"] / f"{first['fit_id']}.state.pt"
    if damage == "truncated":
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    else:
        payload = torch.load(state, weights_only=True)
        payload["method"]["version"] += 1
        torch.save(payload, state)
    broken = state.read_bytes()
    (dirs["results"] / Path(first["_file"]).name).unlink()  # ask for the run again
    with caplog.at_level(logging.WARNING, logger="alignbench.fits"):
        assert _run(dirs, RETRIEVAL) == 0
    assert "refitting" in caplog.text and state.name in caplog.text
    assert ("damaged" if damage == "truncated" else "version") in caplog.text
    (again,) = _records(dirs)
    assert again["fit"]["reused"] is False and again["metrics"] == first["metrics"]  # refit: same numbers
    aside = list(dirs["results"].glob(f"{state.name}.bad-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == broken  # nothing stored is lost
    assert load_fitted(again).A_v.shape[0] == 8


def test_refit_without_a_state_reads_the_resolved_record_not_the_typed_spec(dirs):
    """A record's fit is refit from its ``resolved`` block (typed objects), so it needs no spec strings."""
    from alignbench.fit_loader import FitLoader
    from alignbench.registry import TASKS

    assert _run(dirs, RETRIEVAL, methods="cca") == 0
    (rec,) = _records(dirs)
    (dirs["results"] / f"{rec['fit_id']}.state.pt").unlink()
    rec.pop("spec")  # nothing typed left: the refit works from what was resolved
    loader = FitLoader(dirs["results"], cache=dirs["cache"], data_root=dirs["data"])
    fit = loader.fit(rec)
    assert [r for r, _ in loader.refits] == [rec["run_id"]]
    source = loader.source_for(fit)
    assert (source.image_layer, source.text_layer) == (rec["resolved"]["image"]["layer"], rec["resolved"]["text"]["layer"])
    metrics = TASKS.get("retrieval")().evaluate(fit.method, source, source.dataset("flickr8k"), "test")
    assert metrics == pytest.approx(rec["metrics"]["retrieval/flickr8k"])


# -- splits guarded ------------------------------------------------------------------------------
def _nothing_encoded(dirs) -> bool:
    return not any(Path(dirs["cache"]).rglob("meta.json")) if Path(dirs["cache"]).exists() else True


def test_val_equal_to_an_evaluated_split_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    data = write_tiny_data(tmp_path / "data")
    d = {"data": data, "cache": tmp_path / "features", "results": tmp_path / "runs"}
    monkeypatch.setenv("ALIGNBENCH_CACHE", str(d["cache"]))
    assert _run(d, RETRIEVAL, "--val", "flickr8k:test") == 2
    err = capsys.readouterr().err
    assert "--val flickr8k:test shares 8 of its 8 images with the evaluated split flickr8k:test" in err
    assert _nothing_encoded(d) and not d["results"].exists() or not any(d["results"].glob("*.json"))
    assert _run(d, RETRIEVAL, "--train", "flickr8k:dev", "--val", "flickr8k:dev", "--budget", "5") == 2
    assert "--train flickr8k:dev shares 6 of its 6 images with the validation split flickr8k:dev" in capsys.readouterr().err


def test_same_images_under_another_dataset_name_are_refused(tmp_path, monkeypatch, capsys):
    data = write_tiny_data(tmp_path / "data")
    shutil.copytree(data / "flickr8k", data / "flickr8k-copy")  # the same images, another folder and name

    class Flickr8kCopy(Flickr8k):
        """The tiny Flickr8k again, under another name."""

        def __init__(self, root=None, **options):
            super().__init__(root, **{"path": "flickr8k-copy", **options})

    DATASETS.names()
    monkeypatch.setattr(DATASETS, "_entries", dict(DATASETS._entries))
    monkeypatch.setattr(DATASETS, "_aliases", dict(DATASETS._aliases))
    DATASETS.register("flickr8k-copy")(Flickr8kCopy)
    d = {"data": data, "cache": tmp_path / "features", "results": tmp_path / "runs"}
    monkeypatch.setenv("ALIGNBENCH_CACHE", str(d["cache"]))
    assert _run(d, RETRIEVAL, "--val", "flickr8k-copy:test", methods="cca") == 2
    err = capsys.readouterr().err
    assert "--val flickr8k-copy:test shares 8 of its 8 images with the evaluated split flickr8k:test" in err
    assert _nothing_encoded(d)
    # a disjoint split of the copy is fine
    assert _run(d, RETRIEVAL, "--val", "flickr8k-copy:dev", methods="cca") == 0


def test_fingerprints_follow_a_file_rewritten_in_place_with_the_same_size(tmp_path):
    """The fingerprint cache must not answer with an image's old content (same name, same size, new pixels)."""
    import os

    import fixtures_layouts as fx

    from alignbench.split_guard import image_fingerprints

    root = write_tiny_data(tmp_path / "data")
    ds = Flickr8k(root=root)
    cache = tmp_path / "cache"
    before = image_fingerprints(ds, "test", cache)
    path = ds.images("test").loader.paths[0]
    size = os.path.getsize(path)
    fx.solid_image(Path(path), fx.colour(170))  # another solid colour: a JPEG of the same size
    assert os.path.getsize(path) == size
    after = image_fingerprints(ds, "test", cache)
    assert after[0] != before[0] and (after[1:] == before[1:]).all()
