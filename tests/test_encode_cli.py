"""``alignbench encode`` end to end on tiny fixture datasets (real loaders, tiny encoders).

The fixtures are written in the exact layouts of the shared copies (Flickr8k
CSV + split lists, CIFAR-10 ImageFolder with only a test split), so the
command's real path — registry, loaders, store, summary — runs in seconds.
The slow test encodes a real Flickr8k slice with the default offline pair.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from alignbench.cli import main
from alignbench.store import FeatureStore

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _jpeg(path: Path, rng, size=(48, 40)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)


@pytest.fixture
def fixture_root(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "datasets"
    fk = root / "flickr8k"
    names = [f"{1000 + i}_abc.jpg" for i in range(9)]
    for n in names:
        _jpeg(fk / "images" / n, rng)
    rows = ["image,caption"]
    for i, n in enumerate(names):
        for k in range(5):
            rows.append(f'{n},"A dog number {i} runs, caption {k} {"very " * (k * 2)}fast ."')
    (fk / "captions.txt").write_text("\n".join(rows) + "\n")
    (fk / "splits").mkdir()
    for split, part in (("train", names[:5]), ("dev", names[5:7]), ("test", names[7:])):
        (fk / "splits" / f"{split}.txt").write_text("\n".join(part) + "\n")
    for c in CIFAR10:
        for j in range(2):
            _jpeg(root / "cifar10" / "test" / c / f"{c}_{j}.jpg", rng, (32, 32))
    return root


def _run(capsys, *argv) -> tuple[int, str]:
    code = main(["encode", *argv])
    return code, capsys.readouterr().out


def test_encode_command_encodes_then_reuses(fixture_root, tmp_cache, capsys):
    argv = ["--pair", "tiny-vit+tiny-text", "--datasets", "flickr8k,cifar10", "--data-root", str(fixture_root),
            "--no-progress", "--batch-size", "8"]
    code, out = _run(capsys, *argv)
    assert code == 0, out
    lines = out.splitlines()
    for label in ("images  tiny-vit flickr8k:train", "texts   tiny-text flickr8k:train",
                  "images  tiny-vit flickr8k:test", "images  tiny-vit cifar10:test", "prompts tiny-text cifar10"):
        assert any(line.strip().startswith("encoded") and label in line for line in lines), (label, out)
    assert any(line.startswith("skipped  cifar10:train") for line in lines)  # the fixture has no train split
    assert "8 encoded, 0 reused" in out  # flickr8k: 3 splits x (images, texts); cifar10: images, prompts

    store = FeatureStore(tmp_cache)
    kinds = sorted((e.kind, e.dataset, e.split) for e in store.entries())
    assert kinds == sorted([("images", "flickr8k", s) for s in ("train", "dev", "test")]
                           + [("texts", "flickr8k", s) for s in ("train", "dev", "test")]
                           + [("images", "cifar10", "test"), ("prompts", "cifar10", "prompts")])
    texts = store.text_features("tiny-text", "flickr8k", "train", data_root=fixture_root, progress=False)
    assert len(texts) == 25 and store.last_action == "reused"
    assert texts.texts[0].startswith("A dog number 0 runs, caption 0")

    code, out = _run(capsys, *argv)
    assert code == 0 and "0 encoded, 8 reused" in out, out

    code, out = _run(capsys, "--list")
    assert code == 0 and "8 entries" in out and "flickr8k" in out and "prompts" in out


def test_encode_command_options_change_the_key(fixture_root, tmp_cache, capsys):
    base = ["--pair", "tiny-vit+tiny-text", "--datasets", "flickr8k", "--splits", "test",
            "--data-root", str(fixture_root), "--no-progress"]
    assert _run(capsys, *base)[0] == 0
    code, out = _run(capsys, *base, "--image-layer", "0", "--dtype", "bf16", "--cache", str(tmp_cache / "x"))
    assert code == 0 and "2 encoded, 0 reused" in out
    entry = [e for e in FeatureStore(tmp_cache / "x").entries() if e.kind == "images"][0]
    assert (entry.layer, entry.dtype) == (0, "bf16")


def test_encode_command_errors(fixture_root, tmp_cache, capsys):
    code = main(["encode", "--pair", "tiny-vit+tiny-text", "--datasets", "flickr9k", "--data-root",
                 str(fixture_root), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "flickr8k" in err  # did you mean
    code = main(["encode", "--pair", "tiny-text+tiny-vit", "--datasets", "flickr8k", "--data-root",
                 str(fixture_root), "--no-progress"])
    assert code == 2 and "text encoder" in capsys.readouterr().err


def test_cached_rerun_does_not_import_torch(fixture_root, tmp_cache, capsys):
    """The cached path must stay light: no model, no torch (that is what keeps reruns under 3 s)."""
    argv = ["encode", "--pair", "tiny-vit+tiny-text", "--datasets", "flickr8k,cifar10", "--data-root",
            str(fixture_root), "--no-progress"]
    assert main(argv) == 0
    capsys.readouterr()
    code = ("import sys; from alignbench.cli import main; rc = main(sys.argv[1:]); "
            "print('TORCH' if 'torch' in sys.modules else 'NOTORCH'); sys.exit(rc)")
    t0 = time.time()
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "0 encoded" in r.stdout and r.stdout.strip().endswith("NOTORCH"), r.stdout
    print(f"cached rerun took {time.time() - t0:.2f} s")


@pytest.mark.slow
def test_real_pair_on_a_flickr8k_slice(data_root, tmp_cache):
    """Default offline pair (effnet-lite0 + minilm-l6) on 64 real Flickr8k images and their 320 captions."""
    import torch

    from alignbench.config import DEFAULT_PAIR
    from alignbench.datasets import get_dataset
    from alignbench.datasets.base import ImageList
    from alignbench.source import split_pair

    vision, text = split_pair(DEFAULT_PAIR)
    full = get_dataset("flickr8k", data_root)
    keep = full.caption_image_index("test") < 64

    class Flickr8kSlice(type(full)):
        registry_name = "flickr8k-first64"

        def images(self, split):
            im = full.images(split)
            return ImageList(im.ids[:64], im.loader, f"{im.fingerprint}-first64")

        def captions(self, split):
            return [c for c, k in zip(full.captions(split), keep) if k]

        def caption_image_index(self, split):
            return full.caption_image_index(split)[keep]

    ds = Flickr8kSlice(data_root)
    store = FeatureStore(tmp_cache)
    im = store.image_features(vision, ds, "test", progress=False, batch_size=16)
    tx = store.text_features(text, ds, "test", progress=False)
    assert len(im) == 64 and len(tx) == 320
    assert im.tokens.shape[:2] == (64, im.grid[0] * im.grid[1] + im.n_prefix)
    assert tx.offsets[-1] == tx.tokens.shape[0]
    im.validate()
    tx.validate()
    # stored rows equal the encoder applied directly (one image / one caption at a time)
    enc_v, enc_t = store.encoder(vision), store.encoder(text)
    with torch.inference_mode():
        one = enc_v.encode(enc_v.transform(ds.images("test")[5])[None])
        np.testing.assert_allclose(im.pooled[5], one.pooled[0].float().numpy(), rtol=1e-3, atol=1e-3)
        cap = enc_t.encode([ds.captions("test")[7]])
        np.testing.assert_allclose(tx.pooled[7], cap.pooled[0].float().numpy(), rtol=1e-3, atol=1e-3)
        n7 = int(tx.offsets[8] - tx.offsets[7])
        np.testing.assert_allclose(tx.tokens[tx.offsets[7]:tx.offsets[8]], cap.tokens[0, :n7].float().numpy(),
                                   rtol=1e-2, atol=1e-2)
    again = store.image_features(vision, ds, "test", progress=False)
    assert store.last_action == "reused"
    np.testing.assert_array_equal(again.pooled, im.pooled)



@pytest.mark.parametrize("pair", ["effnet-lite0+minilm-l6", "dinov2-s14+mpnet-base"])
def test_real_encoders_fingerprint_without_torch(pair):
    """Cache keys of the offline encoders are computed without importing torch (fast cached reruns)."""
    code = (
        "import sys\n"
        "from alignbench.source import split_pair\n"
        "from alignbench.store import FeatureStore\n"
        f"v, t = split_pair({pair!r})\n"
        "s = FeatureStore('/nonexistent')\n"
        "for name in (v, t):\n"
        "    try:\n"
        "        s.encoder(name).fingerprint()\n"
        "    except Exception as exc:  # offline package not installed here\n"
        "        print('SKIP', exc); sys.exit(0)\n"
        "print('TORCH' if 'torch' in sys.modules else 'NOTORCH')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    if r.stdout.startswith("SKIP"):
        pytest.skip(r.stdout.strip())
    assert r.stdout.strip() == "NOTORCH"


def test_effnet_layer_table_matches_the_network():
    pytest.importorskip("efficientnet_lite_pytorch")
    from alignbench.encoders.effnet import KNOWN_LAYER_SHAPES, computed_layer_shapes

    for variant, shapes in KNOWN_LAYER_SHAPES.items():
        assert computed_layer_shapes(variant) == shapes


def test_encode_segmentation_dataset_caches_what_segmentation_reads(tmp_path, tmp_cache, capsys):
    """``encode --datasets camvid`` caches the squashed whole images the segmentation task reads
    (FeatureSource.dense_images), not a centre-cropped copy nothing reads."""
    from fixtures_layouts import write_camvid

    from alignbench.source import FeatureSource

    root = tmp_path / "datasets"
    write_camvid(root)
    pair = "effnet-lite0+tiny-text"
    code, out = _run(capsys, "--pair", pair, "--datasets", "camvid", "--data-root", str(root), "--no-progress")
    assert code == 0, out
    store = FeatureStore(tmp_cache)
    images = [e for e in store.entries() if e.kind == "images"]
    assert len(images) == 1
    assert images[0].meta["key"]["encoder"]["preprocess"] != FeatureStore(tmp_cache / "crop").entry_key(
        "images", "effnet-lite0", "camvid", "test", data_root=root).key["encoder"]["preprocess"]
    assert images[0].path == store.entry_key("dense_images", "effnet-lite0", "camvid", "test", data_root=root).path
    src = FeatureSource(pair, store=store, data_root=root, progress=False)
    src.dense_images("camvid", "test")
    assert store.last_action == "reused"  # what segmentation asks for was encoded by `encode`
