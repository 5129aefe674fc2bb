"""Small generated datasets in exactly the layouts of the real loaders (Flickr8k CSV + split lists,
CIFAR-10 ImageFolder, CamVid SegNet folders), for end-to-end tests on the tiny encoders.

``tiny_root`` and ``dirs`` in conftest.py serve them to tests.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

PAIR = "tiny-vit+tiny-text"
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["square", "circle", "stripe", "cross", "dot"]
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CAMVID = ["sky", "building", "pole", "road", "pavement", "tree", "sign symbol", "fence", "car", "pedestrian",
          "bicyclist"]  # fmt: skip


def _image(rng, size=(40, 40)):
    from PIL import Image

    return Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8))


def make_tiny_data(root: Path, n_images: int = 30) -> Path:
    """Flickr8k (30 images × 5 captions, 18/6/6 split), CIFAR-10 (2 per class) and CamVid (3 scenes)."""
    rng = np.random.default_rng(0)
    fl = root / "flickr8k"
    (fl / "images").mkdir(parents=True)
    (fl / "splits").mkdir()
    names = [f"{1000 + i}_tiny.jpg" for i in range(n_images)]
    rows = ["image,caption"]
    for i, name in enumerate(names):
        _image(rng).save(fl / "images" / name, quality=90)
        for k in range(5):
            rows.append(f'{name},"A {COLOURS[i % 6]} {SHAPES[(i + k) % 5]} number {i} , take {k} ."')
    (fl / "captions.txt").write_text("\n".join(rows) + "\n")
    cut = [int(n_images * 0.6), int(n_images * 0.8)]
    for split, part in zip(("train", "dev", "test"), np.split(np.array(names), cut)):
        (fl / "splits" / f"{split}.txt").write_text("\n".join(part) + "\n")

    for c in CIFAR10:
        d = root / "cifar10" / "test" / c
        d.mkdir(parents=True)
        for k in range(2):
            _image(rng, (32, 32)).save(d / f"{c}_{k}.jpg")

    from PIL import Image

    cv = root / "camvid"
    for sub in ("test", "testannot"):
        (cv / sub).mkdir(parents=True)
    ids = [f"0001TP_00{i}" for i in range(3)]
    for i in ids:
        _image(rng, (48, 36)).save(cv / "test" / f"{i}.jpg")
        mask = rng.integers(0, 12, (36, 48), dtype=np.uint8)  # 11 = void
        Image.fromarray(mask).save(cv / "testannot" / f"{i}.png")
    (cv / "test.txt").write_text("\n".join(ids) + "\n")
    (cv / "classes.txt").write_text("\n".join(CAMVID) + "\n")
    return root
