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
