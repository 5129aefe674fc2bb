"""Zero-shot semantic segmentation from patch-level class scores.

Protocol (METHODS.md): one forward at the encoder's native resolution, the
method's ``patch_scores`` (B, P, C) reshaped to the patch grid, upsampled
bilinearly (``align_corners=False``) to each mask's own size, argmax, and ONE
confusion matrix accumulated over the whole dataset (ignore label excluded).
mIoU is dominated by large classes on CamVid, so frequency-weighted IoU and
pixel accuracy are reported too.  ``protocol=slide`` (an evaluation option,
``segmentation:voc:protocol=slide``) is ClearCLIP/SAIL's sliding window with
softmax and background threshold instead (:mod:`alignbench.seg_protocol`);
its numbers go under their own key (``segmentation/voc:val@slide,threshold=0.5``).

Beside the all-class mIoU:

* ``mIoU_fg``: the mean over foreground classes of the same confusion matrix,
  PAL's reference number for VOC and Pascal Context.  A dataset without a
  background class (CamVid, ADE20K, Pascal Context-59, whose background is
  unlabelled) has only foreground classes, so there ``mIoU_fg`` = ``mIoU``; no
  class is made background for it.  A dataset card sets its background with
  ``background:``.
* ``mIoU_nobg`` (datasets with a background class): the VOC-20 style protocol
  of the zero-shot literature — background pixels are ignored and the argmax
  runs over foreground classes only.

Memory: score maps are upsampled one image at a time and reduced to a
confusion matrix at once; nothing of mask size is kept.  The per-image
confusion matrices are the task's outcomes (stored sparse in the result):
their sum is the dataset's matrix, and resampling images gives bootstrap
intervals without re-running the model.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from alignbench.errors import DataError, FeatureError
from alignbench.outcomes import Outcomes, SparseRows, dense_rows
from alignbench.seg_protocol import SegProtocol, predict, stitch, upsample_canvas
from alignbench.tasks.base import FeatureNeed, Task, check_finite, dense_images, register_task

log = logging.getLogger(__name__)


def confusion_update(conf: np.ndarray, gt: np.ndarray, pred: np.ndarray, ignore_index: int | None) -> int:
    """Add one image to ``conf`` (C×C, rows = ground truth); return the count of stray labels.

    Pixels with the ignore label are excluded; labels outside [0, C) that are
    not the ignore label are excluded too and counted, so the caller can warn.
    """
    n = conf.shape[0]
    gt = np.asarray(gt, dtype=np.int64).ravel()
    pred = np.asarray(pred, dtype=np.int64).ravel()
    if gt.shape != pred.shape:
        raise DataError(f"mask has {gt.size} pixels but the prediction has {pred.size}")
    valid = (gt >= 0) & (gt < n)
    stray = int((~valid & (gt != (ignore_index if ignore_index is not None else -1))).sum())
    conf += np.bincount(n * gt[valid] + pred[valid], minlength=n * n).reshape(n, n)
    return stray


def iou_per_class(conf: np.ndarray) -> np.ndarray:
    """IoU per class; NaN where the class is neither in the ground truth nor predicted."""
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def segmentation_metrics(
    conf: np.ndarray, classnames: list[str] | None = None, background_index: int | None = None
) -> dict[str, float]:
    """mIoU, frequency-weighted IoU, pixel and mean class accuracy (%) from a confusion matrix.

    Classes absent from both ground truth and prediction are left out of the
    means (their IoU is undefined).  ``mIoU_fg`` is the mean over the classes
    other than ``background_index`` (over all of them when it is None: every
    class is foreground).  Per-class IoUs come as ``IoU/<name>``.
    """
    conf = np.asarray(conf, dtype=np.int64)
    total = conf.sum()
    if total == 0:
        raise DataError("no labelled pixels to evaluate (every pixel has the ignore label?)")
    iou = iou_per_class(conf)
    gt_count = conf.sum(1)
    freq = gt_count / total
    with np.errstate(invalid="ignore", divide="ignore"):
        class_acc = np.where(gt_count > 0, np.diag(conf) / np.maximum(gt_count, 1), np.nan)
    out = {
        "mIoU": 100.0 * float(np.nanmean(iou)),
        "fwIoU": 100.0 * float(np.nansum(freq * np.nan_to_num(iou))),
        "pixel_acc": 100.0 * float(np.trace(conf) / total),
        "mean_acc": 100.0 * float(np.nanmean(class_acc)),
    }
    fg = np.delete(iou, background_index) if background_index is not None else iou
    out["mIoU_fg"] = 100.0 * float(np.nanmean(fg)) if np.isfinite(fg).any() else float("nan")
    names = classnames or [str(c) for c in range(len(iou))]
    for name, v in zip(names, iou):
        if np.isfinite(v):
            out[f"IoU/{name}"] = 100.0 * float(v)
    return out


def upsample(scores: Any, size: tuple[int, int]) -> Any:
    """(C, h, w) scores → (H, W, C) bilinear upsampling (``align_corners=False``).

    Channels-last throughout: on CPU both the interpolation and the argmax over
    classes run ~4× faster than on the (C, H, W) layout.
    """
    import torch
    import torch.nn.functional as F

    # contiguous first: a view's batch stride can make the layout ambiguous and interpolate falls back to NCHW
    x = scores.float().contiguous()[None].contiguous(memory_format=torch.channels_last)
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)


def upsample_argmax(scores: Any, size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) scores → (H, W) class ids."""
    return upsample(scores, size).argmax(-1).numpy()


@register_task("segmentation", aliases=("seg", "semantic-segmentation"))
class SegmentationTask(Task):
    """Zero-shot semantic segmentation: mIoU (all, foreground, no-bg), fwIoU; protocol=whole (default) or slide (ClearCLIP: short 448, crops 448/224, threshold)."""

    kind = "segmentation"
    headline = ("mIoU",)
    # Where the dataset has a background class (its results hold mIoU_nobg), the foreground mean (PAL's reference
    # for VOC and Pascal Context) and the no-background protocol join the headline: one protocol never stands alone.
    headline_if_present = {"mIoU_nobg": ("mIoU_fg", "mIoU_nobg")}
    metric_labels = {
        "mIoU": "mIoU",
        "mIoU_fg": "mIoU (fg)",
        "mIoU_nobg": "mIoU (no bg)",
        "fwIoU": "fwIoU",
        "pixel_acc": "pixel acc.",
        "mean_acc": "mean acc.",
    }
    batch_size: int = 16  # images per patch_scores call

    @classmethod
    def parse_options(cls, raw: dict[str, str]) -> SegProtocol:
        """``protocol=whole|slide`` and the slide protocol's ``short``, ``crop``, ``stride``, ``logit_scale``,
        ``threshold`` (alignbench.seg_protocol)."""
        return SegProtocol.parse(raw)

    @property
    def protocol(self) -> SegProtocol:
        return self.options if self.options is not None else SegProtocol()

    def needs(self, dataset: str, split: str) -> list[FeatureNeed]:
        if self.protocol.name == "slide":
            images = FeatureNeed("crops", dataset, split, self.protocol.grid)
        else:
            images = FeatureNeed("dense_images", dataset, split)
        return [images, FeatureNeed("prompts", dataset)]

    def evaluate_with_outcomes(self, method: Any, source: Any, dataset: Any, split: str) -> tuple[dict[str, float], Outcomes]:
        """The metrics plus one confusion matrix per image (their sum is the dataset's confusion matrix)."""
        import torch

        self.check_dataset(dataset)
        name = dataset.registry_name
        classnames = list(dataset.classnames)
        n_cls = len(classnames)
        ignore = getattr(dataset, "ignore_index", None)
        bg = getattr(dataset, "background_index", None)
        protocol = self.protocol.for_dataset(dataset)
        prompts, n_classes, n_templates = source.prompts(name)
        if n_classes != n_cls:
            raise DataError(f"{name}: {n_classes} prompt classes but {n_cls} class names")

        per_image = SparseRows()  # one (C, C) confusion matrix per image
        per_image_nobg = SparseRows()  # (C-1, C-1) each, where the dataset has a background class
        fg = [c for c in range(n_cls) if c != bg]
        stray, n_images = 0, 0
        with torch.no_grad():
            classes = method.class_embeddings(prompts, n_classes, n_templates)
            for i, up in self._score_maps(method, source, dataset, split, classes, n_cls):
                gt = np.asarray(dataset.mask(split, i))
                up = up(gt.shape[-2:])  # (H, W, C) at the mask's size, one image at a time
                conf = np.zeros((n_cls, n_cls), dtype=np.int64)
                stray += confusion_update(conf, gt, predict(up, protocol, bg), ignore)
                per_image.add(conf)
                n_images += 1
                if bg is not None:  # background pixels ignored, argmax over foreground classes
                    conf_nobg = np.zeros((n_cls - 1, n_cls - 1), dtype=np.int64)
                    confusion_update(conf_nobg, _remap_foreground(gt, fg, bg), up[..., fg].argmax(-1).numpy(), -1)
                    per_image_nobg.add(conf_nobg)
        if stray:
            log.warning("%s:%s: %d pixels had labels outside 0..%d and were ignored", name, split, stray, n_cls - 1)
        if not per_image.n:
            raise DataError(f"{name}:{split} has no images to evaluate")
        arrays = per_image.arrays()
        if bg is not None:
            arrays.update(per_image_nobg.arrays("nobg_"))
        meta = {"classes": classnames, "background_index": bg}
        if not protocol.is_default:
            meta["protocol"] = protocol.to_dict()
        outcomes = Outcomes(task="segmentation", unit="image", arrays=arrays, units={"image": n_images}, meta=meta)
        return self.metrics_from_outcomes(outcomes), outcomes

    def _score_maps(self, method: Any, source: Any, dataset: Any, split: str, classes: Any, n_cls: int):
        """(image index, ``size -> (H, W, C)`` scores upsampled to ``size``) for every image of the split."""
        name = dataset.registry_name
        if self.protocol.name == "slide":
            images, layout = source.crops(name, split, self.protocol.grid)
        else:
            images, layout = dense_images(source, name, split), None
        if images.grid is None or images.tokens is None:
            raise FeatureError(f"{name}:{split} image features have no patch tokens; segmentation needs them")
        n = len(images) if layout is None else len(layout)
        for start in range(0, n, self.batch_size):
            idx = np.arange(start, min(start + self.batch_size, n))
            rows = idx if layout is None else np.concatenate([layout.rows(int(i)) for i in idx])
            maps = _patch_maps(method, images.subset(rows), classes, images.grid, n_cls)
            for b, i in enumerate(idx):
                if layout is None:
                    yield int(i), lambda size, m=maps[b]: upsample(m, size)
                else:
                    first = int(np.searchsorted(rows, layout.starts[i]))
                    windows = maps[first:first + len(layout.boxes[i])]
                    canvas = stitch(windows, layout.boxes[i], layout.sizes[i])  # (H', W', C)
                    yield int(i), lambda size, c=canvas: upsample_canvas(c, size)

    def metrics_from_outcomes(self, outcomes: Outcomes) -> dict[str, float]:
        a, classes, bg = outcomes.arrays, list(outcomes.meta["classes"]), outcomes.meta.get("background_index")
        n = len(classes)
        out = segmentation_metrics(_summed(a["cell"], a["count"], n), classes, bg)
        if bg is not None:
            conf_nobg = _summed(a["nobg_cell"], a["nobg_count"], n - 1)
            if conf_nobg.sum() > 0:
                out["mIoU_nobg"] = 100.0 * float(np.nanmean(iou_per_class(conf_nobg)))
        return out

    def resampled_metrics(self, outcomes: Outcomes, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        a, classes, bg = outcomes.arrays, list(outcomes.meta["classes"]), outcomes.meta.get("background_index")
        w, n = weights["image"], len(classes)
        conf = _resampled_confusions(w, a["row"], a["cell"], a["count"], n)
        out = _batched_metrics(conf, classes, bg)
        if bg is not None:
            nobg = _resampled_confusions(w, a["nobg_row"], a["nobg_cell"], a["nobg_count"], n - 1)
            with np.errstate(invalid="ignore"):
                out["mIoU_nobg"] = 100.0 * np.nanmean(_batched_iou(nobg), axis=1)
        return out


def _patch_maps(method: Any, images: Any, classes: Any, grid: tuple[int, int], n_cls: int) -> Any:
    """(B, C, gh, gw) class scores of each image's patches, checked for shape and finiteness."""
    gh, gw = grid
    scores = method.patch_scores(images, classes).float()
    if scores.shape != (len(images), gh * gw, n_cls):
        raise FeatureError(f"patch_scores returned shape {tuple(scores.shape)}, expected "
                           f"({len(images)}, {gh * gw}, {n_cls}) for a {gh}×{gw} grid")
    check_finite(scores, "patch scores")
    return scores.reshape(len(images), gh, gw, n_cls).permute(0, 3, 1, 2)


def _summed(cell: np.ndarray, count: np.ndarray, n: int) -> np.ndarray:
    """The dataset confusion matrix: the per-image ones added up (integers, exact)."""
    conf = np.zeros(n * n, dtype=np.int64)
    np.add.at(conf, cell, count)
    return conf.reshape(n, n)


def _resampled_confusions(w: np.ndarray, row: np.ndarray, cell: np.ndarray, count: np.ndarray, n: int) -> np.ndarray:
    """(B, n, n): each resample's confusion matrix, the per-image matrices summed with weights (n_images, B)."""
    per_image = dense_rows(row, cell, count, w.shape[0], n * n)
    return np.asarray(per_image.T @ w.astype(np.float64)).T.reshape(w.shape[1], n, n)


def _batched_iou(conf: np.ndarray) -> np.ndarray:
    """(B, C, C) → (B, C) IoU; NaN where a class is neither in the ground truth nor predicted."""
    tp = np.diagonal(conf, axis1=1, axis2=2)
    union = conf.sum(1) + conf.sum(2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def _batched_metrics(conf: np.ndarray, classes: list[str], bg: int | None) -> dict[str, np.ndarray]:
    """:func:`segmentation_metrics` for a stack of confusion matrices (one value per resample)."""
    iou = _batched_iou(conf)
    gt = conf.sum(2)
    total = np.maximum(gt.sum(1), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(gt > 0, np.diagonal(conf, axis1=1, axis2=2) / np.maximum(gt, 1), np.nan)
        out = {
            "mIoU": 100.0 * np.nanmean(iou, axis=1),
            "fwIoU": 100.0 * np.nansum(gt / total[:, None] * np.nan_to_num(iou), axis=1),
            "pixel_acc": 100.0 * np.trace(conf, axis1=1, axis2=2) / total,
            "mean_acc": 100.0 * np.nanmean(acc, axis=1),
        }
        out["mIoU_fg"] = 100.0 * np.nanmean(np.delete(iou, bg, axis=1) if bg is not None else iou, axis=1)
    for j, name in enumerate(classes):
        out[f"IoU/{name}"] = 100.0 * iou[:, j]
    return out


def _remap_foreground(gt: np.ndarray, fg: list[int], bg: int) -> np.ndarray:
    """Ground truth in foreground-only ids (0..C-2); background and ignore → -1."""
    lut = np.full(max(int(gt.max(initial=0)), max(fg)) + 1, -1, dtype=np.int64)
    lut[fg] = np.arange(len(fg))
    g = np.asarray(gt, dtype=np.int64)
    return np.where((g >= 0) & (g < len(lut)), lut[np.clip(g, 0, len(lut) - 1)], -1)
