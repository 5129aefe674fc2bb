"""Probes of the feature cache as a hostile but honest user would run them (issue 15).

Each probe does what was done by hand: damage a big token file between the
blocks the old sampled check read, flip a bit of ``meta.json``, feed NaNs
from a broken model, fill the disk.  Real tiny encoders, real files.
"""
from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from alignbench.datasets.base import ArrayImageLoader, ClassificationDataset, ImageList, array_fingerprint
from alignbench.errors import DiskFullError, FeatureError
from alignbench.store import FeatureStore, forget_verified

OLD_SMALL_FILE = 8 << 20  # the old check hashed files up to this size whole ...
OLD_BLOCKS, OLD_BLOCK = 16, 1 << 16  # ... and bigger ones in 16 sampled 64 KiB blocks


class ArrayClasses(ClassificationDataset):
    """``n`` random 8×8 images held in memory (decoding costs nothing, so thousands encode in seconds)."""

    registry_name = "arrayclasses"
    classnames = ["a", "b"]
    templates = ["a photo of a {}."]
    splits = ("test",)

    def __init__(self, root, n: int = 64, **options):
        Path(root).mkdir(parents=True, exist_ok=True)
        super().__init__(root, **options)
        self.array = np.random.default_rng(n).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)

    def images(self, split):
        self.check_split(split)
        return ImageList([f"im{i}" for i in range(len(self.array))], ArrayImageLoader(self.array),
                         array_fingerprint(self.array))

    def labels(self, split):
        return np.arange(len(self.array)) % 2


def _between_old_samples(size: int, k: int) -> int:
    """An offset 64 KiB before the middle of the gap after the old check's k-th sampled block."""
    step = (size - OLD_BLOCK) / (OLD_BLOCKS - 1)
    return int(k * step) + OLD_BLOCK + int((step - OLD_BLOCK) / 2) - (64 << 10)


def test_damage_between_the_old_sample_blocks_is_caught_on_first_open(tmp_path, caplog):
    """128 KiB zeroed and 128 KiB of NaNs where the old sampled check never looked, in a token file
    (8.9 MB) bigger than what it hashed whole: a new process catches it, names the file, re-encodes."""
    ds = ArrayClasses(tmp_path / "data", n=8192)
    store = FeatureStore(tmp_path / "cache")
    f = store.image_features("tiny-vit", ds, "test", progress=False, batch_size=512)
    path = Path(f.meta["path"])
    pristine = (path / "tokens.npy").read_bytes()
    assert len(pristine) > OLD_SMALL_FILE
    del f
    n = 128 << 10
    with open(path / "tokens.npy", "r+b") as fh:
        fh.seek(_between_old_samples(len(pristine), 7))
        fh.write(b"\0" * n)
        fh.seek(_between_old_samples(len(pristine), 3))
        fh.write(np.full(n // 2, np.nan, np.float16).tobytes())
    forget_verified()  # a new process
    with caplog.at_level(logging.WARNING, logger="alignbench.store"):
        g = store.image_features("tiny-vit", ds, "test", progress=False, batch_size=512)
    assert store.last_action == "encoded"
    assert any("tokens.npy fails its checksum" in r.message and str(path) in r.message for r in caplog.records)
    assert (path / "tokens.npy").read_bytes() == pristine
    assert np.isfinite(g.token_array().astype(np.float32)).all()
    reasons = list((store.root / ".quarantine").glob("*/reason.txt"))
    assert len(reasons) == 1 and "tokens.npy fails its checksum" in reasons[0].read_text()
    assert not (reasons[0].parent / "tokens.npy").exists()  # the damaged data does not keep the space


@pytest.fixture
def small(tmp_path):
    return FeatureStore(tmp_path / "cache", checkpoint_seconds=0), ArrayClasses(tmp_path / "data", n=12)


def test_meta_bit_flip_is_caught(small, caplog):
    """``"n_prefix": 1 -> 0`` in meta.json used to pass ``encode --verify`` and break the fit later."""
    store, ds = small
    f = store.image_features("tiny-vit", ds, "test", progress=False)
    assert f.n_prefix == 1
    meta_file = Path(f.meta["path"]) / "meta.json"
    text = meta_file.read_text()
    assert '"n_prefix": 1' in text
    meta_file.write_text(text.replace('"n_prefix": 1', '"n_prefix": 0'))
    forget_verified()
    assert not store.has_images("tiny-vit", ds, "test")
    with caplog.at_level(logging.WARNING, logger="alignbench.store"):
        g = store.image_features("tiny-vit", ds, "test", progress=False, verify=True)
    assert store.last_action == "encoded" and g.n_prefix == 1
    assert any("meta.json fails its checksum" in r.message for r in caplog.records)


def test_meta_bit_flip_is_caught_by_encode_verify(tmp_path, capsys, monkeypatch):
    """The CLI's ``encode --verify`` re-encodes an entry whose meta.json was altered."""
    from alignbench.cli import main

    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for c in ("airplane", "automobile"):
        for j in range(2):
            from PIL import Image

            (data / "cifar10" / "test" / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                data / "cifar10" / "test" / c / f"{j}.png")
    argv = ["encode", "--pair", "tiny-vit+tiny-text", "--datasets", "cifar10", "--splits", "test", "--data-root",
            str(data), "--cache", str(tmp_path / "cache"), "--no-progress"]
    assert main(argv) == 0
    meta_file = next((tmp_path / "cache" / "tiny-vit").glob("*/meta.json"))
    meta_file.write_text(meta_file.read_text().replace('"n_prefix": 1', '"n_prefix": 0'))
    capsys.readouterr()
    forget_verified()
    assert main([*argv, "--verify"]) == 0
    out = capsys.readouterr().out
    assert "1 encoded, 1 reused" in out, out
    assert json.loads(meta_file.read_text())["n_prefix"] == 1


@pytest.mark.parametrize("poison", ["nan", "fp16-overflow"])
def test_non_finite_features_are_refused_when_written(small, poison):
    """A broken model's NaNs (or tokens too big for float16) stop the encode with the entry and the fix named."""
    import torch

    store, ds = small
    enc = store.encoder("tiny-vit", modality="image")
    with torch.no_grad():
        if poison == "nan":
            enc.model.blocks[1].mlp.fc2.bias[3] = float("nan")
        else:
            enc.model.blocks[1].mlp.fc2.weight.mul_(1e9)
    with pytest.raises(FeatureError) as err:
        store.image_features("tiny-vit", ds, "test", progress=False, batch_size=4)
    msg = str(err.value)
    entry = store.entry_key("images", "tiny-vit", ds, "test").path
    assert str(entry) in msg and "alignbench encode --datasets arrayclasses --splits test --dtype fp32" in msg
    assert "\n" not in msg
    assert not store.entries() and not store.partial()


def _can_mount_tmpfs(where: Path) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


def test_full_disk_is_one_line_naming_the_folder_and_the_space(tmp_path, capsys):
    """A 1 MB tmpfs as the cache: one line, exit 2, nothing partial left."""
    from alignbench.cli import main

    mnt = tmp_path / "small-disk"
    if not _can_mount_tmpfs(mnt):
        pytest.skip("mounting a tmpfs needs root and a kernel that allows it here")
    try:
        data = tmp_path / "data"
        from PIL import Image

        rng = np.random.default_rng(0)
        (data / "cifar10" / "test" / "cat").mkdir(parents=True)
        for j in range(4):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                data / "cifar10" / "test" / "cat" / f"{j}.png")
        code = main(["encode", "--pair", "tiny-vit+tiny-text", "--datasets", "cifar10", "--splits", "test",
                     "--data-root", str(data), "--cache", str(mnt), "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert code == 2
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert "not enough disk space in " + str(mnt / "tiny-vit") in err and "needs about" in err
        store = FeatureStore(mnt)
        assert not store.entries() and not store.partial()
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


FULL_SCRIPT = """
import resource, signal, sys
sys.path.insert(0, {tests!r})
from test_store_probes import ArrayClasses
from alignbench.errors import DiskFullError
from alignbench.store import FeatureStore
ds = ArrayClasses({data!r}, n=256)
store = FeatureStore({cache!r})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
try:
    store.image_features("tiny-vit", ds, "test", progress=False, batch_size=16)
except DiskFullError as exc:
    print("DISKFULL", exc.__cause__ is None and exc.__suppress_context__, exc)
"""


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="no file-size limit on this OS")
def test_file_size_limit_mid_encode_removes_the_partial_entry(tmp_path):
    """The disk fills while rows are written (preflight passed): one error, the partial folder removed."""
    cache = tmp_path / "cache"
    script = FULL_SCRIPT.format(tests=str(Path(__file__).parent), data=str(tmp_path / "data"), cache=str(cache),
                                limit=64 << 10)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert line.startswith("DISKFULL True not enough disk space in " + str(cache / "tiny-vit")), line
    from alignbench.store.locking import size_text

    need = 256 * 17 * 32 * 2 + 256 * 32 * 4 + 2 * 128  # fp16 tokens + fp32 pooled + .npy headers
    assert f"needs about {size_text(need)}" in line
    store = FeatureStore(cache)
    assert not store.entries() and not store.partial()
