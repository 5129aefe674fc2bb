"""Run identity: resolve once, hash what was resolved; stale and damaged results are redone, never counted.

Runs go through the real CLI on the tiny encoders over the tiny on-disk datasets
of tests/sweep_world.py, so resolution reads real listings and real cache keys.
"""
from __future__ import annotations

import dataclasses
import re
import json
from pathlib import Path

import pytest

from alignbench.cli import main as cli
from alignbench.config import EncoderOptions, RunSpec
from alignbench.identity import Resolver, id_hash, resolve_method
from alignbench.registry import METHODS
from sweep_world import EVALS, PAIR


@pytest.fixture
def dirs(sweep_dirs):
    return sweep_dirs


def _spec(method="cca", **kw) -> RunSpec:
    return RunSpec(method=method, pair=PAIR, budget=kw.pop("budget", 20), evals=tuple(EVALS.split(",")), **kw)


def _run(dirs, *extra, methods="cca"):
    return cli(["run", "--pair", PAIR, "--methods", methods, "--budget", "20", "--evals", EVALS,
                "--data-root", str(dirs["data"]), "--cache", str(dirs["cache"]), "--results", str(dirs["results"]),
                "--no-progress", "--device", "cpu", *extra])


def _results(dirs) -> list[Path]:
    return sorted(p for p in dirs["results"].glob("*.json") if not p.name.endswith(".failed.json"))


# -- ids ------------------------------------------------------------------------------------
def test_equivalent_spellings_give_one_id(dirs):
    r = Resolver(dirs["cache"], dirs["data"])
    pal = r.resolve(_spec("pal"))
    assert r.resolve(_spec("pal", method_options={"tau_p": "0.03"})).run_id == pal.run_id  # the default, spelled out
    assert r.resolve(_spec("linear", method_options={"lr": "0.01"})).run_id == \
        r.resolve(_spec("linear", method_options={"lr": "1e-2"})).run_id
    assert r.resolve(_spec("linear-map")).run_id == r.resolve(_spec("linear")).run_id  # an alias
    assert r.resolve(_spec("pal", train="flickr8k:train", val="flickr8k:val")).run_id == pal.run_id  # val = dev
    assert r.resolve(_spec("pal", method_options={"tau_p": "0.1"})).run_id != pal.run_id
    assert pal.run_id.startswith(f"pal-{PAIR}-b20-s0-") and pal.fit_id.startswith(f"pal-{PAIR}-b20-s0-fit-")
    assert r.resolve(_spec("pal", method_options={"tau_p": "0.1"})).run_id.startswith("pal-tau_p0.1-")
    # the typed spec hash tells them apart: that was the old run id
    assert _spec("pal").spec_key != _spec("pal", method_options={"tau_p": "0.03"}).spec_key


def test_image_layer_changes_fit_and_run_ids_and_negative_layers_resolve(dirs):
    r = Resolver(dirs["cache"], dirs["data"])
    last = r.resolve(_spec())
    first = r.resolve(dataclasses.replace(_spec(), encoder=EncoderOptions(image_layer=0)))
    assert first.image.layer == 0 and last.image.layer > 0
    assert first.fit_id != last.fit_id and first.run_id != last.run_id
    assert first.feature_keys["train"]["images"] != last.feature_keys["train"]["images"]
    minus_one = r.resolve(dataclasses.replace(_spec(), encoder=EncoderOptions(image_layer=-1)))
    assert minus_one.run_id == last.run_id  # -1 *is* the last layer


def test_a_stored_resolved_block_rebuilds_the_same_fit(dirs):
    from alignbench.identity import ResolvedRun

    run = Resolver(dirs["cache"], dirs["data"]).resolve(_spec("pal", method_options={"K": "8"}))
    fit = ResolvedRun.fit_from_dict(json.loads(json.dumps(run.to_dict())))
    assert fit.fit_id == run.fit_id and fit.evals == () and fit.method.label == run.method.label
    assert dataclasses.replace(fit, evals=run.evals, feature_keys=run.feature_keys) == run


def test_fit_id_ignores_evaluations_run_id_does_not(dirs):
    r = Resolver(dirs["cache"], dirs["data"])
    both = r.resolve(_spec())
    one = r.resolve(dataclasses.replace(_spec(), evals=("retrieval:flickr8k:test",)))
    assert one.fit_id == both.fit_id and one.run_id != both.run_id
    assert id_hash(one.run_id) != id_hash(one.fit_id)


def test_every_method_declares_its_version():
    for name in METHODS.names():
        cls = METHODS.get(name)
        assert isinstance(cls.__dict__.get("version"), int) and cls.version >= 1, name
        assert resolve_method(name)[1].version == cls.version


# -- stale results -----------------------------------------------------------------------------
def _with_default(monkeypatch, method: str, **defaults) -> None:
    cls = METHODS.get(method)
    new = dataclasses.make_dataclass(f"Patched{cls.Config.__name__}", [(k, type(v), v) for k, v in defaults.items()],
                                     bases=(cls.Config,))
    monkeypatch.setattr(cls, "Config", new)


def test_changed_default_or_version_makes_the_old_result_stale(dirs, monkeypatch, capsys):
    assert _run(dirs) == 0
    (old,) = _results(dirs)
    capsys.readouterr()
    assert _run(dirs) == 0
    assert "0 to do, 1 already done" in capsys.readouterr().err

    _with_default(monkeypatch, "cca", eps=0.5)  # a default changed in methods/cca.py
    assert _run(dirs) == 0
    err = capsys.readouterr().err
    assert "1 to do, 0 already done" in err and "config changed: eps" in err and old.name in err
    assert len(_results(dirs)) == 2 and old.exists()  # the old result is kept, not overwritten

    assert cli(["report", "--results", str(dirs["results"]), "--format", "csv"]) == 0
    out = capsys.readouterr()
    assert "left out 1 stale result(s) of 2" in out.err and "config changed: eps" in out.err
    assert cli(["report", "--results", str(dirs["results"]), "--format", "csv", "--include-stale"]) == 0
    assert re.search(r"\n20,cca\b[^,]*\[stale\],", capsys.readouterr().out)  # the stale row, marked

    monkeypatch.setattr(METHODS.get("cca"), "version", 2)  # the file bumped its version
    assert _run(dirs) == 0
    assert "method version 1→2" in capsys.readouterr().err
    assert len(_results(dirs)) == 3


def test_other_settings_of_the_same_method_are_new_runs_not_stale(dirs, capsys):
    """A default run beside `cca:eps=…` (or a `:tuned` one) of the same pair, budget, seed is a new run."""
    assert _run(dirs) == 0
    capsys.readouterr()
    assert _run(dirs, methods="cca:eps=0.5") == 0
    err = capsys.readouterr().err
    assert "1 to do, 0 already done" in err and "stale" not in err and "redoing" not in err
    assert len(_results(dirs)) == 2


def test_schema_1_results_load_and_are_stale(dirs, capsys):
    assert _run(dirs) == 0
    (path,) = _results(dirs)
    rec = json.loads(path.read_text())
    old = {k: rec[k] for k in ("run_id", "spec", "metrics", "evals", "budget")}
    (dirs["results"] / "old-schema1.json").write_text(json.dumps({"schema_version": 1, "status": "ok", **old}))
    capsys.readouterr()
    assert cli(["report", "--results", str(dirs["results"]), "--format", "csv"]) == 0
    err = capsys.readouterr().err
    assert "left out 1 stale result(s) of 2" in err and "schema 1" in err


# -- damaged results (issue 15) ------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "schema-broken", "partial"])
def test_damaged_result_is_named_and_redone(dirs, capsys, damage):
    assert _run(dirs) == 0
    (path,) = _results(dirs)
    rec = json.loads(path.read_text())
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:300])  # cut by a full disk or a killed copy
    elif damage == "schema-broken":
        rec["metrics"]["retrieval/flickr8k"]["i2t_R@1"] = "twelve"
        path.write_text(json.dumps(rec))
    else:  # valid JSON, one evaluation's metrics missing
        del rec["metrics"]["classification/cifar10"]
        path.write_text(json.dumps(rec))
    capsys.readouterr()
    assert cli(["report", "--results", str(dirs["results"]), "--format", "csv"]) == 2  # nothing valid left
    err = capsys.readouterr().err
    assert path.name in err and "damaged" in err

    assert _run(dirs) == 0
    err = capsys.readouterr().err
    assert "1 to do, 0 already done" in err and f"damaged result {path.name}" in err
    assert json.loads(path.read_text())["metrics"]["classification/cifar10"]  # rewritten whole
