"""Evaluation cost once embeddings exist: retrieval time and segmentation peak memory.

* Retrieval: 1,000 images × 5,000 captions (Flickr8k test size), random
  512-d embeddings, cosine; target < 1 s for all six Recall@K.
* Segmentation: 233 images (CamVid test) with 360×480 masks, 11 classes,
  a 16×16 patch grid; peak resident memory above the baseline, next to what
  holding every upsampled score map would need (233·11·360·480·4 B ≈ 1.8 GB).

    python benchmarks/bench_eval.py                 # prints both numbers
    python -m pytest benchmarks/bench_eval.py --benchmark-enable -s   # pytest-benchmark timing
"""
from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest

N_IMAGES, CAPTIONS_PER_IMAGE, DIM = 1_000, 5, 512
SEG_IMAGES, SEG_H, SEG_W, SEG_CLASSES, GRID, TOKEN_DIM = 233, 360, 480, 11, (16, 16), 384


def retrieval_inputs(seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    img = torch.randn(N_IMAGES, DIM, generator=g)
    txt = torch.randn(N_IMAGES * CAPTIONS_PER_IMAGE, DIM, generator=g)
    return img, txt, np.repeat(np.arange(N_IMAGES), CAPTIONS_PER_IMAGE)


def cosine(a, b):
    import torch.nn.functional as F

    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def time_retrieval(repeats: int = 5) -> float:
    """Best-of-``repeats`` seconds for retrieval_metrics on the Flickr8k-test-sized problem."""
    from alignbench.tasks.retrieval import retrieval_metrics

    img, txt, ci = retrieval_inputs()
    retrieval_metrics(img, txt, ci, cosine)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        retrieval_metrics(img, txt, ci, cosine)
        best = min(best, time.perf_counter() - t)
    return best


def _segmentation_setup(tmp_root):
    """A CamVid-sized segmentation problem served from memory (identity method on random tokens)."""
    from alignbench.datasets.base import ImageList, SegmentationDataset
    from alignbench.features import ImageFeatures, TextFeatures
    from alignbench.methods.base import IdentityMethod

    rng = np.random.default_rng(0)
    mask = rng.integers(0, SEG_CLASSES + 1, (SEG_H, SEG_W)).astype(np.int64)  # 11 = void

    class Scenes(SegmentationDataset):
        registry_name = "bench-scenes"
        ignore_index = SEG_CLASSES

        classnames = property(lambda self: [f"class{i}" for i in range(SEG_CLASSES)])

        def images(self, split):
            return ImageList([str(i) for i in range(SEG_IMAGES)], lambda i: None, "bench")

        def mask(self, split, i):
            return mask

    Identity = IdentityMethod  # features already share a space here

    P = GRID[0] * GRID[1]
    tokens = rng.standard_normal((SEG_IMAGES, P, TOKEN_DIM)).astype(np.float16)
    feats = ImageFeatures(pooled=tokens.mean(1).astype(np.float32), tokens=tokens, grid=GRID, n_prefix=0)
    prompts = TextFeatures(pooled=rng.standard_normal((SEG_CLASSES * 2, TOKEN_DIM)).astype(np.float32))

    class Source:
        def dataset(self, name):
            return ds

        def dense_images(self, name, split):
            return feats

        images = dense_images

        def prompts(self, name):
            return prompts, SEG_CLASSES, 2

    ds = Scenes(tmp_root)
    return Identity(), Source(), ds


def segmentation_peak_memory(tmp_root) -> tuple[float, float]:
    """(seconds, peak RSS above baseline in MiB) for one segmentation evaluation."""
    import psutil

    from alignbench.tasks.segmentation import SegmentationTask

    method, source, ds = _segmentation_setup(tmp_root)
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t = time.perf_counter()
    SegmentationTask().evaluate(method, source, ds, "test")
    seconds = time.perf_counter() - t
    done.set()
    thread.join()
    return seconds, (peak[0] - base) / 2**20


@pytest.mark.benchmark
def test_retrieval_speed(benchmark):
    from alignbench.tasks.retrieval import retrieval_metrics

    img, txt, ci = retrieval_inputs()
    out = benchmark(retrieval_metrics, img, txt, ci, cosine)
    assert set(out) == {f"{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)}


@pytest.mark.benchmark
def test_segmentation_memory(tmp_path):
    seconds, mib = segmentation_peak_memory(tmp_path)
    naive = SEG_IMAGES * SEG_CLASSES * SEG_H * SEG_W * 4 / 2**20
    print(f"\nsegmentation: {seconds:.2f} s, peak +{mib:.0f} MiB (all upsampled maps would be {naive:.0f} MiB)")
    assert mib < naive / 4  # streaming, not holding every map


def main() -> int:
    import tempfile

    import torch

    print(f"torch threads: {torch.get_num_threads()}")
    r = time_retrieval()
    print(f"retrieval {N_IMAGES} images x {N_IMAGES * CAPTIONS_PER_IMAGE} captions, d={DIM}: "
          f"{r * 1000:.0f} ms (target < 1000 ms)")
    with tempfile.TemporaryDirectory() as tmp:
        seconds, mib = segmentation_peak_memory(tmp)
    naive = SEG_IMAGES * SEG_CLASSES * SEG_H * SEG_W * 4 / 2**20
    print(f"segmentation {SEG_IMAGES} images {SEG_H}x{SEG_W}, {SEG_CLASSES} classes, grid {GRID}: "
          f"{seconds:.2f} s, peak +{mib:.0f} MiB above baseline (holding all upsampled maps: {naive:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
