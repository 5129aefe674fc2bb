"""--device and --dtype: one table (alignbench.devices) reaching every encoder and fit, checked at the edge."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from alignbench import devices
from alignbench.cli import main
from alignbench.errors import ConfigError
from alignbench.store import FeatureStore
from sweep_world import write_tiny_data

NO_CUDA = pytest.mark.skipif(devices.cuda_device_count() > 0, reason="checks the errors of a machine without CUDA")


def test_spellings_are_checked_and_suggest():
    assert devices.check_device_text(" CUDA:1 ") == "cuda:1"
    assert devices.parse_device("cpu").resolved == "cpu"
    assert devices.parse_device(None).requested == "auto"
    for bad, hint in (("cdua", "cuda"), ("cpu:0", "cpu"), ("tpu", "")):
        with pytest.raises(ConfigError, match="auto, cpu, cuda, cuda:N") as exc:
            devices.check_device_text(bad)
        assert not hint or f"did you mean {hint!r}" in str(exc.value)


@NO_CUDA
@pytest.mark.parametrize("text", ["cuda", "cuda:7"])
def test_cuda_without_cuda_is_one_clear_error(text):
    with pytest.raises(ConfigError, match="use --device cpu or --device auto"):
        devices.parse_device(text)
    assert devices.parse_device("auto").resolved == "cpu"


def test_one_visible_gpu_refuses_cuda_7(monkeypatch):
    monkeypatch.setattr(devices, "cuda_device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"only 1 CUDA device\(s\) visible \(cuda:0..cuda:0\)"):
        devices.parse_device("cuda:7")
    assert devices.parse_device("cuda").resolved == devices.parse_device("auto").resolved == "cuda:0"


@NO_CUDA
@pytest.mark.parametrize("command", ["encode", "run"])
def test_commands_exit_2_on_cuda_without_cuda(command, capsys, tmp_path):
    assert main([command, "--device", "cuda", "--cache", str(tmp_path)]) == 2
    assert "--device cpu" in capsys.readouterr().err


def test_sweep_checks_the_spelling_but_resolves_on_the_worker(capsys, tmp_path):
    from alignbench.sweep_config import build_config

    assert build_config({}, methods="cca", device="CUDA:1").device == "cuda:1"  # no GPU needed to submit
    assert main(["sweep", "--methods", "cca", "--device", "gpu", "--dry-run", "--results", str(tmp_path)]) == 2
    assert "unknown device 'gpu'" in capsys.readouterr().err


def test_the_store_builds_every_encoder_on_its_device(tmp_path):
    store = FeatureStore(tmp_path, device="cuda:3")  # encoders are built lazily: nothing touches a GPU here
    assert store.encoder("tiny-vit").device == "cuda:3"
    assert store.encoder("tiny-text", modality="text").device == "cuda:3"
    assert FeatureStore(tmp_path).encoder("tiny-vit").device == "cpu"


def test_encode_records_the_device_and_keeps_dtype_in_the_key(tmp_path, capsys):
    data = write_tiny_data(tmp_path / "data")
    argv = ["encode", "--pair", "tiny-vit+tiny-text", "--datasets", "cifar10", "--data-root", str(data),
            "--cache", str(tmp_path / "c"), "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    assert main([*argv, "--dtype", "bf16"]) == 0
    metas = [json.loads(p.read_text()) for p in (tmp_path / "c").glob("*/*/meta.json")]
    assert {m["device"] for m in metas} == {"cpu"}
    images = [m for m in metas if m["kind"] == "images"]
    assert sorted(m["key"]["encoder"]["dtype"] for m in images) == ["bf16", "fp32"]
    assert len({m["key_hash"] for m in images}) == 2


def test_bf16_on_a_cpu_without_bf16_works_and_warns(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert not devices.cpu_has_fast_bf16()
    data = write_tiny_data(tmp_path / "data")
    with caplog.at_level(logging.WARNING, logger="alignbench.devices"):
        feats = FeatureStore(tmp_path / "c").image_features("tiny-vit", "cifar10", "test", dtype="bf16",
                                                              data_root=data, progress=False)
    assert len(feats) == 9
    assert "no native bf16" in caplog.text and "slower than fp32" in caplog.text
    caplog.clear()
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx512_bf16", "amx_bf16"}))
    devices.warn_if_slow_dtype("bf16", "cpu")
    assert devices.cpu_bf16_flags() == ("amx_bf16", "avx512_bf16") and "bf16" not in caplog.text


def test_run_records_the_device_it_used(tmp_path):
    data = write_tiny_data(tmp_path / "data")
    args = ["run", "--methods", "cca", "--pair", "tiny-vit+tiny-text", "--budget", "20", "--val", "none",
            "--evals", "retrieval:flickr8k:test", "--data-root", str(data), "--cache", str(tmp_path / "c"),
            "--results", str(tmp_path / "runs"), "--device", "auto", "--no-progress"]
    assert main(args) == 0
    (rec,) = [json.loads(p.read_text()) for p in Path(tmp_path / "runs").glob("*.json")]
    assert rec["provenance"]["device"] == devices.parse_device("auto").resolved
    assert {r["kind"] for r in rec["features"]} == {"images", "texts"}
