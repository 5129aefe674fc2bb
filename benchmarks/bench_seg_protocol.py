"""Evaluation cost of segmentation's two protocols on real cached CamVid features (effnet-lite0 + minilm-l6).

The model is an untrained ``random`` map (its numbers are not the point);
both protocols read the cache, so the times are evaluation only: the
``whole`` forward (233 squashed images) against ``protocol=slide`` (466
windows of 448, stitched, upsampled, argmax; ``--threshold`` adds the
softmax's top probability).  Encodes what is missing on first use.

    python benchmarks/bench_seg_protocol.py [--threshold 0.5]
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="camvid")
    ap.add_argument("--threshold", default=None, help="background threshold (needs a dataset with a background)")
    args = ap.parse_args()

    from alignbench.features import ImageFeatures, Pairs, TextFeatures
    from alignbench.refs import EvalSpec
    from alignbench.registry import METHODS
    from alignbench.source import FeatureSource

    src = FeatureSource("effnet-lite0+minilm-l6", progress=False)
    rng = np.random.default_rng(0)
    pairs = Pairs(ImageFeatures(pooled=rng.normal(size=(8, 1280)).astype(np.float32)),
                  TextFeatures(pooled=rng.normal(size=(8, 384)).astype(np.float32)), np.arange(8), np.arange(8))
    method = METHODS.get("random")()
    method.fit(pairs, seed=0)
    ds = src.dataset(args.dataset)
    slide = f"segmentation:{args.dataset}:protocol=slide" + (f":threshold={args.threshold}" if args.threshold else "")
    for text in (f"segmentation:{args.dataset}", slide):
        ev = EvalSpec.parse(text).resolved()
        task = ev.task_object()
        for need in task.needs(ev.dataset, ev.split):  # encode (or load) first: time the evaluation alone
            from alignbench import feature_kinds

            feature_kinds.fetch(src, need.what, need.dataset, need.split, need.view)
        wall, cpu = time.perf_counter(), time.process_time()
        m = task.evaluate(method, src, ds, ev.split)
        print(f"{ev.key}: {time.perf_counter() - wall:.1f} s wall, {time.process_time() - cpu:.1f} s CPU, "
              f"mIoU {m['mIoU']:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
