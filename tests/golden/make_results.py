"""Write the golden result files (tests/golden/results/*.json) used by tests/test_report.py.

Values follow a simple rule (method base + budget gain + seed jitter) so a
reader can check the expected tables by hand; they are not real measurements.
Run from the repository root: ``python tests/golden/make_results.py``.
"""
from __future__ import annotations

from pathlib import Path

from alignbench.config import RunSpec
from alignbench.identity import Resolver
from alignbench.results import SCHEMA_VERSION, ResultStore

RESOLVER = Resolver()  # identities as the current code resolves them ($ALIGNBENCH_DATA: the shared datasets)

HERE = Path(__file__).parent
PAIR, PAIR2 = "effnet-lite0+minilm-l6", "dinov2-s14+minilm-l6"
BASE = {  # i2t_R@1, t2i_R@1, top1 cifar10, top1 fashion-mnist, mIoU camvid
    "pal": (20.0, 15.0, 40.0, 30.0, 10.0),
    "asif": (12.0, 10.0, 35.0, 28.0, 5.0),
    "csa": (18.0, 15.0, 38.0, 33.0, 6.0),
    "random": (0.1, 0.1, 10.0, 10.0, 1.5),
}
JITTER = {0: -1.0, 1: 0.0, 2: 1.0}


def record(method, budget, seed, pair=PAIR, options=None, skip_seg=False):
    evals_typed = ("retrieval:flickr8k:test", "classification:cifar10:test", "classification:fashion-mnist:test")
    evals_typed += () if skip_seg else ("segmentation:camvid:test",)
    spec = RunSpec(method=method, pair=pair, budget=budget, seed=seed, method_options=options or {}, evals=evals_typed)
    run = RESOLVER.resolve(spec)
    i2t, t2i, c10, fm, miou = BASE[method]
    gain = 5.0 if budget == 10_000 and method != "random" else 0.0
    j = JITTER[seed] if method != "random" else 0.0
    if pair == PAIR2:
        gain += 2.0
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
    store.write(record("csa", 10_000, 0, options={"latent_dim": 64}))  # one seed: no ± ; option with an underscore
    for seed in (0, 1, 2):
        store.write(record("pal", 10_000, seed, pair=PAIR2))


if __name__ == "__main__":
    main()
