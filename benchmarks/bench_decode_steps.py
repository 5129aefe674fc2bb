"""Per-image CPU cost of each step a decode worker runs, single process, one thread (CPU time).

Why: a decode worker's throughput is 1 / (the sum of these); ``bench_gpu.py`` says how many
workers a model's forward needs.  Steps: file read, JPEG decode, RGB convert, then the
encoder's transform split as the workers run it — before (timm's whole Compose in the
worker: resize, crop, to-tensor, normalise; float32 collated) and after (the PIL steps and a
uint8 collate in the worker; the table normalise per batch in the main process).

    python benchmarks/bench_decode_steps.py                 # Flickr8k + synthetic 500x375, 128 each
    python benchmarks/bench_decode_steps.py --n 256 --encoders timm:vit_small_patch16_224
"""
from __future__ import annotations

import argparse
import io
import os
import time
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("ALIGNBENCH_DATA") or Path(__file__).resolve().parents[2] / "shared" / "datasets")


def sources(n: int) -> dict[str, list[bytes]]:
    from PIL import Image

    rng = np.random.default_rng(0)
    synth = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
        synth.append(buf.getvalue())
    out = {"synthetic 500x375 q90": synth}
    paths = sorted((DATA / "flickr8k" / "images").glob("*.jpg"))[:n]
    if paths:
        out["flickr8k"] = [p.read_bytes() for p in paths]
    return out


def steps(blobs: list[bytes], transform, batch: int, whole: bool = False) -> dict[str, float]:
    """CPU ms per image of each step; ``transform`` split as a decode worker runs it (``whole``: not split)."""
    import torch
    from PIL import Image
    from torch.utils.data import default_collate

    from alignbench.encode import _split_transform
    from alignbench.encoders.transforms import ImageTransform, SplitTorchvision

    per_image, per_batch = (transform, None) if whole else _split_transform(transform)
    parts = list(getattr(transform, "transforms", []))
    ms: dict[str, float] = {}
    outs = []
    clock = time.process_time

    def add(key: str, t0: float) -> float:
        t = clock()
        ms[key] = ms.get(key, 0.0) + 1e3 * (t - t0)
        return t

    for blob in blobs:
        t = clock()
        img = Image.open(io.BytesIO(blob))
        img.load()
        t = add("jpeg decode", t)
        img = img.convert("RGB") if img.mode != "RGB" else img
        t = add("convert", t)
        if per_batch is None and parts:  # the whole Compose, step by step
            for step in parts:
                img = step(img)
                t = add(type(step).__name__, t)
            outs.append(img)
        elif isinstance(per_image.__self__, SplitTorchvision):
            for step in per_image.__self__.head:
                img = step(img)
                t = add(type(step).__name__, t)
            outs.append(torch.from_numpy(np.ascontiguousarray(np.asarray(img).transpose(2, 0, 1))))
            add("to uint8 CHW", t)
        elif isinstance(per_image.__self__, ImageTransform):
            outs.append(per_image(img))
            add("resize+crop, to uint8 CHW", t)
    t = clock()
    batches = [default_collate(outs[s : s + batch]) for s in range(0, len(outs), batch)]
    t = add(f"collate ({outs[0].dtype})", t)
    if per_batch is not None:
        for b in batches:
            per_batch(b)
        add("main: normalise per batch", t)
    return {k: v / len(blobs) for k, v in ms.items()}


def main() -> None:
    import torch

    from alignbench.encoders import get_encoder

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--encoders", default="timm:vit_small_patch16_224,dinov2-l14-timm,effnet-lite0")
    args = p.parse_args()
    torch.set_num_threads(1)  # as in a DataLoader worker
    blobs = sources(args.n)
    for name in args.encoders.split(","):
        kw = {"pretrained": False} if "timm" in name else {}  # random weights: same transform, no download
        tf = get_encoder(name, **kw).transform
        paths = [("before (whole transform in the worker)", True), ("now", False)]
        if not hasattr(tf, "transforms"):
            paths = [("now (unchanged)", False)]
        for label, whole in paths:
            for source, data in blobs.items():
                steps(data[:4], tf, args.batch_size, whole)
                ms = steps(data, tf, args.batch_size, whole)
                worker = sum(v for k, v in ms.items() if not k.startswith("main"))
                detail = ", ".join(f"{k} {v:.2f}" for k, v in ms.items())
                print(f"{name} {label}, {source} ({np.mean([len(b) for b in data]) / 1e3:.0f} KB): worker "
                      f"{worker:.2f} ms/img = {1e3 / worker:.0f} img/s; {detail}", flush=True)


if __name__ == "__main__":
    main()
