"""Per-query / per-image outcomes: every metric recomputes exactly from what a result stores.

Random (seeded) features through the real tasks with the identity method; the
outcomes go through the JSON encoding a result file uses, and the metrics
recomputed from them must equal the task's metrics exactly (not approximately).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from test_tasks import Captions, Identity, Labels, Masks, MemorySource, one_hot_prompts

from alignbench.errors import DataError
from alignbench.features import ImageFeatures, TextFeatures
from alignbench.outcomes import Outcomes, decode_array, encode_array
from alignbench.tasks.classification import ClassificationTask
from alignbench.tasks.retrieval import RetrievalTask
from alignbench.tasks.segmentation import SegmentationTask


def _round_trip(outcomes: Outcomes) -> Outcomes:
    return Outcomes.from_json(json.loads(json.dumps(outcomes.to_json())))


def _retrieval(tmp_path, rng):
    ci = np.repeat(np.arange(40), 3)
    rng.shuffle(ci)
    ds = Captions(tmp_path, ci)
    img = rng.standard_normal((40, 6)).astype(np.float32)
    txt = (img[ci] + 1.5 * rng.standard_normal((len(ci), 6))).astype(np.float32)
    src = MemorySource({"memcaps": ds}, images={("memcaps", "test"): ImageFeatures(pooled=img)},
                       texts={("memcaps", "test"): TextFeatures(pooled=txt)})  # fmt: skip
    return RetrievalTask(), src, ds


def _classification(tmp_path, rng):
    labels = rng.integers(0, 5, 300)
    feats = (np.eye(6)[labels] + 0.8 * rng.standard_normal((300, 6))).astype(np.float32)
    ds = Labels(tmp_path, labels, 6)  # class 5 never occurs: mean per-class skips it
    src = MemorySource({"memcls": ds}, images={("memcls", "test"): ImageFeatures(pooled=feats)},
                       prompts={"memcls": one_hot_prompts(6)})  # fmt: skip
    return ClassificationTask(), src, ds


def _segmentation(tmp_path, rng, background_index=0):
    n, grid = 12, (3, 3)
    masks = rng.integers(0, 4, (n, 6, 6))
    masks[masks == 3] = 255  # ignore label
    masks[0] = 1  # an image with one class only
    tokens = rng.standard_normal((n, 9, 3)).astype(np.float32)
    ds = Masks(tmp_path, list(masks), ["background", "cat", "dog"], background_index)
    feats = ImageFeatures(pooled=tokens.mean(1), tokens=tokens, grid=grid, n_prefix=0)
    src = MemorySource({"memseg": ds}, images={("memseg", "test"): feats}, prompts={"memseg": one_hot_prompts(3)})
    task = SegmentationTask()
    task.batch_size = 5
    return task, src, ds


CASES = {"retrieval": _retrieval, "classification": _classification, "segmentation": _segmentation}


@pytest.mark.parametrize("name", list(CASES))
def test_metrics_recompute_exactly_from_stored_outcomes(name, tmp_path):
    task, src, ds = CASES[name](tmp_path, np.random.default_rng(3))
    metrics, outcomes = task.evaluate_with_outcomes(Identity(), src, ds, "test")
    assert metrics == task.evaluate(Identity(), src, ds, "test")  # evaluate() still returns the metrics dict
    stored = _round_trip(outcomes)
    recomputed = task.metrics_from_outcomes(stored)
    assert recomputed == metrics  # exact, every metric
    assert len(metrics) >= 2 and 0 < min(v for v in metrics.values() if v == v) < 100
    # one "resample" that draws every unit once is the dataset itself
    ones = {u: np.ones((n, 1), dtype=np.float32) for u, n in stored.units.items()}
    resampled = task.resampled_metrics(stored, ones)
    for k, v in metrics.items():
        assert resampled[k][0] == pytest.approx(v, rel=1e-6, nan_ok=True), k


def test_segmentation_outcomes_are_per_image_confusions_summing_to_the_dataset_one(tmp_path):
    task, src, ds = _segmentation(tmp_path, np.random.default_rng(5))
    _, out = task.evaluate_with_outcomes(Identity(), src, ds, "test")
    assert out.unit == "image" and out.units == {"image": 12}
    a = out.arrays
    per_image = np.zeros((12, 9), dtype=np.int64)
    per_image[a["row"], a["cell"]] = a["count"]
    masks = np.stack([ds.mask("test", i) for i in range(12)])
    assert per_image.sum(1).tolist() == [(m < 3).sum() for m in masks]  # labelled pixels of each image
    # the foreground-only matrices ignore background pixels as well
    nobg = np.zeros((12, 4), dtype=np.int64)
    nobg[a["nobg_row"], a["nobg_cell"]] = a["nobg_count"]
    assert nobg.sum(1).tolist() == [((m == 1) | (m == 2)).sum() for m in masks]


def test_retrieval_outcomes_are_first_correct_ranks_per_query(tmp_path):
    task, src, ds = _retrieval(tmp_path, np.random.default_rng(0))
    m, out = task.evaluate_with_outcomes(Identity(), src, ds, "test")
    assert out.units == {"image_query": 40, "caption_query": 120}
    assert m["t2i_R@1"] == 100 * (out.arrays["t2i_rank"] == 0).mean()


def test_array_encoding_is_compact_and_exact():
    a = np.arange(-3, 5000, 7).reshape(-1, 1)
    enc = encode_array(a)
    assert enc["dtype"] == "<i2" and enc["shape"] == [715, 1]
    assert np.array_equal(decode_array(json.loads(json.dumps(enc))), a)
    big = encode_array(np.array([0, 2**40]))
    assert big["dtype"] == "<i8" and decode_array(big).tolist() == [0, 2**40]
    assert len(encode_array(np.zeros(100_000, dtype=np.int64))["zlib_b64"]) < 1000
    with pytest.raises(DataError, match="does not match"):
        decode_array({**enc, "shape": [716, 1]})
    with pytest.raises(DataError, match="integer"):
        encode_array(np.array([0.5]))
