"""Loaders on the project's real shared datasets (``data_root`` fixture; skipped when absent).

Listing is fast (file lists only), so most of these run in the default suite;
only the test that decodes every image of a split is marked slow.
"""
from __future__ import annotations

import numpy as np
import pytest

from alignbench.datasets import get_dataset


def test_flickr8k_official_split(data_root):
    ds = get_dataset("flickr8k", data_root)
    sizes = {}
    for split in ("train", "dev", "test"):
        images, idx = ds.images(split), ds.caption_image_index(split)
        sizes[split] = len(images)
        assert len(ds.captions(split)) == len(idx) == 5 * len(images)
        assert np.bincount(idx, minlength=len(images)).tolist() == [5] * len(images)
    assert sizes == {"train": 6000, "dev": 1000, "test": 1000}
    assert not set(ds.images("train").ids) & set(ds.images("test").ids)
    img = ds.images("test")[0]
    assert img.mode == "RGB" and img.size == (224, 224)


def test_cifar10_test_folder(data_root):
    ds = get_dataset("cifar10", data_root)
    images, labels = ds.images("test"), ds.labels("test")
    assert len(images) == 10000 and len(ds.classnames) == 10
    assert np.bincount(labels).tolist() == [1000] * 10
    assert images[len(images) - 1].size == (32, 32)


def test_fashion_mnist_test(data_root):
    ds = get_dataset("fashion-mnist", data_root)
    images, labels = ds.images("test"), ds.labels("test")
    assert len(images) == 10000
    assert np.bincount(labels).tolist() == [1000] * 10
    assert images[0].size == (28, 28)


def test_camvid_test_masks(data_root):
    ds = get_dataset("camvid", data_root)
    images = ds.images("test")
    assert len(images) == 233 and len(ds.classnames) == 11 and ds.ignore_index == 11
    seen = set()
    for i in range(len(images)):
        m = ds.mask("test", i)
        assert m.dtype == np.int64 and m.shape == (360, 480)
        seen |= set(np.unique(m).tolist())
    assert seen <= set(range(12)) and {0, 3, 11} <= seen  # sky, road and void all occur
    assert images[0].size == (480, 360)


@pytest.mark.parametrize("how", [("voc-mini", {}), ("voc", {"path": "voc-mini"})])
def test_voc_mini(data_root, how):
    name, options = how
    ds = get_dataset(name, data_root, **options)
    images = ds.images("val")
    assert len(images) == 3 and len(ds.classnames) == 21 and ds.background_index == 0
    for i in range(3):
        m = ds.mask("val", i)
        w, h = images[i].size
        assert m.shape == (h, w)
        assert set(np.unique(m).tolist()) <= set(range(21)) | {255}
        assert (m > 0).any() and (m < 255).any()


def test_data_command_on_shared_data(data_root, capsys):
    from alignbench.cli import main

    assert main(["data", "--data-root", str(data_root), "--check", "flickr8k", "cifar10", "fashion-mnist",
                 "camvid", "voc-mini"]) == 0
    out = capsys.readouterr().out
    assert "test      1000 images, 5000 captions  ok" in out and "233 images with masks  ok" in out


@pytest.mark.slow
def test_flickr8k_every_test_image_decodes(data_root):
    images = get_dataset("flickr8k", data_root).images("test")
    sizes = {images[i].size for i in range(len(images))}
    assert sizes == {(224, 224)}
