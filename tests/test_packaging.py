"""A non-editable install (pip install ., a wheel on a cluster node) must carry every subpackage.

The wheel once lacked ``alignbench.commands``: every CLI command failed on the GPU node while the editable
install here worked.
"""
from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_for_the_wheel():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    dirs = {"alignbench": "alignbench", **{k: v for k, v in cfg["package-dir"].items() if k != "alignbench"}}
    found = set()
    for name, folder in dirs.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]))
    assert found - listed == set(), f"subpackages missing from pyproject's packages: {sorted(found - listed)}"
