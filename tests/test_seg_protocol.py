"""Segmentation protocols: foreground mIoU, ClearCLIP/SAIL's sliding windows, threshold, and their parsing.

Hand-sized examples: window placement and resize against mmseg's formulas,
overlap averaging, the background threshold, and the whole protocol equal to
the sliding one when an image is a single window (real store, tiny encoder).
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from alignbench.datasets.crops import layout_of
from alignbench.errors import AlignbenchError, ConfigError
from alignbench.features import ImageFeatures
from alignbench.refs import EvalSpec
from alignbench.seg_protocol import CropGrid, SegProtocol, predict, stitch
from alignbench.tasks.segmentation import SegmentationTask
from test_tasks import Identity, MemorySource, _seg_source


# -- windows ------------------------------------------------------------------------------
def test_resize_and_window_placement_follow_mmseg():
    g = CropGrid()  # short 448, crop 448, stride 224
    assert g.resized(375, 500) == (448, 597)  # 500 · 448/375 = 597.33
    assert g.resized(100, 5000) == (41, 2048)  # the long side is capped at 2048 (mmseg scale=(2048, 448))
    # 448 × 597: one row, (597 − 448 + 223) // 224 + 1 = 2 windows, the last flush with the right border
    assert g.boxes(448, 597) == [(0, 448, 0, 448), (0, 448, 149, 597)]
    assert g.boxes(448, 448) == [(0, 448, 0, 448)]
    # 900 wide: (900 − 448 + 223) // 224 + 1 = 4 windows at 0, 224, 448 and 672, the last moved back to 452
    assert [b[2:] for b in g.boxes(448, 900)] == [(0, 448), (224, 672), (448, 896), (452, 900)]
    # a side shorter than the crop gets one window of its own size (the long-side cap case)
    assert g.boxes(41, 2048)[0] == (0, 41, 0, 448)
    lay = layout_of([(375, 500), (448, 448)], g)
    assert lay.n_windows == 3 and list(lay.rows(1)) == [2]


def test_overlapping_windows_are_averaged():
    # two constant windows over a 2×3 canvas overlapping in the middle column: 1, (1+3)/2, 3
    w1, w2 = torch.full((2, 1, 1), 1.0), torch.full((2, 1, 1), 3.0)
    w2[1] = 5.0
    out = stitch([w1, w2], [(0, 2, 0, 2), (0, 2, 1, 3)], (2, 3))
    assert out.shape == (2, 3, 2)
    np.testing.assert_allclose(out[..., 0].numpy(), [[1, 2, 3], [1, 2, 3]])
    np.testing.assert_allclose(out[..., 1].numpy(), [[1, 3, 5], [1, 3, 5]])


def test_threshold_sends_unsure_pixels_to_background():
    scores = torch.tensor([[[0.0, 0.0, 0.1], [0.0, 5.0, 0.0], [2.0, 0.0, 0.0]]])  # (1, 3 pixels, 3 classes)
    slide = SegProtocol.parse({"protocol": "slide", "logit_scale": "1", "threshold": "0.5"})
    # softmax: pixel 0 ≈ (.32, .32, .35) → unsure → background 0; pixel 1 → class 1 (p ≈ .99); pixel 2 → 0 anyway
    assert predict(scores, slide, background_index=0).tolist() == [[0, 1, 0]]
    no_thd = SegProtocol.parse({"protocol": "slide", "logit_scale": "1", "threshold": "none"})
    assert predict(scores, no_thd, background_index=0).tolist() == [[2, 1, 0]]
    # the logit scale sharpens: ×50 makes pixel 0 sure of class 2 (p ≈ .99)
    sharp = SegProtocol.parse({"protocol": "slide", "threshold": "0.5"})
    assert predict(scores, sharp, background_index=0).tolist() == [[2, 1, 0]]


# -- parsing, defaults per dataset, keys ------------------------------------------------------
def test_protocol_defaults_per_dataset_and_keys():
    voc = EvalSpec.parse("segmentation:voc:val:protocol=slide").resolved()
    assert voc.options.threshold == 0.5 and voc.options.grid == CropGrid()
    assert voc.key == "segmentation/voc:val@slide,threshold=0.5"
    ctx = EvalSpec.parse("seg:pascal-context-60:protocol=slide").resolved()
    assert ctx.options.threshold == 0.15 and ctx.key == "segmentation/pascal-context-60:val@slide,threshold=0.15"
    cam = EvalSpec.parse("segmentation:camvid:protocol=slide:stride=112").resolved()
    assert cam.options.threshold is None and cam.key == "segmentation/camvid@slide,stride=112"
    # the default protocol typed out is the default evaluation: same key, same record
    whole = EvalSpec.parse("segmentation:camvid:test:protocol=whole").resolved()
    assert whole == EvalSpec.parse("segmentation:camvid").resolved() and whole.key == "segmentation/camvid"
    assert "protocol" not in whole.to_dict()
    # the text form reads back to the same evaluation
    for ev in (voc, ctx, cam):
        assert EvalSpec.parse(str(ev)).resolved() == ev
    off = EvalSpec.parse("segmentation:voc:protocol=slide:threshold=none").resolved()
    assert off.options.threshold is None and off.key == "segmentation/voc:val@slide"


@pytest.mark.parametrize("text, message", [
    ("segmentation:voc:protocol=slyde", "did you mean 'slide'"),
    ("segmentation:voc:protocl=slide", "did you mean 'protocol'"),
    ("segmentation:voc:protocol=slide:threshold=1.5", "not a probability in [0, 1]"),
    ("segmentation:voc:protocol=slide:threshold=-0.1", "not a probability in [0, 1]"),
    ("segmentation:voc:protocol=slide:crop=512", "crop 512 is larger than the short side 448"),
    ("segmentation:voc:protocol=slide:stride=500", "stride 500 is larger than the crop 448"),
    ("segmentation:voc:protocol=slide:stride=0", "stride must be a positive number"),
    ("segmentation:voc:protocol=slide:crop=4.5", "whole number of pixels"),
    ("segmentation:voc:protocol=slide:logit_scale=0", "logit_scale must be positive"),
    ("segmentation:voc:crop=336", "applies to protocol=slide only"),
    ("segmentation:camvid:protocol=slide:threshold=0.3", "camvid has no background class"),
    ("retrieval:flickr8k:protocol=slide", "task 'retrieval' takes no options"),
    ("segmentation:voc:protocol=", "use OPTION=VALUE"),
])
def test_bad_protocols_are_one_line_errors(text, message):
    with pytest.raises(ConfigError) as err:
        EvalSpec.parse(text).resolved()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_cli_refuses_a_bad_protocol_before_torch_loads(tmp_path):
    code = ("import sys, argparse\n"
            "from alignbench import preflight\n"
            "ns = argparse.Namespace(evals='segmentation:voc:protocol=slyde', methods='linear')\n"
            "try:\n    preflight.check('run', ns)\nexcept Exception as exc:\n    print(type(exc).__name__, exc)\n"
            "print('torch loaded' if 'torch' in sys.modules else 'no torch')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert "ConfigError --evals segmentation:voc:protocol=slyde: unknown segmentation protocol 'slyde'" in out
    assert out.strip().endswith("no torch")


# -- the task under the sliding protocol --------------------------------------------------------
class WindowSource(MemorySource):
    """In-memory features where each image is one window (2×2 images, 2×2 windows)."""

    def crops(self, name, split, grid):
        return self.images(name, split), layout_of([(2, 2)] * len(self.images(name, split)), grid)


def test_slide_threshold_on_a_dataset_with_background(tmp_path):
    ds, src = _seg_source(tmp_path, background_index=0)
    src = WindowSource(src._datasets, images=src._images, prompts=src._prompts)
    whole = SegmentationTask().evaluate(Identity(), src, ds, "test")
    window = {"protocol": "slide", "short": "2", "crop": "2", "stride": "2", "logit_scale": "1"}
    # threshold 0: the sliding path over one window per image is the whole-image argmax
    m0 = SegmentationTask(SegProtocol.parse({**window, "threshold": "0"})).evaluate(Identity(), src, ds, "test")
    assert m0 == pytest.approx(whole)
    # threshold 1: no probability reaches it, every pixel becomes background (2 of the 7 labelled pixels are)
    m1 = SegmentationTask(SegProtocol.parse({**window, "threshold": "1"})).evaluate(Identity(), src, ds, "test")
    assert m1["pixel_acc"] == pytest.approx(100 * 2 / 7)
    assert m1["mIoU_fg"] == 0.0 and m1["IoU/background"] == pytest.approx(100 * 2 / 7)
    # the VOC-20 style number ignores background pixels and takes no threshold: unchanged
    assert m1["mIoU_nobg"] == pytest.approx(whole["mIoU_nobg"])


def _square_camvid(root, size: int, n: int = 3):
    rng = np.random.default_rng(0)
    d = root / "camvid"
    (d / "test").mkdir(parents=True)
    (d / "testannot").mkdir()
    ids = [f"img{k}" for k in range(n)]
    for i in ids:
        Image.fromarray(rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)).save(d / "test" / f"{i}.png")
        Image.fromarray(rng.integers(0, 12, size, dtype=np.uint8)).save(d / "testannot" / f"{i}.png")
    (d / "test.txt").write_text("\n".join(ids) + "\n")
    return root


def test_one_window_per_image_equals_the_whole_image_protocol(tmp_path):
    """32×32 images, windows of 32: the window is the image, encoded by the real store, so both protocols agree
    while reading two cache entries."""
    from alignbench.source import FeatureSource
    from alignbench.store import FeatureStore

    from alignbench.source import FeatureSource
    from alignbench.store import FeatureStore

    data = _square_camvid(tmp_path / "data", (32, 32))
    src = FeatureSource("tiny-vit+tiny-text", store=FeatureStore(tmp_path / "cache"), data_root=data, progress=False)
    ds = src.dataset("camvid")
    whole = SegmentationTask().evaluate(Identity(), src, ds, "test")
    slide = SegProtocol.parse({"protocol": "slide", "short": "32", "crop": "32", "stride": "16"})
    m = SegmentationTask(slide).evaluate(Identity(), src, ds, "test")
    assert m == pytest.approx(whole)
    entries = {r["dataset"]: r["path"] for r in src.reads if r["kind"] == "images"}
    assert set(entries) == {"camvid", "camvid.crops32-32-16"} and len(set(entries.values())) == 2
    # a wider image has two overlapping windows: the numbers now differ from the whole-image forward
    data2 = _square_camvid(tmp_path / "wide", (32, 48))
    src2 = FeatureSource("tiny-vit+tiny-text", store=FeatureStore(tmp_path / "cache"), data_root=data2, progress=False)
    feats, layout = src2.crops("camvid", "test", slide.grid)
    assert len(feats) == 6 and layout.boxes[0] == [(0, 32, 0, 32), (0, 32, 16, 48)]
    assert SegmentationTask(slide).evaluate(Identity(), src2, src2.dataset("camvid"), "test") != pytest.approx(
        SegmentationTask().evaluate(Identity(), src2, src2.dataset("camvid"), "test"))


def test_threshold_on_a_card_dataset_without_background_fails_at_evaluation(tmp_path):
    ds, src = _seg_source(tmp_path, background_index=None)
    src = WindowSource(src._datasets, images=src._images, prompts=src._prompts)
    task = SegmentationTask(SegProtocol.parse({"protocol": "slide", "short": "2", "crop": "2", "stride": "2",
                                               "threshold": "0.5"}))
    with pytest.raises(AlignbenchError, match="no background class"):
        task.evaluate(Identity(), src, ds, "test")


# -- real data: voc-mini with the offline effnet-lite0 + minilm-l6 ------------------------------
@pytest.mark.slow
def test_voc_mini_sliding_protocol_with_the_real_encoder(data_root, session_cache):
    """3 VOC images (500 wide): 2 windows each at short side 448, encoded once by effnet-lite0 and reused by a
    second method; threshold 1 sends every pixel to background, so pixel accuracy is the background share."""
    from alignbench.features import Pairs, TextFeatures
    from alignbench.registry import METHODS
    from alignbench.source import FeatureSource
    from alignbench.store import FeatureStore

    store = FeatureStore(session_cache)  # the session's cache: voc-mini's 1,680 prompts are encoded once
    src = FeatureSource("effnet-lite0+minilm-l6", store=store, data_root=data_root, progress=False)
    ds = src.dataset("voc-mini")
    rng = np.random.default_rng(0)
    pairs = Pairs(ImageFeatures(pooled=rng.normal(size=(8, 1280)).astype(np.float32)),
                  TextFeatures(pooled=rng.normal(size=(8, 384)).astype(np.float32)), np.arange(8), np.arange(8))
    method = METHODS.get("random")()
    method.fit(pairs, seed=0)

    slide = EvalSpec.parse("segmentation:voc-mini:protocol=slide").resolved()
    assert slide.options.threshold == 0.5 and slide.key == "segmentation/voc-mini:val@slide,threshold=0.5"
    m = slide.task_object().evaluate(method, src, ds, "val")
    feats, layout = src.crops("voc-mini", "val", slide.options.grid)
    assert layout.sizes == [(448, 663), (448, 597), (448, 597)] and len(feats) == layout.n_windows == 6
    assert feats.grid == (7, 7)
    for k in ("mIoU", "mIoU_fg", "mIoU_nobg", "fwIoU"):
        assert 0.0 <= m[k] <= 100.0
    # a second method evaluated with the same windows reads them from the cache
    other = FeatureSource("effnet-lite0+minilm-l6", store=FeatureStore(session_cache), data_root=data_root,
                          progress=False)
    EvalSpec.parse("segmentation:voc-mini:protocol=slide").resolved().task_object().evaluate(
        method, other, other.dataset("voc-mini"), "val")
    assert [r["action"] for r in other.reads if r["dataset"] == "voc-mini.crops448-448-224"] == ["reused"]
    all_bg = EvalSpec.parse("segmentation:voc-mini:protocol=slide:threshold=1").resolved().task_object()
    m1 = all_bg.evaluate(method, src, ds, "val")
    masks = [ds.mask("val", i) for i in range(3)]
    labelled = sum(int((mk != 255).sum()) for mk in masks)
    assert m1["pixel_acc"] == pytest.approx(100 * sum(int((mk == 0).sum()) for mk in masks) / labelled)


def test_result_feature_paths_are_relative_to_the_cache(tmp_path):
    """A stored result names its cache entries under the cache root, never the machine's absolute folder."""
    from alignbench.source import FeatureSource
    from alignbench.store import FeatureStore

    data = _square_camvid(tmp_path / "data", (32, 32))
    src = FeatureSource("tiny-vit+tiny-text", store=FeatureStore(tmp_path / "cache"), data_root=data, progress=False)
    src.dataset("camvid")
    SegmentationTask().evaluate(Identity(), src, src.dataset("camvid"), "test")
    paths = [r["path"] for r in src.reads]
    assert paths and all(not p.startswith("/") and str(tmp_path) not in p for p in paths)
    assert all((tmp_path / "cache" / p).is_dir() for p in paths)
