"""PAL speed and memory benchmark: time per epoch vs the bare token–anchor matmuls.

Prints, per dtype, PAL's time per training epoch (budget 10k pairs, K = 512,
dinov2-s14 + minilm-l6 shapes: 257 image tokens × 384, captions of 16–20
tokens × 384) divided by the time of the floor: the forward matmul
``norm(Z)·Aᵀ`` and the backward matmul ``g_Sᵀ·norm(Z)`` of both modalities for
the same batches, with tokens already normalised in memory and outputs
preallocated (nothing else).  Target: ratio ≤ 1.5.  Also measures PAL's peak
RSS during one epoch with the tokens memory-mapped (fp16), in a child
process (target < 8 GiB, also at COCO scale: ``--rss-only --budget 82783``).

Synthetic random tokens of the right shapes live in a temporary memmap, so
no feature cache is needed.  On a shared machine, run it when it is quiet;
``--threads 1`` is the most stable setting.

It also says which path ``dtype=auto`` (PAL's default) takes on this CPU
(bf16 where AMX / AVX-512 bf16 make it native, else fp32; alignbench.devices)
and PAL's epoch ÷ the floor of the FASTEST dtype measured (target ≤ 1.5).

    python benchmarks/bench_pal.py                 # fp32 + bf16, RSS
    python benchmarks/bench_pal.py --dtypes fp32 --threads 1 --no-rss
    python benchmarks/bench_pal.py --rss-only --budget 82783 --data-dir /tmp/x   # COCO scale, ≈ 16 GB
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

T_IMG, D, GRID = 257, 384, (16, 16)


def _write_npy(path: Path, shape: tuple[int, ...], blocks) -> None:
    """Write an fp16 .npy of ``shape`` from ``blocks`` (arrays along axis 0) with plain file writes.

    Why not a writable memmap: its dirty pages would count in this process's RSS; here only one
    block is ever in memory.  Written to a temporary name and renamed, so a killed run leaves no
    truncated file that a later run would reuse.
    """
    tmp = path.with_suffix(".partial")
    with open(tmp, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)),
                                                 "fortran_order": False, "shape": shape})
        written = 0
        for b in blocks:
            fh.write(np.ascontiguousarray(b, dtype=np.float16).tobytes())
            written += len(b)
    if written != shape[0]:
        raise RuntimeError(f"{path}: wrote {written} rows, expected {shape[0]}")
    tmp.rename(path)


def write_features(root: Path, n: int, seed: int = 0) -> list[Path]:
    """Create (once) the memmapped fp16 token files of ``n`` random image/caption pairs under ``root``."""
    img, txt = root / f"img_tokens_{n}.npy", root / f"txt_tokens_{n}.npy"
    if not img.exists():
        _write_npy(img, (n, T_IMG, D), _random_rows(n, (T_IMG, D), np.random.default_rng([seed, 1])))
    if not txt.exists():
        total = int(_caption_offsets(n, seed)[-1])
        _write_npy(txt, (total, D), _random_rows(total, (D,), np.random.default_rng([seed, 2])))
    return [img, txt]


def _random_rows(n: int, row: tuple[int, ...], rng: np.random.Generator, block_elems: int = 1 << 24,
                 pool_elems: int = 1 << 26):
    """Blocks of ``n`` rows of N(0.3, 1) fp16 values.  Each block is a window at a random offset of
    one pool of normal draws: 16 GB is written in minutes instead of drawing 8e9 normals on a busy CPU
    (no two rows alike: the windows start anywhere, not at row boundaries)."""
    per_row = int(np.prod(row))
    rows_per_block = max(1, block_elems // per_row)
    pool = (rng.standard_normal(min(pool_elems, n * per_row), dtype=np.float32) + 0.3).astype(np.float16)
    for s in range(0, n, rows_per_block):
        m = min(rows_per_block, n - s)
        if m * per_row >= len(pool):
            yield pool[: m * per_row].reshape(m, *row)
            continue
        start = int(rng.integers(0, len(pool) - m * per_row + 1))
        yield pool[start : start + m * per_row].reshape(m, *row)


def _caption_offsets(n: int, seed: int) -> np.ndarray:
    lengths = np.random.default_rng([seed, 3]).integers(16, 21, size=n)
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def make_features(root: Path, n: int, seed: int = 0):
    """n image/caption pairs of random fp16 tokens, both token arrays memory-mapped from files under ``root``."""
    from alignbench.features import ImageFeatures, Pairs, TextFeatures

    img, txt = write_features(root, n, seed)
    rng = np.random.default_rng([seed, 4])
    images = ImageFeatures(pooled=rng.standard_normal((n, D), dtype=np.float32), tokens=np.load(img, mmap_mode="r"),
                           grid=GRID, n_prefix=1)
    texts = TextFeatures(pooled=rng.standard_normal((n, D), dtype=np.float32), tokens=np.load(txt, mmap_mode="r"),
                         offsets=_caption_offsets(n, seed))
    return Pairs(images, texts, np.arange(n), np.arange(n))


def floor_epoch(pairs, K: int, batch_size: int, dtype: str, seed: int = 0, rows_per_mm: int = 1024):
    """(wall s, CPU s) of the bare forward + backward token–anchor matmuls over one epoch's batches."""
    import torch

    from alignbench.training import epoch_batches

    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    A = torch.nn.functional.normalize(torch.randn(K, D), dim=-1).to(dt)
    gA = torch.zeros(K, D, dtype=dt)
    S_buf = torch.zeros(rows_per_mm * T_IMG * K, dtype=dt)  # preallocated and touched: no page faults timed
    G_buf = torch.randn(rows_per_mm * T_IMG * K).to(dt)
    total, total_cpu = 0.0, 0.0
    n = len(pairs)
    for idx in epoch_batches(n, min(batch_size, n), np.random.default_rng(seed)):
        idx = np.sort(idx)
        tok, mask = pairs.text().token_batch(idx)
        for z in (None, tok):
            # image side in slices of rows (same matmul shapes, bounded memory); text side at once
            sl = range(0, len(idx), rows_per_mm) if z is None else [0]
            for s in sl:
                zz = pairs.image().token_tensor(idx[s : s + rows_per_mm]) if z is None else z
                zn = torch.nn.functional.normalize(zz.float(), dim=-1).reshape(-1, D).to(dt).contiguous()
                S = S_buf[: zn.shape[0] * K].view(-1, K)
                G = G_buf[: zn.shape[0] * K].view(-1, K)
                t0, c0 = time.perf_counter(), time.process_time()
                torch.mm(zn, A.t(), out=S)
                torch.mm(G.t(), zn, out=gA)
                total += time.perf_counter() - t0
                total_cpu += time.process_time() - c0
    return total, total_cpu


def pal_epoch(pairs, K: int, batch_size: int, dtype: str, epochs: int, compile: bool):
    """(wall s, CPU s, fit_info): median per steady-state PAL epoch (the first one, which also
    faults in the reused buffers, is left out when there are more), from the method's own times."""
    from alignbench.registry import METHODS

    # no LR range test: its 100 steps would take longer than the epochs timed here
    m = METHODS.get("pal")(K=K, batch_size=batch_size, max_epochs=epochs, dtype=dtype, lr_range_test=False,
                            compile="on" if compile else "off")
    t0 = time.perf_counter()
    m.fit(pairs, None, seed=0)
    info = dict(m.fit_info, fit_wall_s=time.perf_counter() - t0)
    skip = 1 if len(info["epoch_times_s"]) > 1 else 0
    return float(np.median(info["epoch_times_s"][skip:])), float(np.median(info["epoch_cpu_s"][skip:])), info


def warm_up(pairs, K: int, dtype: str, compile: bool) -> None:
    """Compile / allocate once on a small subset so the timed fit measures steady state."""
    from alignbench.registry import METHODS

    METHODS.get("pal")(K=K, batch_size=64, max_epochs=1, dtype=dtype, lr_range_test=False,
                       compile="on" if compile else "off").fit(
        pairs.subset(np.arange(128)), None, seed=0)


class RssSampler:
    """Peaks of this process's resident memory by kind (anonymous vs pages of mapped files), sampled
    from /proc/self/status in a thread (Linux; elsewhere nothing is sampled)."""

    FIELDS = ("VmRSS", "RssAnon", "RssFile")

    def __init__(self, every_s: float = 0.2):
        import threading

        self.peak_kib = dict.fromkeys(self.FIELDS, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)
        self._thread.start()

    def _run(self, every_s: float) -> None:
        while not self._stop.is_set():
            try:
                with open("/proc/self/status") as fh:
                    for line in fh:
                        key, _, value = line.partition(":")
                        if key in self.peak_kib:
                            self.peak_kib[key] = max(self.peak_kib[key], int(value.split()[0]))
            except OSError:
                return
            self._stop.wait(every_s)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {f"peak_{k}_gib": round(v / 2**20, 3) for k, v in self.peak_kib.items()}


def child_rss(args) -> None:
    """Run one PAL fit (one fp32 epoch) at the budget; print its peak RSS (GiB) and times as JSON."""
    import torch

    torch.set_num_threads(args.threads or torch.get_num_threads())
    sampler = RssSampler()
    pairs = make_features(Path(args.data_dir), args.budget)
    warm_up(pairs, args.K, "fp32", args.compile)  # compile once on 128 pairs, outside the timed epoch
    load0 = os.getloadavg()
    _, _, info = pal_epoch(pairs, args.K, args.batch_size, "fp32", 1, args.compile)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_rss_gib": peak_kib / 2**20, **sampler.stop(), "epoch_s": info["epoch_times_s"][0],
                      "epoch_cpu_s": info["epoch_cpu_s"][0], "fit_wall_s": round(info["fit_wall_s"], 1),
                      "load_average": [round(load0[0], 2), round(os.getloadavg()[0], 2)],
                      "token_source": info.get("token_source"), "prepared_tokens": info.get("prepared_tokens")}))


def measure_rss(args, root: Path) -> None:
    """Peak RSS of one PAL epoch in a fresh child process (nothing of this process's memory counts)."""
    cmd = [sys.executable, __file__, "--child-rss", "--budget", str(args.budget), "--K", str(args.K),
           "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--data-dir", str(root)]
    if not args.compile:
        cmd.append("--no-compile")
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"the RSS child failed (exit {out.returncode})")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"peak RSS of a PAL fit (budget {args.budget}, one fp32 epoch, fp16 tokens memmapped): "
          f"{r['peak_rss_gib']:.2f} GiB  [target < 8 GiB]; sampled peaks: anonymous {r['peak_RssAnon_gib']:.2f} GiB, "
          f"mapped file pages {r['peak_RssFile_gib']:.2f} GiB")
    print(f"epoch {r['epoch_s']:.1f} s wall / {r['epoch_cpu_s']:.1f} s CPU (fit {r['fit_wall_s']} s), load average "
          f"{r['load_average'][0]} -> {r['load_average'][1]}; tokens: {r['token_source']}; "
          f"prepared: {r['prepared_tokens']}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=int, default=10_000)
    p.add_argument("--K", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=3,
                   help="fp32 epochs per timed fit (median of epochs 2.. reported); bf16 runs 2")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="eager CAP kernels")
    p.add_argument("--no-rss", dest="rss", action="store_false")
    p.add_argument("--rss-only", action="store_true",
                   help="only the peak RSS of one PAL epoch (the scale check: --budget 82783 --data-dir /big/tmp)")
    p.add_argument("--data-dir", default=None, help="where the synthetic memmap goes (default: a temp dir)")
    p.add_argument("--child-rss", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("ALIGNBENCH_PROGRESS", "0")
    if args.child_rss:
        child_rss(args)
        return 0
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = None
    if args.data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_pal_")
        args.data_dir = tmp.name
    root = Path(args.data_dir)
    root.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}, "
          f"budget {args.budget}, K {args.K}, batch {args.batch_size}, compile {args.compile}")
    if args.rss_only:
        t0 = time.perf_counter()
        write_features(root, args.budget)  # plain file writes: this process maps nothing
        print(f"token files ready in {time.perf_counter() - t0:.0f} s "
              f"({sum(f.stat().st_size for f in root.glob(f'*_{args.budget}.npy')) / 2**30:.1f} GiB)", flush=True)
        measure_rss(args, root)
        if tmp is not None:
            tmp.cleanup()
        return 0
    pairs = make_features(root, args.budget)
    results = {}
    for dtype in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
        warm_up(pairs, args.K, dtype, args.compile)
        f1 = floor_epoch(pairs, args.K, args.batch_size, dtype)
        epochs = args.epochs if dtype == "fp32" else min(args.epochs, 2)
        ep, ep_cpu, info = pal_epoch(pairs, args.K, args.batch_size, dtype, epochs, args.compile)
        f2 = floor_epoch(pairs, args.K, args.batch_size, dtype, seed=1)
        # the floor is measured before and after PAL; the faster run is the floor
        floor, floor_cpu = min(f1[0], f2[0]), min(f1[1], f2[1])
        results[dtype] = (ep, floor, ep_cpu, floor_cpu)
        print(f"{dtype}: PAL epoch {ep:.2f} s wall / {ep_cpu:.2f} s CPU (epochs wall {info['epoch_times_s']}, "
              f"CPU {info['epoch_cpu_s']}); "
              f"floor {floor:.2f} s wall / {floor_cpu:.2f} s CPU (runs {f1[0]:.2f}, {f2[0]:.2f}); "
              f"tokens: {info.get('prepared_tokens') or info.get('token_source')}", flush=True)
        print(f"{dtype}: ratio PAL/floor = {ep / floor:.2f} (wall), {ep_cpu / floor_cpu:.2f} (CPU time)  "
              f"[target <= 1.5]", flush=True)
    if "fp32" in results and "bf16" in results:
        print(f"bf16 / fp32 PAL epoch time: {results['bf16'][0] / results['fp32'][0]:.2f} (wall), "
              f"{results['bf16'][2] / results['fp32'][2]:.2f} (CPU)")
    from alignbench.devices import cpu_bf16_flags, matmul_dtype

    chosen, why = matmul_dtype("auto", "cpu")
    print(f"CPU bf16 flags: {', '.join(cpu_bf16_flags()) or 'none'}; dtype=auto chooses {chosen} ({why})")
    if results:
        fastest = min(results, key=lambda d: results[d][1])
        print(f"fastest floor: {fastest} {results[fastest][1]:.2f} s; floors "
              + ", ".join(f"{d} {r[1]:.2f} s" for d, r in results.items()))
        if chosen in results:
            print(f"chosen path ({chosen}): PAL epoch / fastest floor = {results[chosen][0] / results[fastest][1]:.2f} "
                  f"(wall)  [target <= 1.5]")
    if args.rss:
        measure_rss(args, root)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
