"""Shared fixtures: where the shared data is, a throw-away feature cache, offline hub."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ALIGNBENCH_DATA", str((REPO.parent / "shared" / "datasets").resolve()))


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = Path(os.environ["ALIGNBENCH_DATA"])
    if not (root / "flickr8k").is_dir():
        pytest.skip(f"shared datasets not found at {root}")
    return root


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "features"
    monkeypatch.setenv("ALIGNBENCH_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    """A feature cache shared by the integration tests of one session (encode once)."""
    return Path(os.environ.get("ALIGNBENCH_TEST_CACHE") or tmp_path_factory.mktemp("features"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """2 shared cores: one intra-op thread avoids oversubscription stalls (method-fitting test modules)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# -- tiny worlds for end-to-end runs on the tiny encoders -------------------------------------------------
@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    """Flickr8k (30 images x 5 captions), CIFAR-10 and CamVid in the real layouts (tests/tiny_data.py)."""
    from tiny_data import make_tiny_data

    return make_tiny_data(tmp_path_factory.mktemp("data"))


@pytest.fixture
def dirs(tmp_path, tiny_root, monkeypatch) -> dict:
    """``tiny_root`` with a throw-away feature cache and results folder (a module may override it)."""
    cache = tmp_path / "features"
    monkeypatch.setenv("ALIGNBENCH_CACHE", str(cache))
    return {"data": tiny_root, "cache": cache, "results": tmp_path / "runs"}


@pytest.fixture(scope="module")
def sweep_world(tmp_path_factory) -> dict:
    """The sweep tests' tiny data (tests/sweep_world.py) and a feature cache shared by one module."""
    from sweep_world import write_tiny_data

    root = tmp_path_factory.mktemp("sweep-world")
    return {"data": write_tiny_data(root / "data"), "cache": root / "features"}


@pytest.fixture
def sweep_dirs(sweep_world, tmp_path, monkeypatch) -> dict:
    """``sweep_world`` as the environment's data and cache, a fresh results folder, a private identity cache."""
    monkeypatch.setenv("ALIGNBENCH_CACHE", str(sweep_world["cache"]))
    monkeypatch.setenv("ALIGNBENCH_DATA", str(sweep_world["data"]))
    monkeypatch.setenv("ALIGNBENCH_IDENTITY_CACHE", str(tmp_path / "identity-cache.json"))
    return {**sweep_world, "results": tmp_path / "runs"}
