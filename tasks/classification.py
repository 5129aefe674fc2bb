"""Zero-shot classification: images scored against prompt-averaged class embeddings.

Class embeddings follow CLIP's recipe (``Method.class_embeddings``: each
template's text embedding normalised, averaged, re-normalised); logits are the
method's own ``similarity`` so methods with a non-cosine score (CSA, ASIF) are
judged by it.  Reports top-1 accuracy and mean per-class accuracy (the latter
is insensitive to class imbalance).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from alignbench.errors import DataError
from alignbench.outcomes import Outcomes
from alignbench.tasks.base import FeatureNeed, Task, check_finite, embed_in_batches, register_task


def classification_metrics(pred: np.ndarray, labels: np.ndarray, n_classes: int) -> dict[str, float]:
    """Top-1 and mean per-class accuracy (%, over classes that occur in ``labels``)."""
    pred, labels = np.asarray(pred, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    if pred.shape != labels.shape or labels.size == 0:
        raise DataError(f"need one prediction per label, got {pred.shape} predictions for {labels.shape} labels")
    correct = pred == labels
    per_class_total = np.bincount(labels, minlength=n_classes)
    per_class_hit = np.bincount(labels[correct], minlength=n_classes)
    present = per_class_total > 0
    return {
        "top1": 100.0 * float(correct.mean()),
        "mean_per_class": 100.0 * float((per_class_hit[present] / per_class_total[present]).mean()),
    }


@register_task("classification", aliases=("zeroshot", "zero-shot"))
class ClassificationTask(Task):
    """Zero-shot classification from prompt templates: top-1 and mean per-class accuracy."""

    kind = "classification"
    headline = ("top1",)
    metric_labels = {"top1": "top-1", "mean_per_class": "mean per-class"}

    def needs(self, dataset: str, split: str) -> list[FeatureNeed]:
        return [FeatureNeed("images", dataset, split), FeatureNeed("prompts", dataset)]

    def evaluate_with_outcomes(self, method: Any, source: Any, dataset: Any, split: str) -> tuple[dict[str, float], Outcomes]:
        """Top-1 / mean per-class accuracy plus the predicted class and label of every image."""
        import torch

        self.check_dataset(dataset)
        name = dataset.registry_name
        prompts, n_classes, n_templates = source.prompts(name)
        with torch.no_grad():
            classes = method.class_embeddings(prompts, n_classes, n_templates)
            images = source.images(name, split)
            labels = np.asarray(dataset.labels(split), dtype=np.int64)
            if len(labels) != len(images):
                raise DataError(f"{name}:{split} has {len(labels)} labels for {len(images)} encoded images")
            preds = []
            for start in range(0, len(images), self.batch_size):
                idx = np.arange(start, min(start + self.batch_size, len(images)))
                emb = embed_in_batches(method.embed_image, images.subset(idx), self.batch_size)
                logits = method.similarity(emb, classes)
                check_finite(logits, "class scores")
                preds.append(logits.argmax(1).cpu().numpy())
        pred = np.concatenate(preds)
        outcomes = Outcomes(
            task="classification", unit="query", arrays={"pred": pred, "label": labels},
            units={"image": len(labels)}, meta={"n_classes": int(n_classes)},
        )  # fmt: skip
        return classification_metrics(pred, labels, n_classes), outcomes

    def metrics_from_outcomes(self, outcomes: Outcomes) -> dict[str, float]:
        return classification_metrics(outcomes.arrays["pred"], outcomes.arrays["label"], int(outcomes.meta["n_classes"]))

    def resampled_metrics(self, outcomes: Outcomes, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from scipy import sparse

        pred, label = outcomes.arrays["pred"], outcomes.arrays["label"]
        w = weights["image"]  # (n, B)
        n_classes = int(label.max(initial=0)) + 1
        right = pred == label
        rows = np.arange(len(label))

        def per_class(mask: np.ndarray) -> np.ndarray:
            """(classes, B): the drawn images of each class among ``mask`` (a sparse class × image sum)."""
            pick = sparse.csr_matrix((np.ones(int(mask.sum()), dtype=w.dtype), (label[mask], rows[mask])),
                                     shape=(n_classes, len(label)))  # fmt: skip
            return np.asarray(pick @ w)

        total, hit = per_class(np.ones(len(label), dtype=bool)), per_class(right)
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = np.where(total > 0, hit / np.maximum(total, 1), np.nan)  # a class no resample drew is left out
        return {"top1": 100.0 * hit.sum(0, dtype=np.float64) / len(label), "mean_per_class": 100.0 * np.nanmean(acc, axis=0)}
