"""GPU benchmark (one CUDA device): encode vs the bare forward; a PAL epoch at COCO scale vs its bf16 matmul floor.

1. Encode (any device: ``--device auto|cpu|cuda[:N]``): ``iter_image_batches`` (on CUDA: JPEG decode in
   worker processes, pinned uint8 batches, non-blocking copies, on-GPU normalisation, bf16 autocast) over
   synthetic 500x375 JPEGs, images/s, divided by the bare forward of the same model on a batch already on the
   device; also after the first batch (the steady state of a long encode: the first batch waits for a worker
   to decode a whole batch).  Prints the path that ran (decode mode, workers, what a worker ships) and one
   decode worker's CPU ms per image, measured in this process.  Model: DINOv2 ViT-L/14 at 224 px on CUDA
   (timm, random weights: the same compute as the real ones, no download), ViT-S/16 on the CPU.  Target >= 0.8.
2. PAL (CUDA only): one epoch of ``pal`` (K = 512, bf16 CAP, batch 4096) over N pairs of 257 x 1024 fp16 image
   tokens (a memmap; resident on the GPU when they fit, else streamed) and 16 x 1024 caption tokens, divided
   by the bare bf16 token-anchor matmuls (forward + backward) of the same epoch.  Target <= 1.3.

    python benchmarks/bench_gpu.py --pairs 82783          # COCO scale (43.6 GB memmap in --data-dir)
    python benchmarks/bench_gpu.py --pairs 8192 --images 512   # quick
    python benchmarks/bench_gpu.py --device cpu --decode processes --workers 2 --images 512   # encode on the CPU
    ... --whole-transform                                 # workers run the whole float32 transform (before)
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


class WholeTransform:
    """The encoder's transform behind a plain call: decode workers run it whole and ship float32
    (the path before the uint8 cut; ``--whole-transform``, for before/after figures)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image):
        return self.transform(image)


def synthetic_jpegs(n: int, root: Path) -> list[str]:
    """500x375 noise JPEGs at quality 90 (~170 KB each, about a COCO image's bytes)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = root / f"img{i}.jpg"
        if not p.exists():
            Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(p, quality=90)
        paths.append(str(p))
    return paths


def decode_cost(transform, images, batch: int, n: int = 128) -> tuple[float, str]:
    """CPU ms per image of what one decode worker runs (open + decode + its transform step + collate),
    in this process on one thread, and what crosses to the main process."""
    import torch
    from torch.utils.data import default_collate

    from alignbench.encode import _split_transform

    per_image, per_batch = _split_transform(transform)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        items = [per_image(images[i]) for i in range(min(4, len(images)))]  # warm
        n = min(n, len(images))
        t0 = time.process_time()
        items = [per_image(images[i]) for i in range(n)]
        for s in range(0, n, batch):
            default_collate(items[s : s + batch])
        ms = 1e3 * (time.process_time() - t0) / n
    finally:
        torch.set_num_threads(threads)
    kind = f"{items[0].dtype} {items[0].nbytes / 1e3:.0f} KB/img"
    return ms, kind + (", normalised per batch in the main process/on the device" if per_batch else ", whole")


def bench_encode(n_images: int, batch: int, root: Path, workers: int | None = None, device: str = "cuda:0",
                 encoder: str | None = None, dtype: str | None = None, decode: str = "auto",
                 whole: bool = False) -> None:
    """Encode ``n_images`` synthetic JPEGs through ``iter_image_batches`` vs the bare forward on ``device``."""
    import torch

    from alignbench.encode import default_threads, default_workers, iter_image_batches, resolve_decode
    from alignbench.encoders import get_encoder

    cuda = device.startswith("cuda")
    name = encoder or ("timm:vit_large_patch14_dinov2.lvd142m" if cuda else "timm:vit_small_patch16_224")
    dtype = dtype or ("bf16" if cuda else "fp32")
    kw = {"resolution": 224} if "dinov2" in name else {}
    enc = get_encoder(name, pretrained=False, dtype=dtype, device=device, **kw)
    if whole:
        enc._transform = WholeTransform(enc.transform)
    images = Files(synthetic_jpegs(n_images, root))
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    res = enc.resolution
    x = torch.randn(batch, 3, res, res, device=device)
    with torch.inference_mode():
        for _ in range(2):
            enc.encode(x)
        sync()
        reps = max(1, min(n_images // batch, 16 if cuda else 2))
        t0 = time.perf_counter()
        for _ in range(reps):
            enc.encode(x)
        sync()
    bare = reps * batch / (time.perf_counter() - t0)
    mode = resolve_decode(decode, device)
    ms, shipped = decode_cost(enc.transform if mode == "processes" else WholeTransform(enc.transform), images, batch)
    if workers is None:
        workers = default_workers(n_images, batch, device) if mode == "processes" else default_threads()
    t0 = time.perf_counter()
    first = None
    n = 0
    for b in iter_image_batches(enc, images, batch_size=batch, progress=False, num_workers=workers, decode=decode):
        n += len(b.pooled)
        if first is None:
            first, n_first = time.perf_counter(), n
    end = time.perf_counter()
    full = n / (end - t0)
    steady = (n - n_first) / (end - first) if n > n_first else float("nan")
    unit = "worker" if mode == "processes" else "thread"
    print(f"path: {name} {dtype} on {device}, batch {batch}, decode={mode} with {workers} "
          f"{'worker processes' if mode == 'processes' else 'threads'} of {os.cpu_count()} CPUs, "
          f"pin_memory={cuda and mode == 'processes'}; "
          f"a decode {unit} {'ships' if unit == 'worker' else 'makes'} {shipped}", flush=True)
    print(f"decode (1 process, 1 thread, CPU time): {ms:.2f} ms/img = {1e3 / ms:.0f} img/s per {unit}; "
          f"the bare forward needs {0.8 * bare * ms / 1e3:.1f} of them for 0.8x", flush=True)
    print(f"encode ({n} JPEGs): {full:.0f} img/s through iter_image_batches ({steady:.0f} img/s after the first "
          f"batch, which took {first - t0:.2f} s) vs {bare:.0f} img/s bare forward = {full / bare:.2f} "
          f"({steady / bare:.2f} steady; {steady / max(1, workers):.0f} img/s per {unit})"
          "  [target >= 0.8]", flush=True)


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
    from alignbench.devices import parse_device

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N (the PAL part needs CUDA)")
    p.add_argument("--encoder", default=None, help="image encoder (default: ViT-L/14 @224 on CUDA, ViT-S/16 on CPU)")
    p.add_argument("--dtype", default=None, help="encoder dtype (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--decode", default="auto", choices=("auto", "threads", "processes"))
    p.add_argument("--whole-transform", action="store_true",
                   help="decode workers run the whole float32 transform (the path before the uint8 cut)")
    p.add_argument("--pairs", type=int, default=82_783)
    p.add_argument("--K", type=int, default=512)
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--workers", type=int, default=None, help="decode workers (default: alignbench's choice)")
    p.add_argument("--chunk-elems", default=str(1 << 22), help="PAL chunk_elems, comma-separated to compare")
    p.add_argument("--skip-encode", action="store_true")
    p.add_argument("--skip-pal", action="store_true")
    args = p.parse_args()
    device = parse_device(args.device).resolved
    os.environ.setdefault("ALIGNBENCH_PROGRESS", "0")
    tmp = None if args.data_dir else tempfile.TemporaryDirectory(prefix="bench_gpu_")
    root = Path(args.data_dir or tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    if not args.skip_encode:
        bench_encode(args.images, args.batch_size, root, args.workers, device, args.encoder, args.dtype,
                     args.decode, args.whole_transform)
    if not args.skip_pal and not device.startswith("cuda"):
        print("PAL at COCO scale: skipped (needs CUDA; the CPU's figure is benchmarks/bench_pal.py)", flush=True)
    elif not args.skip_pal:
        for chunk in (int(c) for c in args.chunk_elems.split(",")):
            bench_pal(args.pairs, args.K, root, chunk)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
