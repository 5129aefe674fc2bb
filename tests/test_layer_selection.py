"""Mutual k-NN alignment and STRUCTURE's layer selection."""
from __future__ import annotations

import math

import numpy as np
import pytest

from alignbench.errors import ConfigError, FeatureError
from alignbench.layer_selection import default_k, knn_indices, mutual_knn, select_layers


def naive_mutual_knn(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Reference: loops over rows, cosine similarity, self excluded."""

    def neighbours(x):
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        out = []
        for i in range(len(x)):
            sims = x @ x[i]
            sims[i] = -np.inf
            out.append(set(np.argsort(-sims, kind="stable")[:k].tolist()))
        return out

    na, nb = neighbours(a), neighbours(b)
    return float(np.mean([len(na[i] & nb[i]) / k for i in range(len(a))]))


def test_default_k_is_ceil_two_cube_root():
    assert default_k(5000) == math.ceil(2 * 5000 ** (1 / 3)) == 35
    assert default_k(1000) == 20
    assert default_k(3) == 2  # capped at n - 1


def test_mutual_knn_matches_naive_reference():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((60, 5))
    b = a @ rng.standard_normal((5, 7)) + 0.8 * rng.standard_normal((60, 7))
    for k in (1, 4, 9):
        assert mutual_knn(a, b, k) == pytest.approx(naive_mutual_knn(a, b, k))


def test_identical_features_score_one_and_random_about_k_over_n():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((400, 16))
    assert mutual_knn(a, a.copy(), 10) == pytest.approx(1.0)
    assert mutual_knn(a, 3.0 * a) == pytest.approx(1.0)  # cosine: scale-invariant
    chance = np.mean([mutual_knn(a, rng.standard_normal((400, 16)), 10) for _ in range(3)])
    assert chance == pytest.approx(10 / 399, abs=0.01)


def test_knn_excludes_self_and_rejects_bad_input():
    x = np.random.default_rng(2).standard_normal((20, 3))
    idx = knn_indices(x, 4)
    assert idx.shape == (20, 4) and not (idx == np.arange(20)[:, None]).any()
    with pytest.raises(ConfigError):
        knn_indices(x, 20)
    x[3, 1] = np.nan
    with pytest.raises(FeatureError):
        knn_indices(x, 4)
    with pytest.raises(FeatureError):
        mutual_knn(np.ones((5, 2)), np.ones((6, 2)))


def test_select_layers_finds_the_planted_pair():
    rng = np.random.default_rng(3)
    z = rng.standard_normal((300, 6))
    noise = lambda d: rng.standard_normal((300, d))  # noqa: E731
    # image layer 2 and text layer 0 share the latent most cleanly
    image = {0: noise(10), 1: z @ rng.standard_normal((6, 10)) + 2.0 * noise(10), 2: z @ rng.standard_normal((6, 10))}
    text = {0: z @ rng.standard_normal((6, 8)) + 0.1 * noise(8), 1: noise(8)}
    choice = select_layers(image, text, sample=250, seed=0)
    assert (choice.image_layer, choice.text_layer) == (2, 0)
    assert choice.scores.shape == (3, 2) and choice.n == 250 and choice.k == default_k(250)
    assert choice.score == choice.scores.max()
    frame = choice.as_frame()
    assert frame.loc[2, 0] == choice.score and list(frame.index) == [0, 1, 2]
    assert choice.to_dict()["image_layer"] == 2
    # the sample is seeded
    again = select_layers(image, text, sample=250, seed=0)
    assert np.array_equal(again.scores, choice.scores)


def test_select_layers_rejects_mismatched_rows_and_empty_choices():
    with pytest.raises(FeatureError):
        select_layers({0: np.ones((10, 2))}, {0: np.ones((11, 2))})
    with pytest.raises(ConfigError):
        select_layers({}, {0: np.ones((10, 2))})


class _TinyCaptions:
    """A few generated images with two captions each (built lazily: needs PIL and the datasets base)."""

    @staticmethod
    def create(root, n: int = 10):
        from PIL import Image

        from alignbench.datasets.base import CaptionDataset, FileImageLoader, ImageList, files_fingerprint

        words = "a dog runs on the grass while two children play with a red ball".split()
        folder = root / "train"
        folder.mkdir(parents=True)
        rng = np.random.default_rng(0)
        paths = []
        for i in range(n):
            p = folder / f"img{i:03d}.png"
            Image.fromarray(rng.integers(0, 256, (28, 36, 3), dtype=np.uint8)).save(p)
            paths.append(p)

        class Caps(CaptionDataset):
            registry_name = "tinycaps-layers"
            splits = ("train",)

            def images(self, split):
                self.check_split(split)
                return ImageList([p.name for p in paths], FileImageLoader(paths), files_fingerprint(paths))

            def caption_image_index(self, split):
                return np.repeat(np.arange(n), 2)

            def captions(self, split):
                return [" ".join(words[: 3 + (i * 5) % 9]) for i in range(2 * n)]

        return Caps(root)


def test_select_layers_for_pair_encodes_each_layer_through_the_store(tmp_cache, tmp_path):
    from alignbench.layer_selection import select_layers_for_pair
    from alignbench.store import FeatureStore

    store = FeatureStore(tmp_cache)
    ds = _TinyCaptions.create(tmp_path / "data")
    n_img = store.encoder("tiny-vit").num_layers
    n_txt = store.encoder("tiny-text").num_layers
    choice = select_layers_for_pair("tiny-vit+tiny-text", ds, "train", store=store, sample=8, seed=0,
                                    progress=False)
    assert choice.image_layers == list(range(n_img)) and choice.text_layers == list(range(n_txt))
    assert choice.scores.shape == (n_img, n_txt) and choice.n == 8  # 8 distinct images, one caption each
    assert 0.0 <= choice.scores.min() and choice.scores.max() <= 1.0
    assert choice.score == choice.scores.max()
    # restricted search reuses the cache and agrees on the restricted cells
    sub = select_layers_for_pair("tiny-vit+tiny-text", ds, "train", store=store, sample=8, seed=0,
                                 image_layers=[n_img - 1], text_layers=[0], progress=False)
    assert sub.scores[0, 0] == pytest.approx(choice.scores[n_img - 1, 0])
