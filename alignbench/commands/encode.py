"""``alignbench encode``: fill the feature cache for an encoder pair and some datasets.

Cached entries are found from their keys without building any model, so a
rerun over cached data only reads metadata and answers in about a second.
"""
from __future__ import annotations

import argparse
import time

HELP = "encode datasets with an encoder pair into the feature cache (reuses what is cached)"
EXAMPLES = [
    "alignbench encode --pair effnet-lite0+minilm-l6 --datasets flickr8k,cifar10,camvid",
    "alignbench encode --pair dinov2-s14+minilm-l6 --datasets flickr8k --splits train,dev --dtype bf16",
    "alignbench encode --pair dinov2-s14+minilm-l6 --datasets flickr8k --image-layer 8 --text-layer 4",
    "alignbench encode --pair timm:vit_large_patch14_dinov2.lvd142m+st:sentence-transformers/all-roberta-large-v1 "
    "--datasets coco --device cuda --dtype bf16",
    "alignbench encode --list",
]
DEFAULT_DATASETS = "flickr8k,cifar10,fashion-mnist,camvid"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from alignbench.config import DEFAULT_PAIR

    p.add_argument("--pair", default=None, help=f"encoder pair VISION+TEXT (default: {DEFAULT_PAIR})")
    p.add_argument("--datasets", default=DEFAULT_DATASETS, help=f"comma-separated datasets (default: {DEFAULT_DATASETS})")
    p.add_argument("--splits", default=None, help="comma-separated splits to encode (default: every split found on disk)")
    p.add_argument("--image-layer", type=int, default=None, help="image encoder block (default: last; -1 = last)")
    p.add_argument("--text-layer", type=int, default=None, help="text encoder layer (default: last; -1 = last)")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="encoder compute dtype, autocast (default fp32; part of the cache key)")
    p.add_argument("--device", default="auto", help="where encoders compute: auto (CUDA when present), cpu, cuda, "
                   "cuda:N (default auto; not part of the cache key, recorded in each entry)")
    p.add_argument("--data-root", default=None, help="datasets folder (default: $ALIGNBENCH_DATA)")
    p.add_argument("--cache", default=None, help="feature cache folder (default: $ALIGNBENCH_CACHE or "
                   "~/.cache/alignbench/features)")
    p.add_argument("--batch-size", type=int, default=None, help="images/texts per forward pass (default 64)")
    p.add_argument("--decode", default="auto", choices=("auto", "threads", "processes"),
                   help="image decoding: threads between forward passes (auto on CPU) or worker processes "
                   "running ahead (auto on GPU)")
    p.add_argument("--workers", type=int, default=None, help="image decoding threads or processes (default: auto)")
    p.add_argument("--no-tokens", action="store_true", help="store only global features (smaller, no token methods)")
    p.add_argument("--verify", action="store_true", help="re-hash every cached file (meta.json included) before "
                   "reusing it, even if already verified; damaged entries are quarantined and re-encoded")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--list", action="store_true", help="list what the cache holds and exit")


def _list(store) -> int:
    from tabulate import tabulate

    from alignbench.store.locking import size_text as _size

    st = store.status()
    rows = [[r["encoder"], r["kind"], r["dataset"], r["split"], r["layer"], r["dtype"], r["count"], r["dim"],
             "yes" if r["tokens"] else "no", _size(r["size_bytes"])] for r in st["entries"]]
    print(f"feature cache {st['root']}: {st['n_entries']} entries, {_size(st['size_bytes'])}")
    if rows:
        print(tabulate(rows, headers=["encoder", "kind", "dataset", "split", "layer", "dtype", "count", "dim",
                                      "tokens", "size"]))
    for p in st["partial"]:
        print(f"partial (interrupted; resumed on the next encode): {p}")
    for p in st["quarantined"]:
        print(f"quarantined (failed its checksums; re-encoded when next used): {p}")
    return 0


def _on_disk(ds, split: str, name: str) -> bool:
    from alignbench.errors import DataError

    try:
        ds.images(split)
        return True
    except DataError as exc:
        print(f"skipped  {name}:{split}: {str(exc).splitlines()[0]}")
        return False


def main(args: argparse.Namespace) -> int:
    from alignbench.config import DEFAULT_PAIR, split_list
    from alignbench.devices import parse_device, warn_if_slow_dtype
    from alignbench.errors import ConfigError
    from alignbench.source import split_pair
    from alignbench.store import FeatureStore
    from alignbench.store.locking import size_text as _size

    if args.list:
        return _list(FeatureStore(args.cache))
    device = parse_device(args.device)
    warn_if_slow_dtype(args.dtype, device.resolved)
    store = FeatureStore(args.cache, device=device.resolved)
    t_start = time.time()
    vision, text = split_pair(args.pair or DEFAULT_PAIR)
    datasets = split_list(args.datasets)
    wanted = split_list(args.splits) if args.splits else None
    if not datasets:
        raise ConfigError("no dataset given (e.g. --datasets flickr8k,cifar10)")
    common = {"layer": None, "dtype": args.dtype, "data_root": args.data_root, "progress": not args.no_progress,
              "batch_size": args.batch_size, "tokens": not args.no_tokens, "verify": args.verify}
    img = dict(common, layer=args.image_layer, num_workers=args.workers, decode=args.decode)
    txt = dict(common, layer=args.text_layer)
    done: list[str] = []  # "encoded" | "resumed" | "reused", one per item

    def record(what: str, label: str, fn) -> None:
        t0 = time.time()
        feats = fn()
        if isinstance(feats, tuple):
            feats = feats[0]
        action = store.last_action
        done.append(action)
        shape = f"{len(feats)} x {feats.dim}"
        if feats.tokens is not None:
            shape += f", tokens {tuple(feats.tokens.shape)}"
        print(f"{action:>8}  {what:<7} {label:<28} {shape}  ({time.time() - t0:.1f} s)", flush=True)

    for name in datasets:
        ds = store.dataset(name, args.data_root)
        aliases = getattr(ds, "split_aliases", {}) or {}
        asked = None if wanted is None else {aliases.get(w, w) for w in wanted}  # e.g. val -> dev
        splits = [s for s in ds.splits if asked is None or s in asked]
        if wanted is None:  # every split that is on disk (shared copies often hold only the test split)
            splits = [s for s in splits if _on_disk(ds, s, name)]
        if not splits:
            print(f"skipped  {name}: no split {'among ' + ', '.join(wanted) if wanted else 'on disk'} "
                  f"(it has {', '.join(ds.splits)})")
            continue
        # a segmentation dataset is read as squashed whole images (tasks.base.dense_images), never cropped
        dense = getattr(ds, "kind", "") == "segmentation"
        images = store.dense_image_features if dense else store.image_features
        for split in splits:
            record("dense" if dense else "images", f"{vision} {name}:{split}",
                   lambda: images(vision, ds, split, **img))
            if hasattr(ds, "captions"):
                record("texts", f"{text} {name}:{split}", lambda: store.text_features(text, ds, split, **txt))
        if hasattr(ds, "classnames"):
            record("prompts", f"{text} {name}", lambda: store.prompt_features(text, ds, **txt))

    n_new = sum(1 for d in done if d != "reused")
    print(f"{n_new} encoded, {len(done) - n_new} reused in {time.time() - t_start:.1f} s; "
          f"cache {store.root}: {_size(store.size_bytes())}")
    return 0
