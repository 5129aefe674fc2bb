"""GPU benchmark (one CUDA device): encode vs the bare forward; a PAL epoch at COCO scale vs its bf16 matmul floor.

1. Encode: ``iter_image_batches`` (JPEG decode in worker processes, pinned uint8 batches, non-blocking copies,
   on-GPU normalisation, bf16 autocast) over synthetic JPEGs, images/s, divided by the bare forward of the
   same model on a batch already on the GPU.  Model: DINOv2 ViT-L/14 at 224 px (timm, random weights: the
   same compute as the real ones, no download).  Target >= 0.8.
2. PAL: one epoch of ``pal`` (K = 512, bf16 CAP, batch 4096) over N pairs of 257 x 1024 fp16 image tokens
   (a memmap; resident on the GPU when they fit, else streamed) and 16 x 1024 caption tokens, divided by the
   bare bf16 token-anchor matmuls (forward + backward) of the same epoch.  Target <= 1.3.

    python benchmarks/bench_gpu.py --pairs 82783          # COCO scale (43.6 GB memmap in --data-dir)
    python benchmarks/bench_gpu.py --pairs 8192 --images 512   # quick
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


class Files(list):
    """JPEG paths that open as PIL images (picklable: decode workers get the list)."""

    def __getitem__(self, i):
        from PIL import Image

        return Image.open(list.__getitem__(self, i))


def bench_encode(n_images: int, batch: int, root: Path, workers: int | None = None) -> None:
    import torch
    from PIL import Image

    from alignbench.encode import iter_image_batches
    from alignbench.encoders import get_encoder

    enc = get_encoder("timm:vit_large_patch14_dinov2.lvd142m", pretrained=False, resolution=224, dtype="bf16",
                      device="cuda:0")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n_images):
        p = root / f"img{i}.jpg"
        if not p.exists():
            Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(p, quality=90)
        paths.append(p)
    images = [str(p) for p in paths]
    x = torch.randn(batch, 3, 224, 224, device="cuda:0")
    for _ in range(3):
        enc.encode(x)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(max(1, n_images // batch)):
        enc.encode(x)
    torch.cuda.synchronize()
    bare = max(1, n_images // batch) * batch / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    n = sum(len(b.pooled) for b in iter_image_batches(enc, Files(images), batch_size=batch, progress=False,
                                                          num_workers=workers))
    full = n / (time.perf_counter() - t0)
    from alignbench.encode import default_workers

    w = default_workers(n_images, batch) if workers is None else workers
    print(f"encode ({n_images} JPEGs, {w} decode workers of {os.cpu_count()} CPUs): {full:.0f} img/s through "
          f"iter_image_batches vs {bare:.0f} img/s bare forward = {full / bare:.2f}  [target >= 0.8]", flush=True)


def bench_pal(n: int, K: int, root: Path, chunk_elems: int = 1 << 22) -> None:
    import torch

    from alignbench.features import ImageFeatures, Pairs, TextFeatures
    from alignbench.registry import METHODS

    T, D, L = 257, 1024, 16
    path = root / f"tokens_{n}.npy"
    if not path.exists():
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, T, D))
        g = torch.Generator(device="cuda:0").manual_seed(0)
        for s in range(0, n, 1024):
            m = min(1024, n - s)
            mm[s : s + m] = (torch.randn(m, T, D, device="cuda:0", generator=g) + 0.3).half().cpu().numpy()
        mm.flush()
        del mm
    tokens = np.load(path, mmap_mode="r")
    rng = np.random.default_rng(0)
    images = ImageFeatures(rng.standard_normal((n, D), dtype=np.float32), tokens=tokens, grid=(16, 16), n_prefix=1)
    texts = TextFeatures(rng.standard_normal((n, D), dtype=np.float32),
                         tokens=(rng.standard_normal((n * L, D), dtype=np.float32) + 0.3).astype(np.float16),
                         offsets=np.arange(0, n * L + 1, L))
    pairs = Pairs(images, texts, np.arange(n), np.arange(n))
    pal = METHODS.get("pal")(K=K, max_epochs=2, dtype="bf16", lr_range_test=False, compile="on",
                              chunk_elems=chunk_elems).to("cuda:0")
    pal.fit(pairs, None, seed=0)
    epoch = min(pal.fit_info["epoch_times_s"])
    # the floor: the same epoch's token-anchor matmuls in bf16 (forward S = Z A^T, backward gA = G^T Z), both sides
    A = torch.randn(K, D, device="cuda:0", dtype=torch.bfloat16)
    rows = 1024
    Z = torch.randn(rows * T, D, device="cuda:0", dtype=torch.bfloat16)
    S = torch.empty(rows * T, K, device="cuda:0", dtype=torch.bfloat16)
    for _ in range(3):
        torch.mm(Z, A.t(), out=S)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    reps = 10
    for _ in range(reps):
        torch.mm(Z, A.t(), out=S)
        torch.mm(S.t(), Z)
    torch.cuda.synchronize()
    per_token = (time.perf_counter() - t0) / (reps * rows * T)
    floor = per_token * n * (T + L)
    print(f"PAL epoch ({n} pairs, {T}x{D} tokens, K={K}, bf16, chunk_elems={chunk_elems}, "
          f"{pal.fit_info['token_source']}): {epoch:.2f} s (epochs {pal.fit_info['epoch_times_s']}); "
          f"bf16 matmul floor {floor:.3f} s; ratio {epoch / floor:.2f}  [target <= 1.3]", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=82_783)
    p.add_argument("--K", type=int, default=512)
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--workers", type=int, default=None, help="decode workers (default: alignbench's choice)")
    p.add_argument("--chunk-elems", default=str(1 << 22), help="PAL chunk_elems, comma-separated to compare")
    p.add_argument("--skip-encode", action="store_true")
    args = p.parse_args()
    os.environ.setdefault("ALIGNBENCH_PROGRESS", "0")
    tmp = None if args.data_dir else tempfile.TemporaryDirectory(prefix="bench_gpu_")
    root = Path(args.data_dir or tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    if not args.skip_encode:
        bench_encode(args.images, args.batch_size, root, args.workers)
    for chunk in (int(c) for c in args.chunk_elems.split(",")):
        bench_pal(args.pairs, args.K, root, chunk)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
