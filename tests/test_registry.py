"""The generic registry: lazy discovery, aliases, families, did-you-mean."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from alignbench.errors import UnknownNameError
from alignbench.registry import DATASETS, ENCODERS, METHODS, TASKS


@pytest.fixture
def toy_registry(tmp_path, monkeypatch):
    pkg = tmp_path / "toyplugins"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "reg.py").write_text(
        "from alignbench.registry import Registry\n"
        "TOY = Registry('toy', ('toyplugins',), 'register', 'register_family')\n"
    )
    (pkg / "alpha.py").write_text(textwrap.dedent('''
        from toyplugins.reg import TOY
        IMPORTED = True

        @TOY.register("alpha", aliases=("a1", "first"))
        class Alpha:
            """The first toy."""

        @TOY.register_family("fam")
        def make(name, **kw):
            """A prefix family."""
            return ("fam", name, kw)
    '''))
    (pkg / "beta.py").write_text(textwrap.dedent('''
        from toyplugins.reg import TOY

        @TOY.register("beta-long-name")
        class Beta:
            """Second."""
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    from toyplugins.reg import TOY

    yield TOY
    for m in [m for m in sys.modules if m.startswith("toyplugins")]:
        del sys.modules[m]


def test_lists_without_importing(toy_registry):
    assert toy_registry.names() == ["alpha", "beta-long-name"]
    assert "toyplugins.alpha" not in sys.modules
    entries = {e.name: e for e in toy_registry.entries()}
    assert entries["alpha"].summary == "The first toy."
    assert entries["alpha"].aliases == ("a1", "first")
    assert entries["fam"].is_family


def test_get_imports_lazily_and_resolves_aliases(toy_registry):
    cls = toy_registry.get("a1")
    assert cls.__name__ == "Alpha" and cls.registry_name == "alpha"
    assert "toyplugins.alpha" in sys.modules
    assert toy_registry.get("ALPHA") is cls
    assert toy_registry.canonical("first") == "alpha"


def test_family_forwards_suffix(toy_registry):
    factory = toy_registry.get("fam:some/model")
    assert factory(x=1) == ("fam", "some/model", {"x": 1})
    assert toy_registry.canonical("fam:some/model") == "fam:some/model"


def test_unknown_name_suggests(toy_registry):
    with pytest.raises(UnknownNameError) as exc:
        toy_registry.get("alpah")
    msg = str(exc.value)
    assert "unknown toy 'alpah'" in msg and "did you mean" in msg and "'alpha'" in msg
    assert "alpha" in exc.value.suggestions
    with pytest.raises(UnknownNameError):
        toy_registry.get("fam:")  # a family needs a name after the colon


def test_project_registries_find_their_modules():
    # The registries read the real folders; each kind must have at least its built-ins.
    for reg, expected in ((METHODS, {"pal", "linear", "cca", "csa", "asif", "fusemix", "structure", "random"}),
                          (TASKS, {"retrieval", "classification", "segmentation"}),
                          (ENCODERS, {"dinov2-s14", "effnet-lite0", "minilm-l6", "mpnet-base"}),
                          (DATASETS, {"flickr8k", "cifar10", "fashion-mnist", "camvid"})):
        missing = expected - set(reg.names())
        assert not missing, f"{reg.kind}s not registered: {missing}"


def test_ls_is_fast_and_imports_nothing_heavy():
    code = (
        "import sys, time; t=time.time(); from alignbench.cli import main; main(['ls']); "
        "heavy=[m for m in ('torch','transformers','timm','submitit','pandas','sklearn') if m in sys.modules]; "
        "print('HEAVY', heavy); print('TIME', time.time()-t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    for name in ("pal", "retrieval", "dinov2-s14", "flickr8k", "timm:<name>"):
        assert name in out


def test_listing_into_a_closed_pipe_stops_quietly(monkeypatch, capsys):
    """`alignbench ls | head`: when the reader has gone, the CLI stops with SIGPIPE's status, no traceback."""
    import os

    from alignbench.cli import main

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader left before anything was written
    with open(write_end, "w") as closed_pipe:
        monkeypatch.setattr(sys, "stdout", closed_pipe)
        assert main(["ls"]) == 141
        monkeypatch.undo()
    assert "Traceback" not in capsys.readouterr().err
