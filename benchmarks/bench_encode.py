"""Benchmark the encode path: pipeline overhead, memory while streaming tokens, cached reruns.

Prints three measurements (targets from the issue in brackets):

1. throughput  ``alignbench``'s encode (decode + model + streamed writes +
   checksums, into an empty cache) over the same images/captions vs a bare
   loop of the same encoder's forward on pre-made batches, same batch size and
   dtype; ``--repeat`` pipeline runs alternate with bare runs and the ratio is
   of the medians [ratio >= 0.9];
2. memory      peak RSS while encoding every Flickr8k image with tokens, for
   the encoding process alone and with its decode workers, and the token
   cache's size on disk [< 4 GiB];
3. rerun       wall time of ``alignbench encode`` when everything is cached
   [< 3 s].

Usage (shared data via $ALIGNBENCH_DATA, default ../shared/datasets):
  python benchmarks/bench_encode.py --n 256                      # quick: throughput only
  python benchmarks/bench_encode.py --encoder dinov2-s14 --rss   # + full Flickr8k memory run
  python benchmarks/bench_encode.py --rerun                      # + cached CLI rerun
Use ``nice`` on shared machines; numbers from a loaded machine are noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ALIGNBENCH_DATA") or REPO.parent / "shared" / "datasets")


class FlickrImages:
    """The first ``n`` (or all) images of Flickr8k's images/ folder, as the store reads a dataset."""

    splits = ("all",)
    options: dict = {}

    def __init__(self, n: int | None = None):
        from alignbench.datasets.base import FileImageLoader, ImageList, files_fingerprint

        paths = sorted((DATA / "flickr8k" / "images").glob("*.jpg"))[: n or None]
        self.registry_name = f"flickr8k-images-{len(paths)}"
        self._images = ImageList([p.name for p in paths], FileImageLoader(paths), files_fingerprint(paths))

    def check_split(self, split: str) -> str:
        return split

    def images(self, split: str):
        return self._images


class FlickrCaptions(FlickrImages):
    """The captions of the first ``n`` Flickr8k test images."""

    def __init__(self, n: int):
        from alignbench.datasets import get_dataset

        full = get_dataset("flickr8k", DATA)
        keep = full.caption_image_index("test") < n
        self._captions = [c for c, k in zip(full.captions("test"), keep) if k]
        self.registry_name = f"flickr8k-captions-{len(self._captions)}"

    def captions(self, split: str) -> list[str]:
        return self._captions


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the decode workers)."""
    import resource

    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def _timed(fn) -> tuple[float, float]:
    """(wall, cpu) seconds of ``fn()``: wall time is what users wait; CPU time resists machine load."""
    w, c = time.perf_counter(), _cpu()
    fn()
    return time.perf_counter() - w, _cpu() - c


def _bare_images(enc, images, batch_size: int, n: int) -> tuple[float, float]:
    """(wall, cpu) seconds of the encoder's forward alone on one pre-made batch, repeated to ``n`` images."""
    import torch

    x = torch.stack([enc.transform(images[i]) for i in range(batch_size)])
    with torch.inference_mode():
        enc.encode(x)  # warm-up (model build, onnx session, allocator)

        def run():
            for _ in range(0, n, batch_size):
                out = enc.encode(x)
                _ = out.pooled.float().numpy(), out.tokens.to(torch.float16).numpy()

        return _timed(run)


def _bare_texts(enc, texts, batch_size: int) -> tuple[float, float]:
    import torch

    order = np.argsort([len(t) for t in texts], kind="stable")  # same padding as the pipeline
    with torch.inference_mode():
        enc.encode(texts[:batch_size])

        def run():
            for b in range(0, len(texts), batch_size):
                out = enc.encode([texts[i] for i in order[b : b + batch_size]])
                _ = out.pooled.float().numpy(), out.tokens.to(torch.float16).numpy()

        return _timed(run)


def _row(what: str, unit: str, n: int, pipe: list[tuple[float, float]], n_bare: int,
         bare: list[tuple[float, float]]):
    """Items/s of the pipeline and the bare loop; the ratio is pipeline/bare (1.0 = no overhead).

    Medians over the repeats: on a small shared VM single runs swing by ±5%.
    """
    med = lambda xs: float(np.median(xs))  # noqa: E731
    pw, pc = med([n / p[0] for p in pipe]), med([n / p[1] for p in pipe])  # items per wall / CPU second
    bw, bc = med([n_bare / b[0] for b in bare]), med([n_bare / b[1] for b in bare])
    runs = lambda xs, k: ", ".join(f"{k / x[0]:.1f}" for x in xs)  # noqa: E731
    return (what,
            f"pipeline {pw:.1f} {unit}/s (runs {runs(pipe, n)}), bare {bw:.1f} {unit}/s (runs {runs(bare, n_bare)}); "
            f"CPU s per 1k: pipeline {1000 / pc:.1f}, bare {1000 / bc:.1f}",
            f"ratio of medians {pw / bw:.3f} wall, {pc / bc:.3f} CPU [>= 0.9]")


def throughput(args) -> list[tuple[str, str, str]]:
    """Bare and pipeline runs alternate (bare first and last), so drifting machine load hits both."""
    from alignbench.store import FeatureStore

    rows = []
    ds = FlickrImages(args.n)
    images = ds.images("all")
    for path in images.loader.paths:  # warm the page cache: measure the harness, not a cold disk
        Path(path).read_bytes()
    with tempfile.TemporaryDirectory(prefix="bench-encode-") as tmp:
        store = FeatureStore(tmp)
        enc = store.encoder(args.encoder, dtype=args.dtype)
        n_bare = -(-len(images) // args.batch_size) * args.batch_size  # whole batches
        bare, pipe = [_bare_images(enc, images, args.batch_size, n_bare)], []
        for _ in range(args.repeat):
            store.remove(kind="images")  # every run encodes, with the bare loop's encoder instance
            pipe.append(_timed(lambda: store.image_features(
                args.encoder, ds, "all", dtype=args.dtype, batch_size=args.batch_size, num_workers=args.workers,
                decode=args.decode, progress=False)))
            bare.append(_bare_images(enc, images, args.batch_size, n_bare))
        rows.append(_row(f"images {args.encoder} {args.dtype} bs{args.batch_size} n={len(images)} "
                         f"decode={args.decode}", "img", len(images), pipe, n_bare, bare))
        if args.text_encoder:
            cds = FlickrCaptions(args.n)
            texts = cds.captions("all")
            tenc = store.encoder(args.text_encoder, dtype=args.dtype)
            bare, pipe = [_bare_texts(tenc, texts, args.batch_size)], []
            for _ in range(args.repeat):
                store.remove(kind="texts")
                pipe.append(_timed(lambda: store.text_features(args.text_encoder, cds, "all", dtype=args.dtype,
                                                               batch_size=args.batch_size, progress=False)))
                bare.append(_bare_texts(tenc, texts, args.batch_size))
            rows.append(_row(f"texts {args.text_encoder} {args.dtype} bs{args.batch_size} n={len(texts)}", "txt",
                             len(texts), pipe, len(texts), bare))
    return rows


def _rss_child(args) -> None:
    """Runs in a subprocess: encode every Flickr8k image with tokens, print the entry's numbers."""
    from alignbench.store import FeatureStore

    store = FeatureStore(args.cache)
    t0 = time.perf_counter()
    f = store.image_features(args.encoder, FlickrImages(args.rss_n), "all", dtype=args.dtype,
                             batch_size=args.batch_size, num_workers=args.workers, progress=not args.quiet)
    dt = time.perf_counter() - t0
    path = Path(f.meta["path"])
    print(json.dumps({"n": len(f), "seconds": dt, "tokens_bytes": (path / "tokens.npy").stat().st_size,
                      "tokens_shape": list(f.tokens.shape), "entry_bytes": sum(p.stat().st_size for p in path.iterdir())}))


def memory(args) -> list[tuple[str, str, str]]:
    import psutil

    with tempfile.TemporaryDirectory(prefix="bench-encode-rss-") as tmp:
        cmd = [sys.executable, __file__, "--_rss-child", "--cache", tmp, "--encoder", args.encoder, "--dtype",
               args.dtype, "--batch-size", str(args.batch_size), "--rss-n", str(args.rss_n or 0), "--quiet"]
        if args.workers is not None:
            cmd += ["--workers", str(args.workers)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        ps = psutil.Process(proc.pid)
        peak_main = peak_all = 0
        while proc.poll() is None:
            try:
                main = ps.memory_info().rss
                kids = sum(c.memory_info().rss for c in ps.children(recursive=True))
            except psutil.Error:
                break
            peak_main, peak_all = max(peak_main, main), max(peak_all, main + kids)
            time.sleep(0.25)
        out, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"memory run failed with exit code {proc.returncode}")
        res = json.loads(out.strip().splitlines()[-1])
    gib = 1 << 30
    return [
        (f"memory {args.encoder} all Flickr8k images (n={res['n']}, tokens {tuple(res['tokens_shape'])})",
         f"peak RSS {peak_main / gib:.2f} GiB encoder process, {peak_all / gib:.2f} GiB with decode workers",
         "[< 4 GiB]"),
        ("token cache on disk", f"tokens.npy {res['tokens_bytes'] / gib:.2f} GiB, entry {res['entry_bytes'] / gib:.2f} GiB",
         f"encoded in {res['seconds']:.0f} s ({res['n'] / res['seconds']:.1f} img/s)"),
    ]


def rerun(args) -> list[tuple[str, str, str]]:
    """``alignbench encode`` twice on the same request; the second finds everything cached."""
    with tempfile.TemporaryDirectory(prefix="bench-encode-cli-") as tmp:
        cmd = [sys.executable, "-m", "alignbench.cli", "encode", "--pair", args.pair, "--datasets", args.datasets,
               "--cache", tmp, "--no-progress"]
        if args.splits:
            cmd += ["--splits", args.splits]
        env = dict(os.environ, ALIGNBENCH_DATA=str(DATA))
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        first = time.perf_counter() - t0
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            r = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
            times.append(time.perf_counter() - t0)
        summary = r.stdout.strip().splitlines()[-1]
    return [(f"cached rerun: alignbench encode --pair {args.pair} --datasets {args.datasets}"
             + (f" --splits {args.splits}" if args.splits else ""),
             f"{min(times):.2f} s (runs {', '.join(f'{t:.2f}' for t in times)}; first run {first:.0f} s)",
             f"[< 3 s] {summary}")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoder", default="effnet-lite0", help="image encoder (default effnet-lite0)")
    p.add_argument("--text-encoder", default="minilm-l6", help="text encoder for the text ratio ('' to skip)")
    p.add_argument("--n", type=int, default=512, help="images for the throughput ratio (captions: 5 per image)")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None, help="decode threads/processes (default: auto)")
    p.add_argument("--decode", default="auto", choices=("auto", "threads", "processes"),
                   help="image decoding mode (default auto: threads for a CPU model)")
    p.add_argument("--repeat", type=int, default=3, help="pipeline runs, each followed by a bare run (default 3)")
    p.add_argument("--rss", action="store_true", help="also encode ALL Flickr8k images and report peak RSS")
    p.add_argument("--rss-n", type=int, default=None, help="limit the memory run to this many images")
    p.add_argument("--rerun", action="store_true", help="also time a cached `alignbench encode` rerun")
    p.add_argument("--pair", default="effnet-lite0+minilm-l6")
    p.add_argument("--datasets", default="flickr8k")
    p.add_argument("--splits", default="test")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    p.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--_rss-child", dest="rss_child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rss_child:
        args.rss_n = args.rss_n or None
        return _rss_child(args)
    if not (DATA / "flickr8k").is_dir():
        raise SystemExit(f"Flickr8k not found under {DATA}; set ALIGNBENCH_DATA")
    print(f"bench_encode on {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f} at start; "
          "numbers are noisy on a loaded machine)", flush=True)
    parts = [(not args.skip_throughput, throughput), (args.rss, memory), (args.rerun, rerun)]
    for wanted, fn in parts:
        if wanted:
            for what, value, target in fn(args):
                print(f"- {what}\n    {value}   {target}", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
