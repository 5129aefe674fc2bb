"""Plug-ins: a separately installed package adds a method through the ``alignbench.methods`` entry point.

The test writes a real package (pyproject with entry points), pip-installs it
into a temporary target folder and puts that folder on PYTHONPATH of fresh
processes: the CLI lists the plug-in without importing it, runs it, the
conformance suite covers it, and broken or name-stealing plug-ins are
reported by name while the CLI keeps working.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tiny_data

REPO = Path(__file__).resolve().parents[1]

METHOD = '''
"""A ridge map from image to text features, shipped outside alignbench."""
from dataclasses import dataclass

import torch

from alignbench.methods.base import Method, MethodConfig, check_dim, check_pairs


@dataclass
class RidgeConfig(MethodConfig):
    ridge: float = 1.0


class RidgeMap(Method):
    """Ridge regression from image to text features (a plug-in)."""

    level = "global"
    Config = RidgeConfig

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        self.W = None

    def fit(self, train, val=None, *, seed=0):
        check_pairs(train, val)
        x = train.image().global_tensor().double()
        y = train.text().global_tensor().double()
        gram = x.T @ x + self.config.ridge * torch.eye(x.shape[1], dtype=torch.float64)
        self.W = torch.linalg.solve(gram, x.T @ y).float()
        self.fit_info = {"n_train": len(train)}

    def embed_image(self, f):
        check_dim(f, None if self.W is None else self.W.shape[0], "image")
        return f.global_tensor() @ self.W

    def embed_text(self, f):
        check_dim(f, None if self.W is None else self.W.shape[1], "text")
        return f.global_tensor()

    def state_dict(self):
        return {"W": self.W}

    def load_state_dict(self, state):
        self.W = state["W"]
'''

SHADOW = '''
from alignbench.methods.base import IdentityMethod, register_method


@register_method("linear")
class Shadow(IdentityMethod):
    """Tries to take the built-in linear's name."""
'''

PYPROJECT = '''
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "abplug-ridge"
version = "0.1.0"

[project.entry-points."alignbench.methods"]
ridgemap = "abplug_ridge.method:RidgeMap"
brokenplug = "abplug_ridge.broken:Thing"
shadowplug = "abplug_ridge.shadow:Shadow"
csa = "abplug_ridge.method:RidgeMap"

[project.entry-points."alignbench.datasets"]
plugpets = "abplug_ridge.data:PlugPets"

[project.entry-points."alignbench.encoders"]
plugenc = "abplug_ridge.encoder:PlugEncoder"

[project.entry-points."alignbench.tasks"]
plugtask = "abplug_ridge.task:PlugTask"

[tool.setuptools]
packages = ["abplug_ridge"]
'''


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    """Environment whose PYTHONPATH holds the pip-installed plug-in package."""
    src = tmp_path_factory.mktemp("plugin_src")
    pkg = src / "abplug_ridge"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "method.py").write_text(METHOD)
    (pkg / "broken.py").write_text("raise ImportError('abplug needs libfoo, which is not installed')\n")
    (pkg / "shadow.py").write_text(SHADOW)
    (src / "pyproject.toml").write_text(PYPROJECT)
    site = tmp_path_factory.mktemp("plugin_site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(src)], check=True, cwd=src)
    assert list(site.glob("abplug_ridge-0.1.0.dist-info/entry_points.txt"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(REPO / "tests")]))
    return env


def sh(env, *args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_listed_from_metadata_without_import(plugin_env):
    r = sh(plugin_env, "-m", "alignbench.cli", "ls")
    assert r.returncode == 0, r.stderr
    lines = {ln.split()[0]: ln for ln in r.stdout.splitlines() if ln.startswith("  ")}
    for what, name in (("datasets", "plugpets"), ("encoders", "plugenc"), ("tasks", "plugtask")):
        section = r.stdout.split(f"{what}:\n", 1)[1].split(":\n", 1)[0]
        assert f"  {name} " in section and "[plug-in abplug-ridge" in lines[name]
    assert "ridgemap" in lines and "plug-in abplug-ridge (abplug_ridge.method:RidgeMap)" in lines["ridgemap"]
    assert "brokenplug" in lines  # listed: its metadata is fine, only importing it fails
    assert "plug-in problems:" in r.stdout
    assert "method csa: plug-in 'abplug_ridge.method:RidgeMap' from abplug-ridge registers method 'csa', " \
           "which already exists (alignbench.methods.csa); ignored" in r.stdout
    probe = sh(plugin_env, "-c", "import sys; from alignbench.registry import REGISTRIES; "
                                 "print(REGISTRIES['methods'].names()); [r.names() for r in REGISTRIES.values()]; "
                                 "print(sorted(m for m in sys.modules if 'abplug' in m))")
    names, imported = probe.stdout.splitlines()
    assert "'ridgemap'" in names and imported == "[]"


def test_plugin_runs_and_broken_ones_are_named(plugin_env, tmp_path):
    data = tiny_data.make_tiny_data(tmp_path / "data")
    common = ["-m", "alignbench.cli", "run", "--pair", "tiny-vit+tiny-text", "--data-root", str(data),
              "--cache", str(tmp_path / "cache"), "--results", str(tmp_path / "runs"), "--budget", "60",
              "--evals", "retrieval:flickr8k:test", "--no-progress", "--device", "cpu"]
    r = sh(plugin_env, *common, "--methods", "ridgemap:ridge=0.5")
    assert r.returncode == 0, r.stderr
    rec = json.loads(next((tmp_path / "runs").glob("ridgemap*.json")).read_text())
    assert rec["method"]["config"] == {"ridge": 0.5} and rec["metrics"]["retrieval/flickr8k"]["i2t_R@1"] >= 0

    r = sh(plugin_env, *common, "--methods", "brokenplug")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        "alignbench run: error: method 'brokenplug' from plug-in abplug-ridge (abplug_ridge.broken:Thing) "
        "failed to import: ImportError: abplug needs libfoo, which is not installed")
    r = sh(plugin_env, *common, "--methods", "shadowplug")
    assert r.returncode == 2 and "abplug_ridge.shadow registers method 'linear', which already exists" in r.stderr
    # the built-in 'linear' is still the built-in after the failed attempt, in the same process
    probe = sh(plugin_env, "-c", "from alignbench.registry import METHODS\n"
                                 "try: METHODS.get('shadowplug')\nexcept Exception as e: print(type(e).__name__)\n"
                                 "print(METHODS.get('linear').__module__)")
    assert probe.stdout.split() == ["PluginError", "alignbench.methods.linear"]


def test_conformance_suite_covers_the_plugin(plugin_env):
    r = sh(plugin_env, "-m", "pytest", "tests/test_methods_conformance.py", "-k", "ridgemap", "-v",
           "-p", "no:cacheprovider", "-m", "not slow")
    passed = [ln for ln in r.stdout.splitlines() if "[ridgemap]" in ln and "PASSED" in ln]
    assert r.returncode == 0, r.stdout[-3000:]
    assert len(passed) >= 12, r.stdout[-3000:]  # every per-method contract test ran on it
