"""Probes: bad values and paths are refused when the command starts (exit 2, one line), before any work.

Each probe goes through the real CLI entry point, as a user would type it,
and checks that nothing was encoded or written.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import fixtures_layouts as fx
import pytest

from alignbench.cli import main as cli
from alignbench.devices import cuda_device_count
from alignbench.errors import ConfigError, MalformedDataError

PAIR = "tiny-vit+tiny-text"


@pytest.fixture
def world(tmp_path, monkeypatch):
    data = tmp_path / "data"
    fx.write_flickr8k(data, {"train": 8, "dev": 3, "test": 3}, captions_per_image=2)
    cache = tmp_path / "features"
    monkeypatch.setenv("ALIGNBENCH_CACHE", str(cache))
    return {"data": data, "cache": cache, "results": tmp_path / "runs", "tmp": tmp_path}


def _run_args(w, *extra, results=None) -> list[str]:
    return ["run", "--pair", PAIR, "--data-root", str(w["data"]), "--cache", str(w["cache"]),
            "--results", str(results or w["results"]), "--methods", "asif", "--budget", "10", "--no-progress",
            "--device", "cpu", "--evals", "retrieval:flickr8k:test", *extra]  # fmt: skip


def _refused(capsys, argv, *needles) -> str:
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


def _nothing_done(w) -> None:
    assert not w["cache"].exists() or not any(w["cache"].rglob("meta.json")), "something was encoded"
    assert not w["results"].exists() or not any(w["results"].glob("*.json")), "something was written"


@pytest.mark.parametrize("method, needle", [
    ("pal:K=inf", "K='inf': expected a whole number"),
    ("pal:K=2.5", "K='2.5': expected a whole number, not a fraction"),
    ("csa:eps=abc", "eps='abc': expected a finite number"),
    ("csa:latent_dim=abc", "latent_dim='abc': expected a whole number"),
    ("pal:lr=inf", "lr='inf': expected a finite number"),
    ("pal:tau_p=nan", "tau_p='nan'"),
])  # fmt: skip
def test_bad_method_values_are_one_line_errors_before_any_work(world, capsys, method, needle):
    _refused(capsys, _run_args(world, "--methods", method), needle, method)
    _nothing_done(world)


def test_integer_options_keep_what_was_asked():
    from alignbench.registry import METHODS

    pal = METHODS.get("pal").Config()
    assert pal.update({"K": "4.0"}).K == 4 and pal.update({"K": "1k"}).K == 1000 and pal.update({"K": 8}).K == 8
    assert METHODS.get("csa").Config().update({"eps": "None", "latent_dim": "16"}).latent_dim == 16
    with pytest.raises(ConfigError, match="not a fraction"):
        METHODS.get("pal")(K=2.5)  # the Python API goes through the same coercion


@pytest.mark.parametrize("flag, needle", [
    (["--seeds", "0-"], "bad seed '0-'"),
    (["--seeds", "a-b"], "bad seed 'a-b'"),
    (["--seeds=-1"], "seeds are >= 0"),
    (["--seeds", "3-1"], "end is below the start"),
])  # fmt: skip
def test_bad_seeds_are_refused_at_start(world, capsys, flag, needle):
    _refused(capsys, _run_args(world, *flag), "--seeds", needle)
    _nothing_done(world)


def test_sweep_checks_the_same_values(world, capsys):
    def sweep(methods, seeds):
        return ["sweep", "--methods", methods, "--pairs", PAIR, "--budgets", "10", "--seeds", seeds,
                "--executor", "debug", "--results", str(world["results"])]

    _refused(capsys, sweep("pal:K=2.5", "0"), "not a fraction")
    _refused(capsys, sweep("asif", "a-b"), "bad seed 'a-b'")
    _nothing_done(world)


def test_results_folder_that_is_a_file_or_under_one(world, capsys):
    f = world["tmp"] / "afile"
    f.write_text("x")
    _refused(capsys, _run_args(world, results=f), "is a file; it must be a folder")
    _refused(capsys, _run_args(world, results=f / "runs"), f"{str(f)!r} is a file, so nothing can be created")
    _nothing_done(world)


@contextlib.contextmanager
def _read_only(folder: Path):
    """``folder`` made unwritable even for root (chattr +i), else by mode bits; skip where neither holds."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    chattr = shutil.which("chattr")
    if not chattr or subprocess.run([chattr, "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root (permissions are ignored) and this file system refuses chattr +i, "
                    "so no folder here can be read-only")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(folder)], check=True)


def test_read_only_results_folder_is_refused_before_any_fit(world, capsys):
    ro = world["tmp"] / "ro-runs"
    with _read_only(ro):
        _refused(capsys, _run_args(world, results=ro), "cannot write there", str(ro))
        assert not any(ro.iterdir())
    assert not world["cache"].exists() or not any(world["cache"].rglob("meta.json"))


def test_report_out_folder_and_plot_dir_file(world, capsys):
    world["results"].mkdir()
    f = world["tmp"] / "afile"
    f.write_text("x")
    _refused(capsys, ["report", "--results", str(world["results"]), "--out", str(world["tmp"])], "is a folder")
    _refused(capsys, ["report", "--results", str(world["results"]), "--plot", "--plot-dir", str(f)],
             "--plot-dir", "is a file")
    _refused(capsys, ["report", "--results", str(world["results"]), "--out", str(f / "t.md")], "is a file")


def test_encode_cache_that_is_a_file(world, capsys):
    f = world["tmp"] / "afile"
    f.write_text("x")
    _refused(capsys, ["encode", "--pair", PAIR, "--datasets", "flickr8k", "--data-root", str(world["data"]),
                      "--cache", str(f)], "--cache", "is a file")


def test_encode_unknown_split_says_did_you_mean(world, capsys):
    argv = ["encode", "--pair", PAIR, "--datasets", "flickr8k", "--data-root", str(world["data"]), "--splits", "tset"]
    _refused(capsys, argv, "unknown split 'tset'", "did you mean 'test'")
    _nothing_done(world)


def test_unknown_device_and_cuda_without_cuda(world, capsys):
    _refused(capsys, _run_args(world, "--device", "tpu"), "unknown device 'tpu'", "auto, cpu, cuda")
    if cuda_device_count() == 0:
        _refused(capsys, _run_args(world, "--device", "cuda"), "no CUDA device", "--device cpu or --device auto")
    _nothing_done(world)


def _unclosed_quote(world) -> tuple[Path, int]:
    path = world["data"] / "flickr8k" / "captions.txt"
    lines = path.read_text().splitlines()
    bad = 4  # 1-based line number of the damaged row
    name, cap = lines[bad - 1].split(",", 1)
    lines[bad - 1] = f'{name},"{cap.strip(chr(34))}'  # opening quote, no closing one
    path.write_text("\n".join(lines) + "\n")
    return path, bad


def test_unclosed_quote_in_captions_blames_its_line(world):
    from alignbench.datasets import get_dataset

    path, bad = _unclosed_quote(world)
    with pytest.raises(MalformedDataError, match=rf"{path}.*line {bad} .*quote"):
        get_dataset("flickr8k", world["data"]).captions("train")


def test_data_check_calls_a_split_with_an_unclosed_quote_broken(world, capsys):
    _unclosed_quote(world)
    assert cli(["data", "--data-root", str(world["data"]), "--check", "flickr8k"]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM" in out and "line 4" in out
    assert " ok" not in out


def test_tune_checks_its_values_and_study_folder_first(world, capsys):
    f = world["tmp"] / "afile"
    f.write_text("x")
    base = ["tune", "--pair", PAIR, "--data-root", str(world["data"]), "--budget", "10", "--trials", "1"]
    _refused(capsys, base + ["--methods", "pal:K=2.5"], "not a fraction")
    _refused(capsys, base + ["--methods", "pal", "--tune-dir", str(f)], "--tune-dir", "is a file")
    _nothing_done(world)
