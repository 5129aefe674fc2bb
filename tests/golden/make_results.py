"""Write the golden result files (tests/golden/results/*.json) used by tests/test_report.py.

Values follow a simple rule (method base + budget gain + seed jitter) so a
reader can check the expected tables by hand; they are not real measurements.
The one-seed runs at 10k (csa, linear) also store per-query outcomes built to
give exactly their retrieval and CIFAR-10 numbers (100 image queries, 500
caption queries, 500 images), so their cells carry bootstrap intervals and
the two are compared by a paired bootstrap.  ``pal`` with ``image_layer=9``
differs from ``pal`` in its layer alone: it must be its own row.
Run from the repository root: ``python tests/golden/make_results.py``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from alignbench.config import EncoderOptions, RunSpec
from alignbench.identity import Resolver
from alignbench.outcomes import Outcomes
from alignbench.results import SCHEMA_VERSION, ResultStore

RESOLVER = Resolver()  # identities as the current code resolves them ($ALIGNBENCH_DATA: the shared datasets)

HERE = Path(__file__).parent
PAIR, PAIR2 = "effnet-lite0+minilm-l6", "dinov2-s14+minilm-l6"
BASE = {  # i2t_R@1, t2i_R@1, top1 cifar10, top1 fashion-mnist, mIoU camvid
    "pal": (20.0, 15.0, 40.0, 30.0, 10.0),
    "asif": (12.0, 10.0, 35.0, 28.0, 5.0),
    "csa": (18.0, 15.0, 38.0, 33.0, 6.0),
    "random": (0.1, 0.1, 10.0, 10.0, 1.5),
    "linear": (16.0, 14.0, 37.0, 30.0, 5.0),
}
JITTER = {0: -1.0, 1: 0.0, 2: 1.0}


def _ranks(n: int, at1: float, at5: float, at10: float) -> np.ndarray:
    """First-correct ranks of n queries giving exactly these Recall@1/5/10 (percent)."""
    c1, c5, c10 = (round(n * r / 100) for r in (at1, at5, at10))
    return np.array([0] * c1 + [2] * (c5 - c1) + [7] * (c10 - c5) + [50] * (n - c10))


def _predictions(n: int, top1: float, n_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    label = np.arange(n) % n_classes
    hit = round(n * top1 / 100)
    pred = np.where(np.arange(n) < hit, label, (label + 1) % n_classes)
    return pred, label


def with_outcomes(rec):
    """Store outcomes matching the record's retrieval and CIFAR-10 numbers (recomputed from them, exactly)."""
    from alignbench.tasks.classification import ClassificationTask
    from alignbench.tasks.retrieval import RetrievalTask

    m = rec["metrics"]["retrieval/flickr8k"]
    i2t = _ranks(100, m["i2t_R@1"], m["i2t_R@5"], m["i2t_R@10"])
    t2i = _ranks(500, m["t2i_R@1"], m["t2i_R@5"], m["t2i_R@10"])
    ret = Outcomes("retrieval", "query", {"i2t_rank": i2t, "t2i_rank": t2i}, {"image_query": 100, "caption_query": 500})
    pred, label = _predictions(500, rec["metrics"]["classification/cifar10"]["top1"])
    cls = Outcomes("classification", "query", {"pred": pred, "label": label}, {"image": 500}, {"n_classes": 10})
    rec["metrics"]["retrieval/flickr8k"] = RetrievalTask().metrics_from_outcomes(ret)
    rec["metrics"]["classification/cifar10"] = ClassificationTask().metrics_from_outcomes(cls)
    rec["outcomes"] = {"retrieval/flickr8k": ret.to_json(), "classification/cifar10": cls.to_json()}
    return rec


def record(method, budget, seed, pair=PAIR, options=None, skip_seg=False, image_layer=None):
    evals_typed = ("retrieval:flickr8k:test", "classification:cifar10:test", "classification:fashion-mnist:test")
    evals_typed += () if skip_seg else ("segmentation:camvid:test",)
    spec = RunSpec(method=method, pair=pair, budget=budget, seed=seed, method_options=options or {},
                   encoder=EncoderOptions(image_layer=image_layer), evals=evals_typed)
    run = RESOLVER.resolve(spec)
    i2t, t2i, c10, fm, miou = BASE[method]
    gain = 5.0 if budget == 10_000 and method != "random" else 0.0
    j = JITTER[seed] if method != "random" else 0.0
    if pair == PAIR2:
        gain += 2.0
    if image_layer is not None:
        gain -= 3.0
    metrics = {
        "retrieval/flickr8k": {
            "i2t_R@1": i2t + gain + j, "i2t_R@5": 3 * i2t + gain + j, "i2t_R@10": 4 * i2t + gain,
            "t2i_R@1": t2i + gain - j, "t2i_R@5": 3 * t2i + gain, "t2i_R@10": 4 * t2i + gain,
        },
        "classification/cifar10": {"top1": c10 + gain + j, "mean_per_class": c10 + gain},
        "classification/fashion-mnist": {"top1": fm + gain, "mean_per_class": fm + gain + j},
    }
    evals = [
        {"key": "retrieval/flickr8k", "task": "retrieval", "dataset": "flickr8k", "split": "test"},
        {"key": "classification/cifar10", "task": "classification", "dataset": "cifar10", "split": "test"},
        {"key": "classification/fashion-mnist", "task": "classification", "dataset": "fashion-mnist", "split": "test"},
    ]
    if not skip_seg:
        metrics["segmentation/camvid"] = {"mIoU": miou + gain / 2 + j, "fwIoU": 3 * miou, "pixel_acc": 5 * miou,
                                          "IoU/road": 6 * miou}
        evals.append({"key": "segmentation/camvid", "task": "segmentation", "dataset": "camvid", "split": "test"})
    return {
        "schema_version": SCHEMA_VERSION, "status": "ok", "run_id": run.run_id, "fit_id": run.fit_id,
        "spec_key": spec.spec_key, "spec": spec.to_dict(), "resolved": run.to_dict(),
        "budget": {"requested": budget, "pairs": budget, "available": 30000},
        "evals": evals, "metrics": metrics,
        "timings": {"encode": 1.0, "fit": 2.0, "eval": {e["key"]: 0.5 for e in evals}, "total": 5.0},
        "method": {"name": method, "version": run.method.version, "config": run.method.config, "fit_info": {},
                   "num_parameters": 100},
        "provenance": {"golden": True}, "started_at": "2026-01-01T00:00:00+00:00",
        "finished_at": "2026-01-01T00:00:05+00:00",
    }


def main() -> None:
    out = HERE / "results"
    for f in out.glob("*.json"):
        f.unlink()
    store = ResultStore(out)
    for budget in (1000, 10_000):
        for seed in (0, 1, 2):
            store.write(record("pal", budget, seed))
            store.write(record("asif", budget, seed, skip_seg=budget == 1000))
        store.write(record("random", budget, 0))
        store.write(record("random", budget, 1))
    store.write(with_outcomes(record("csa", 10_000, 0, options={"latent_dim": 64})))  # one seed; option with an underscore
    store.write(with_outcomes(record("linear", 10_000, 0)))
    for seed in (0, 1, 2):
        store.write(record("pal", 10_000, seed, pair=PAIR2))
        store.write(record("pal", 10_000, seed, image_layer=9))  # its own row: "pal [image-layer 9]"


if __name__ == "__main__":
    main()
