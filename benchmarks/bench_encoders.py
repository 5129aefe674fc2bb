"""Encoder throughput and faithfulness, per encoder and path (fp32 / bf16 / onnx).

    python benchmarks/bench_encoders.py                       # all built-ins
    python benchmarks/bench_encoders.py --only effnet-lite0,minilm-l6 --images 128

Prints images/s or captions/s (preprocessing excluded: the encode loop does it
in worker processes), and for every path its max abs difference and minimum
cosine to the encoder's reference path (pooled and tokens).  DINOv2 is also
compared with onnxruntime on the packaged ONNX graph (final-normed tokens).
Numbers on a shared 2-core machine are noisy: the load average is printed.
"""
from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import torch

from alignbench.encoders import get_encoder

ENCODER_PATHS = {
    "dinov2-s14": [("torch fp32", {}), ("torch bf16", {"dtype": "bf16"})],
    "effnet-lite0": [
        ("torch fp32", {"backend": "torch"}),
        ("onnx fp32", {"backend": "onnx"}),
        ("torch bf16", {"backend": "torch", "dtype": "bf16"}),
    ],
    "minilm-l6": [("torch fp32", {}), ("torch bf16", {"dtype": "bf16"})],
    "mpnet-base": [("torch fp32", {}), ("torch bf16", {"dtype": "bf16"})],
}


def data_root() -> Path:
    return Path(os.environ.get("ALIGNBENCH_DATA") or Path(__file__).resolve().parents[2] / "shared" / "datasets")


def load_images(n: int) -> list:
    from PIL import Image

    folder = data_root() / "flickr8k" / "images"
    paths = sorted(folder.glob("*.jpg"))[:n]
    if not paths:
        raise SystemExit(f"no Flickr8k images under {folder}; set ALIGNBENCH_DATA")
    return [Image.open(p).convert("RGB") for p in paths]


def load_captions(n: int) -> list[str]:
    with open(data_root() / "flickr8k" / "captions.txt", newline="") as f:
        return [r["caption"] for r in csv.DictReader(f)][:n]


def run(enc, batches) -> tuple[float, torch.Tensor, torch.Tensor]:
    """(items/s, pooled (N, d), valid tokens stacked (N_tokens, d_tok))."""
    enc.encode(batches[0][: min(4, len(batches[0]))])  # load + warm up
    pooled, tokens = [], []
    start = time.perf_counter()
    for b in batches:
        out = enc.encode(b)
        pooled.append(out.pooled.float())
        mask = getattr(out, "mask", None)
        tokens.append(out.tokens.float()[mask] if mask is not None else out.tokens.float().flatten(0, 1))
    elapsed = time.perf_counter() - start
    return sum(len(b) for b in batches) / elapsed, torch.cat(pooled), torch.cat(tokens)


def compare(a: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    cos = torch.nn.functional.cosine_similarity(a.flatten(0, -2), ref.flatten(0, -2), dim=-1)
    return float((a - ref).abs().max()), float(cos.min())


def dinov2_onnx_reference(x: torch.Tensor, batch: int) -> tuple[float, torch.Tensor]:
    """onnxruntime on the packaged graph (backbone + saliency decoder) with the final-normed tokens exposed."""
    import onnx
    import onnxruntime as ort

    from alignbench.encoders.dinov2 import ONNX_FINAL_TOKENS, onnx_path

    g = onnx.load(str(onnx_path()))
    g.graph.output.append(onnx.helper.make_tensor_value_info(ONNX_FINAL_TOKENS, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(g.SerializeToString(), providers=["CPUExecutionProvider"])
    sess.run([ONNX_FINAL_TOKENS], {"input_image": x[:2].numpy()})
    outs, start = [], time.perf_counter()
    for i in range(0, len(x), batch):
        outs.append(torch.from_numpy(sess.run([ONNX_FINAL_TOKENS], {"input_image": x[i : i + batch].numpy()})[0]))
    return len(x) / (time.perf_counter() - start), torch.cat(outs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(ENCODER_PATHS), help="comma-separated encoders")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--captions", type=int, default=512)
    ap.add_argument("--image-batch", type=int, default=32)
    ap.add_argument("--text-batch", type=int, default=128)
    ap.add_argument("--no-bf16", action="store_true", help="skip bf16 paths (slow on CPUs without native bf16)")
    args = ap.parse_args()
    from tabulate import tabulate

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, load average {os.getloadavg()[0]:.1f}"
    )
    images = captions = None
    rows = []
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        ref = None
        for label, opts in ENCODER_PATHS[name]:
            if args.no_bf16 and opts.get("dtype") == "bf16":
                continue
            enc = get_encoder(name, **opts)
            if enc.modality == "image":
                images = images or load_images(args.images)
                x = torch.stack([enc.transform(im) for im in images])
                batches = list(torch.split(x, args.image_batch))
                unit, n = "images/s", len(x)
            else:
                captions = captions or load_captions(args.captions)
                batches = [captions[i : i + args.text_batch] for i in range(0, len(captions), args.text_batch)]
                unit, n = "captions/s", len(captions)
            rate, pooled, tokens = run(enc, batches)
            row = {"encoder": name, "path": label, "n": n, "rate": f"{rate:.1f} {unit}"}
            if ref is None:
                ref = (label, pooled, tokens)
                row["vs"] = "(reference)"
            else:
                row["vs"] = ref[0]
                d, c = compare(pooled, ref[1])
                row["pooled max|Δ|"], row["pooled min cos"] = f"{d:.2e}", f"{c:.6f}"
                d, c = compare(tokens, ref[2])
                row["tokens max|Δ|"], row["tokens min cos"] = f"{d:.2e}", f"{c:.6f}"
            rows.append(row)
            if name == "dinov2-s14" and label == "torch fp32":
                rate_o, normed_ref = dinov2_onnx_reference(x, args.image_batch)
                w, b, eps = enc.final_norm()
                normed = torch.nn.functional.layer_norm(tokens, (tokens.shape[-1],), torch.from_numpy(w), torch.from_numpy(b), eps)
                d, c = compare(normed, normed_ref.flatten(0, 1))
                rows.append(
                    {"encoder": name, "path": "onnxruntime, packaged graph (+decoder)", "n": n,
                     "rate": f"{rate_o:.1f} {unit}", "vs": "torch fp32 (final-normed tokens)",
                     "tokens max|Δ|": f"{d:.2e}", "tokens min cos": f"{c:.6f}"}
                )
            del enc
    cols = ["encoder", "path", "n", "rate", "vs", "pooled max|Δ|", "pooled min cos", "tokens max|Δ|", "tokens min cos"]
    print(tabulate([[r.get(c, "") for c in cols] for r in rows], headers=cols, tablefmt="github"))


if __name__ == "__main__":
    main()
