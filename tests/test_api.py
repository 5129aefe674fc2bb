"""The Python API: the README's example runs as written (on the tiny encoders and data), errors match the CLI's."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import alignbench as ab
import tiny_data
from alignbench.cli import main as cli
from alignbench.errors import BudgetError, UnknownNameError

README = Path(__file__).resolve().parents[1] / "README.md"
TINY = "tiny-vit+tiny-text"


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    return tiny_data.make_tiny_data(root / "data"), root


def test_import_is_light():
    r = subprocess.run([sys.executable, "-c", "import sys, alignbench as ab; "
                        "print(sorted(m for m in ('torch', 'pandas', 'numpy') if m in sys.modules)); "
                        "print(callable(ab.run), callable(ab.fit), callable(ab.load_results))"],
                       capture_output=True, text=True, check=True)
    assert r.stdout.split("\n")[:2] == ["[]", "True True True"]


def test_readme_example_runs(tiny, monkeypatch):
    data, root = tiny
    code = readme_example()
    # the example as written, on the tiny encoders and the tiny Flickr8k (90 training pairs)
    for real, small in (('"effnet-lite0+minilm-l6"', f'"{TINY}"'), ('budget="1k"', "budget=40")):
        assert real in code
        code = code.replace(real, small)
    monkeypatch.chdir(root)
    monkeypatch.setenv("ALIGNBENCH_DATA", str(data))
    monkeypatch.setenv("ALIGNBENCH_CACHE", str(root / "cache"))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    df, runs, fitted = scope["df"], scope["runs"], scope["fitted"]

    assert sorted(zip(df["method_label"], df["seed"])) == [("csa", 0), ("csa", 1), ("linear:max_epochs=5", 0),
                                                          ("linear:max_epochs=5", 1)]
    assert (df["status"] == "ok").all() and (df["budget"] == 40).all()
    files = sorted((root / "results" / "runs").glob("*.json"))
    assert len(runs) == len(files) == 4 and {(root / f).resolve() for f in runs["file"]} == set(files)
    col = "retrieval/flickr8k/i2t_R@1"
    assert ((runs[col + "_low"] <= runs[col]) & (runs[col] <= runs[col + "_high"])).all()
    assert (runs[col + "_high"] - runs[col + "_low"] > 0).any()  # a real interval over 6 test images × 5 captions
    assert runs["config"].map(lambda c: isinstance(c, dict)).all()

    # the fitted method saw the seed-0 run's subset of the training pairs
    assert fitted.info["pairs"] == 40 and fitted.info["seed"] == 0 and fitted.info["train"] == "flickr8k:train"
    assert tuple(scope["scores"].shape) == (3, 5)

    # a second call reuses the finished runs (no result file rewritten)
    mtimes = [f.stat().st_mtime_ns for f in files]
    again = ab.run(methods="csa", budget=40, seeds=[0, 1], pair=TINY, evals="retrieval:flickr8k:test",
                   results="results/runs")
    assert len(again) == 2 and [f.stat().st_mtime_ns for f in files] == mtimes


def test_fitted_on_own_arrays_matches_feature_objects(tiny, monkeypatch):
    data, root = tiny
    monkeypatch.setenv("ALIGNBENCH_CACHE", str(root / "cache2"))
    fitted = ab.fit("linear:max_epochs=2", pair=TINY, budget=30, seed=1, data_root=data)
    from alignbench.source import FeatureSource

    test = FeatureSource(TINY, data_root=data, progress=False).pairs("flickr8k", "test")
    own = test.image().global_array()
    np.testing.assert_array_equal(fitted.embed_image(own).numpy(), fitted.method.embed_image(test.image()).numpy())
    with pytest.raises(Exception, match="7-d .*fitted on 32-d"):
        fitted.embed_image(np.zeros((2, 7), np.float32))


@pytest.mark.parametrize("kwargs, argv, error", [
    ({"methods": "pall"}, ["--methods", "pall"], UnknownNameError),
    ({"methods": "csa", "budget": "5k"}, ["--methods", "csa", "--budget", "5k"], BudgetError),
    ({"methods": "csa:epz=1"}, ["--methods", "csa:epz=1"], Exception),
    ({"methods": "csa", "evals": "retrieval:cifar10"}, ["--methods", "csa", "--evals", "retrieval:cifar10"], Exception),
])  # fmt: skip
def test_same_errors_as_the_cli(tiny, capsys, kwargs, argv, error, tmp_path):
    data, _ = tiny
    with pytest.raises(error) as exc:
        ab.run(pair=TINY, data_root=data, results=tmp_path / "runs", **kwargs)
    rc = cli(["run", "--pair", TINY, "--data-root", str(data), "--results", str(tmp_path / "runs"), *argv])
    assert rc == 2
    assert capsys.readouterr().err.strip() == f"alignbench run: error: {exc.value}"
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*.json"))
