"""Tasks against hand-computed metrics on tiny cases.

The method here is the identity map (features are already in a shared
space), so every expected number below is worked out by hand from the
feature values written in the test.  ``MemorySource`` serves real feature
containers from memory with the FeatureSource interface.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from alignbench.datasets.base import CaptionDataset, ClassificationDataset, ImageList, SegmentationDataset
from alignbench.errors import AlignbenchError, FeatureError
from alignbench.features import ImageFeatures, Pairs, TextFeatures
from alignbench.methods.base import IdentityMethod
from alignbench.registry import TASKS
from alignbench.tasks.classification import ClassificationTask, classification_metrics
from alignbench.tasks.retrieval import RetrievalTask, recall_at, retrieval_metrics, retrieval_ranks
from alignbench.tasks.segmentation import (
    SegmentationTask,
    confusion_update,
    segmentation_metrics,
    upsample_argmax,
)


Identity = IdentityMethod  # features already share a space here


class MemorySource:
    """The FeatureSource interface over in-memory containers."""

    def __init__(self, datasets, images=None, texts=None, prompts=None):
        self._datasets, self._images = datasets, images or {}
        self._texts, self._prompts = texts or {}, prompts or {}

    def dataset(self, name):
        return self._datasets[name]

    def images(self, name, split):
        return self._images[name, split]

    dense_images = images

    def texts(self, name, split):
        return self._texts[name, split]

    def prompts(self, name):
        return self._prompts[name]

    def pairs(self, name, split):
        idx = self._datasets[name].caption_image_index(split)
        return Pairs(self.images(name, split), self.texts(name, split), idx, np.arange(len(idx)))


def _no_images(n):
    return ImageList([str(i) for i in range(n)], lambda i: None, "memory")


class Captions(CaptionDataset):
    registry_name = "memcaps"

    def __init__(self, root, caption_image):
        super().__init__(root)
        self._ci = np.asarray(caption_image)

    def images(self, split):
        return _no_images(int(self._ci.max()) + 1)

    def captions(self, split):
        return [f"c{i}" for i in range(len(self._ci))]

    def caption_image_index(self, split):
        return self._ci.copy()


class Labels(ClassificationDataset):
    registry_name = "memcls"

    def __init__(self, root, labels, n_classes):
        super().__init__(root)
        self._labels, self._n = np.asarray(labels), n_classes

    @property
    def classnames(self):
        return [f"class{i}" for i in range(self._n)]

    def images(self, split):
        return _no_images(len(self._labels))

    def labels(self, split):
        return self._labels.copy()


class Masks(SegmentationDataset):
    registry_name = "memseg"
    ignore_index = 255

    def __init__(self, root, masks, classnames, background_index=None):
        super().__init__(root)
        self._masks, self._names = masks, classnames
        self.background_index = background_index

    @property
    def classnames(self):
        return self._names

    def images(self, split):
        return _no_images(len(self._masks))

    def mask(self, split, i):
        return np.asarray(self._masks[i], dtype=np.int64)


def one_hot_prompts(n_classes, n_templates=2):
    """Class-major prompts whose template average is the one-hot class vector."""
    pooled = np.repeat(np.eye(n_classes, dtype=np.float32), n_templates, axis=0)
    return TextFeatures(pooled=pooled), n_classes, n_templates


# -- retrieval ------------------------------------------------------------------------
# 3 images, 5 captions (image 0 and 1 have two each).  With images = identity
# rows and a dot-product similarity, S[i, j] = TEXT[j, i].
S = np.array(
    [
        [0.1, 0.9, 0.8, 0.2, 0.0],
        [0.9, 0.8, 0.1, 0.7, 0.0],
        [0.5, 0.4, 0.3, 0.2, 0.1],
    ],
    dtype=np.float32,
)
CAPTION_IMAGE = np.array([0, 0, 1, 1, 2])


def dot(a, b):
    return a @ b.T


def test_retrieval_hand_computed_ranks():
    i2t, t2i = retrieval_ranks(torch.eye(3), torch.from_numpy(S.T.copy()), CAPTION_IMAGE, dot)
    # image 0: its 2nd caption scores 0.9, the best of all → rank 0 (its 1st caption, 0.1, does not matter)
    # image 1: best own caption 0.7; captions 0 (0.9) and 1 (0.8) above → rank 2
    # image 2: own caption 0.1; the 4 others are higher → rank 4
    assert i2t.tolist() == [0, 2, 4]
    # caption 0 → column [0.1, 0.9, 0.5]: two images above → 2; caption 2 → [0.8, 0.1, 0.3] → 2
    assert t2i.tolist() == [2, 0, 2, 0, 0]


def test_retrieval_any_caption_is_a_hit_and_gallery_holds_each_image_once():
    m = retrieval_metrics(torch.eye(3), torch.from_numpy(S.T.copy()), CAPTION_IMAGE, dot, ks=(1, 2, 3, 5))
    assert m["i2t_R@1"] == pytest.approx(100 / 3)
    assert m["i2t_R@3"] == pytest.approx(200 / 3)
    assert m["i2t_R@5"] == pytest.approx(100.0)
    assert m["t2i_R@1"] == pytest.approx(60.0)
    assert m["t2i_R@2"] == pytest.approx(60.0)
    # 3 unique images: every caption's image is within the top 3 (a per-caption gallery would have 5 entries)
    assert m["t2i_R@3"] == pytest.approx(100.0)


def test_retrieval_ties_count_against_the_query():
    """A collapsed method (all scores equal) must not get perfect recall."""
    img = torch.ones(3, 4)
    txt = torch.ones(5, 4)
    i2t, t2i = retrieval_ranks(img, txt, CAPTION_IMAGE, dot)
    assert (i2t >= 3).all() and (t2i == 2).all()
    assert recall_at(t2i, (1,))[1] == 0.0


def test_retrieval_refuses_nan_scores():
    txt = torch.from_numpy(S.T.copy())
    txt[0, 0] = float("nan")
    with pytest.raises(FeatureError, match="non-finite"):
        retrieval_ranks(torch.eye(3), txt, CAPTION_IMAGE, dot)


def test_retrieval_is_chunked_consistently():
    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.standard_normal((50, 8)).astype(np.float32))
    txt = torch.from_numpy(rng.standard_normal((250, 8)).astype(np.float32))
    ci = np.repeat(np.arange(50), 5)
    whole = retrieval_ranks(img, txt, ci, dot, chunk=10_000)
    small = retrieval_ranks(img, txt, ci, dot, chunk=7, max_matrix=0)  # recomputed per caption chunk
    assert all(np.array_equal(a, b) for a, b in zip(whole, small))


def test_retrieval_task_evaluate(tmp_path):
    ds = Captions(tmp_path, CAPTION_IMAGE)
    src = MemorySource(
        {"memcaps": ds},
        images={("memcaps", "test"): ImageFeatures(pooled=np.eye(3, dtype=np.float32))},
        texts={("memcaps", "test"): TextFeatures(pooled=S.T.copy())},
    )
    # cosine = dot here only up to each caption's norm: compute the expectation with cosine explicitly
    m = RetrievalTask().evaluate(Identity(), src, ds, "test")
    cos = torch.nn.functional.normalize(torch.from_numpy(S.T.copy()), dim=1).T.numpy()  # (3, 5)
    best = [max(cos[i, CAPTION_IMAGE == i]) for i in range(3)]
    expected_i2t_r1 = np.mean([(cos[i, CAPTION_IMAGE != i] < best[i]).all() for i in range(3)]) * 100
    assert m["i2t_R@1"] == pytest.approx(expected_i2t_r1)
    assert set(m) == {f"{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)}


# -- classification -------------------------------------------------------------------
def test_classification_metrics_top1_and_mean_per_class():
    m = classification_metrics(np.array([0, 0, 0, 0]), np.array([0, 0, 0, 1]), n_classes=3)
    assert m["top1"] == pytest.approx(75.0)
    assert m["mean_per_class"] == pytest.approx(50.0)  # class 0: 3/3, class 1: 0/1, class 2 absent


def test_classification_task_evaluate(tmp_path):
    labels = [0, 1, 2, 2]
    # image 3 (class 2) looks like class 0 → 3/4 right; per class: 1, 1, 1/2
    feats = np.array([[1, 0, 0], [0, 1, 0], [0.1, 0, 1], [1, 0, 0.2]], dtype=np.float32)
    ds = Labels(tmp_path, labels, 3)
    src = MemorySource(
        {"memcls": ds},
        images={("memcls", "test"): ImageFeatures(pooled=feats)},
        prompts={"memcls": one_hot_prompts(3)},
    )
    m = ClassificationTask().evaluate(Identity(), src, ds, "test")
    assert m["top1"] == pytest.approx(75.0)
    assert m["mean_per_class"] == pytest.approx(100 * (1 + 1 + 0.5) / 3)


# -- segmentation ---------------------------------------------------------------------
def test_confusion_matrix_excludes_the_ignore_label():
    conf = np.zeros((3, 3), dtype=np.int64)
    stray = confusion_update(conf, np.array([[0, 1], [255, 2]]), np.array([[0, 2], [1, 2]]), 255)
    assert stray == 0
    expected = np.zeros((3, 3), dtype=np.int64)
    expected[0, 0] = expected[1, 2] = expected[2, 2] = 1  # the ignored pixel's prediction (1) is not counted
    assert np.array_equal(conf, expected)
    # a label that is neither a class nor the ignore label is excluded and reported
    assert confusion_update(conf, np.array([7, 0]), np.array([1, 0]), 255) == 1
    assert conf[0, 0] == 2


def test_segmentation_metrics_with_and_without_background():
    conf = np.zeros((3, 3), dtype=np.int64)
    confusion_update(conf, np.array([[0, 1], [255, 2]]), np.array([[0, 2], [1, 2]]), 255)
    m = segmentation_metrics(conf, ["background", "cat", "dog"], background_index=0)
    # IoU: background 1/1, cat 0/1, dog 1/2
    assert m["mIoU"] == pytest.approx(50.0)
    assert m["mIoU_fg"] == pytest.approx(25.0)
    assert m["pixel_acc"] == pytest.approx(200 / 3)
    assert m["fwIoU"] == pytest.approx(100 * (1 / 3 * 1 + 1 / 3 * 0 + 1 / 3 * 0.5))
    assert m["IoU/dog"] == pytest.approx(50.0)
    # no background class: every class is foreground, so the foreground mean is the all-class mean
    no_bg = segmentation_metrics(conf, ["a", "b", "c"], background_index=None)
    assert no_bg["mIoU_fg"] == no_bg["mIoU"] == pytest.approx(100 * (1 + 0 + 0.5) / 3)


def test_upsample_argmax_keeps_quadrants():
    scores = torch.zeros(3, 2, 2)
    scores[0, 0, 0] = scores[1, 0, 1] = scores[2, 1, 0] = scores[2, 1, 1] = 1.0
    pred = upsample_argmax(scores, (4, 6))
    assert pred.shape == (4, 6)
    assert (pred[:2, :3] == 0).all() and (pred[:2, 3:] == 1).all() and (pred[2:] == 2).all()


BG_CAT, CAT, DOG, BG_DOG = [1.0, 0.6, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.6]


def _seg_source(tmp_path, background_index):
    """Two images on a 2×2 grid with 2×2 masks (so upsampling is the identity)."""
    tokens = np.array([[BG_CAT, CAT, DOG, DOG], [CAT, CAT, BG_DOG, DOG]], dtype=np.float32)
    masks = [[[0, 1], [2, 1]], [[1, 255], [2, 0]]]
    ds = Masks(tmp_path, masks, ["background", "cat", "dog"], background_index)
    feats = ImageFeatures(pooled=tokens.mean(1), tokens=tokens, grid=(2, 2), n_prefix=0)
    return ds, MemorySource({"memseg": ds}, images={("memseg", "test"): feats}, prompts={"memseg": one_hot_prompts(3)})


def test_segmentation_task_hand_computed(tmp_path):
    ds, src = _seg_source(tmp_path, background_index=0)
    task = SegmentationTask()
    task.batch_size = 1  # exercise the streaming over batches
    m = task.evaluate(Identity(), src, ds, "test")
    # confusion (rows gt bg/cat/dog): [1,0,1], [0,2,1], [1,0,1] → IoU 1/3, 2/3, 1/4
    assert m["mIoU"] == pytest.approx(100 * (1 / 3 + 2 / 3 + 1 / 4) / 3)
    assert m["mIoU_fg"] == pytest.approx(100 * (2 / 3 + 1 / 4) / 2)
    assert m["pixel_acc"] == pytest.approx(100 * 4 / 7)
    assert m["fwIoU"] == pytest.approx(100 * (2 / 7 * 1 / 3 + 3 / 7 * 2 / 3 + 2 / 7 * 1 / 4))
    assert m["mean_acc"] == pytest.approx(100 * (1 / 2 + 2 / 3 + 1 / 2) / 3)
    # background pixels ignored, argmax over cat/dog only: cat 2/3, dog 2/3
    assert m["mIoU_nobg"] == pytest.approx(100 * 2 / 3)


def test_segmentation_without_background_class(tmp_path):
    ds, src = _seg_source(tmp_path, background_index=None)
    m, outcomes = SegmentationTask().evaluate_with_outcomes(Identity(), src, ds, "test")
    assert "mIoU_nobg" not in m
    assert m["mIoU"] == m["mIoU_fg"] == pytest.approx(100 * (1 / 3 + 2 / 3 + 1 / 4) / 3)
    # the bootstrap path agrees: each resample's foreground mean is its all-class mean
    w = np.random.default_rng(0).multinomial(2, [0.5, 0.5], size=5).T
    r = SegmentationTask().resampled_metrics(outcomes, {"image": w})
    np.testing.assert_allclose(r["mIoU_fg"], r["mIoU"])


# -- wrong kinds and the registry ---------------------------------------------------
def test_segmentation_on_a_caption_dataset_is_refused(tmp_path):
    with pytest.raises(AlignbenchError, match=r"flickr8k has no segmentation masks.*segmentation datasets:"):
        SegmentationTask().check_dataset("flickr8k", "captions")
    ds = Captions(tmp_path, CAPTION_IMAGE)
    with pytest.raises(AlignbenchError, match="memcaps has no segmentation masks"):
        SegmentationTask().evaluate(Identity(), MemorySource({"memcaps": ds}), ds, "test")
    with pytest.raises(AlignbenchError, match="has no captions"):
        RetrievalTask().check_dataset("cifar10", "classification")


def test_tasks_are_registered():
    assert {"retrieval", "classification", "segmentation"} <= set(TASKS.names())
    assert TASKS.get("seg") is SegmentationTask
    for name in ("retrieval", "classification", "segmentation"):
        task = TASKS.get(name)()
        assert task.headline and all(h in task.metric_labels for h in task.headline)

