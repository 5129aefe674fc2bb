"""``alignbench sweep --plan``: a sweep's jobs, GPU-hours and disk, before anything is submitted or downloaded.

Why offline: the plan is read on a login node, often before the data or the
weights are there, so nothing here builds an encoder or opens a dataset.
Split sizes come from :data:`SPLIT_SIZES` (the loaders' documented counts)
and token shapes from :data:`ENCODER_SHAPES`; the throughputs in
:data:`GPU_ASSUMPTIONS` are stated with the estimate so the reader can scale it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from alignbench.config import MAX

if TYPE_CHECKING:
    from alignbench.identity import ResolvedRun

#: (images, texts) per split as the loaders give them (COCO: Karpathy train = train 82,783 + restval 30,504).
SPLIT_SIZES: dict[tuple[str, str], tuple[int, int]] = {
    ("coco", "train"): (113_287, 566_747), ("coco", "val"): (5_000, 25_010), ("coco", "test"): (5_000, 25_010),
    ("flickr30k", "train"): (29_000, 145_000), ("flickr30k", "val"): (1_014, 5_070),
    ("flickr30k", "test"): (1_000, 5_000),
    ("flickr8k", "train"): (6_000, 30_000), ("flickr8k", "dev"): (1_000, 5_000), ("flickr8k", "test"): (1_000, 5_000),
    ("stl10", "test"): (8_000, 0), ("cifar100", "test"): (10_000, 0), ("cifar10", "test"): (10_000, 0),
    ("caltech101", "test"): (6_084, 0), ("dtd", "test"): (1_880, 0), ("eurosat", "test"): (5_400, 0),
    ("voc", "val"): (1_449, 0), ("pascal-context", "val"): (5_105, 0), ("ade20k", "val"): (2_000, 0),
}
#: Classes (prompt sets are classes x templates, tiny next to the images).
#: Image encoders: (tokens per image, token dim); text encoders: (mean tokens per caption, token dim).
ENCODER_SHAPES: dict[str, tuple[int, int]] = {
    "dinov2-l14-timm": (257, 1024), "timm:vit_large_patch14_dinov2.lvd142m": (1370, 1024),
    "dinov2-s14": (257, 384), "effnet-lite0": (49, 320),
    "st:sentence-transformers/all-roberta-large-v1": (16, 1024), "minilm-l6": (16, 384),
}
GPU_ASSUMPTIONS = {
    "encode_images_per_s": 800.0,  # ViT-L/14 @224 bf16 incl. JPEG decode, one A100/H100-class GPU
    "encode_texts_per_s": 4000.0,
    "matmul_tflops": 150.0,  # sustained bf16 matmul throughput of the fit (PAL's CAP, the heads)
    "fit_overhead": 1.3,  # PAL epoch / bf16 matmul floor (the GPU target)
    "closed_form_s": 120.0,  # cca / csa / asif / procrustes / random runs, incl. evaluation
    "eval_s": 300.0,  # evaluating one trained run on every task
}
TRAINED = ("pal", "linear", "fusemix", "structure", "mlp", "sail")


@dataclass
class PlannedSet:
    """One stage-1 encode job: a feature set, its row count and its size on disk."""

    label: str
    rows: int | None
    bytes: int | None
    gpu_s: float


def _shape(encoder: str) -> tuple[int, int] | None:
    return ENCODER_SHAPES.get(encoder)


def feature_set_plan(fs: Any) -> PlannedSet:
    """Rows, disk (fp32 pooled + fp16 tokens) and encode time of one feature set; None where unknown."""
    images, texts = SPLIT_SIZES.get((fs.dataset, fs.split or ""), (None, None))
    shape = _shape(fs.encoder)
    image = fs.spec.side == "image"
    if fs.kind == "prompts":
        return PlannedSet(fs.label(), None, 10 << 20, 10.0)
    rows = images if image else texts
    if rows is None or shape is None:
        return PlannedSet(fs.label(), rows, None, 0.0)
    tokens, dim = shape
    size = rows * (dim * 4 + tokens * dim * 2)
    rate = GPU_ASSUMPTIONS["encode_images_per_s" if image else "encode_texts_per_s"]
    return PlannedSet(fs.label(), rows, size, rows / rate)


def run_gpu_s(run: "ResolvedRun") -> float:
    """Upper bound on one run's GPU seconds: trained methods run max_epochs epochs at the matmul rate."""
    if run.method.name not in TRAINED:
        return GPU_ASSUMPTIONS["closed_form_s"]
    cfg = run.method.config  # the full config after defaults
    available = SPLIT_SIZES.get((run.train.dataset, run.train.split), (0, 0))[1]
    requested = run.spec.budget if run.spec is not None else run.budget  # "max" is resolved without the data
    pairs = available if requested == MAX else min(run.budget, available or run.budget)
    (ti, di), (tt, dt) = _shape(run.image.encoder) or (1, 1024), _shape(run.text.encoder) or (1, 1024)
    K = int(cfg.get("K", 1024))
    per_pair = (ti * di + tt * dt) * K if run.method.name == "pal" else (di + dt) * K
    flops = 4.0 * pairs * per_pair * int(cfg.get("max_epochs", 200))  # fwd + bwd matmuls, 2 flops each
    return flops / (GPU_ASSUMPTIONS["matmul_tflops"] * 1e12) * GPU_ASSUMPTIONS["fit_overhead"] + \
        GPU_ASSUMPTIONS["eval_s"]


def format_plan(runs: list["ResolvedRun"], sets: list[Any], packs: int) -> str:
    """The plan as text: stage-1 jobs, stage-2 runs by method and budget, totals."""
    from tabulate import tabulate

    planned = [feature_set_plan(fs) for fs in sets]
    rows = [[p.label, "?" if p.rows is None else f"{p.rows:,}", "?" if p.bytes is None else _gb(p.bytes),
             f"{p.gpu_s / 3600:.2f}"] for p in planned]
    out = [f"stage 1: {len(sets)} encode jobs (one per feature set; cached sets are skipped at submit time)",
           tabulate(rows, headers=["feature set", "rows", "disk", "GPU-h"])]
    groups: dict[tuple[str, str], list[ResolvedRun]] = {}
    for r in runs:
        groups.setdefault((r.method.name, str(r.spec.budget if r.spec is not None else r.budget)), []).append(r)
    run_rows, run_s = [], 0.0
    for (method, budget), group in groups.items():
        secs = sum(run_gpu_s(s) for s in group)
        run_s += secs
        run_rows.append([method, budget, len(group), f"{secs / 3600:.1f}"])
    out += ["", f"stage 2: {len(runs)} runs in {packs} array tasks",
            tabulate(run_rows, headers=["method", "budget", "runs", "GPU-h (upper bound)"])]
    enc_s = sum(p.gpu_s for p in planned)
    disk = sum(p.bytes or 0 for p in planned)
    unknown = sum(p.bytes is None for p in planned)
    out += ["", f"total: {(enc_s + run_s) / 3600:.1f} GPU-hours ({enc_s / 3600:.1f} encoding, {run_s / 3600:.1f} "
                f"fitting + evaluation, max_epochs as an upper bound); feature cache {_gb(disk)}"
                + (f" + {unknown} sets of unknown size" if unknown else ""),
            "assumptions: " + ", ".join(f"{k}={v:g}" for k, v in GPU_ASSUMPTIONS.items()),
            "nothing was submitted (drop --plan to submit)"]
    return "\n".join(out)


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


__all__ = ["ENCODER_SHAPES", "GPU_ASSUMPTIONS", "SPLIT_SIZES", "feature_set_plan", "format_plan", "run_gpu_s"]
